/*
 * config.c - the option table, INI loading (inih), overrides and the dump.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ini.h>

#include "alloc.h"
#include "keel/config.h"
#include "keel/id.h"
#include "log.h"

enum opt_type {
    OPT_STRING,   /* any text */
    OPT_ID,       /* node or cluster id: [A-Za-z0-9_-]{1,64} */
    OPT_ADDR,     /* host:port */
    OPT_URLS,     /* comma-separated http:// or https:// URLs */
    OPT_UINT,     /* unsigned, bounded */
    OPT_SIZE,     /* bytes, with optional K/M/G suffix (powers of 1024) */
    OPT_DURATION, /* milliseconds, with suffix ms, s, m or h */
    OPT_LOGLEVEL, /* error|warn|info|debug|trace */
};

struct option_desc {
    const char *section;
    const char *key;
    enum opt_type type;
    size_t offset;
    const char *defval;
    uint64_t min, max; /* numeric bounds, inclusive */
    const char *help;
};

#define F(field) offsetof(struct keel_config, field)
#define KIB      (UINT64_C(1) << 10)
#define MIB      (UINT64_C(1) << 20)
#define GIB      (UINT64_C(1) << 30)
#define HOUR_MS  (UINT64_C(3600) * 1000)

/* The one table of options; keep it in the order of struct keel_config. */
static const struct option_desc options[] = {
    {"cluster", "name", OPT_ID, F(cluster_name), "keel", 0, 0,
     "cluster name; etcd keys live under /keel/<name>/"},
    {"cluster", "etcd", OPT_URLS, F(etcd_endpoints), "http://127.0.0.1:2379", 0, 0,
     "etcd endpoints, comma-separated"},
    {"node", "id", OPT_ID, F(node_id), "", 0, 0, "this node's id, unique within its role"},
    {"node", "data_dir", OPT_STRING, F(data_dir), "", 0, 0,
     "directory for the LMDB store and local state"},
    {"node", "listen", OPT_ADDR, F(listen), "127.0.0.1:0", 0, 0,
     "address to accept connections on (port 0 picks a free port)"},
    {"tls", "ca", OPT_STRING, F(tls_ca), "", 0, 0, "cluster CA certificate (PEM)"},
    {"tls", "cert", OPT_STRING, F(tls_cert), "", 0, 0, "this node's certificate (PEM)"},
    {"tls", "key", OPT_STRING, F(tls_key), "", 0, 0, "this node's private key (PEM)"},
    {"tls", "crl", OPT_STRING, F(tls_crl), "", 0, 0,
     "certificate revocation list (PEM); empty for none"},
    {"net", "io_threads", OPT_UINT, F(io_threads), "2", 1, 64,
     "I/O threads, each with its own event loop"},
    {"net", "max_connections", OPT_UINT, F(max_connections), "1024", 1, 1000000,
     "connections accepted at once; more are closed at accept. The open-file limit is raised to "
     "fit them (plus 64), or this lowered to fit the hard limit, with a warning"},
    {"net", "max_frame_size", OPT_SIZE, F(max_frame_size), "64M", 4 * KIB, 1 * GIB,
     "largest frame accepted, header included"},
    {"net", "handshake_timeout", OPT_DURATION, F(handshake_timeout_ms), "10s", 100, HOUR_MS,
     "time allowed for a TLS handshake"},
    {"net", "idle_timeout", OPT_DURATION, F(idle_timeout_ms), "60s", 100, 24 * HOUR_MS,
     "a connection silent mid-frame this long is closed"},
    {"net", "request_timeout", OPT_DURATION, F(request_timeout_ms), "30s", 10, HOUR_MS,
     "time a client waits for a reply before giving up on a request"},
    {"server", "group_commit", OPT_DURATION, F(server_group_commit_ms), "0ms", 0, 1000,
     "longest a record waits for more before a commit; 0: commit at once (records gather "
     "while a commit is in flight); a full batch (1,024 entries or 64 MiB) never waits"},
    {"server", "snapshot_interval", OPT_DURATION, F(server_snapshot_interval_ms), "30s", 100,
     24 * HOUR_MS, "time between snapshots of a server's ranges"},
    {"server", "snapshot_log_factor", OPT_UINT, F(server_snapshot_log_factor), "1", 0, 1000000,
     "take the snapshots early once the update log written since the last ones is this many "
     "times the state they hold (at least 1 MiB); 0: every snapshot_interval only"},
    {"server", "checkpoint_key", OPT_STRING, F(server_checkpoint_key), "", 0, 0,
     "cluster key file that signs checkpoints (keelctl checkpoint keygen); empty: no checkpoints"},
    {"server", "checkpoint_keep", OPT_UINT, F(server_checkpoint_keep), "10", 1, 1000000,
     "checkpoints a server keeps in its store; older ones are pruned"},
    {"log", "level", OPT_LOGLEVEL, F(log_level), "info", 0, 0, "error, warn, info, debug or trace"},
    {"etcd", "ca", OPT_STRING, F(etcd_ca), "", 0, 0,
     "CA certificate that signed etcd's certificate (PEM); empty: [tls] ca"},
    {"etcd", "cert", OPT_STRING, F(etcd_cert), "", 0, 0,
     "client certificate presented to etcd (PEM); empty: [tls] cert"},
    {"etcd", "key", OPT_STRING, F(etcd_key), "", 0, 0,
     "private key of [etcd] cert (PEM); empty: [tls] key"},
    {"etcd", "connect_timeout", OPT_DURATION, F(etcd_connect_timeout_ms), "2s", 10, HOUR_MS,
     "time allowed to connect to one etcd endpoint"},
    {"etcd", "request_timeout", OPT_DURATION, F(etcd_request_timeout_ms), "5s", 10, HOUR_MS,
     "time allowed for one etcd request and its reply"},
    {"etcd", "retry_timeout", OPT_DURATION, F(etcd_retry_timeout_ms), "10s", 0, HOUR_MS,
     "how long an etcd call keeps retrying unavailable endpoints"},
    {"etcd", "lease_ttl", OPT_DURATION, F(etcd_lease_ttl_ms), "10s", 2000, HOUR_MS,
     "TTL of this node's etcd lease (membership, leadership); rounded up to seconds"},
    {"coordinator", "heartbeat", OPT_DURATION, F(coordinator_heartbeat_ms), "5s", 50, HOUR_MS,
     "interval of the leader's fenced heartbeat and work tick"},
    {"coordinator", "restore_wait", OPT_DURATION, F(coordinator_restore_wait_ms), "60s", 0,
     24 * HOUR_MS,
     "how long a range whose in-sync replicas are all dead waits for one to return before it is "
     "restored from the newest state a live server's store holds, and the job rewound to it"},
    {"worker", "log_every", OPT_UINT, F(worker_log_every), "100", 1, 1000000,
     "batches between a worker's progress lines in the log"},
    {"worker", "progress_interval", OPT_DURATION, F(worker_progress_interval_ms), "1s", 0, HOUR_MS,
     "least time between a worker's progress reports to etcd (0: after every batch)"},
    {"worker", "retry_timeout", OPT_DURATION, F(worker_retry_timeout_ms), "2m", 100, 24 * HOUR_MS,
     "how long a worker retries a request before it logs an error and starts over from its last "
     "acknowledged batch"},
};

