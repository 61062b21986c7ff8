/*
 * test_status.c - `keelctl status` rendered from a cluster state: the
 * per-server SYNCING and LAG from the replica reports, the RANGES section's
 * runs, and the same in JSON.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "alloc.h"
#include "keel/assign.h"
#include "keel/buf.h"
#include "keel/config.h"
#include "keel/cstate.h"
#include "keel/replicas.h"
#include "keelctl.h"

static void add(struct keel_etcd_kvs *kvs, const char *key, const char *value, int64_t rev)
{
    struct keel_etcd_kv *kv;

    KEEL_REALLOC_ARRAY(kvs->kvs, kvs->n + 1);
    kv = &kvs->kvs[kvs->n++];
    memset(kv, 0, sizeof(*kv));
    kv->key = keel_strdup(key);
    kv->key_len = strlen(key);
    kv->value = (unsigned char *)keel_strdup(value);
    kv->value_len = strlen(value);
    kv->create_revision = rev;
    kv->mod_revision = rev;
}

static const char *const SRV[3] = {"s1", "s2", "s3"};

/*
 * Range r: primary SRV[(r / 4) % 3], backup the next server; ranges 8-11 also
 * have a third, syncing replica; ranges 12-15 have their backup syncing.
 * Terms 3 below range 128, 5 from there.
 */
static size_t replicas_of(unsigned r, int idx[3], unsigned *insync)
{
    int p = (int)(r / 4) % 3;

    idx[0] = p;
    idx[1] = (p + 1) % 3;
    idx[2] = (p + 2) % 3;
    *insync = r >= 12 && r < 16 ? 1 : 2;
    return r >= 8 && r < 12 ? 3 : 2;
}

static void assignment_json(struct keel_buf *b)
{
    keel_buf_add_str(b, "{\"insync\":[");
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        int idx[3];
        unsigned insync;

        replicas_of(r, idx, &insync);
        keel_buf_addf(b, "%s%u", r ? "," : "", insync);
    }
    keel_buf_add_str(b, "],\"ranges\":[");
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        int idx[3];
        unsigned insync;
        size_t n = replicas_of(r, idx, &insync);

        keel_buf_addf(b, "%s[", r ? "," : "");
        for (size_t k = 0; k < n; k++)
            keel_buf_addf(b, "%s%d", k ? "," : "", idx[k]);
        keel_buf_add_str(b, "]");
    }
    keel_buf_add_str(b, "],\"replication\":2,\"servers\":[\"s1\",\"s2\",\"s3\"],\"terms\":[");
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        keel_buf_addf(b, "%s%d", r ? "," : "", r < 128 ? 3 : 5);
    keel_buf_add_str(b, "],\"version\":9}");
}

/*
 * Reports: s1 (incarnation 4) leads its ranges at LSN 1000 + range, ranges 0
 * and 12 restored from its store and held until the shards rewind; s2
 * (incarnation 5) leads its ranges at 2000 and backs s1's in-sync ranges 7
 * behind; s3's report is from incarnation 2, before its restart (6).
 */
static void report_json(int server, struct keel_buf *b)
{
    struct keel_replica_report rep;

    memset(&rep, 0, sizeof(rep));
    rep.incarnation = server == 0 ? 4 : server == 1 ? 5 : 2;
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        int idx[3];
        unsigned insync;
        size_t n = replicas_of(r, idx, &insync);

        for (size_t k = 0; k < n && k < insync; k++) {
            if (idx[k] != server)
                continue;
            rep.terms[r] = r < 128 ? 3 : 5;
            if (k == 0)
                rep.lsns[r] = server == 0 ? 1000 + r : 2000;
            else
                rep.lsns[r] = (idx[0] == 0 ? 1000 + r : 2000) - 7;
        }
    }
    if (server == 0) {
        rep.restoring[0] = rep.restoring[12] = 1;
        rep.nfloor = 2;
        rep.floor[1] = 7;
    }
    keel_buf_reset(b);
    keel_replica_report_encode(&rep, b);
}

