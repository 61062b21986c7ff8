/*
 * signals.h - how a Keel daemon waits for its signals.
 *
 * keel_signals_block() is called in main() before any thread starts, so that
 * SIGHUP, SIGINT and SIGTERM are blocked in every thread; the main thread
 * then sits in keel_signals_wait(), which takes them synchronously (sigwait):
 * SIGHUP reloads the TLS certificates, CA and CRL (connections already open
 * stay as they are; new ones use the new files), SIGINT and SIGTERM return.
 * No code runs in a signal handler.
 */
#ifndef KEEL_SIGNALS_H
#define KEEL_SIGNALS_H

#include "keel/tls.h"

/* Block the daemon's signals in the calling thread and the threads it starts. */
void keel_signals_block(void);

/*
 * Wait for SIGINT or SIGTERM, reloading `tls` (may be NULL) on each SIGHUP.
 * Returns the signal that ended the wait.
 */
int keel_signals_wait(struct keel_tls *tls);

#endif
