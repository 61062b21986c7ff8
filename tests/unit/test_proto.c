/*
 * test_proto.c - the wire codec: round trips of every message type and a
 * table of malformed frames, each giving its own error.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "alloc.h"
#include "keel/proto.h"

#define MAXF (64u << 20)

static const uint64_t keys3[] = {3, 70, (UINT64_C(2) << 48) | 5};
static const float rows3x2[] = {1.5f, -2.0f, 0.25f, 8.0f, -0.0f, 1e-7f};

static struct keel_msg make(unsigned type)
{
    struct keel_msg m;

    memset(&m, 0, sizeof(m));
    m.hdr.type = (uint8_t)type;
    m.hdr.request_id = UINT64_C(0x1122334455667788);
    m.hdr.epoch = 42;
    return m;
}

static void fill_push(struct keel_msg_push *p)
{
    p->worker_id = keel_str_of("worker-7");
    p->shard = 9;
    p->incarnation = 3;
    p->seq = (UINT64_C(1) << 32) | 17;
    p->clock = 12;
    p->assignment_version = UINT64_C(0x0102030405060708);
    p->data.table_id = 2;
    p->data.row_width = 2;
    p->data.nkeys = 3;
    p->data.keys = keys3;
    p->data.rows = rows3x2;
}

/* Encode m, decode it back into *out (pointing into *buf), check the header. */
static void round_trip(const struct keel_msg *m, struct keel_buf *buf, struct keel_msg *out)
{
    struct keel_error err;

    keel_error_init(&err);
    keel_buf_init(buf, 0);
    cr_assert_eq(keel_proto_encode(buf, m, &err), 0, "encode: %s", err.msg);
    cr_assert_eq(buf->len, KEEL_PROTO_HEADER_SIZE + keel_load_u32le(buf->buf + 24));
    cr_assert_eq(keel_proto_decode(buf->buf, buf->len, MAXF, out, &err), 0, "decode: %s", err.msg);
    cr_assert_eq(out->hdr.magic, KEEL_PROTO_MAGIC);
    cr_assert_eq(out->hdr.version, KEEL_PROTO_VERSION);
    cr_assert_eq(out->hdr.type, m->hdr.type);
    cr_assert_eq(out->hdr.flags, m->hdr.flags);
    cr_assert_eq(out->hdr.request_id, m->hdr.request_id);
    cr_assert_eq(out->hdr.epoch, m->hdr.epoch);
}

static void assert_str(struct keel_str s, const char *expect)
{
    cr_assert_eq(s.len, strlen(expect));
    cr_assert_eq(memcmp(s.ptr, expect, s.len), 0);
}

static void assert_rows(const struct keel_rows *a, const struct keel_rows *b, int with_rows)
{
    cr_assert_eq(a->table_id, b->table_id);
    cr_assert_eq(a->row_width, b->row_width);
    cr_assert_eq(a->nkeys, b->nkeys);
    cr_assert_eq(memcmp(a->keys, b->keys, a->nkeys * 8), 0);
    if (with_rows)
        cr_assert_eq(memcmp(a->rows, b->rows, (size_t)a->nkeys * a->row_width * 4), 0);
    else
        cr_assert_null(b->rows);
}

Test(proto, header_is_32_bytes_little_endian)
{
    struct keel_msg m = make(KEEL_MSG_ACK), out;
    struct keel_buf b;

    round_trip(&m, &b, &out);
    cr_assert_eq(memcmp(b.buf, "KEEL", 4), 0);
    cr_assert_eq(b.buf[4], KEEL_PROTO_VERSION);
    cr_assert_eq(b.buf[5], KEEL_MSG_ACK);
    cr_assert_eq(b.buf[8], 0x88, "request id is little-endian");
    cr_assert_eq(b.buf[16], 42);
    cr_assert_eq(keel_load_u32le(b.buf + 24), 24);
    cr_assert_eq(b.len, 56);
    keel_buf_release(&b);
}

Test(proto, hello_round_trips)
{
    struct keel_msg m = make(KEEL_MSG_HELLO), out;
    struct keel_buf b;

    m.u.hello.role = KEEL_ROLE_WORKER;
    m.u.hello.incarnation = 77;
    m.u.hello.node_id = keel_str_of("w3");
    round_trip(&m, &b, &out);
    cr_assert_eq(out.u.hello.role, KEEL_ROLE_WORKER);
    cr_assert_eq(out.u.hello.incarnation, 77);
    assert_str(out.u.hello.node_id, "w3");
    keel_buf_release(&b);
}