#define NOPTIONS (sizeof(options) / sizeof(options[0]))

static const struct option_desc *find_option(const char *section, const char *key)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (strcmp(options[i].section, section) == 0 && strcmp(options[i].key, key) == 0)
            return &options[i];
    return NULL;
}

static int section_known(const char *section)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (strcmp(options[i].section, section) == 0)
            return 1;
    return 0;
}

/* Parse a decimal uint64 with an optional suffix from `units` (NULL-terminated
 * pairs of suffix and multiplier).  Returns 0 or -1. */
struct unit {
    const char *suffix;
    uint64_t mult;
};

static int parse_scaled(const char *s, const struct unit *units, uint64_t *out)
{
    char *end;
    unsigned long long v;
    uint64_t r;

    if (!isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    if (*end == '\0') {
        *out = v;
        return 0;
    }
    for (const struct unit *u = units; u && u->suffix; u++) {
        if (strcasecmp(end, u->suffix) == 0) {
            if (__builtin_mul_overflow((uint64_t)v, u->mult, &r))
                return -1;
            *out = r;
            return 0;
        }
    }
    return -1;
}

static const struct unit size_units[] = {{"B", 1},    {"K", KIB},   {"KB", KIB},  {"KiB", KIB},
                                         {"M", MIB},  {"MB", MIB},  {"MiB", MIB}, {"G", GIB},
                                         {"GB", GIB}, {"GiB", GIB}, {NULL, 0}};

static const struct unit duration_units[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", HOUR_MS}, {NULL, 0}};

static int valid_addr(const char *s)
{
    const char *colon = strrchr(s, ':');
    char *end;
    unsigned long port;

    if (colon == NULL || colon == s)
        return 0;
    errno = 0;
    port = strtoul(colon + 1, &end, 10);
    return colon[1] != '\0' && *end == '\0' && errno == 0 && port <= 65535;
}

static int valid_urls(const char *s)
{
    const char *p = s;

    if (*s == '\0')
        return 0;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        size_t scheme = strncmp(p, "http://", 7) == 0 ? 7 : strncmp(p, "https://", 8) == 0 ? 8 : 0;

        if (scheme == 0 || n <= scheme)
            return 0;
        if (!comma)
            break;
        p = comma + 1;
        if (*p == '\0')
            return 0;
    }
    return 1;
}

static int bad_value(const struct option_desc *o, const char *value, struct keel_error *err,
                     const char *why)
{
    return keel_err_set(err, KEEL_ECONFIG, "[%s] %s: %s, got '%s'", o->section, o->key, why, value);
}

static int set_value(struct keel_config *c, const struct option_desc *o, const char *value,
                     struct keel_error *err)
{
    void *field = (char *)c + o->offset;
    uint64_t v;
    int level;

    switch (o->type) {
    case OPT_ID:
        if (*value != '\0' && !keel_id_valid(value))
            return bad_value(o, value, err, "must be 1-64 of A-Z a-z 0-9 - _");
        goto set_string;
    case OPT_ADDR:
        if (!valid_addr(value))
            return bad_value(o, value, err, "must be host:port with a port of 0-65535");
        goto set_string;
    case OPT_URLS:
        if (!valid_urls(value))
            return bad_value(o, value, err, "must be comma-separated http:// or https:// URLs");
        goto set_string;
    case OPT_STRING:
    set_string:
        free(*(char **)field);
        *(char **)field = keel_strdup(value);
        return 0;
    case OPT_UINT:
    case OPT_SIZE:
    case OPT_DURATION:
        if (parse_scaled(value,
                         o->type == OPT_SIZE       ? size_units
                         : o->type == OPT_DURATION ? duration_units
                                                   : NULL,
                         &v) != 0) {
            return bad_value(o, value, err,
                             o->type == OPT_SIZE       ? "must be a size such as 512K or 64M"
                             : o->type == OPT_DURATION ? "must be a duration such as 500ms or 10s"
                                                       : "must be a non-negative integer");
        }
        if (v < o->min || v > o->max)
            return keel_err_set(err, KEEL_ECONFIG,
                                "[%s] %s: must be between %" PRIu64 " and %" PRIu64 "%s, got '%s'",
                                o->section, o->key, o->min, o->max,
                                o->type == OPT_SIZE       ? " bytes"
                                : o->type == OPT_DURATION ? " ms"
                                                          : "",
                                value);
        if (o->type == OPT_UINT)
            *(unsigned *)field = (unsigned)v;
        else
            *(uint64_t *)field = v;
        return 0;
    case OPT_LOGLEVEL:
        level = keel_log_level_parse(value);
        if (level < 0)
            return bad_value(o, value, err, "must be error, warn, info, debug or trace");
        *(int *)field = level;
        return 0;
    }
    return keel_err_set(err, KEEL_EINVAL, "[%s] %s: unhandled option type", o->section, o->key);
}

void keel_config_init(struct keel_config *c)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < NOPTIONS; i++) {
        struct keel_error e;

        keel_error_init(&e);
        /* The defaults are ours: one that fails to parse is a bug in the table. */
        if (set_value(c, &options[i], options[i].defval, &e) != 0) {
            fprintf(stderr, "keel: bad default for %s\n", e.msg);
            abort();
        }
    }
}

