/*
 * test_replicas.c - a server's replica report (keel/replicas.h): its JSON
 * round trip and the decoder's refusals of untrusted input.
 */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "keel/replicas.h"

/* 1 when every byte of `r` is zero. */
static int zeroed(const struct keel_replica_report *r)
{
    static const struct keel_replica_report zero;

    return memcmp(r, &zero, sizeof(*r)) == 0;
}

static int decode_str(const char *json, struct keel_replica_report *r, struct keel_error *err)
{
    keel_error_init(err);
    return keel_replica_report_decode(json, strlen(json), r, err);
}

Test(replicas, round_trip)
{
    struct keel_replica_report r, back;
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_error err;

    memset(&r, 0, sizeof(r));
    r.incarnation = 7;
    r.terms[0] = 1;
    r.lsns[0] = 0; /* held, nothing applied yet */
    r.terms[17] = 3;
    r.lsns[17] = 42;
    r.terms[255] = INT64_MAX;
    r.lsns[255] = INT64_MAX;
    r.lost[3] = 1;      /* told to lead it, holds none of its state */
    r.npledged[17] = 2; /* it leads range 17 and waits for these backups */
    snprintf(r.pledged[17][0], sizeof(r.pledged[17][0]), "s-2");
    snprintf(r.pledged[17][1], sizeof(r.pledged[17][1]), "s_3");
    r.lost[200] = 1;
    r.restoring[17] = 1; /* restored from the store, pushes held until the shards rewind */
    r.nfloor = 3;
    r.floor[0] = 0;
    r.floor[1] = (2ull << 32) | 5;
    r.floor[2] = INT64_MAX;
    r.stored[4] = 1; /* not held: the store holds it up to LSN 1 */
    r.stored[254] = INT64_MAX;
    keel_replica_report_encode(&r, &b);
    memset(&back, 0x55, sizeof(back));
    keel_error_init(&err);
    cr_assert_eq(keel_replica_report_decode(b.buf, b.len, &back, &err), 0, "%s", err.msg);
    cr_assert_eq(memcmp(&r, &back, sizeof(r)), 0, "the report survives its JSON");

    /* The canonical form is stable: encoding the decoded report gives the same bytes. */
    {
        struct keel_buf b2 = KEEL_BUF_INIT;

        keel_replica_report_encode(&back, &b2);
        cr_assert_eq(b2.len, b.len);
        cr_assert_eq(memcmp(b2.buf, b.buf, b.len), 0);
        keel_buf_release(&b2);
    }
    keel_buf_release(&b);
}

Test(replicas, empty_and_hand_written)
{
    struct keel_replica_report r;
    struct keel_error err;

    cr_assert_eq(decode_str("{\"incarnation\":0,\"lost\":[],\"ranges\":[]}", &r, &err), 0, "%s",
                 err.msg);
    cr_assert(zeroed(&r));
    cr_assert_eq(
        decode_str("{\"lost\":[],\"ranges\":[[2,5,0],[9,1,77]],\"incarnation\":12}", &r, &err), 0,
        "%s", err.msg);
    cr_assert_eq(r.incarnation, 12);
    cr_assert_eq(r.terms[2], 5);
    cr_assert_eq(r.lsns[2], 0);
    cr_assert_eq(r.terms[9], 1);
    cr_assert_eq(r.lsns[9], 77);
    cr_assert_eq(r.terms[3], 0, "a range not listed is not held");
    cr_assert_eq(decode_str("{\"incarnation\":1,\"lost\":[],\"ranges\":[[2,5,0]],"
                            "\"stored\":[[1,9],[3,4]]}",
                            &r, &err),
                 0, "%s", err.msg);
    cr_assert_eq(r.stored[1], 9);
    cr_assert_eq(r.stored[3], 4);
    cr_assert_eq(r.stored[2], 0);
}