Test(proto, push_round_trips_and_points_into_frame)
{
    struct keel_msg m = make(KEEL_MSG_PUSH), out;
    struct keel_buf b;

    fill_push(&m.u.push);
    round_trip(&m, &b, &out);
    assert_str(out.u.push.worker_id, "worker-7");
    cr_assert_eq(out.u.push.shard, 9);
    cr_assert_eq(out.u.push.incarnation, 3);
    cr_assert_eq(out.u.push.seq, m.u.push.seq);
    cr_assert_eq(out.u.push.clock, 12);
    cr_assert_eq(out.u.push.assignment_version, UINT64_C(0x0102030405060708));
    assert_rows(&m.u.push.data, &out.u.push.data, 1);
    cr_assert((const unsigned char *)out.u.push.data.keys > b.buf &&
                  (const unsigned char *)out.u.push.data.keys < b.buf + b.len,
              "keys are read in place");
    cr_assert_eq((uintptr_t)out.u.push.data.keys % 8, 0);
    keel_buf_release(&b);
}

Test(proto, push_with_no_keys_round_trips)
{
    struct keel_msg m = make(KEEL_MSG_PUSH), out;
    struct keel_buf b;

    fill_push(&m.u.push);
    m.u.push.data.nkeys = 0;
    m.u.push.data.keys = NULL;
    m.u.push.data.rows = NULL;
    round_trip(&m, &b, &out);
    cr_assert_eq(out.u.push.data.nkeys, 0);
    keel_buf_release(&b);
}

Test(proto, pull_round_trips_without_rows)
{
    struct keel_msg m = make(KEEL_MSG_PULL), out;
    struct keel_buf b;

    m.u.pull.worker_id = keel_str_of("w1");
    m.u.pull.clock = 5;
    m.u.pull.assignment_version = 77;
    m.u.pull.data.table_id = 1;
    m.u.pull.data.row_width = 2;
    m.u.pull.data.nkeys = 3;
    m.u.pull.data.keys = keys3;
    round_trip(&m, &b, &out);
    assert_str(out.u.pull.worker_id, "w1");
    cr_assert_eq(out.u.pull.clock, 5);
    cr_assert_eq(out.u.pull.assignment_version, 77);
    assert_rows(&m.u.pull.data, &out.u.pull.data, 0);
    keel_buf_release(&b);
}

Test(proto, pull_reply_round_trips)
{
    struct keel_msg m = make(KEEL_MSG_PULL_REPLY), out;
    struct keel_buf b;

    m.hdr.flags = KEEL_FLAG_REPLY;
    m.u.pull_reply.clock = 4;
    m.u.pull_reply.data.table_id = 2;
    m.u.pull_reply.data.row_width = 2;
    m.u.pull_reply.data.nkeys = 3;
    m.u.pull_reply.data.keys = keys3;
    m.u.pull_reply.data.rows = rows3x2;
    round_trip(&m, &b, &out);
    cr_assert_eq(out.u.pull_reply.clock, 4);
    assert_rows(&m.u.pull_reply.data, &out.u.pull_reply.data, 1);
    keel_buf_release(&b);
}

Test(proto, ack_round_trips)
{
    struct keel_msg m = make(KEEL_MSG_ACK), out;
    struct keel_buf b;

    m.hdr.flags = KEEL_FLAG_REPLY;
    m.u.ack.lsn = 1000;
    m.u.ack.seq = 17;
    m.u.ack.shard = 9;
    m.u.ack.status = KEEL_ACK_DUPLICATE;
    round_trip(&m, &b, &out);
    cr_assert_eq(out.u.ack.lsn, 1000);
    cr_assert_eq(out.u.ack.seq, 17);
    cr_assert_eq(out.u.ack.shard, 9);
    cr_assert_eq(out.u.ack.status, KEEL_ACK_DUPLICATE);
    keel_buf_release(&b);
}

Test(proto, error_round_trips)
{
    struct keel_msg m = make(KEEL_MSG_ERROR), out;
    struct keel_buf b;

    m.u.error.code = KEEL_EREDIRECT;
    m.u.error.assignment_version = 31;
    m.u.error.message = keel_str_of("range 4 is led by s2");
    round_trip(&m, &b, &out);
    cr_assert_eq(out.u.error.code, KEEL_EREDIRECT);
    cr_assert_eq(out.u.error.assignment_version, 31);
    assert_str(out.u.error.message, "range 4 is led by s2");
    keel_buf_release(&b);
}

