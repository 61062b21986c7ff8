/*
 * main.c - keelctl: the operator's command-line tool.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "keelctl.h"

/* The commands, in the order `keelctl --help` lists them. */
static const struct keelctl_command commands[] = {
    {"certs", "make the cluster CA, issue, show and revoke node certificates", keelctl_cmd_certs},
    {"dataset", "import IDX, LIBSVM and CSV datasets into a store; info, list, verify",
     keelctl_cmd_dataset},
    {"checkpoint", "checkpoints: list, verify, diff, export, prune; audit", keelctl_cmd_checkpoint},
    {"job", "training jobs in etcd: submit, list, show, stop", keelctl_cmd_job},
    {"status", "the cluster: leader and epoch, members, ranges per server, jobs",
     keelctl_cmd_status},
    {NULL, NULL, NULL},
};

static void list_commands(FILE *out)
{
    fprintf(out, "commands:\n");
    for (const struct keelctl_command *c = commands; c->name; c++)
        fprintf(out, "  %-12s %s\n", c->name, c->summary);
    fprintf(out, "Run 'keelctl COMMAND --help' for a command's own options.\n");
}

static int dispatch(const struct keel_config *config, int argc, char **argv)
{
    if (argc < 1) {
        fprintf(stderr, "keelctl: no command given\n");
        list_commands(stderr);
        return KEEL_EXIT_USAGE;
    }
    for (const struct keelctl_command *c = commands; c->name; c++)
        if (strcmp(argv[0], c->name) == 0)
            return c->run(config, argc, argv);
    fprintf(stderr, "keelctl: unknown command '%s'\n", argv[0]);
    list_commands(stderr);
    return KEEL_EXIT_USAGE;
}

int main(int argc, char **argv)
{
    static const struct keel_cli_spec spec = {
        .name = "keelctl",
        .summary = "the Keel operator tool: certificates, datasets, jobs, status, checkpoints",
        .usage_tail = " COMMAND [ARGS...]",
        .list_commands = list_commands,
        .required = NULL,
        .run = dispatch,
    };

    return keel_cli_main(&spec, argc, argv);
}
