/*
 * main.c - keel-coordinator: the Keel coordinator: leader election, range assignment, job control.
 */
#include "keel/cli.h"

static const char *const required[] = {"node.id", NULL};

int main(int argc, char **argv)
{
    static const struct keel_cli_spec spec = {
        .name = "keel-coordinator",
        .summary = "the Keel coordinator: leader election, range assignment, job control",
        .required = required,
        .run = NULL,
    };

    return keel_cli_main(&spec, argc, argv);
}