/* Inputs the decoder must refuse, each with why. */
static const char *const refused[][2] = {
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[256,1,0]]}", "range 256"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0],[300,1,0]]}",
     "range past 255 after a good one"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[3,1,0],[3,1,0]]}", "a range listed twice"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[4,1,0],[3,1,0]]}", "ranges decreasing"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[3,0,0]]}", "term 0"},
    {"{\"incarnation\":-1,\"lost\":[],\"ranges\":[]}", "negative incarnation"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[-1,1,0]]}", "negative range"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,-1,0]]}", "negative term"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,-5]]}", "negative lsn"},
    {"{\"incarnation\":9223372036854775808,\"lost\":[],\"ranges\":[]}", "incarnation past int64"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,1.5]]}", "a fractional lsn"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,\"1\",0]]}", "a term as a string"},
    {"{\"lost\":[],\"ranges\":[]}", "incarnation missing"},
    {"{\"incarnation\":1,\"lost\":[]}", "ranges missing"},
    {"{\"incarnation\":1,\"ranges\":[]}", "lost missing"},
    {"{\"incarnation\":1,\"lost\":[256],\"ranges\":[]}", "a lost range past 255"},
    {"{\"incarnation\":1,\"lost\":[4,3],\"ranges\":[]}", "lost ranges decreasing"},
    {"{\"incarnation\":1,\"lost\":[[4]],\"ranges\":[]}", "a lost entry that is not a number"},
    {"{\"incarnation\":1,\"lost\":{},\"ranges\":[]}", "lost not an array"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[],\"lag\":0}", "an extra key"},
    {"{\"incarnation\":1,\"incarnation\":2,\"lost\":[],\"ranges\":[]}", "a duplicate key"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[7]}", "an entry that is not an array"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[{\"range\":0}]}", "an entry that is an object"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1]]}", "an entry of two numbers"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0,0]]}", "an entry of four numbers"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0,\"s1\",\"s1\"]]}",
     "a backup pledged twice"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0,\"s.1\"]]}",
     "a pledged id that is not an id"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0,\"a\",\"b\",\"c\",\"d\",\"e\"]]}",
     "five backups pledged"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":{}}", "ranges not an array"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0]],\"restoring\":[0]}",
     "restoring without a floor"},
    {"{\"floor\":[1],\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0]]}",
     "a floor without restoring"},
    {"{\"floor\":[1],\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0]],\"restoring\":[1]}",
     "a restoring range not held"},
    {"{\"floor\":[],\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0]],\"restoring\":[0]}",
     "an empty floor"},
    {"{\"floor\":[-1],\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0]],\"restoring\":[0]}",
     "a negative floor"},
    {"{\"floor\":[1],\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0],[1,1,0]],"
     "\"restoring\":[1,0]}",
     "restoring decreasing"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0]],\"stored\":[[0,5]]}",
     "a range both held and stored"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[],\"stored\":[[3,0]]}", "a stored LSN of 0"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[],\"stored\":[[3,1],[3,2]]}",
     "a range stored twice"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[],\"stored\":[[256,1]]}",
     "a stored range past 255"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[],\"stored\":[[3,1,2]]}",
     "a stored entry of three numbers"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[],\"stored\":{}}", "stored not an array"},
    {"[]", "not an object"},
    {"{\"incarnation\":1,\"lost\":[],\"ranges\":[]", "truncated"},
    {"", "empty"},
};

Test(replicas, refusals)
{
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        struct keel_replica_report r;
        struct keel_error err;

        memset(&r, 0x55, sizeof(r));
        cr_expect_eq(decode_str(refused[i][0], &r, &err), KEEL_ECORRUPT, "%s: %s", refused[i][1],
                     refused[i][0]);
        cr_expect_eq(err.code, KEEL_ECORRUPT, "%s", refused[i][1]);
        cr_expect_neq(err.msg[0], '\0', "%s: the error says why", refused[i][1]);
        cr_expect(zeroed(&r), "%s: *r zeroed on error", refused[i][1]);
    }
}

Test(replicas, error_names_the_entry)
{
    struct keel_replica_report r;
    struct keel_error err;

    cr_assert_eq(
        decode_str("{\"incarnation\":1,\"lost\":[],\"ranges\":[[0,1,0],[1,0,0]]}", &r, &err),
        KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "ranges[1]") != NULL, "%s", err.msg);
}

Test(replicas, too_big)
{
    const char *head = "{\"incarnation\":1,\"lost\":[],\"ranges\":[]}";
    size_t len = KEEL_REPLICAS_MAX_JSON + 1;
    char *big = malloc(len);
    struct keel_replica_report r;
    struct keel_error err;

    cr_assert_not_null(big);
    /* Valid JSON padded with spaces to one byte past the limit. */
    memset(big, ' ', len);
    memcpy(big, head, strlen(head));
    memset(&r, 0x55, sizeof(r));
    keel_error_init(&err);
    cr_assert_eq(keel_replica_report_decode(big, len, &r, &err), KEEL_ECORRUPT);
    cr_assert(zeroed(&r));
    /* At the limit it is accepted. */
    cr_assert_eq(keel_replica_report_decode(big, len - 1, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r.incarnation, 1);
    free(big);
}
