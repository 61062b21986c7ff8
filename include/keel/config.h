/*
 * config.h - node configuration: one table of options, an INI file, overrides.
 *
 * Every option Keel reads lives in one table (config.c) with its section, key,
 * type, default, bounds and a one-line description.  The same table drives
 * parsing, validation, `--dump-config` and docs/configuration.md, so an option
 * cannot exist in one place and not another.
 *
 * Order of precedence, later wins: the table's defaults, the INI file, then
 * command-line overrides ("section.key=value", in the order given).
 *
 * Invariants of struct keel_config after keel_config_init():
 *  - every string field is non-NULL (possibly ""), owned by the struct and
 *    freed by keel_config_release();
 *  - every numeric field is within its option's bounds.
 * Not thread-safe while being loaded; read-only and shareable afterwards.
 */
#ifndef KEEL_CONFIG_H
#define KEEL_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "keel/err.h"

struct keel_config {
    /* [cluster] */
    char *cluster_name;   /* etcd prefix /keel/<name>/ */
    char *etcd_endpoints; /* comma-separated URLs */
    /* [node] */
    char *node_id;  /* this node's id: [A-Za-z0-9_-]{1,64} */
    char *data_dir; /* LMDB environment and local state */
    char *listen;   /* host:port to accept connections on */
    /* [tls] */
    char *tls_ca;   /* cluster CA certificate (PEM) */
    char *tls_cert; /* this node's certificate (PEM) */
    char *tls_key;  /* this node's private key (PEM) */
    char *tls_crl;  /* optional CRL (PEM), "" for none */
    /* [net] */
    unsigned io_threads;
    unsigned max_connections;
    uint64_t max_frame_size; /* bytes, header included */
    uint64_t handshake_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t request_timeout_ms;
    /* [server] */
    uint64_t server_group_commit_ms;      /* longest wait before the log is committed */
    uint64_t server_snapshot_interval_ms; /* time between range snapshots */
    uint64_t server_snapshot_log_factor;  /* snapshots early once the log is this x the state */
    char *server_checkpoint_key;          /* key file signing checkpoints; "" = none taken */
    unsigned server_checkpoint_keep;      /* checkpoints kept in the store */
    /* [log] */
    int log_level; /* enum keel_log_level */
    /* [etcd] */
    char *etcd_ca;   /* CA of etcd's certificate; "" = [tls] ca */
    char *etcd_cert; /* client certificate for etcd; "" = [tls] cert */
    char *etcd_key;  /* its key; "" = [tls] key */
    uint64_t etcd_connect_timeout_ms;
    uint64_t etcd_request_timeout_ms;
    uint64_t etcd_retry_timeout_ms;
    uint64_t etcd_lease_ttl_ms; /* a node's lease; whole seconds */
    /* [coordinator] */
    uint64_t coordinator_heartbeat_ms;    /* leader's fenced heartbeat and work tick */
    uint64_t coordinator_restore_wait_ms; /* a range with no in-sync replica alive, from a store */
    /* [worker] */
    unsigned worker_log_every;            /* batches between progress lines in the log */
    uint64_t worker_progress_interval_ms; /* least time between progress reports to etcd */
    uint64_t worker_retry_timeout_ms;     /* how long a batch's requests keep being retried */
};

/* Fill `c` with every option's default. */
void keel_config_init(struct keel_config *c);

/* Free the strings owned by `c`; `c` may be initialized again afterwards. */
void keel_config_release(struct keel_config *c);

/*
 * Read the INI file at `path` into `c` (which must be initialized).
 * Errors: -errno when the file cannot be opened; KEEL_ECONFIG for a syntax
 * error, an unknown section or key, or a bad value, with a message naming the
 * file, line and the option ("a.ini:7: [net] io_threads: must be between 1
 * and 64, got '0'").  On error `c` may hold some values from the file.
 */
int keel_config_load(struct keel_config *c, const char *path, struct keel_error *err);

/*
 * Apply one override "section.key=value" (as given after --set).
 * Errors: KEEL_ECONFIG naming the option, as for keel_config_load().
 */
int keel_config_set(struct keel_config *c, const char *assignment, struct keel_error *err);

/*
 * Checks that involve more than one option or the role that will run:
 * `required` is a NULL-terminated list of "section.key" that must be non-empty.
 * Errors: KEEL_ECONFIG naming the first option that fails.
 */
int keel_config_validate(const struct keel_config *c, const char *const *required,
                         struct keel_error *err);

/* Write the effective configuration as an INI file, with each option's help. */
void keel_config_dump(const struct keel_config *c, FILE *out);

/* Write the option table as a Markdown table (section, key, default, meaning). */
void keel_config_describe(FILE *out);

#endif