Test(proto, replicate_round_trips_with_nested_push)
{
    struct keel_msg m = make(KEEL_MSG_REPLICATE), out;
    struct keel_buf b;

    m.u.replicate.range = 255;
    m.u.replicate.cut = 0xfedcba98;
    m.u.replicate.term = 42;
    m.u.replicate.lsn = 123456789;
    fill_push(&m.u.replicate.push);
    round_trip(&m, &b, &out);
    cr_assert_eq(out.u.replicate.range, 255);
    cr_assert_eq(out.u.replicate.cut, 0xfedcba98);
    cr_assert_eq(out.u.replicate.term, 42);
    cr_assert_eq(out.u.replicate.lsn, 123456789);
    assert_str(out.u.replicate.push.worker_id, "worker-7");
    cr_assert_eq(out.u.replicate.push.seq, m.u.replicate.push.seq);
    assert_rows(&m.u.replicate.push.data, &out.u.replicate.push.data, 1);
    keel_buf_release(&b);
}

Test(proto, shard_read_round_trips)
{
    struct keel_msg m = make(KEEL_MSG_SHARD_READ), out;
    struct keel_buf b;

    m.u.shard_read.dataset = keel_str_of("fashion-mnist");
    m.u.shard_read.shard = 3;
    m.u.shard_read.max_records = 256;
    m.u.shard_read.first = 1024;
    round_trip(&m, &b, &out);
    assert_str(out.u.shard_read.dataset, "fashion-mnist");
    cr_assert_eq(out.u.shard_read.shard, 3);
    cr_assert_eq(out.u.shard_read.max_records, 256);
    cr_assert_eq(out.u.shard_read.first, 1024);
    keel_buf_release(&b);
}

Test(proto, shard_data_round_trips)
{
    static const uint32_t offsets[] = {0, 3, 3, 8};
    struct keel_msg m = make(KEEL_MSG_SHARD_DATA), out;
    struct keel_buf b;

    m.hdr.flags = KEEL_FLAG_REPLY | KEEL_FLAG_LAST;
    m.u.shard_data.shard = 3;
    m.u.shard_data.nrecords = 3;
    m.u.shard_data.first = 10;
    m.u.shard_data.total = 13;
    m.u.shard_data.offsets = offsets;
    m.u.shard_data.data = (const unsigned char *)"abcdefgh";
    round_trip(&m, &b, &out);
    cr_assert_eq(out.u.shard_data.nrecords, 3);
    cr_assert_eq(out.u.shard_data.first, 10);
    cr_assert_eq(out.u.shard_data.total, 13);
    cr_assert_eq(memcmp(out.u.shard_data.offsets, offsets, sizeof(offsets)), 0);
    cr_assert_eq(memcmp(out.u.shard_data.data, "abcdefgh", 8), 0);
    keel_buf_release(&b);
}

Test(proto, range_copy_round_trips_and_refuses_a_range_past_255)
{
    struct keel_msg m = make(KEEL_MSG_RANGE_COPY), out;
    struct keel_buf b;
    struct keel_error err;

    m.u.range_copy.range = 17;
    m.u.range_copy.term = 9;
    m.u.range_copy.payload = keel_view_make("packed", 6);
    round_trip(&m, &b, &out);
    cr_assert_eq(out.u.range_copy.range, 17);
    cr_assert_eq(out.u.range_copy.term, 9);
    cr_assert_eq(out.u.range_copy.payload.len, 6);
    cr_assert_eq(memcmp(out.u.range_copy.payload.data, "packed", 6), 0);
    keel_buf_release(&b);

    b = (struct keel_buf)KEEL_BUF_INIT;
    m.u.range_copy.range = 256;
    keel_error_init(&err);
    cr_assert_eq(keel_proto_encode(&b, &m, &err), KEEL_EINVAL);
    keel_buf_release(&b);
}

Test(proto, admin_round_trips)
{
    struct keel_msg m = make(KEEL_MSG_ADMIN), out;
    struct keel_buf b;

    m.u.admin.op = 4;
    m.u.admin.payload = keel_view_make("{\"x\":1}", 7);
    round_trip(&m, &b, &out);
    cr_assert_eq(out.u.admin.op, 4);
    cr_assert_eq(out.u.admin.payload.len, 7);
    cr_assert_eq(memcmp(out.u.admin.payload.data, "{\"x\":1}", 7), 0);
    keel_buf_release(&b);
}

