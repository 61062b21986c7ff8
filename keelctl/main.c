/*
 * main.c - keelctl: the operator's command-line tool.
 */
#include "keel/cli.h"

int main(int argc, char **argv)
{
    static const struct keel_cli_spec spec = {
        .name = "keelctl",
        .summary = "the Keel operator tool: certificates, datasets, jobs, status, checkpoints",
        .required = NULL,
        .run = NULL,
    };

    return keel_cli_main(&spec, argc, argv);
}
