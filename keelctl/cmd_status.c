/*
 * cmd_status.c - `keelctl status`: the cluster as etcd sees it, read in one
 * request: the coordinators' leader and its epoch, the members by role with
 * their age and address, the range assignment (per server: primaries,
 * backups, backups still syncing and the largest lag; per range: primary,
 * in-sync and syncing backups, term and the primary's LSN, from the servers'
 * replica reports), and the jobs with their progress.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "alloc.h"
#include "keel/assign.h"
#include "cli.h"
#include "clock.h"
#include "keel/cstate.h"
#include "keel/proto.h"
#include "keel/replicas.h"
#include "keelctl.h"
#include "keys.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: keelctl [--config FILE] status [--json]\n"
                 "The cluster ([cluster] name) as etcd ([cluster] etcd) holds it: the leader and\n"
                 "its epoch, members by role with age and address, the assignment, jobs with\n"
                 "their progress.  Fails within about a second, saying so, when etcd is down.\n"
                 "\n"
                 "Per server: PRIMARIES and BACKUPS (ranges held), SYNCING (backups still copying\n"
                 "the range, not yet in sync) and LAG (the most updates it is behind a primary\n"
                 "over the ranges it backs, from the servers' replica reports; - without one).\n"
                 "With replication above 1, RANGES lists each range's primary, in-sync backups,\n"
                 "syncing backups, term and the primary's reported LSN; consecutive ranges alike\n"
                 "but for the LSN share a line (0-3), with the LSNs as LOW..HIGH.\n"
                 "\n"
                 "  -j, --json   print one JSON object: leader, epoch, members, ranges, servers,\n"
                 "               assignment, jobs\n"
                 "  -h, --help   show this help\n");
}

/* The leader record's address and heartbeat, when it is the elected leader's own. */
struct leader_info {
    const char *id; /* NULL when nobody leads */
    int64_t epoch;
    char address[128];
    int64_t heartbeat_ms, elected_ms; /* 0 when unknown */
};

static void leader_of(const struct keel_cstate *s, struct leader_info *li)
{
    json_t *rec, *v;

    memset(li, 0, sizeof(*li));
    if (s->leader == NULL)
        return;
    li->id = (const char *)s->leader->value;
    li->epoch = s->leader->create_revision;
    if (s->leader_record == NULL)
        return;
    rec = json_loadb((const char *)s->leader_record->value, s->leader_record->value_len, 0, NULL);
    if (json_is_object(rec) && json_is_string(json_object_get(rec, "id")) &&
        strcmp(json_string_value(json_object_get(rec, "id")), li->id) == 0 &&
        json_is_integer(json_object_get(rec, "epoch")) &&
        json_integer_value(json_object_get(rec, "epoch")) == li->epoch) {
        if (json_is_string(v = json_object_get(rec, "address")))
            snprintf(li->address, sizeof(li->address), "%s", json_string_value(v));
        if (json_is_integer(v = json_object_get(rec, "heartbeat_ms")))
            li->heartbeat_ms = json_integer_value(v);
        if (json_is_integer(v = json_object_get(rec, "elected_ms")))
            li->elected_ms = json_integer_value(v);
    }
    json_decref(rec);
}

/*
 * The servers' replica reports, one slot per server of the table: a report
 * counts when its server is registered and the report's incarnation is that
 * registration's (an older one is from before a restart).
 */
struct reports {
    const keel_assign *a;
    struct keel_replica_report *r; /* keel_assign_server_count(a) entries */
    unsigned char *ok;             /* ok[i]: r[i] holds server i's current report */
};

static void reports_read(const struct keel_cstate *s, const keel_assign *a, struct reports *out)
{
    size_t nsrv, n = keel_assign_server_count(a);
    const struct keel_member_info *srv = keel_cstate_members(s, "server", &nsrv);

    out->a = a;
    out->r = keel_calloc(n + 1, sizeof(*out->r));
    out->ok = keel_calloc(n + 1, 1);
    for (size_t i = 0; i < s->kvs.n; i++) {
        const struct keel_etcd_kv *kv = &s->kvs.kvs[i];
        struct keel_replica_report rep;
        struct keel_key k;
        long x;
        size_t m;

        if (keel_key_parse_rel(keel_cstate_rel(s, kv), &k) != KEEL_KEY_REPLICAS ||
            (x = keel_assign_find_server(a, k.id)) < 0)
            continue;
        for (m = 0; m < nsrv && strcmp(srv[m].id, k.id) != 0; m++)
            ;
        if (m == nsrv || keel_replica_report_decode(kv->value, kv->value_len, &rep, NULL) != 0 ||
            rep.incarnation != srv[m].incarnation)
            continue; /* gone, unreadable, or from before a restart */
        out->r[x] = rep;
        out->ok[x] = 1;
    }
}

