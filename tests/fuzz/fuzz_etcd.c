/*
 * fuzz_etcd.c - libFuzzer target for everything that decodes etcd's replies:
 * the unary reply decoders, the watch/observe stream (split into lines in
 * pieces chosen by the input, then decoded), error replies, base64 and the
 * member record.
 *
 * Any input must decode or be refused with a message, never read out of
 * bounds (ASan watches) nor leak.  What decodes must be self-consistent: keys
 * and values NUL-terminated at their length, counts matching arrays, and every
 * decoded value must survive a base64 round trip unchanged.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcd.h"
#include "etcd_internal.h"
#include "member.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "invariant broken: %s\n", what);
        abort();
    }
}

static void refused(int rc, const struct keel_error *err, const char *what)
{
    if (rc != 0 && err->msg[0] == '\0') {
        fprintf(stderr, "%s: error %d without a message\n", what, rc);
        abort();
    }
}

static void check_kv(const struct keel_etcd_kv *kv)
{
    struct keel_buf enc = KEEL_BUF_INIT, dec = KEEL_BUF_INIT;

    require(kv->key != NULL && kv->key[kv->key_len] == '\0', "key NUL-terminated");
    require(kv->value != NULL && kv->value[kv->value_len] == '\0', "value NUL-terminated");
    keel_etcd_b64_encode(kv->value, kv->value_len, &enc);
    require(keel_etcd_b64_decode((const char *)enc.buf, enc.len, &dec) == 0, "b64 re-decodes");
    require(dec.len == kv->value_len && memcmp(dec.buf, kv->value, dec.len) == 0, "b64 round trip");
    keel_buf_release(&enc);
    keel_buf_release(&dec);
}

static void check_txn(const struct keel_etcd_txn_result *r)
{
    for (size_t i = 0; i < r->n; i++) {
        for (size_t k = 0; k < r->ops[i].range.n; k++)
            check_kv(&r->ops[i].range.kvs[k]);
        require((r->ops[i].op == KEEL_ETCD_OP_TXN) == (r->ops[i].txn != NULL), "nested txn");
        if (r->ops[i].txn)
            check_txn(r->ops[i].txn);
    }
}

struct stream_state {
    int lines;
};

static int on_line(void *user, const char *line, size_t n)
{
    struct stream_state *s = user;
    struct keel_etcd_watch_msg m;
    struct keel_etcd_kv kv;
    struct keel_error err;
    int rc;

    s->lines++;
    require(memchr(line, '\n', n) == NULL, "a line holds no newline");
    keel_error_init(&err);
    rc = keel_etcd_decode_watch(line, n, &m, &err);
    refused(rc, &err, "watch");
    if (rc == 0) {
        for (size_t i = 0; i < m.n; i++) {
            check_kv(&m.events[i].kv);
            if (m.events[i].has_prev)
                check_kv(&m.events[i].prev_kv);
        }
        keel_etcd_watch_msg_release(&m);
    }
    keel_error_init(&err);
    rc = keel_etcd_decode_observe(line, n, &kv, &err);
    refused(rc, &err, "observe");
    if (rc == 0) {
        check_kv(&kv);
        keel_etcd_kv_release(&kv);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *json = (const char *)data;
    struct keel_etcd_txn_result txn;
    struct keel_etcd_leader leader;
    struct keel_member_info member;
    struct keel_etcd_kvs range;
    struct keel_etcd_lines lines;
    struct stream_state st = {0};
    struct keel_buf b64 = KEEL_BUF_INIT;
    struct keel_error err;
    size_t pos = 0, step;
    int64_t ttl;
    int rc;

    keel_error_init(&err);
    rc = keel_etcd_decode_range(json, size, &range, &err);
    refused(rc, &err, "range");
    if (rc == 0) {
        for (size_t i = 0; i < range.n; i++)
            check_kv(&range.kvs[i]);
        keel_etcd_kvs_release(&range);
    }

    keel_error_init(&err);
    rc = keel_etcd_decode_txn(json, size, &txn, &err);
    refused(rc, &err, "txn");
    if (rc == 0) {
        check_txn(&txn);
        keel_etcd_txn_result_release(&txn);
    }

    keel_error_init(&err);
    rc = keel_etcd_decode_keepalive(json, size, &ttl, &err);
    refused(rc, &err, "keepalive");
    require(rc != 0 || ttl >= 0, "TTL never negative");

    keel_error_init(&err);
    rc = keel_etcd_decode_campaign(json, size, &leader, &err);
    refused(rc, &err, "campaign");
    if (rc == 0) {
        require(leader.key[leader.key_len] == '\0' && leader.rev > 0, "leader");
        keel_etcd_leader_release(&leader);
    }

    keel_error_init(&err);
    rc = keel_etcd_decode_error(json, size, 503, "fuzz", &err);
    require(rc != 0 && err.msg[0] != '\0', "an error reply is always an error with a message");

    keel_error_init(&err);
    rc = keel_member_decode(data, size, &member, &err);
    refused(rc, &err, "member");
    if (rc == 0)
        keel_member_info_release(&member);

    (void)keel_etcd_b64_decode(json, size, &b64);
    keel_buf_release(&b64);

    /* The stream: piece sizes come from the input's own bytes. */
    keel_etcd_lines_init(&lines, 4096);
    while (pos < size) {
        step = 1 + data[pos] % 61;
        if (step > size - pos)
            step = size - pos;
        keel_error_init(&err);
        rc = keel_etcd_lines_feed(&lines, data + pos, step, on_line, &st, &err);
        refused(rc, &err, "lines");
        require(lines.buf.len <= lines.max, "line buffer within its bound");
        pos += step;
    }
    keel_etcd_lines_release(&lines);
    return 0;
}
