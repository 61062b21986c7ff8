/*
 * main.c - keel-server: the Keel parameter server: holds key ranges, applies updates, stores
 * snapshots.
 */
#include "keel/cli.h"

static const char *const required[] = {"node.id", NULL};

int main(int argc, char **argv)
{
    static const struct keel_cli_spec spec = {
        .name = "keel-server",
        .summary = "the Keel parameter server: holds key ranges, applies updates, stores snapshots",
        .required = required,
        .run = NULL,
    };

    return keel_cli_main(&spec, argc, argv);
}
