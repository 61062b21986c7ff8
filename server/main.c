/*
 * main.c - keel-server: the Keel parameter server.
 */
#include "cli.h"
#include "server.h"

static const char *const required[] = {"node.id",  "node.data_dir", "tls.ca",
                                       "tls.cert", "tls.key",       NULL};

static int run(const struct keel_config *config, int argc, char **argv)
{
    return keel_server_run(config);
}

int main(int argc, char **argv)
{
    static const struct keel_cli_spec spec = {
        .name = "keel-server",
        .summary = "the Keel parameter server: holds key ranges, applies updates, stores snapshots",
        .required = required,
        .run = run,
    };

    return keel_cli_main(&spec, argc, argv);
}
