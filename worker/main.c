/*
 * main.c - keel-worker: the Keel worker: reads data shards, computes gradients, pushes updates.
 */
#include "keel/cli.h"

static const char *const required[] = {"node.id", NULL};

int main(int argc, char **argv)
{
    static const struct keel_cli_spec spec = {
        .name = "keel-worker",
        .summary = "the Keel worker: reads data shards, computes gradients, pushes updates",
        .required = required,
        .run = NULL,
    };

    return keel_cli_main(&spec, argc, argv);
}