static void reports_release(struct reports *r)
{
    free(r->r);
    free(r->ok);
}

/* The current report of server `id`, or NULL. */
static const struct keel_replica_report *report_of(const struct reports *rep, const char *id)
{
    long x = keel_assign_find_server(rep->a, id);

    return x >= 0 && rep->ok[x] ? &rep->r[x] : NULL;
}

/* Whether the primary of `range` reports it restoring: pushes held until the shards rewind. */
static int restoring(const struct reports *rep, unsigned range)
{
    const char *p = keel_assign_primary(rep->a, range);
    const struct keel_replica_report *r = p ? report_of(rep, p) : NULL;

    return r != NULL && r->restoring[range] && r->terms[range] == keel_assign_term(rep->a, range);
}

/* The ranges restoring, "3, 17", into `out` (empty when none). */
static void restoring_text(const struct reports *rep, FILE *out)
{
    unsigned n = 0;

    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        if (restoring(rep, r))
            fprintf(out, "%s%u", n++ ? ", " : "\nrestoring   ranges ", r);
    if (n > 0)
        fprintf(out, ": restored from a store, pushes held until the leader rewinds the "
                     "shards\n");
}

/* The LSN of `range` its primary reports: 0 and *lsn set, or -1 when it reports none. */
static int primary_lsn(const struct reports *rep, unsigned range, uint64_t *lsn)
{
    const char *p = keel_assign_primary(rep->a, range);
    const struct keel_replica_report *r = p ? report_of(rep, p) : NULL;

    if (r == NULL || r->terms[range] == 0)
        return -1;
    *lsn = r->lsns[range];
    return 0;
}

/* What server `id` does as a backup. */
struct backup_info {
    unsigned syncing; /* ranges it backs whose copy is not in sync yet */
    int lag_known;    /* it reports, and some range it backs has a primary LSN (or it backs none) */
    uint64_t lag;     /* the largest primary LSN - its LSN over the ranges it backs */
};

static void backup_info(const struct reports *rep, const char *id, struct backup_info *bi)
{
    const struct keel_replica_report *mine = report_of(rep, id);
    unsigned backed = 0, measured = 0;

    memset(bi, 0, sizeof(*bi));
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        int pos = keel_assign_position(rep->a, r, id);
        uint64_t plsn, lsn;

        if (pos < 1)
            continue;
        backed++;
        if ((unsigned)pos >= keel_assign_insync(rep->a, r))
            bi->syncing++;
        if (mine == NULL || primary_lsn(rep, r, &plsn) != 0)
            continue;
        /* A range it does not hold yet counts from LSN 0: the whole range is to copy. */
        lsn = mine->terms[r] ? mine->lsns[r] : 0;
        if (plsn > lsn && plsn - lsn > bi->lag)
            bi->lag = plsn - lsn;
        measured++;
    }
    bi->lag_known = mine != NULL && (backed == 0 || measured > 0);
}