/*
 * A push with 16-bit rows: 2 bytes a value, zero-padded to 8; the flag says
 * which encoding; decoded values point into the frame and widen to exactly
 * the narrowed floats.
 */
Test(proto, push_round_trips_with_16_bit_rows)
{
    for (unsigned enc = KEEL_ROWS_BF16; enc <= KEEL_ROWS_FP16; enc++) {
        struct keel_msg m = make(KEEL_MSG_PUSH), f32 = make(KEEL_MSG_PUSH), out;
        struct keel_buf b, bf;
        uint16_t half[6];
        float back[6];

        fill_push(&f32.u.push);
        round_trip(&f32, &bf, &out);
        fill_push(&m.u.push);
        keel_half_narrow((enum keel_rows_enc)enc, rows3x2, half, 6);
        m.u.push.data.rows = NULL;
        m.u.push.data.enc = enc;
        m.u.push.data.half = half;
        m.hdr.flags = enc == KEEL_ROWS_BF16 ? KEEL_FLAG_BF16 : KEEL_FLAG_FP16;
        round_trip(&m, &b, &out);
        cr_assert_eq(b.len, bf.len - 8, "6 values: 12 bytes and 4 of padding instead of 24");
        cr_assert_eq(out.u.push.data.enc, enc);
        cr_assert_null(out.u.push.data.rows);
        cr_assert((const unsigned char *)out.u.push.data.half > b.buf &&
                      (const unsigned char *)out.u.push.data.half < b.buf + b.len,
                  "16-bit values are read in place");
        cr_assert_eq(memcmp(out.u.push.data.half, half, sizeof(half)), 0);
        cr_assert_eq(memcmp(out.u.push.data.keys, keys3, sizeof(keys3)), 0);
        keel_rows_widen(&out.u.push.data, 1, 2, back);
        for (int i = 0; i < 4; i++)
            cr_assert_float_eq(back[i], rows3x2[2 + i], 1e-2 * fabsf(rows3x2[2 + i]) + 0x1p-25f,
                               "value %d", 2 + i);
        keel_buf_release(&b);
        keel_buf_release(&bf);
    }
}

/* Values that end off an 8-byte boundary: 32-bit ones need no padding, 16-bit ones get it. */
Test(proto, rows_of_any_length_round_trip_in_every_encoding)
{
    static const float vals[5] = {1, 2, 3, 4, 5};
    uint16_t half[5];

    for (uint32_t n = 1; n <= 5; n++)
        for (unsigned enc = KEEL_ROWS_F32; enc <= KEEL_ROWS_FP16; enc++) {
            struct keel_msg m = make(KEEL_MSG_PULL_REPLY), out;
            struct keel_buf b;
            float back[5];
            size_t values = enc == KEEL_ROWS_F32 ? 4 * n : 2 * n;

            if (enc != KEEL_ROWS_F32)
                keel_half_narrow((enum keel_rows_enc)enc, vals, half, n);
            m.hdr.flags = (uint16_t)(KEEL_FLAG_REPLY | (enc == KEEL_ROWS_BF16   ? KEEL_FLAG_BF16
                                                        : enc == KEEL_ROWS_FP16 ? KEEL_FLAG_FP16
                                                                                : 0));
            m.u.pull_reply.data =
                (struct keel_rows){1, n, 1, keys3, enc ? NULL : vals, enc, enc ? half : NULL};
            round_trip(&m, &b, &out);
            cr_assert_eq(b.len,
                         KEEL_PROTO_HEADER_SIZE + 24 + 8 +
                             (enc == KEEL_ROWS_F32 ? values : (values + 7) / 8 * 8),
                         "%u values of encoding %u: %zu bytes", n, enc, b.len);
            keel_rows_widen(&out.u.pull_reply.data, 0, 1, back);
            for (uint32_t i = 0; i < n; i++)
                cr_assert_eq(back[i], vals[i]);
            keel_buf_release(&b);
        }
}

