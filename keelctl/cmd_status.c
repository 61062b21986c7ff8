/*
 * cmd_status.c - `keelctl status`: the cluster as etcd sees it, read in one
 * request: the coordinators' leader and its epoch, the members by role with
 * their age and address, the range assignment (primaries and backups per
 * server, and per range with --json), and the jobs with their progress.
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
#include "keelctl.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: keelctl [--config FILE] status [--json]\n"
                 "The cluster ([cluster] name) as etcd ([cluster] etcd) holds it: the leader and\n"
                 "its epoch, members by role with age and address, ranges per server, jobs with\n"
                 "their progress.  Fails within about a second, saying so, when etcd is down.\n"
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

static json_t *status_json(const struct keel_config *config, const struct keel_cstate *s,
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
        for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
            const char *ids[KEEL_ASSIGN_MAX_REPLICATION];
            size_t n = keel_assign_replicas(a, r, ids, KEEL_ASSIGN_MAX_REPLICATION);
            json_t *b = json_array();

            for (size_t k = 1; k < n; k++)
                json_array_append_new(b, json_string(ids[k]));
            json_array_append_new(ranges,
                                  json_pack("{s:i, s:o, s:o}", "range", (int)r, "primary",
                                            n ? json_string(ids[0]) : json_null(), "backups", b));
        }
        for (size_t i = 0; i < keel_assign_server_count(a); i++) {
            unsigned replicas, primaries;
            const char *id = keel_assign_server(a, i);

            keel_assign_load(a, id, &replicas, &primaries);
            json_array_append_new(servers, json_pack("{s:s, s:i, s:i}", "id", id, "primaries",
                                                     (int)primaries, "backups",
                                                     (int)(replicas - primaries)));
        }
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

static void status_text(const struct keel_config *config, const struct keel_cstate *s,
                        const keel_assign *a, const char *assign_error)
{
    struct leader_info li;
    int64_t now = keel_clock_wall_ms();
    size_t njobs = 0;

    leader_of(s, &li);
    printf("cluster '%s' (etcd %s, revision %" PRId64 ")\n", config->cluster_name,
           config->etcd_endpoints, s->revision);
    if (li.id) {
        char age[32];

        printf("leader      %s, epoch %" PRId64, li.id, li.epoch);
        if (li.address[0])
            printf(", address %s", li.address);
        if (li.heartbeat_ms) {
            keelctl_format_age(now - li.heartbeat_ms, age, sizeof(age));
            printf(", last heartbeat %s ago", age);
        }
        printf("\n");
    } else {
        printf("leader      none: no coordinator holds the election\n");
    }

    printf("\nmembers     %zu\n", s->nmembers);
    if (s->nmembers > 0) {
        printf("  %-12s %-20s %-22s %-12s %s\n", "ROLE", "ID", "ADDRESS", "INCARNATION", "AGE");
        for (size_t i = 0; i < s->nmembers; i++) {
            const struct keel_member_info *m = &s->members[i];
            char age[32];

            keelctl_format_age(now - m->start_time_ms, age, sizeof(age));
            printf("  %-12s %-20s %-22s %-12" PRIu64 " %s\n", m->role, m->id,
                   m->address[0] ? m->address : "-", m->incarnation, age);
        }
    }

    if (a) {
        printf("\nassignment  version %" PRIu64 ", replication %u, %zu server%s\n",
               keel_assign_version(a), keel_assign_replication(a), keel_assign_server_count(a),
               keel_assign_server_count(a) == 1 ? "" : "s");
        if (keel_assign_server_count(a) > 0) {
            printf("  %-20s %-10s %s\n", "SERVER", "PRIMARIES", "BACKUPS");
            for (size_t i = 0; i < keel_assign_server_count(a); i++) {
                unsigned replicas, primaries;
                const char *id = keel_assign_server(a, i);

                keel_assign_load(a, id, &replicas, &primaries);
                printf("  %-20s %-10u %u\n", id, primaries, replicas - primaries);
            }
        } else {
            printf("  no server: no range has a replica\n");
        }
    } else if (assign_error) {
        printf("\nassignment  unreadable: %s\n", assign_error);
    } else {
        printf("\nassignment  none yet (written by the leader once servers register)\n");
    }

    for (size_t i = 0; i < s->njobs; i++)
        njobs += s->jobs[i].spec_kv || s->jobs[i].state_kv;
    printf("\njobs        %zu\n", njobs);
    if (njobs > 0)
        keelctl_job_rows(s, stdout);
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
        keelctl_print_json(status_json(config, &s, a, s.assignment && !a ? err.msg : NULL));
    else
        status_text(config, &s, a, s.assignment && !a ? err.msg : NULL);
    keel_assign_free(a);
    keel_cstate_release(&s);
    return KEEL_EXIT_OK;
}