json_t *keelctl_status_json(const struct keel_config *config, const struct keel_cstate *s,
                            const keel_assign *a, const char *assign_error)
{
    struct leader_info li;
    json_t *o = json_object(), *members = json_array(), *ranges = json_array(),
           *servers = json_array(), *jobs = json_array();
    int64_t now = keel_clock_wall_ms();

    leader_of(s, &li);
    json_object_set_new(o, "cluster", json_string(config->cluster_name));
    json_object_set_new(o, "revision", json_integer(s->revision));
    json_object_set_new(o, "leader", li.id ? json_string(li.id) : json_null());
    json_object_set_new(o, "epoch", json_integer(li.epoch));
    json_object_set_new(o, "leader_address", li.address[0] ? json_string(li.address) : json_null());
    json_object_set_new(o, "leader_heartbeat_ms",
                        li.heartbeat_ms ? json_integer(li.heartbeat_ms) : json_null());
    for (size_t i = 0; i < s->nmembers; i++) {
        const struct keel_member_info *m = &s->members[i];

        json_array_append_new(
            members, json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I}", "role", m->role, "id", m->id,
                               "address", m->address, "incarnation", (json_int_t)m->incarnation,
                               "start_time_ms", (json_int_t)m->start_time_ms, "age_ms",
                               (json_int_t)(now - m->start_time_ms), "pid", (json_int_t)m->pid));
    }
    json_object_set_new(o, "members", members);
    if (a) {
        struct reports rep;

        reports_read(s, a, &rep);
        for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
            const char *ids[KEEL_ASSIGN_MAX_REPLICATION];
            size_t n = keel_assign_replicas(a, r, ids, KEEL_ASSIGN_MAX_REPLICATION);
            unsigned insync = keel_assign_insync(a, r);
            json_t *b = json_array(), *in = json_array(), *syncing = json_array();
            uint64_t lsn;

            for (size_t k = 1; k < n; k++) {
                json_array_append_new(b, json_string(ids[k]));
                json_array_append_new(k < insync ? in : syncing, json_string(ids[k]));
            }
            json_array_append_new(
                ranges, json_pack("{s:i, s:o, s:o, s:I, s:o, s:o, s:o, s:b}", "range", (int)r,
                                  "primary", n ? json_string(ids[0]) : json_null(), "backups", b,
                                  "term", (json_int_t)keel_assign_term(a, r), "in_sync", in,
                                  "syncing", syncing, "lsn",
                                  primary_lsn(&rep, r, &lsn) == 0 ? json_integer((json_int_t)lsn)
                                                                  : json_null(),
                                  "restoring", restoring(&rep, r)));
        }
        for (size_t i = 0; i < keel_assign_server_count(a); i++) {
            unsigned replicas, primaries;
            const char *id = keel_assign_server(a, i);
            struct backup_info bi;

            keel_assign_load(a, id, &replicas, &primaries);
            backup_info(&rep, id, &bi);
            json_array_append_new(
                servers,
                json_pack("{s:s, s:i, s:i, s:i, s:o}", "id", id, "primaries", (int)primaries,
                          "backups", (int)(replicas - primaries), "syncing", (int)bi.syncing, "lag",
                          bi.lag_known ? json_integer((json_int_t)bi.lag) : json_null()));
        }
        reports_release(&rep);
        json_object_set_new(o, "assignment",
                            json_pack("{s:I, s:i}", "version", (json_int_t)keel_assign_version(a),
                                      "replication", (int)keel_assign_replication(a)));
    } else {
        json_object_set_new(o, "assignment",
                            assign_error ? json_pack("{s:s}", "error", assign_error) : json_null());
    }
    json_object_set_new(o, "ranges", ranges);
    json_object_set_new(o, "servers", servers);
    for (size_t i = 0; i < s->njobs; i++)
        if (s->jobs[i].spec_kv || s->jobs[i].state_kv)
            json_array_append_new(jobs, keelctl_job_json(&s->jobs[i]));
    json_object_set_new(o, "jobs", jobs);
    return o;
}

/* The backups of `range` at positions [from, to) joined by commas into `out`, "-" when none. */
static void ids_join(const keel_assign *a, unsigned range, size_t from, size_t to, char *out,
                     size_t len)
{
    const char *ids[KEEL_ASSIGN_MAX_REPLICATION];
    size_t n = keel_assign_replicas(a, range, ids, KEEL_ASSIGN_MAX_REPLICATION), used = 0;

    snprintf(out, len, "-");
    for (size_t k = from; k < to && k < n; k++) {
        int w = snprintf(out + used, len - used, "%s%s", k > from ? "," : "", ids[k]);

        if (w < 0 || (size_t)w >= len - used)
            break;
        used += (size_t)w;
    }
}

