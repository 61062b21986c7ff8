/*
 * signals.c - signal handling for the daemons.
 *
 * The handler only writes the signal's number into a pipe (async-signal-
 * safe); keel_signals_wait() reads the pipe on the main thread and does the
 * work there.  A handler, rather than sigwait() on signals blocked in every
 * thread, because threads we do not create (a sanitizer's, a library's) do
 * not have them blocked and would take the default action.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "signals.h"

static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;

    if (write(sig_pipe[1], &b, 1) < 0) {
        /* the pipe is full of signals already: this one adds nothing */
    }
    errno = saved;
}

void keel_signals_block(void)
{
    struct sigaction sa;

    if (sig_pipe[0] < 0 && pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        KEEL_LOG_ERROR("cannot make the signal pipe: %s", strerror(errno));
        return;
    }
    /* The read end blocks; the handler's write end must never block. */
    fcntl(sig_pipe[0], F_SETFL, fcntl(sig_pipe[0], F_GETFL) & ~O_NONBLOCK);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int keel_signals_wait(struct keel_tls *tls)
{
    struct keel_error err;
    unsigned char b;
    ssize_t n;

    for (;;) {
        n = read(sig_pipe[0], &b, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != 1) {
            KEEL_LOG_ERROR("signal pipe failed: %s: stopping", n < 0 ? strerror(errno) : "EOF");
            return SIGTERM;
        }
        if (b != SIGHUP) {
            KEEL_LOG_INFO("%s received: stopping", b == SIGINT ? "SIGINT" : "SIGTERM");
            return b;
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
