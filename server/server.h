/*
 * server.h - keel-server's job: serve the ranges it is primary of.
 *
 * Life of a server: open the store, listen (mutual TLS), register as
 * members/server/<id> with its address, watch the cluster's keys in etcd
 * (the assignment, the jobs, the live workers), and for the running job hold
 * the ranges the assignment makes it primary of:
 *  - PUSH: applied by the optimizer, exactly once per (shard, seq) and range;
 *    the update-log records are committed by the storage thread (group
 *    commit) and only then is the push acknowledged, so an ACK means the
 *    update is on disk;
 *  - PULL: answered when the job's consistency allows (BSP/SSP wait for the
 *    live workers' clocks; a dead worker leaves the clock set);
 *  - SHARD_READ: records of the datasets in its store;
 *  - a range it does not lead: ERROR KEEL_EREDIRECT with the assignment
 *    version, and the client refreshes and retries.
 * Snapshots of every held range are written every [server] snapshot_interval
 * and at shutdown; a restart restores each range from snapshot + log.
 */
#ifndef KEEL_SERVER_H
#define KEEL_SERVER_H

#include "keel/config.h"

/* Run until SIGTERM/SIGINT; returns a process exit code. */
int keel_server_run(const struct keel_config *config);

#endif
