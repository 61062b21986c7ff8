/*
 * test_etcd.c - the etcd client's pure parts: base64, prefix ends, the
 * decoders of every reply shape the gateway sends (and malformed ones), the
 * stream line splitter, the retry classification and the member record.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "etcd_internal.h"
#include "etcd.h"
#include "member.h"

#define S(lit) lit, strlen(lit)

static struct keel_error err;

static void setup(void)
{
    keel_error_init(&err);
}

TestSuite(etcd, .init = setup);

Test(etcd, base64_round_trips_every_length)
{
    unsigned char data[64];
    struct keel_buf enc = KEEL_BUF_INIT, dec = KEEL_BUF_INIT;

    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (unsigned char)(i * 37 + 200);
    for (size_t n = 0; n <= sizeof(data); n++) {
        keel_buf_reset(&enc);
        keel_etcd_b64_encode(data, n, &enc);
        cr_assert_eq(enc.len, 4 * ((n + 2) / 3), "length %zu encodes to %zu chars", n, enc.len);
        cr_assert_eq(keel_etcd_b64_decode((const char *)enc.buf, enc.len, &dec), 0);
        cr_assert_eq(dec.len, n, "length %zu decodes to %zu bytes", n, dec.len);
        cr_assert(memcmp(dec.buf, data, n) == 0);
    }
    keel_buf_release(&enc);
    keel_buf_release(&dec);
}

Test(etcd, base64_known_values_and_padding)
{
    struct keel_buf b = KEEL_BUF_INIT;

    keel_etcd_b64_encode("/ps/members/", 12, &b);
    cr_assert_str_eq((const char *)b.buf, "L3BzL21lbWJlcnMv");
    cr_assert_eq(keel_etcd_b64_decode(S("AA=="), &b), 0);
    cr_assert_eq(b.len, 1);
    cr_assert_eq(b.buf[0], 0);
    cr_assert_eq(keel_etcd_b64_decode(S("MQ=="), &b), 0);
    cr_assert_eq(b.len, 1);
    cr_assert_eq(b.buf[0], '1');
    cr_assert_eq(keel_etcd_b64_decode(S("dmFs"), &b), 0);
    cr_assert_eq(b.len, 3);
    keel_buf_release(&b);
}

Test(etcd, base64_rejects_malformed_text)
{
    static const char *const bad[] = {"A",     "AAA",  "AA=A",  "A===", "AA AA",
                                      "AA\nA", "#AAA", "AAAA=", "=AAA", "AAAA AAA"};
    struct keel_buf b = KEEL_BUF_INIT;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(keel_etcd_b64_decode(bad[i], strlen(bad[i]), &b), KEEL_EINVAL, "'%s'", bad[i]);
    keel_buf_release(&b);
}

Test(etcd, prefix_end_increments_the_last_byte)
{
    struct keel_buf b = KEEL_BUF_INIT;

    keel_etcd_prefix_end("/keel/c/members/", &b);
    cr_assert_str_eq((const char *)b.buf, "/keel/c/members0");
    keel_etcd_prefix_end("a\xff\xff", &b);
    cr_assert_str_eq((const char *)b.buf, "b");
    keel_etcd_prefix_end("\xff", &b);
    cr_assert_eq(b.len, 0);
    keel_etcd_prefix_end("", &b);
    cr_assert_eq(b.len, 0);
    keel_buf_release(&b);
}

Test(etcd, range_reply_with_lease_ids_above_2_pow_53)
{
    const char *j = "{\"header\":{\"cluster_id\":\"14841639068965178418\",\"revision\":\"12\"},"
                    "\"kvs\":[{\"key\":\"L2E=\",\"create_revision\":\"5\",\"mod_revision\":\"12\","
                    "\"version\":\"3\",\"value\":\"MQ==\",\"lease\":\"7587869175438429185\"},"
                    "{\"key\":\"L2I=\",\"create_revision\":\"6\",\"mod_revision\":\"6\","
                    "\"version\":\"1\"}],\"count\":\"2\"}";
    struct keel_etcd_kvs r;

    cr_assert_eq(keel_etcd_decode_range(j, strlen(j), &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r.revision, 12);
    cr_assert_eq(r.count, 2);
    cr_assert_eq(r.n, 2);
    cr_assert_str_eq(r.kvs[0].key, "/a");
    cr_assert_str_eq((const char *)r.kvs[0].value, "1");
    cr_assert_eq(r.kvs[0].lease, INT64_C(7587869175438429185));
    cr_assert_eq(r.kvs[0].create_revision, 5);
    cr_assert_eq(r.kvs[0].version, 3);
    /* Absent value and lease are the zero values. */
    cr_assert_eq(r.kvs[1].value_len, 0);
    cr_assert_str_eq((const char *)r.kvs[1].value, "");
    cr_assert_eq(r.kvs[1].lease, 0);
    keel_etcd_kvs_release(&r);
}