/* The encoder sets the 16-bit flag from the rows, whatever the caller put in the header. */
Test(proto, encoder_flags_follow_the_rows_encoding)
{
    struct keel_msg m = make(KEEL_MSG_PULL), out;
    struct keel_buf b = KEEL_BUF_INIT;

    m.u.pull.worker_id = keel_str_of("w1");
    m.u.pull.data = (struct keel_rows){1, 2, 3, keys3, NULL, KEEL_ROWS_FP16, NULL};
    cr_assert_eq(keel_proto_encode(&b, &m, NULL), 0);
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, NULL), 0);
    cr_assert_eq(out.hdr.flags, KEEL_FLAG_FP16, "a pull asks for fp16 rows");
    cr_assert_eq(out.u.pull.data.enc, KEEL_ROWS_FP16);
    keel_buf_reset(&b);
    m.hdr.flags = KEEL_FLAG_BF16; /* stale: the rows say 32-bit */
    m.u.pull.data.enc = KEEL_ROWS_F32;
    cr_assert_eq(keel_proto_encode(&b, &m, NULL), 0);
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, NULL), 0);
    cr_assert_eq(out.hdr.flags, 0);
    cr_assert_eq(out.u.pull.data.enc, KEEL_ROWS_F32);
    keel_buf_release(&b);
}

Test(proto, pull_reply_round_trips_with_bf16_rows)
{
    struct keel_msg m = make(KEEL_MSG_PULL_REPLY), out;
    struct keel_buf b;
    uint16_t half[6];
    float back[6];

    keel_half_narrow(KEEL_ROWS_BF16, rows3x2, half, 6);
    m.hdr.flags = KEEL_FLAG_REPLY | KEEL_FLAG_BF16;
    m.u.pull_reply.clock = 4;
    m.u.pull_reply.data = (struct keel_rows){2, 2, 3, keys3, NULL, KEEL_ROWS_BF16, half};
    round_trip(&m, &b, &out);
    cr_assert_eq(out.u.pull_reply.data.enc, KEEL_ROWS_BF16);
    keel_rows_widen(&out.u.pull_reply.data, 0, 3, back);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(keel_f32_bits(back[i]), keel_f32_bits(keel_f32_from_bf16(half[i])));
    keel_buf_release(&b);
}

/* 16-bit rows where they do not belong, or not as the decoder wants them. */
Test(proto, bad_16_bit_rows_are_refused)
{
    struct keel_msg m = make(KEEL_MSG_PUSH), out;
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_error err;
    uint16_t half[6] = {0};

    keel_error_init(&err);
    fill_push(&m.u.push);
    m.u.push.data.rows = NULL;
    m.u.push.data.enc = KEEL_ROWS_BF16;
    cr_assert_eq(keel_proto_encode(&b, &m, &err), KEEL_EINVAL, "no values: %s", err.msg);
    m.u.push.data.enc = 3;
    m.u.push.data.half = half;
    cr_assert_eq(keel_proto_encode(&b, &m, &err), KEEL_EINVAL, "encoding 3: %s", err.msg);
    m.u.push.data.enc = KEEL_ROWS_BF16;
    cr_assert_eq(keel_proto_encode(&b, &m, &err), 0, "%s", err.msg);

    /* The padding after the values: 12 bytes of values, 4 of padding, at the end. */
    b.buf[b.len - 1] = 0x5A;
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, &err), KEEL_EPADDING, "%s", err.msg);
    b.buf[b.len - 1] = 0;
    /* Both flags; a flag on a frame without rows. */
    b.buf[6] = KEEL_FLAG_BF16 | KEEL_FLAG_FP16;
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, &err), KEEL_EFLAGS, "%s", err.msg);
    b.buf[6] = KEEL_FLAG_BF16;
    b.buf[5] = KEEL_MSG_ACK;
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, &err), KEEL_EFLAGS, "%s", err.msg);
    b.buf[5] = KEEL_MSG_PUSH;
    /* Without the flag, the same bytes are too few for 32-bit rows. */
    b.buf[6] = 0;
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, &err), KEEL_ECOUNT, "%s", err.msg);
    b.buf[6] = KEEL_FLAG_BF16;
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, &err), 0, "%s", err.msg);
    keel_buf_release(&b);

    /* A REPLICATE carries what the primary applied: 32-bit rows only. */
    m = make(KEEL_MSG_REPLICATE);
    fill_push(&m.u.replicate.push);
    m.u.replicate.push.data.rows = NULL;
    m.u.replicate.push.data.enc = KEEL_ROWS_BF16;
    m.u.replicate.push.data.half = half;
    keel_buf_init(&b, 0);
    cr_assert_eq(keel_proto_encode(&b, &m, &err), KEEL_EINVAL, "%s", err.msg);
    keel_buf_release(&b);
}