void keel_config_release(struct keel_config *c)
{
    for (size_t i = 0; i < NOPTIONS; i++) {
        const struct option_desc *o = &options[i];

        if (o->type == OPT_STRING || o->type == OPT_ID || o->type == OPT_ADDR ||
            o->type == OPT_URLS) {
            char **field = (char **)((char *)c + o->offset);
            free(*field);
            *field = NULL;
        }
    }
}

/* Set option `section`.`key` from the text `value`; KEEL_ECONFIG when unknown or bad. */
static int set_option(struct keel_config *c, const char *section, const char *key,
                      const char *value, struct keel_error *err)
{
    const struct option_desc *o = find_option(section, key);

    if (o == NULL) {
        if (!section_known(section))
            return keel_err_set(err, KEEL_ECONFIG, "unknown section [%s] (key '%s')", section, key);
        return keel_err_set(err, KEEL_ECONFIG, "unknown key '%s' in section [%s]", key, section);
    }
    return set_value(c, o, value, err);
}

int keel_config_set(struct keel_config *c, const char *assignment, struct keel_error *err)
{
    const char *dot = strchr(assignment, '.');
    const char *eq = strchr(assignment, '=');
    char section[64], key[64];
    size_t sn, kn;

    if (dot == NULL || eq == NULL || dot > eq)
        return keel_err_set(err, KEEL_ECONFIG, "override '%s' is not section.key=value",
                            assignment);
    sn = (size_t)(dot - assignment);
    kn = (size_t)(eq - dot - 1);
    if (sn == 0 || kn == 0 || sn >= sizeof(section) || kn >= sizeof(key))
        return keel_err_set(err, KEEL_ECONFIG, "override '%s' is not section.key=value",
                            assignment);
    memcpy(section, assignment, sn);
    section[sn] = '\0';
    memcpy(key, dot + 1, kn);
    key[kn] = '\0';
    return set_option(c, section, key, eq + 1, err);
}

