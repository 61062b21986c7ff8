/*
 * signals.c - synchronous signal handling for the daemons.
 */
#include <pthread.h>
#include <signal.h>
#include <string.h>

#include "keel/log.h"
#include "keel/signals.h"

static void daemon_set(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
}

void keel_signals_block(void)
{
    sigset_t set;

    daemon_set(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int keel_signals_wait(struct keel_tls *tls)
{
    struct keel_error err;
    sigset_t set;
    int sig;

    daemon_set(&set);
    for (;;) {
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig != SIGHUP) {
            KEEL_LOG_INFO("%s received: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
            return sig;
        }
        if (tls == NULL)
            continue;
        keel_error_init(&err);
        if (keel_tls_reload(tls, &err) == 0)
            KEEL_LOG_INFO("SIGHUP: certificates reloaded");
        else
            KEEL_LOG_ERROR("SIGHUP: keeping the current certificates: %s", err.msg);
    }
}
