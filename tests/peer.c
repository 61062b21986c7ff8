/*
 * peer.c - keel-test-peer: a node that serves the transport's test handler,
 * for tests that need a real process to kill, restart or send SIGHUP to.
 *
 *   keel-test-peer --config NODE.ini [--set ...]
 *
 * It listens on [node] listen, prints "port N" on stdout once listening,
 * reloads its certificates on SIGHUP and stops on SIGTERM.  The handler
 * (tests/peer_handler.c) answers PUSH with ACK, PULL with zero rows, ADMIN by
 * echoing its payload, and refuses the rest.
 */
#include <stdio.h>

#include "cli.h"
#include "log.h"
#include "net.h"
#include "signals.h"
#include "peer_handler.h"

static int run(const struct keel_config *config, int argc, char **argv)
{
    struct keel_listener_options o;
    struct keel_listener *l;
    struct keel_tls_files files = keel_tls_files_of(config);
    struct keel_tls *tls;
    struct keel_error err;
    struct peer_handler h = {0};

    keel_error_init(&err);
    keel_signals_block();
    if (keel_tls_new(&files, &tls, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        return KEEL_EXIT_CONFIG;
    }
    keel_listener_options_of(config, &o);
    o.handler = peer_handler_fn;
    o.handler_ctx = &h;
    if (keel_listener_start(&o, tls, &l, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        keel_tls_free(tls);
        return KEEL_EXIT_FAILURE;
    }
    printf("port %u\n", keel_listener_port(l));
    fflush(stdout);
    keel_signals_wait(tls);
    keel_listener_stop(l);
    keel_tls_free(tls);
    return KEEL_EXIT_OK;
}

int main(int argc, char **argv)
{
    static const struct keel_cli_spec spec = {
        .name = "keel-test-peer",
        .summary = "serve the transport test handler (for tests only)",
        .run = run,
    };

    return keel_cli_main(&spec, argc, argv);
}