struct load_ctx {
    struct keel_config *config;
    struct keel_error *err;
    int failed;
};

/* inih callback: returns 0 to make ini_parse() report this line. */
static int on_ini_value(void *user, const char *section, const char *name, const char *value)
{
    struct load_ctx *ctx = user;

    if (ctx->failed)
        return 0;
    if (set_option(ctx->config, section, name, value, ctx->err) != 0) {
        ctx->failed = 1;
        return 0;
    }
    return 1;
}

int keel_config_load(struct keel_config *c, const char *path, struct keel_error *err)
{
    struct load_ctx ctx = {c, err, 0};
    FILE *f;
    int line;

    f = fopen(path, "r");
    if (f == NULL) {
        int e = errno;
        return keel_err_set(err, -e, "cannot open config '%s': %s", path, strerror(e));
    }
    line = ini_parse_file(f, on_ini_value, &ctx);
    fclose(f);
    if (line == 0)
        return 0;
    if (ctx.failed)
        return keel_err_prefix(err, KEEL_ECONFIG, "%s:%d", path, line);
    return keel_err_set(err, KEEL_ECONFIG,
                        "%s:%d: syntax error (expected [section] or key = value)", path, line);
}

int keel_config_validate(const struct keel_config *c, const char *const *required,
                         struct keel_error *err)
{
    for (; required && *required; required++) {
        const char *dot = strchr(*required, '.');
        const struct option_desc *o = NULL;

        for (size_t i = 0; dot && i < NOPTIONS; i++)
            if (strncmp(options[i].section, *required, (size_t)(dot - *required)) == 0 &&
                options[i].section[dot - *required] == '\0' && strcmp(options[i].key, dot + 1) == 0)
                o = &options[i];
        if (o == NULL)
            return keel_err_set(err, KEEL_EINVAL, "no option '%s' to require", *required);
        if (**(char *const *)((const char *)c + o->offset) == '\0')
            return keel_err_set(err, KEEL_ECONFIG, "[%s] %s: must be set", o->section, o->key);
    }
    if (c->tls_cert[0] != '\0' && c->tls_key[0] == '\0')
        return keel_err_set(err, KEEL_ECONFIG, "[tls] key: must be set when [tls] cert is");
    if (c->tls_key[0] != '\0' && c->tls_cert[0] == '\0')
        return keel_err_set(err, KEEL_ECONFIG, "[tls] cert: must be set when [tls] key is");
    if (c->etcd_cert[0] != '\0' && c->etcd_key[0] == '\0')
        return keel_err_set(err, KEEL_ECONFIG, "[etcd] key: must be set when [etcd] cert is");
    if (c->etcd_key[0] != '\0' && c->etcd_cert[0] == '\0')
        return keel_err_set(err, KEEL_ECONFIG, "[etcd] cert: must be set when [etcd] key is");
    return 0;
}

static void format_value(const struct keel_config *c, const struct option_desc *o, char *out,
                         size_t n)
{
    const void *field = (const char *)c + o->offset;

    switch (o->type) {
    case OPT_UINT:
        snprintf(out, n, "%u", *(const unsigned *)field);
        break;
    case OPT_SIZE:
    case OPT_DURATION:
        snprintf(out, n, "%" PRIu64 "%s", *(const uint64_t *)field,
                 o->type == OPT_DURATION ? "ms" : "");
        break;
    case OPT_LOGLEVEL:
        snprintf(out, n, "%s", keel_log_level_name(*(const int *)field));
        break;
    default:
        snprintf(out, n, "%s", *(char *const *)field);
        break;
    }
}

void keel_config_dump(const struct keel_config *c, FILE *out)
{
    const char *section = "";
    char value[1024];

    for (size_t i = 0; i < NOPTIONS; i++) {
        const struct option_desc *o = &options[i];

        if (strcmp(section, o->section) != 0) {
            fprintf(out, "%s[%s]\n", i ? "\n" : "", o->section);
            section = o->section;
        }
        format_value(c, o, value, sizeof(value));
        fprintf(out, "# %s (default: %s)\n%s = %s\n", o->help, o->defval[0] ? o->defval : "empty",
                o->key, value);
    }
}

void keel_config_describe(FILE *out)
{
    fprintf(out, "| option | default | meaning |\n|---|---|---|\n");
    for (size_t i = 0; i < NOPTIONS; i++) {
        const struct option_desc *o = &options[i];

        if (o->defval[0] == '\0')
            fprintf(out, "| `[%s] %s` | (empty) | %s |\n", o->section, o->key, o->help);
        else
            fprintf(out, "| `[%s] %s` | `%s` | %s |\n", o->section, o->key, o->defval, o->help);
    }
}