Test(proto, decode_uses_only_its_frame_when_more_bytes_follow)
{
    struct keel_msg m = make(KEEL_MSG_ACK), out;
    struct keel_buf b = KEEL_BUF_INIT;

    cr_assert_eq(keel_proto_encode(&b, &m, NULL), 0);
    cr_assert_eq(keel_proto_encode(&b, &m, NULL), 0);
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, NULL), 0);
    cr_assert_eq(out.hdr.body_len, 24);
    keel_buf_release(&b);
}

/*
 * Malformed frames.  Each case starts from the same valid PUSH frame:
 *   header 0..31; body at 32: table_id@32 row_width@36 nkeys@40 shard@44
 *   incarnation@48 seq@56 clock@64 assignment_version@72 lease@80 worker_id:
 *   len@88 "w1"@90 pad@92..95 keys@96 (3 x 8) rows@120 (3 x 2 x 4) end@144
 * then writes `value` (little-endian, `width` bytes) at `offset`, changes the
 * available length by `len_delta`, and decodes with `max_frame` (0: 64 MiB).
 */
struct malformed {
    char name[40];
    size_t offset;
    int width; /* 0: no write */
    uint64_t value;
    int len_delta;
    size_t max_frame;
    int expect;
};

#define PUSH_FRAME_LEN 144

ParameterizedTestParameters(proto, malformed_frames_give_specific_errors)
{
    static struct malformed cases[] = {
        {"truncated header", 0, 0, 0, -(PUSH_FRAME_LEN - 20), 0, KEEL_ETRUNCATED},
        {"empty input", 0, 0, 0, -PUSH_FRAME_LEN, 0, KEEL_ETRUNCATED},
        {"wrong magic", 0, 4, 0x4C45454C, 0, 0, KEEL_EMAGIC},
        {"version 1 (before assignment versions)", 4, 1, 1, 0, 0, KEEL_EVERSION},
        {"unknown type", 5, 1, 99, 0, 0, KEEL_ETYPE},
        {"type zero", 5, 1, 0, 0, 0, KEEL_ETYPE},
        {"unknown flag", 6, 2, 0x8000, 0, 0, KEEL_EFLAGS},
        {"LAST flag on a PUSH", 6, 2, KEEL_FLAG_LAST, 0, 0, KEEL_EFLAGS},
        {"BF16 and FP16 flags together", 6, 2, KEEL_FLAG_BF16 | KEEL_FLAG_FP16, 0, 0, KEEL_EFLAGS},
        {"BF16 flag on 32-bit rows", 6, 2, KEEL_FLAG_BF16, 0, 0, KEEL_EPADDING},
        {"header reserved set", 28, 4, 1, 0, 0, KEEL_ERESERVED},
        {"body length past the end", 24, 4, 112 + 8, 0, 0, KEEL_EBODYLEN},
        {"body cut short", 0, 0, 0, -1, 0, KEEL_EBODYLEN},
        {"oversize frame", 24, 4, 1u << 20, 0, 4096, KEEL_EFRAMESIZE},
        {"body length 4 GiB", 24, 4, 0xFFFFFFFF, 0, 0, KEEL_EFRAMESIZE},
        {"body shorter than fields", 24, 4, 10, 0, 0, KEEL_ESHORTBODY},
        {"key count overflows", 40, 4, 0xFFFFFFFF, 0, 0, KEEL_ECOUNT},
        {"key count one too many", 40, 4, 4, 0, 0, KEEL_ECOUNT},
        {"key count one too few", 40, 4, 2, 0, 0, KEEL_ETRAILING},
        {"unsorted keys", 96, 8, 100, 0, 0, KEEL_EUNSORTED},
        {"duplicate keys", 104, 8, 3, 0, 0, KEEL_EUNSORTED},
        {"zero-length rows", 36, 4, 0, 0, 0, KEEL_EROWWIDTH},
        {"row width too large", 36, 4, (1u << 20) + 1, 0, 0, KEEL_EROWWIDTH},
        {"string longer than limit", 88, 2, 65, 0, 0, KEEL_ESTRING},
        {"string past the body", 88, 2, 60, 0, 0, KEEL_ESHORTBODY},
        {"string with NUL", 91, 1, 0, 0, 0, KEEL_ESTRING},
        {"empty worker id", 88, 4, 0, 0, 0, KEEL_ESTRING},
        {"padding not zero", 93, 1, 0xAA, 0, 0, KEEL_EPADDING},
        {"trailing bytes", 24, 4, 112 + 8, 8, 0, KEEL_ETRAILING},
    };
    return cr_make_param_array(struct malformed, cases, sizeof(cases) / sizeof(cases[0]));
}