Test(etcd, empty_range_reply_has_no_kvs_or_count)
{
    const char *j = "{\"header\":{\"revision\":\"7\"}}";
    struct keel_etcd_kvs r;

    cr_assert_eq(keel_etcd_decode_range(j, strlen(j), &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r.n, 0);
    cr_assert_eq(r.count, 0);
    cr_assert_eq(r.revision, 7);
    keel_etcd_kvs_release(&r);
}

/* Each malformed reply is refused with a message naming what is wrong. */
Test(etcd, malformed_range_replies_are_named)
{
    static const struct {
        const char *json;
        const char *msg;
    } cases[] = {
        {"not json", "not JSON"},
        {"[1,2]", "not a JSON object"},
        {"{}", "no 'header'"},
        {"{\"header\":[]}", "no 'header'"},
        {"{\"header\":{\"revision\":12.5}}", "'revision' is not a 64-bit integer"},
        {"{\"header\":{\"revision\":\"12x\"}}", "'revision' is not a 64-bit integer"},
        {"{\"header\":{\"revision\":\"99999999999999999999\"}}", "'revision'"},
        {"{\"header\":{},\"kvs\":{}}", "'kvs' is not an array"},
        {"{\"header\":{},\"kvs\":[1]}", "not an object"},
        {"{\"header\":{},\"kvs\":[{\"value\":\"MQ==\"}]}", "has no 'key'"},
        {"{\"header\":{},\"kvs\":[{\"key\":\"***\"}]}", "'key' is not valid base64"},
        {"{\"header\":{},\"kvs\":[{\"key\":5}]}", "'key' is not a string"},
        {"{\"header\":{},\"more\":\"yes\"}", "'more' is not a boolean"},
        {"{\"header\":{},\"header\":{}}", "not JSON"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct keel_etcd_kvs r;

        keel_error_init(&err);
        cr_assert_eq(keel_etcd_decode_range(cases[i].json, strlen(cases[i].json), &r, &err),
                     KEEL_EETCD, "'%s' accepted", cases[i].json);
        cr_assert(strstr(err.msg, cases[i].msg) != NULL, "'%s': message '%s' lacks '%s'",
                  cases[i].json, err.msg, cases[i].msg);
        cr_assert(strncmp(err.msg, "range", 5) == 0, "message '%s' does not name the call",
                  err.msg);
        cr_assert_eq(r.n, 0);
    }
}

Test(etcd, failed_txn_has_no_succeeded_field)
{
    const char *j = "{\"header\":{\"revision\":\"20\"},\"responses\":[{\"response_range\":{"
                    "\"header\":{\"revision\":\"20\"},\"kvs\":[{\"key\":\"L2s=\","
                    "\"create_revision\":\"12\",\"mod_revision\":\"12\",\"version\":\"1\","
                    "\"value\":\"dg==\"}],\"count\":\"1\"}}]}";
    struct keel_etcd_txn_result r;

    cr_assert_eq(keel_etcd_decode_txn(j, strlen(j), &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r.succeeded, 0);
    cr_assert_eq(r.revision, 20);
    cr_assert_eq(r.n, 1);
    cr_assert_eq(r.ops[0].op, KEEL_ETCD_OP_RANGE);
    cr_assert_eq(r.ops[0].range.n, 1);
    cr_assert_eq(r.ops[0].range.kvs[0].create_revision, 12);
    keel_etcd_txn_result_release(&r);
}

Test(etcd, txn_reply_with_every_response_kind_and_nesting)
{
    const char *j = "{\"header\":{\"revision\":\"30\"},\"succeeded\":true,\"responses\":["
                    "{\"response_put\":{\"header\":{\"revision\":\"30\"}}},"
                    "{\"response_delete_range\":{\"header\":{},\"deleted\":\"2\"}},"
                    "{\"response_txn\":{\"header\":{},\"succeeded\":true,\"responses\":["
                    "{\"response_put\":{\"header\":{\"revision\":\"30\"}}}]}}]}";
    struct keel_etcd_txn_result r;

    cr_assert_eq(keel_etcd_decode_txn(j, strlen(j), &r, &err), 0, "%s", err.msg);
    cr_assert(r.succeeded);
    cr_assert_eq(r.n, 3);
    cr_assert_eq(r.ops[0].op, KEEL_ETCD_OP_PUT);
    cr_assert_eq(r.ops[1].op, KEEL_ETCD_OP_DELETE);
    cr_assert_eq(r.ops[1].deleted, 2);
    cr_assert_eq(r.ops[2].op, KEEL_ETCD_OP_TXN);
    cr_assert(r.ops[2].txn->succeeded);
    cr_assert_eq(r.ops[2].txn->n, 1);
    keel_etcd_txn_result_release(&r);
}

Test(etcd, malformed_txn_replies_are_named)
{
    static const struct {
        const char *json;
        const char *msg;
    } cases[] = {
        {"{\"header\":{},\"succeeded\":1}", "'succeeded' is not a boolean"},
        {"{\"header\":{},\"responses\":{}}", "'responses' is not an array"},
        {"{\"header\":{},\"responses\":[{\"response_frob\":{}}]}", "unknown kind"},
        {"{\"header\":{},\"responses\":[{\"response_range\":[]}]}", "not an object"},
        {"{\"header\":{},\"responses\":[{\"response_txn\":{\"responses\":[7]}}]}", "not an object"},
        {"{\"succeeded\":true}", "no 'header'"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct keel_etcd_txn_result r;

        keel_error_init(&err);
        cr_assert_eq(keel_etcd_decode_txn(cases[i].json, strlen(cases[i].json), &r, &err),
                     KEEL_EETCD, "'%s' accepted", cases[i].json);
        cr_assert(strstr(err.msg, cases[i].msg) != NULL, "'%s': message '%s' lacks '%s'",
                  cases[i].json, err.msg, cases[i].msg);
    }
}

Test(etcd, keepalive_without_ttl_means_lost)
{
    const char *alive = "{\"result\":{\"header\":{},\"ID\":\"4111120239497958661\",\"TTL\":\"3\"}}";
    const char *lost = "{\"result\":{\"header\":{},\"ID\":\"4111120239497958661\"}}";
    int64_t ttl = -1;

    cr_assert_eq(keel_etcd_decode_keepalive(alive, strlen(alive), &ttl, &err), 0);
    cr_assert_eq(ttl, 3);
    cr_assert_eq(keel_etcd_decode_keepalive(lost, strlen(lost), &ttl, &err), 0);
    cr_assert_eq(ttl, 0);
    cr_assert_eq(keel_etcd_decode_keepalive(S("{\"header\":{}}"), &ttl, &err), KEEL_EETCD);
    cr_assert(strstr(err.msg, "no 'result'"));
    cr_assert_eq(keel_etcd_decode_keepalive(S("{\"result\":{\"TTL\":\"-3\"}}"), &ttl, &err),
                 KEEL_EETCD);
}

Test(etcd, campaign_reply_gives_the_leader)
{
    const char *j = "{\"header\":{},\"leader\":{\"name\":\"L3BzL2U=\",\"key\":"
                    "\"L3BzL2UvNjk0ZDc3YWE5ZTM4MjYwZg==\",\"rev\":\"20\","
                    "\"lease\":\"7587869175438429199\"}}";
    struct keel_etcd_leader l;

    cr_assert_eq(keel_etcd_decode_campaign(j, strlen(j), &l, &err), 0, "%s", err.msg);
    cr_assert_str_eq(l.name, "/ps/e");
    cr_assert_str_eq(l.key, "/ps/e/694d77aa9e38260f");
    cr_assert_eq(l.rev, 20);
    cr_assert_eq(l.lease, INT64_C(7587869175438429199));
    keel_etcd_leader_release(&l);
    cr_assert_eq(keel_etcd_decode_campaign(S("{\"leader\":{\"rev\":\"2\"}}"), &l, &err),
                 KEEL_EETCD);
    cr_assert(strstr(err.msg, "no 'key'"));
    cr_assert_eq(keel_etcd_decode_campaign(S("{\"leader\":{\"key\":\"YQ==\"}}"), &l, &err),
                 KEEL_EETCD);
    cr_assert(strstr(err.msg, "no revision"));
}

Test(etcd, watch_messages_of_every_kind)
{
    const char *created = "{\"result\":{\"header\":{\"revision\":\"36\"},\"created\":true}}";
    const char *events =
        "{\"result\":{\"header\":{\"revision\":\"40\"},\"events\":["
        "{\"kv\":{\"key\":\"L2E=\",\"mod_revision\":\"38\",\"value\":\"MQ==\"}},"
        "{\"type\":\"DELETE\",\"kv\":{\"key\":\"L2I=\",\"mod_revision\":\"40\"},"
        "\"prev_kv\":{\"key\":\"L2I=\",\"value\":\"Mg==\",\"mod_revision\":\"39\"}}]}}";
    const char *compacted = "{\"result\":{\"canceled\":true,\"compact_revision\":\"38\"}}";
    const char *down = "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"transport "
                       "is closing\",\"http_status\":\"Service Unavailable\"}}";
    struct keel_etcd_watch_msg m;

    cr_assert_eq(keel_etcd_decode_watch(created, strlen(created), &m, &err), 0, "%s", err.msg);
    cr_assert(m.created);
    cr_assert_eq(m.revision, 36);
    cr_assert_eq(m.n, 0);
    keel_etcd_watch_msg_release(&m);

    cr_assert_eq(keel_etcd_decode_watch(events, strlen(events), &m, &err), 0, "%s", err.msg);
    cr_assert_eq(m.n, 2);
    cr_assert_eq(m.events[0].type, KEEL_ETCD_PUT);
    cr_assert_eq(m.events[0].kv.mod_revision, 38);
    cr_assert_eq(m.events[1].type, KEEL_ETCD_DELETE);
    cr_assert(m.events[1].has_prev);
    cr_assert_str_eq((const char *)m.events[1].prev_kv.value, "2");
    keel_etcd_watch_msg_release(&m);

    cr_assert_eq(keel_etcd_decode_watch(compacted, strlen(compacted), &m, &err), 0, "%s", err.msg);
    cr_assert(m.canceled);
    cr_assert_eq(m.compact_revision, 38);
    keel_etcd_watch_msg_release(&m);

    cr_assert_eq(keel_etcd_decode_watch(down, strlen(down), &m, &err), KEEL_EUNAVAILABLE);
    cr_assert(strstr(err.msg, "transport is closing"));
}

Test(etcd, malformed_watch_messages_are_named)
{
    static const struct {
        const char *json;
        const char *msg;
    } cases[] = {
        {"{}", "no 'result'"},
        {"{\"result\":{\"events\":[]}}", "no 'header'"},
        {"{\"result\":{\"header\":{},\"events\":[{\"type\":\"MOVE\",\"kv\":{\"key\":\"YQ==\"}}]}}",
         "unknown 'type'"},
        {"{\"result\":{\"header\":{},\"events\":[{\"kv\":7}]}}", "not an object"},
        {"{\"result\":{\"header\":{},\"events\":[{}]}}", "not an object"},
        {"{\"result\":{\"header\":{},\"events\":[{\"kv\":{\"key\":\"YQ==\"},\"prev_kv\":1}]}}",
         "not an object"},
        {"{\"result\":{\"header\":{},\"canceled\":\"yes\"}}", "'canceled' is not a boolean"},
        {"{\"error\":{\"grpc_code\":3,\"message\":\"bad\"}}", "bad"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct keel_etcd_watch_msg m;

        keel_error_init(&err);
        cr_assert_neq(keel_etcd_decode_watch(cases[i].json, strlen(cases[i].json), &m, &err), 0,
                      "'%s' accepted", cases[i].json);
        cr_assert(strstr(err.msg, cases[i].msg) != NULL, "'%s': message '%s' lacks '%s'",
                  cases[i].json, err.msg, cases[i].msg);
    }
}

Test(etcd, observe_message_gives_the_leader_kv)
{
    const char *j = "{\"result\":{\"header\":{},\"kv\":{\"key\":\"L2UvMQ==\","
                    "\"create_revision\":\"9\",\"value\":\"YzE=\",\"lease\":\"77\"}}}";
    struct keel_etcd_kv kv;

    cr_assert_eq(keel_etcd_decode_observe(j, strlen(j), &kv, &err), 0, "%s", err.msg);
    cr_assert_str_eq((const char *)kv.value, "c1");
    cr_assert_eq(kv.create_revision, 9);
    cr_assert_eq(kv.lease, 77);
    keel_etcd_kv_release(&kv);
    cr_assert_eq(keel_etcd_decode_observe(S("{\"result\":{}}"), &kv, &err), KEEL_EETCD);
    cr_assert(strstr(err.msg, "no 'kv'"));
}

Test(etcd, error_replies_map_to_keel_codes)
{
    static const struct {
        const char *json;
        long status;
        int code;
    } cases[] = {
        {"{\"error\":\"etcdserver: requested lease not found\",\"message\":\"etcdserver: "
         "requested lease not found\",\"code\":5}",
         404, KEEL_ENOTFOUND},
        {"{\"error\":\"etcdserver: request timed out\",\"code\":14}", 503, KEEL_EUNAVAILABLE},
        {"{\"error\":\"etcdserver: lease already exists\",\"code\":9}", 412, KEEL_EEXIST},
        {"{\"error\":\"etcdserver: too many operations in txn request\",\"code\":3}", 400,
         KEEL_EETCD},
        {"<html>bad gateway</html>", 502, KEEL_EETCD},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        keel_error_init(&err);
        cr_assert_eq(keel_etcd_decode_error(cases[i].json, strlen(cases[i].json), cases[i].status,
                                            "put '/k'", &err),
                     cases[i].code, "'%s'", cases[i].json);
        cr_assert(strncmp(err.msg, "put '/k': etcd", 14) == 0, "message '%s'", err.msg);
    }
    cr_assert(strstr(err.msg, "HTTP 502"));
}

struct collected {
    char lines[8][64];
    int n;
};

static int collect(void *user, const char *line, size_t n)
{
    struct collected *c = user;

    cr_assert_lt(c->n, 8);
    cr_assert_lt(n, 64);
    memcpy(c->lines[c->n], line, n);
    c->lines[c->n][n] = '\0';
    c->n++;
    return strcmp(c->lines[c->n - 1], "stop") == 0 ? 7 : 0;
}

Test(etcd, lines_are_split_across_any_pieces)
{
    const char *stream = "{\"a\":1}\n\n{\"b\":22}\n{\"c\":333}\n{\"partial";
    size_t len = strlen(stream);

    /* Every way of cutting the stream in two gives the same three lines. */
    for (size_t cut = 0; cut <= len; cut++) {
        struct keel_etcd_lines l;
        struct collected c = {0};

        keel_etcd_lines_init(&l, 32);
        cr_assert_eq(keel_etcd_lines_feed(&l, stream, cut, collect, &c, &err), 0);
        cr_assert_eq(keel_etcd_lines_feed(&l, stream + cut, len - cut, collect, &c, &err), 0);
        cr_assert_eq(c.n, 3, "cut at %zu: %d lines", cut, c.n);
        cr_assert_str_eq(c.lines[0], "{\"a\":1}");
        cr_assert_str_eq(c.lines[1], "{\"b\":22}");
        cr_assert_str_eq(c.lines[2], "{\"c\":333}");
        cr_assert_eq(l.buf.len, strlen("{\"partial"));
        keel_etcd_lines_release(&l);
    }
}

Test(etcd, lines_longer_than_the_bound_are_refused)
{
    struct keel_etcd_lines l;
    struct collected c = {0};
    char big[100];

    memset(big, 'x', sizeof(big));
    keel_etcd_lines_init(&l, 16);
    cr_assert_eq(keel_etcd_lines_feed(&l, big, 10, collect, &c, &err), 0);
    cr_assert_eq(keel_etcd_lines_feed(&l, big, 10, collect, &c, &err), KEEL_EETCD);
    cr_assert(strstr(err.msg, "longer than 16 bytes"));
    cr_assert_eq(l.buf.len, 0);
    /* A callback's non-zero result stops the feed. */
    cr_assert_eq(keel_etcd_lines_feed(&l, S("ok\nstop\nnever\n"), collect, &c, &err), 7);
    cr_assert_eq(c.n, 2);
    keel_etcd_lines_release(&l);
}

Test(etcd, retry_classification)
{
    /* Nothing reached etcd: anything may be retried. */
    cr_assert_eq(keel__etcd_classify(CURLE_COULDNT_CONNECT, 0, "Connection refused", 0, -1, NULL),
                 KEEL__ETCD_UNSENT);
    cr_assert_eq(keel__etcd_classify(CURLE_OPERATION_TIMEDOUT, 0, "", 0, -1, NULL),
                 KEEL__ETCD_UNSENT);
    /* Sent, then lost: etcd may have applied it. */
    cr_assert_eq(keel__etcd_classify(CURLE_OPERATION_TIMEDOUT, 1, "", 0, -1, NULL),
                 KEEL__ETCD_UNAVAILABLE);
    cr_assert_eq(keel__etcd_classify(CURLE_GOT_NOTHING, 1, "Empty reply", 0, -1, NULL),
                 KEEL__ETCD_UNAVAILABLE);
    cr_assert_eq(keel__etcd_classify(CURLE_OK, 1, NULL, 503, 14, "etcdserver: request timed out"),
                 KEEL__ETCD_UNAVAILABLE);
    cr_assert_eq(keel__etcd_classify(CURLE_OK, 1, NULL, 500, 2, "context deadline exceeded"),
                 KEEL__ETCD_UNAVAILABLE);
    cr_assert_eq(keel__etcd_classify(CURLE_OK, 1, NULL, 500, 2, "etcdserver: no leader"),
                 KEEL__ETCD_UNAVAILABLE);
    /* Definite answers. */
    cr_assert_eq(keel__etcd_classify(CURLE_OK, 1, NULL, 200, -1, NULL), KEEL__ETCD_OK);
    cr_assert_eq(keel__etcd_classify(CURLE_OK, 1, NULL, 500, 2, "election: no leader"),
                 KEEL__ETCD_FATAL);
    cr_assert_eq(keel__etcd_classify(CURLE_OK, 1, NULL, 400, 3, "request is too large"),
                 KEEL__ETCD_FATAL);
    cr_assert_eq(keel__etcd_classify(CURLE_OK, 1, NULL, 404, 5, "lease not found"),
                 KEEL__ETCD_FATAL);
    /* TLS refusals are not retried. */
    cr_assert_eq(keel__etcd_classify(CURLE_PEER_FAILED_VERIFICATION, 0, "", 0, -1, NULL),
                 KEEL__ETCD_FATAL);
    cr_assert_eq(keel__etcd_classify(CURLE_RECV_ERROR, 1,
                                     "OpenSSL SSL_read: tlsv13 alert certificate required", 0, -1,
                                     NULL),
                 KEEL__ETCD_FATAL);
    cr_assert_eq(keel__etcd_classify(CURLE_SEND_ERROR, 1,
                                     "SSL_write() error: error:0A00007F:SSL routines::bad write "
                                     "retry",
                                     0, -1, NULL),
                 KEEL__ETCD_FATAL);
    /* A broken connection is not a TLS refusal. */
    cr_assert_eq(keel__etcd_classify(CURLE_SEND_ERROR, 1, "Send failure: Broken pipe", 0, -1, NULL),
                 KEEL__ETCD_UNAVAILABLE);
}

Test(etcd, backoff_grows_to_a_second_with_jitter)
{
    for (unsigned a = 1; a <= 12; a++) {
        uint64_t d = keel__etcd_backoff_ms(a);
        uint64_t cap = a >= 6 ? 1000 : (uint64_t)50 << (a - 1);

        cr_assert(d >= cap / 2 && d <= cap, "attempt %u: %llu ms outside [%llu, %llu]", a,
                  (unsigned long long)d, (unsigned long long)cap / 2, (unsigned long long)cap);
    }
}

Test(etcd, txn_writes_only_with_a_put_or_delete)
{
    keel_etcd_txn *t = keel_etcd_txn_new(), *outer = keel_etcd_txn_new();

    keel_etcd_txn_compare(t, "/k", KEEL_ETCD_CREATE, KEEL_ETCD_EQUAL, 0);
    keel_etcd_txn_get(t, KEEL_ETCD_THEN, "/k", 0);
    cr_assert_not(keel_etcd_txn_writes(t));
    keel_etcd_txn_nest(outer, KEEL_ETCD_THEN, t);
    cr_assert_not(keel_etcd_txn_writes(outer));
    keel_etcd_txn_delete(t, KEEL_ETCD_ELSE, "/k", 1);
    cr_assert(keel_etcd_txn_writes(t));
    keel_etcd_txn_nest(outer, KEEL_ETCD_ELSE, t);
    cr_assert(keel_etcd_txn_writes(outer));
    keel_etcd_txn_free(t);
    keel_etcd_txn_free(outer);
}

Test(etcd, member_record_decodes_and_refuses_bad_fields)
{
    const char *good = "{\"role\":\"server\",\"id\":\"s1\",\"address\":\"127.0.0.1:7001\","
                       "\"incarnation\":42,\"start_time_ms\":1767225600000,\"pid\":99}";
    struct keel_member_info m;

    cr_assert_eq(keel_member_decode(good, strlen(good), &m, &err), 0, "%s", err.msg);
    cr_assert_str_eq(m.role, "server");
    cr_assert_str_eq(m.id, "s1");
    cr_assert_str_eq(m.address, "127.0.0.1:7001");
    cr_assert_eq(m.incarnation, 42);
    cr_assert_eq(m.start_time_ms, INT64_C(1767225600000));
    keel_member_info_release(&m);

    cr_assert_eq(keel_member_decode(S("{\"role\":\"server\"}"), &m, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "'id'"), "%s", err.msg);
    cr_assert_eq(keel_member_decode(S("{\"role\":\"s\",\"id\":\"x\",\"address\":\"a\","
                                      "\"incarnation\":\"7\",\"start_time_ms\":1,\"pid\":1}"),
                                    &m, &err),
                 KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "'incarnation'"), "%s", err.msg);
    cr_assert_eq(keel_member_decode(S("[]"), &m, &err), KEEL_ECORRUPT);
}