static void cluster(struct keel_cstate *s)
{
    struct keel_etcd_kvs kvs;
    struct keel_buf b = KEEL_BUF_INIT;
    char key[64], val[256];

    memset(&kvs, 0, sizeof(kvs));
    kvs.revision = 77;
    assignment_json(&b);
    add(&kvs, "/keel/t/assignment", (const char *)b.buf, 20);
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "/keel/t/members/server/%s", SRV[i]);
        snprintf(val, sizeof(val),
                 "{\"role\":\"server\",\"id\":\"%s\",\"address\":\"127.0.0.1:710%d\","
                 "\"incarnation\":%d,\"start_time_ms\":1,\"pid\":%d}",
                 SRV[i], i, 4 + i, 100 + i);
        add(&kvs, key, val, 30 + i);
    }
    for (int i = 0; i < 3; i++) {
        report_json(i, &b);
        snprintf(key, sizeof(key), "/keel/t/replicas/%s", SRV[i]);
        add(&kvs, key, (const char *)b.buf, 40 + i);
    }
    add(&kvs, "/keel/t/replicas/s9", "{\"incarnation\":1,\"lost\":[],\"ranges\":[]}",
        50); /* no such server */
    keel_buf_release(&b);
    keel_cstate_parse(s, "t", &kvs);
}

static keel_assign *decoded(const struct keel_cstate *s)
{
    keel_assign *a = NULL;
    struct keel_error err;

    keel_error_init(&err);
    cr_assert_not_null(s->assignment);
    cr_assert_eq(keel_assign_decode(s->assignment->value, s->assignment->value_len, &a, &err), 0,
                 "%s", err.msg);
    return a;
}

static struct keel_config config = {.cluster_name = "t", .etcd_endpoints = "http://etcd:2379"};

Test(status, text_has_syncing_lag_and_ranges)
{
    struct keel_cstate s;
    keel_assign *a;
    char *text = NULL;
    size_t len = 0;
    FILE *out;

    cluster(&s);
    a = decoded(&s);
    out = open_memstream(&text, &len);
    cr_assert_not_null(out);
    keelctl_status_text(&config, &s, a, NULL, out);
    fclose(out);
    printf("%s", text); /* the sample in the test's log */
    cr_expect(strstr(text, "  SERVER               PRIMARIES  BACKUPS    SYNCING    LAG\n"));
    /* s1 backs only s3's ranges, whose primary's report is stale: no lag to tell. */
    /* s1 backs only s3's ranges, whose primary's report is stale: no lag to tell. */
    cr_expect(strstr(text, "\n  s1                   88         84         0          -\n"), "%s",
              text);
    /* s2: syncing in 8-11 and 12-15; 12-15 not copied yet, so its lag is range 15's LSN. */
    cr_expect(strstr(text, "\n  s2                   84         92         8          1015\n"),
              "%s", text);
    cr_expect(strstr(text, "\n  s3                   84         84         0          -\n"), "%s",
              text);
    cr_expect(strstr(text, "\n  RANGE    PRIMARY              IN-SYNC BACKUPS      SYNCING         "
                           "     TERM     LSN\n"),
              "%s", text);
    cr_expect(strstr(text, "\n  0-3      s1                   s2                   -               "
                           "     3        1000..1003\n"),
              "%s", text);
    cr_expect(strstr(text, "\n  4-7      s2                   s3                   -               "
                           "     3        2000\n"),
              "%s", text);
    cr_expect(strstr(text, "\n  8-11     s3                   s1                   s2              "
                           "     3        -\n"),
              "%s", text);
    cr_expect(strstr(text, "\n  12-15    s1                   -                    s2              "
                           "     3        1012..1015\n"),
              "%s", text);
    cr_expect(strstr(text, "\n  124-127  s2                   s3                   -               "
                           "     3        2000\n"),
              "%s", text);
    cr_expect(strstr(text, "\n  128-131  s3                   s1                   -               "
                           "     5        -\n"),
              "%s", text);
    cr_expect(strstr(text, "\n  252-255  s1                   s2                   -               "
                           "     5        1252..1255\n"),
              "%s", text);
    cr_expect(strstr(text, "\n  255 ") == NULL, "%s", text);
    cr_expect(strstr(text, "\nrestoring   ranges 0, 12: restored from a store, pushes held until "
                           "the leader rewinds the shards\n"),
              "%s", text);
    free(text);
    keel_assign_free(a);
    keel_cstate_release(&s);
}