/* 1 when ranges `x` and `y` have the same primary, in-sync set, syncing set and term. */
static int ranges_alike(const keel_assign *a, unsigned x, unsigned y)
{
    const char *ix[KEEL_ASSIGN_MAX_REPLICATION], *iy[KEEL_ASSIGN_MAX_REPLICATION];
    size_t nx = keel_assign_replicas(a, x, ix, KEEL_ASSIGN_MAX_REPLICATION);
    size_t ny = keel_assign_replicas(a, y, iy, KEEL_ASSIGN_MAX_REPLICATION);

    if (nx != ny || keel_assign_insync(a, x) != keel_assign_insync(a, y) ||
        keel_assign_term(a, x) != keel_assign_term(a, y))
        return 0;
    for (size_t k = 0; k < nx; k++)
        if (strcmp(ix[k], iy[k]) != 0)
            return 0;
    return 1;
}

/* The RANGES section: runs of alike ranges, one line each. */
static void ranges_text(const struct reports *rep, FILE *out)
{
    const keel_assign *a = rep->a;
    int backups = 0;

    for (unsigned r = 0; r < KEEL_PROTO_NRANGES && !backups; r++)
        backups = keel_assign_replicas(a, r, NULL, 0) > 1;
    if (!backups) {
        fprintf(out, "\nranges      every range has only its primary (no backup)\n");
        return;
    }
    fprintf(out, "\nranges      %d, consecutive ranges alike on one line\n", KEEL_PROTO_NRANGES);
    fprintf(out, "  %-8s %-20s %-20s %-20s %-8s %s\n", "RANGE", "PRIMARY", "IN-SYNC BACKUPS",
            "SYNCING", "TERM", "LSN");
    for (unsigned r = 0, end; r < KEEL_PROTO_NRANGES; r = end) {
        const char *primary = keel_assign_primary(a, r);
        unsigned insync = keel_assign_insync(a, r);
        char span[16], in[6 * (KEEL_ID_MAX + 1)], sy[6 * (KEEL_ID_MAX + 1)], lsns[48];
        uint64_t lo = UINT64_MAX, hi = 0, lsn;
        int unknown = 0;

        for (end = r + 1; end < KEEL_PROTO_NRANGES && ranges_alike(a, r, end); end++)
            ;
        for (unsigned x = r; x < end; x++) {
            if (primary_lsn(rep, x, &lsn) != 0) {
                unknown = 1;
                continue;
            }
            lo = lsn < lo ? lsn : lo;
            hi = lsn > hi ? lsn : hi;
        }
        if (lo == UINT64_MAX && hi == 0)
            snprintf(lsns, sizeof(lsns), "-");
        else if (lo == hi)
            snprintf(lsns, sizeof(lsns), "%" PRIu64 "%s", lo, unknown ? " (some -)" : "");
        else
            snprintf(lsns, sizeof(lsns), "%" PRIu64 "..%" PRIu64 "%s", lo, hi,
                     unknown ? " (some -)" : "");
        if (end - r == 1)
            snprintf(span, sizeof(span), "%u", r);
        else
            snprintf(span, sizeof(span), "%u-%u", r, end - 1);
        ids_join(a, r, 1, insync ? insync : 1, in, sizeof(in));
        ids_join(a, r, insync ? insync : 1, KEEL_ASSIGN_MAX_REPLICATION, sy, sizeof(sy));
        fprintf(out, "  %-8s %-20s %-20s %-20s %-8" PRIu64 " %s\n", span, primary ? primary : "-",
                in, sy, keel_assign_term(a, r), lsns);
    }
}

