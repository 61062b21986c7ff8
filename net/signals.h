/*
 * signals.h - how a Keel daemon waits for its signals.
 *
 * keel_signals_block() is called in main() before any thread starts: it
 * installs a handler for SIGHUP, SIGINT and SIGTERM that only writes the
 * signal into a pipe.  The main thread then sits in keel_signals_wait(),
 * which reads the pipe and does the work outside the handler: SIGHUP
 * reloads the TLS certificates, CA and CRL (connections already open stay
 * as they are; new ones use the new files), SIGINT and SIGTERM return.
 */
#ifndef KEEL_SIGNALS_H
#define KEEL_SIGNALS_H

#include "tls.h"

/* Route the daemon's signals to keel_signals_wait(); call once, early in main(). */
void keel_signals_block(void);

/*
 * Wait for SIGINT or SIGTERM, reloading `tls` (may be NULL) on each SIGHUP.
 * Returns the signal that ended the wait.
 */
int keel_signals_wait(struct keel_tls *tls);

#endif
