/*
 * cli.c - option parsing and start-up shared by every binary.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "log.h"
#include "keel/version.h"

static void usage(const struct keel_cli_spec *spec, FILE *out)
{
    fprintf(out,
            "usage: %s [--config FILE] [--set SECTION.KEY=VALUE]... [options]%s\n"
            "%s\n"
            "\n"
            "options:\n"
            "  -c, --config FILE             read the INI configuration FILE\n"
            "  -o, --set SECTION.KEY=VALUE   override one option (repeatable, applied in order)\n"
            "      --log-level LEVEL         error, warn, info, debug or trace\n"
            "      --check-config            validate the configuration and exit\n"
            "      --dump-config             print the effective configuration and exit\n"
            "      --describe-config         print every option as a Markdown table and exit\n"
            "  -h, --help                    show this help and exit\n"
            "  -V, --version                 show the version and exit\n"
            "\n"
            "Options, their defaults and meanings: %s --dump-config\n"
            "Exit status: 0 ok, 1 failure, 64 usage, 69 nothing to run, 78 bad configuration.\n",
            spec->name, spec->usage_tail ? spec->usage_tail : "", spec->summary, spec->name);
    if (spec->list_commands) {
        fputc('\n', out);
        spec->list_commands(out);
    }
}

int keel_cli_main(const struct keel_cli_spec *spec, int argc, char **argv)
{
    enum { OPT_LOG_LEVEL = 256, OPT_CHECK, OPT_DUMP, OPT_DESCRIBE };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"set", required_argument, NULL, 'o'},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"check-config", no_argument, NULL, OPT_CHECK},
        {"dump-config", no_argument, NULL, OPT_DUMP},
        {"describe-config", no_argument, NULL, OPT_DESCRIBE},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct keel_config config;
    struct keel_error err;
    const char *config_path = NULL;
    int check = 0, dump = 0, rc, opt;
    char level[64];

    keel_config_init(&config);
    keel_error_init(&err);
    /* First pass: find --config, --help and --version; overrides apply after the file. */
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "+c:o:hV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'h':
            usage(spec, stdout);
            rc = KEEL_EXIT_OK;
            goto out;
        case OPT_DESCRIBE:
            keel_config_describe(stdout);
            rc = KEEL_EXIT_OK;
            goto out;
        case 'V':
            printf("%s %s (protocol %d)\n", spec->name, KEEL_VERSION, KEEL_PROTO_VERSION);
            rc = KEEL_EXIT_OK;
            goto out;
        case '?':
            fprintf(stderr, "%s: unknown or incomplete option '%s'\n", spec->name,
                    argv[optind - 1]);
            fprintf(stderr, "try '%s --help'\n", spec->name);
            rc = KEEL_EXIT_USAGE;
            goto out;
        default:
            break;
        }
    }
    if (config_path && keel_config_load(&config, config_path, &err) != 0)
        goto config_error;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "+c:o:hV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'o':
            if (keel_config_set(&config, optarg, &err) != 0)
                goto config_error;
            break;
        case OPT_LOG_LEVEL:
            snprintf(level, sizeof(level), "log.level=%s", optarg);
            if (keel_config_set(&config, level, &err) != 0)
                goto config_error;
            break;
        case OPT_CHECK:
            check = 1;
            break;
        case OPT_DUMP:
            dump = 1;
            break;
        default:
            break;
        }
    }
    if (keel_config_validate(&config, spec->required, &err) != 0)
        goto config_error;

    if (dump) {
        keel_config_dump(&config, stdout);
        rc = KEEL_EXIT_OK;
        goto out;
    }
    if (check) {
        printf("%s: config ok\n", spec->name);
        rc = KEEL_EXIT_OK;
        goto out;
    }
    keel_log_init(spec->name, config.log_level, NULL);
    if (spec->run == NULL) {
        fprintf(stderr,
                "%s: configuration is valid, but this binary has nothing to run yet in "
                "Keel %s\n",
                spec->name, KEEL_VERSION);
        rc = KEEL_EXIT_UNAVAILABLE;
        goto out;
    }
    rc = spec->run(&config, argc - optind, argv + optind);
    goto out;

config_error:
    fprintf(stderr, "%s: %s\n", spec->name, err.msg);
    rc = err.code == KEEL_ECONFIG ? KEEL_EXIT_CONFIG : KEEL_EXIT_FAILURE;
out:
    keel_config_release(&config);
    return rc;
}