static void valid_push_frame(struct keel_buf *b)
{
    static const uint64_t keys[] = {3, 5, 9};
    static const float rows[] = {1, 2, 3, 4, 5, 6};
    struct keel_msg m = make(KEEL_MSG_PUSH);

    m.u.push.worker_id = keel_str_of("w1");
    m.u.push.data.table_id = 1;
    m.u.push.data.row_width = 2;
    m.u.push.data.nkeys = 3;
    m.u.push.data.keys = keys;
    m.u.push.data.rows = rows;
    keel_buf_init(b, 0);
    cr_assert_eq(keel_proto_encode(b, &m, NULL), 0);
    cr_assert_eq(b->len, PUSH_FRAME_LEN, "layout assumed by the table changed");
}

ParameterizedTest(struct malformed *c, proto, malformed_frames_give_specific_errors)
{
    struct keel_buf b;
    struct keel_msg out;
    struct keel_error err;
    size_t len;
    int rc;

    valid_push_frame(&b);
    keel_buf_add_zero(&b, 64); /* room for "trailing bytes" */
    for (int i = 0; i < c->width; i++)
        b.buf[c->offset + i] = (unsigned char)(c->value >> (8 * i));
    len = (size_t)((long)PUSH_FRAME_LEN + c->len_delta);
    keel_error_init(&err);
    rc = keel_proto_decode(b.buf, len, c->max_frame ? c->max_frame : MAXF, &out, &err);
    cr_assert_eq(rc, c->expect, "%s: got %s (%s), expected %s", c->name, keel_err_name(rc), err.msg,
                 keel_err_name(c->expect));
    cr_assert_neq(err.msg[0], '\0', "%s: no message", c->name);
    keel_buf_release(&b);
}

Test(proto, header_decode_fills_request_id_on_version_mismatch)
{
    struct keel_buf b;
    struct keel_frame_header h;

    valid_push_frame(&b);
    b.buf[4] = 9;
    cr_assert_eq(keel_proto_header_decode(b.buf, b.len, MAXF, &h, NULL), KEEL_EVERSION);
    cr_assert_eq(h.version, 9);
    cr_assert_eq(h.request_id, UINT64_C(0x1122334455667788));
    keel_buf_release(&b);
}

Test(proto, version_mismatch_is_answered_with_a_clear_error)
{
    struct keel_buf in, reply = KEEL_BUF_INIT;
    struct keel_frame_header h;
    struct keel_msg out;
    char text[256];

    valid_push_frame(&in);
    in.buf[4] = 1;
    cr_assert_eq(keel_proto_header_decode(in.buf, in.len, MAXF, &h, NULL), KEEL_EVERSION);
    keel_proto_encode_reject(&reply, &h, KEEL_EVERSION, NULL);
    cr_assert_eq(keel_proto_decode(reply.buf, reply.len, MAXF, &out, NULL), 0);
    cr_assert_eq(out.hdr.type, KEEL_MSG_ERROR);
    cr_assert_eq(out.hdr.version, KEEL_PROTO_VERSION);
    cr_assert(out.hdr.flags & KEEL_FLAG_REPLY);
    cr_assert_eq(out.hdr.request_id, UINT64_C(0x1122334455667788));
    cr_assert_eq(out.u.error.code, KEEL_EVERSION);
    snprintf(text, sizeof(text), "%.*s", (int)out.u.error.message.len, out.u.error.message.ptr);
    cr_assert_str_eq(text, "unsupported protocol version 1: this node speaks version 4");
    keel_buf_release(&in);
    keel_buf_release(&reply);
}

Test(proto, other_body_errors_are_specific)
{
    struct keel_msg m, out;
    struct keel_buf b = KEEL_BUF_INIT;
    static const uint32_t offsets[] = {0, 4, 2};

    /* SHARD_DATA with decreasing offsets: patch a valid frame. */
    m = make(KEEL_MSG_SHARD_DATA);
    m.u.shard_data.nrecords = 2;
    m.u.shard_data.offsets = (const uint32_t[]){0, 2, 4};
    m.u.shard_data.data = (const unsigned char *)"abcd";
    cr_assert_eq(keel_proto_encode(&b, &m, NULL), 0);
    memcpy(b.buf + 32 + 24, offsets, sizeof(offsets));
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, NULL), KEEL_EOFFSETS);

    /* REPLICATE for a range past 255. */
    keel_buf_reset(&b);
    m = make(KEEL_MSG_REPLICATE);
    fill_push(&m.u.replicate.push);
    cr_assert_eq(keel_proto_encode(&b, &m, NULL), 0);
    keel_store_u32le(b.buf + 32, 256);
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, NULL), KEEL_EINVAL);

    /* HELLO with an unknown role. */
    keel_buf_reset(&b);
    m = make(KEEL_MSG_HELLO);
    m.u.hello.role = KEEL_ROLE_SERVER;
    m.u.hello.node_id = keel_str_of("s1");
    cr_assert_eq(keel_proto_encode(&b, &m, NULL), 0);
    b.buf[32] = 9;
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, NULL), KEEL_EINVAL);

    /* ACK with an unknown status. */
    keel_buf_reset(&b);
    m = make(KEEL_MSG_ACK);
    cr_assert_eq(keel_proto_encode(&b, &m, NULL), 0);
    keel_store_u32le(b.buf + 32 + 20, 7);
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, NULL), KEEL_EINVAL);
    keel_buf_release(&b);
}

