/*
 * main.c - keel-coordinator: the Keel coordinator: leader election, range assignment, job control.
 *
 * Registers as a member, campaigns, leads while elected (see coordinator.h),
 * and on SIGTERM or SIGINT resigns, revokes its lease and exits 0.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "coordinator.h"
#include "etcd.h"
#include "leader.h"
#include "log.h"

static const char *const required[] = {"node.id", NULL};

static keel_coordinator *volatile running;
static volatile sig_atomic_t stop_early;

/*
 * A handler rather than a sigwait thread: a signal may be delivered to any
 * thread that does not block it, and some threads are not ours to block
 * (libraries', sanitizers').  keel_coordinator_stop() is async-signal-safe:
 * an atomic store and a write() to an eventfd.
 */
static void on_signal(int sig)
{
    (void)sig;
    stop_early = 1;
    if (running)
        keel_coordinator_stop(running);
}

static int run(const struct keel_config *config, int argc, char **argv)
{
    struct keel_etcd_options eo;
    struct keel_coordinator_opts co = {0};
    struct keel_leader_opts lo = {0};
    struct keel_coordinator_hooks hooks;
    struct keel_error err;
    struct sigaction sa;
    keel_coordinator *coord = NULL;
    keel_leader *leader = NULL;
    keel_etcd *etcd = NULL;
    int rc;

    if (argc > 0) {
        fprintf(stderr, "keel-coordinator: unexpected argument '%s'\n", argv[0]);
        return KEEL_EXIT_USAGE;
    }
    keel_error_init(&err);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    keel_etcd_options_from_config(config, &eo);
    if ((rc = keel_etcd_new(&eo, &etcd, &err)) != 0)
        goto fail;
    co.etcd = etcd;
    co.cluster = config->cluster_name;
    co.id = config->node_id;
    co.address = config->listen;
    co.lease_ttl_s = (int64_t)((config->etcd_lease_ttl_ms + 999) / 1000);
    co.heartbeat_ms = config->coordinator_heartbeat_ms;
    /* A restart right after a crash finds its old registration until that lease expires. */
    co.join_wait_ms = (uint64_t)co.lease_ttl_s * 1000 + 2000;
    lo.etcd = etcd;
    lo.cluster = config->cluster_name;
    lo.settle_ms = 2 * (uint64_t)co.lease_ttl_s * 1000;
    lo.restore_wait_ms = config->coordinator_restore_wait_ms;
    if ((rc = keel_leader_new(&lo, &leader, &err)) != 0)
        goto fail;
    keel_leader_hooks(leader, &hooks);
    if ((rc = keel_coordinator_new(&co, &hooks, &coord, &err)) != 0)
        goto fail;
    keel_leader_attach(leader, coord);
    KEEL_LOG_INFO("coordinator '%s' of cluster '%s' starting (etcd %s, lease TTL %lld s)",
                  config->node_id, config->cluster_name, config->etcd_endpoints,
                  (long long)co.lease_ttl_s);
    running = coord;
    if (stop_early)
        keel_coordinator_stop(coord);
    rc = keel_coordinator_run(coord, &err);
    running = NULL;
    keel_leader_free(leader);
    keel_coordinator_free(coord);
    keel_etcd_free(etcd);
    if (rc != 0) {
        fprintf(stderr, "keel-coordinator: %s\n", err.msg);
        return KEEL_EXIT_FAILURE;
    }
    KEEL_LOG_INFO("coordinator '%s' stopped", config->node_id);
    return KEEL_EXIT_OK;
fail:
    keel_leader_free(leader);
    keel_coordinator_free(coord);
    keel_etcd_free(etcd);
    fprintf(stderr, "keel-coordinator: %s\n", err.msg);
    return KEEL_EXIT_FAILURE;
}

int main(int argc, char **argv)
{
    static const struct keel_cli_spec spec = {
        .name = "keel-coordinator",
        .summary = "the Keel coordinator: leader election, range assignment, job control",
        .required = required,
        .run = run,
    };

    return keel_cli_main(&spec, argc, argv);
}
