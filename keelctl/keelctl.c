/*
 * keelctl.c - what keelctl's commands share.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "keelctl.h"

int keelctl_run_sub(const char *cmd, const struct keelctl_sub *subs, size_t n,
                    void (*usage)(FILE *out), const struct keel_config *config, int argc,
                    char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "keelctl %s: no subcommand given\n", cmd);
        usage(stderr);
        return KEEL_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return KEEL_EXIT_OK;
    }
    for (size_t i = 0; i < n; i++)
        if (strcmp(argv[1], subs[i].name) == 0)
            return subs[i].run(config, argc - 1, argv + 1);
    fprintf(stderr, "keelctl %s: unknown subcommand '%s'\n", cmd, argv[1]);
    usage(stderr);
    return KEEL_EXIT_USAGE;
}

int keelctl_getopt(struct keelctl_cmdline *cl, int argc, char **argv)
{
    int opt;

    if (!cl->started) {
        optind = 0;
        opterr = 0;
        cl->started = 1;
    }
    opt = getopt_long(argc, argv, cl->shortopts, cl->longopts, NULL);
    if (opt == -1)
        return 0;
    if (opt == 'h') {
        cl->usage(stdout);
        cl->exit = KEEL_EXIT_OK;
        return -1;
    }
    if (opt == '?' || opt == ':') {
        cl->exit = keelctl_usage_error(cl, "unknown or incomplete option '%s'", argv[optind - 1]);
        return -1;
    }
    return opt;
}

int keelctl_usage_error(const struct keelctl_cmdline *cl, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "keelctl %s: ", cl->what);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    cl->usage(stderr);
    return KEEL_EXIT_USAGE;
}

int keelctl_fail(const char *what, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "keelctl %s: ", what);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    return KEEL_EXIT_FAILURE;
}

int keelctl_print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);

    json_decref(j);
    if (s == NULL)
        return KEEL_EXIT_FAILURE;
    printf("%s\n", s);
    free(s);
    return KEEL_EXIT_OK;
}
