/*
 * probe.h - is a server's port closed?  A hint for faster failover.
 *
 * A worker that gets no answer from a server it is not connected to writes
 * suspects/<id>.  The leader then tries a TCP connection to the address the
 * server registered: a refusal (the port is closed: no process listens) means
 * the server is gone, and the leader revokes its lease at once instead of
 * waiting for it to expire.  Anything else (a connection, a time-out, an
 * unreachable host) proves nothing and changes nothing: correctness never
 * depends on this, the lease TTL bounds failover whatever the probe says.
 */
#ifndef KEEL_PROBE_H
#define KEEL_PROBE_H

/*
 * Try "host:port" (numeric IPv4) for at most timeout_ms: 1 when the
 * connection was refused, 0 otherwise (connected, timed out, unreachable, a
 * bad address).
 */
int keel_probe_refused(const char *address, int timeout_ms);

#endif
