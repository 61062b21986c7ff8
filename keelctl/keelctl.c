/*
 * keelctl.c - what keelctl's commands share.
 */
#include <stdio.h>
#include <string.h>

#include "keel/cli.h"
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