Test(status, json_has_terms_sets_lsns_and_lag)
{
    struct keel_cstate s;
    keel_assign *a;
    json_t *j, *r, *srv;

    cluster(&s);
    a = decoded(&s);
    j = keelctl_status_json(&config, &s, a, NULL);
    r = json_array_get(json_object_get(j, "ranges"), 13);
    cr_assert_str_eq(json_string_value(json_object_get(r, "primary")), "s1");
    cr_assert_eq(json_integer_value(json_object_get(r, "term")), 3);
    cr_assert_eq(json_array_size(json_object_get(r, "in_sync")), 0);
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(r, "syncing"), 0)), "s2");
    cr_assert_eq(json_integer_value(json_object_get(r, "lsn")), 1013);
    cr_assert_eq(json_array_size(json_object_get(r, "backups")), 1);
    cr_assert(json_is_false(json_object_get(r, "restoring")));
    cr_assert(json_is_true(
        json_object_get(json_array_get(json_object_get(j, "ranges"), 12), "restoring")));
    r = json_array_get(json_object_get(j, "ranges"), 9);
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(r, "in_sync"), 0)), "s1");
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(r, "syncing"), 0)), "s2");
    cr_assert(json_is_null(json_object_get(r, "lsn")), "s3's report is stale");
    srv = json_object_get(j, "servers");
    cr_assert_eq(json_array_size(srv), 3);
    cr_assert(json_is_null(json_object_get(json_array_get(srv, 0), "lag")));
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(srv, 1), "lag")), 1015);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(srv, 1), "syncing")), 8);
    cr_assert(json_is_null(json_object_get(json_array_get(srv, 2), "lag")));
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(srv, 2), "syncing")), 0);
    json_decref(j);
    keel_assign_free(a);
    keel_cstate_release(&s);
}

Test(status, replication_one_says_so)
{
    struct keel_cstate s;
    struct keel_etcd_kvs kvs;
    struct keel_buf b = KEEL_BUF_INIT;
    keel_assign *a = keel_assign_new(1);
    const char *live[] = {"s1", "s2"};
    char *text = NULL;
    size_t len = 0;
    FILE *out;

    cr_assert_eq(keel_assign_update(a, live, 2, NULL, NULL), 0);
    memset(&kvs, 0, sizeof(kvs));
    keel_assign_encode(a, &b);
    add(&kvs, "/keel/t/assignment", (const char *)b.buf, 20);
    keel_cstate_parse(&s, "t", &kvs);
    out = open_memstream(&text, &len);
    keelctl_status_text(&config, &s, a, NULL, out);
    fclose(out);
    /* No server reports (none is even registered): no lag to tell. */
    cr_expect(strstr(text, "\n  s1                   128        0          0          -\n"), "%s",
              text);
    cr_expect(strstr(text, "\n  s2                   128        0          0          -\n"), "%s",
              text);
    cr_expect(strstr(text, "\nranges      every range has only its primary (no backup)\n"), "%s",
              text);
    cr_expect(strstr(text, "RANGE ") == NULL, "%s", text);
    free(text);
    keel_buf_release(&b);
    keel_assign_free(a);
    keel_cstate_release(&s);
}
