/*
 * main.c - keel-worker: the Keel worker: reads data shards, computes gradients, pushes updates.
 */
#include "cli.h"
#include "worker.h"

static const char *const required[] = {"node.id", "tls.ca", "tls.cert", "tls.key", NULL};

static int run(const struct keel_config *config, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return keel_worker_run(config);
}

int main(int argc, char **argv)
{
    static const struct keel_cli_spec spec = {
        .name = "keel-worker",
        .summary = "the Keel worker: trains on the data shards leased to it, pulling parameters "
                   "from and pushing gradients to the servers",
        .required = required,
        .run = run,
    };

    return keel_cli_main(&spec, argc, argv);
}