void keelctl_status_text(const struct keel_config *config, const struct keel_cstate *s,
                         const keel_assign *a, const char *assign_error, FILE *out)
{
    struct leader_info li;
    int64_t now = keel_clock_wall_ms();
    size_t njobs = 0;

    leader_of(s, &li);
    fprintf(out, "cluster '%s' (etcd %s, revision %" PRId64 ")\n", config->cluster_name,
            config->etcd_endpoints, s->revision);
    if (li.id) {
        char age[32];

        fprintf(out, "leader      %s, epoch %" PRId64, li.id, li.epoch);
        if (li.address[0])
            fprintf(out, ", address %s", li.address);
        if (li.heartbeat_ms) {
            keelctl_format_age(now - li.heartbeat_ms, age, sizeof(age));
            fprintf(out, ", last heartbeat %s ago", age);
        }
        fprintf(out, "\n");
    } else {
        fprintf(out, "leader      none: no coordinator holds the election\n");
    }

    fprintf(out, "\nmembers     %zu\n", s->nmembers);
    if (s->nmembers > 0) {
        fprintf(out, "  %-12s %-20s %-22s %-12s %s\n", "ROLE", "ID", "ADDRESS", "INCARNATION",
                "AGE");
        for (size_t i = 0; i < s->nmembers; i++) {
            const struct keel_member_info *m = &s->members[i];
            char age[32];

            keelctl_format_age(now - m->start_time_ms, age, sizeof(age));
            fprintf(out, "  %-12s %-20s %-22s %-12" PRIu64 " %s\n", m->role, m->id,
                    m->address[0] ? m->address : "-", m->incarnation, age);
        }
    }

    if (a) {
        fprintf(out, "\nassignment  version %" PRIu64 ", replication %u, %zu server%s\n",
                keel_assign_version(a), keel_assign_replication(a), keel_assign_server_count(a),
                keel_assign_server_count(a) == 1 ? "" : "s");
        if (keel_assign_server_count(a) > 0) {
            struct reports rep;

            reports_read(s, a, &rep);
            fprintf(out, "  %-20s %-10s %-10s %-10s %s\n", "SERVER", "PRIMARIES", "BACKUPS",
                    "SYNCING", "LAG");
            for (size_t i = 0; i < keel_assign_server_count(a); i++) {
                unsigned replicas, primaries;
                const char *id = keel_assign_server(a, i);
                struct backup_info bi;
                char lag[24];

                keel_assign_load(a, id, &replicas, &primaries);
                backup_info(&rep, id, &bi);
                if (bi.lag_known)
                    snprintf(lag, sizeof(lag), "%" PRIu64, bi.lag);
                else
                    snprintf(lag, sizeof(lag), "-");
                fprintf(out, "  %-20s %-10u %-10u %-10u %s\n", id, primaries, replicas - primaries,
                        bi.syncing, lag);
            }
            ranges_text(&rep, out);
            restoring_text(&rep, out);
            reports_release(&rep);
        } else {
            fprintf(out, "  no server: no range has a replica\n");
        }
    } else if (assign_error) {
        fprintf(out, "\nassignment  unreadable: %s\n", assign_error);
    } else {
        fprintf(out, "\nassignment  none yet (written by the leader once servers register)\n");
    }

    for (size_t i = 0; i < s->njobs; i++)
        njobs += s->jobs[i].spec_kv || s->jobs[i].state_kv;
    fprintf(out, "\njobs        %zu\n", njobs);
    if (njobs > 0)
        keelctl_job_rows(s, out);
}

int keelctl_cmd_status(const struct keel_config *config, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct keelctl_cmdline cl = {
        .what = "status", .usage = usage, .shortopts = "jh", .longopts = longopts};
    struct keel_cstate s;
    struct keel_error err;
    keel_assign *a = NULL;
    keel_etcd *etcd = NULL;
    int opt, json = 0, rc;

    while ((opt = keelctl_getopt(&cl, argc, argv)) > 0)
        if (opt == 'j')
            json = 1;
    if (opt < 0)
        return cl.exit;
    if (optind < argc)
        return keelctl_usage_error(&cl, "unexpected argument '%s'", argv[optind]);
    keel_error_init(&err);
    memset(&s, 0, sizeof(s));
    if ((rc = keelctl_etcd_open(config, &etcd, &err)) == 0)
        rc = keel_cstate_read(etcd, config->cluster_name, &s, &err);
    keel_etcd_free(etcd);
    if (rc != 0) {
        keel_cstate_release(&s);
        return keelctl_etcd_fail("status", config, &err);
    }
    keel_error_init(&err);
    if (s.assignment &&
        keel_assign_decode(s.assignment->value, s.assignment->value_len, &a, &err) != 0)
        a = NULL;
    if (json)
        keelctl_print_json(keelctl_status_json(config, &s, a, s.assignment && !a ? err.msg : NULL));
    else
        keelctl_status_text(config, &s, a, s.assignment && !a ? err.msg : NULL, stdout);
    keel_assign_free(a);
    keel_cstate_release(&s);
    return KEEL_EXIT_OK;
}