Test(proto, encoder_refuses_what_the_decoder_would_refuse)
{
    static const uint64_t unsorted[] = {5, 4};
    static const float rows[] = {1, 2};
    struct keel_msg m = make(KEEL_MSG_PUSH);
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_error err;
    char longid[80];

    keel_error_init(&err);
    fill_push(&m.u.push);
    m.u.push.data.nkeys = 2;
    m.u.push.data.row_width = 1;
    m.u.push.data.keys = unsorted;
    m.u.push.data.rows = rows;
    cr_assert_eq(keel_proto_encode(&b, &m, &err), KEEL_EUNSORTED);
    cr_assert_eq(b.len, 0, "nothing written on error");

    fill_push(&m.u.push);
    m.u.push.data.row_width = 0;
    cr_assert_eq(keel_proto_encode(&b, &m, &err), KEEL_EROWWIDTH);

    fill_push(&m.u.push);
    memset(longid, 'a', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    m.u.push.worker_id = keel_str_of(longid);
    cr_assert_eq(keel_proto_encode(&b, &m, &err), KEEL_ESTRING);
    cr_assert(strstr(err.msg, "worker_id") != NULL, "%s", err.msg);

    m = make(KEEL_MSG_ERROR);
    m.u.error.code = 5;
    cr_assert_eq(keel_proto_encode(&b, &m, &err), KEEL_EINVAL);

    m = make(KEEL_MSG_ACK);
    m.hdr.flags = 0x100;
    cr_assert_eq(keel_proto_encode(&b, &m, &err), KEEL_EFLAGS);
    cr_assert_eq(b.len, 0);
    keel_buf_release(&b);
}

Test(proto, misaligned_frame_is_refused_not_read)
{
    struct keel_buf b;
    struct keel_msg out;
    unsigned char *copy;

    valid_push_frame(&b);
    copy = keel_malloc(b.len + 1);
    memcpy(copy + 1, b.buf, b.len);
    cr_assert_eq(keel_proto_decode(copy + 1, b.len, MAXF, &out, NULL), KEEL_EINVAL);
    cr_assert_eq(keel_proto_decode(b.buf, b.len, MAXF, &out, NULL), 0);
    free(copy);
    keel_buf_release(&b);
}

Test(proto, reject_without_message_is_just_the_error_text)
{
    struct keel_buf reply = KEEL_BUF_INIT;
    struct keel_frame_header h = {.request_id = 5};
    struct keel_msg out;

    keel_proto_encode_reject(&reply, &h, KEEL_EMAGIC, NULL);
    cr_assert_eq(keel_proto_decode(reply.buf, reply.len, MAXF, &out, NULL), 0);
    cr_assert_eq(out.hdr.request_id, 5);
    cr_assert_eq(out.u.error.message.len, strlen("bad frame magic"));
    cr_assert_eq(memcmp(out.u.error.message.ptr, "bad frame magic", out.u.error.message.len), 0);
    keel_buf_release(&reply);
}

Test(proto, names_of_types_and_roles)
{
    cr_assert_str_eq(keel_msg_type_name(KEEL_MSG_PULL_REPLY), "PULL_REPLY");
    cr_assert_str_eq(keel_msg_type_name(0), "UNKNOWN");
    cr_assert_str_eq(keel_role_name(KEEL_ROLE_SERVER), "server");
    cr_assert_eq(keel_role_parse("worker"), KEEL_ROLE_WORKER);
    cr_assert_eq(keel_role_parse("root"), 0);
    cr_assert_str_eq(keel_role_name(0), "unknown");
}
