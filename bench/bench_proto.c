/*
 * bench_proto.c - keel-bench-proto: throughput of the wire codec.
 *
 * Measures keel_proto_encode() and keel_proto_decode() on PUSH frames (rows
 * of ROW_WIDTH floats) of about 4 KiB, 64 KiB, 1 MiB and 16 MiB, in MB/s of
 * frame bytes (1 MB = 10^6 bytes), and the message rate of a stream of
 * STREAM_MSGS distinct 4 KiB frames, as a sender or a receiver loop sees it.
 *
 * Every row's baseline is a memcpy of the same frame bytes, timed alongside
 * it: the memory bandwidth the codec could at best reach when it copies.
 * Encoding copies the keys and rows into the frame, so its ratio is at most
 * about 1.  Decoding is zero-copy: it checks the header and fields and reads
 * only the keys (to check they are sorted), never the rows, so its ratio is
 * well above 1 and grows with the row width.  "decode_copy" decodes and then
 * copies the keys and rows out, as a receiver that keeps them does: the same
 * bytes moved as the baseline, so its ratio shows what the checks cost.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "alloc.h"
#include "keel/buf.h"
#include "keel/proto.h"

#define ROW_WIDTH   64  /* floats per row: 256 bytes of row + 8 of key per key */
#define STREAM_MSGS 256 /* frames in the small-message stream (~1 MiB in all) */
#define WORKER_ID   "worker-0001"

/*
 * A set of `nmsgs` PUSH messages of `nkeys` keys each, their source arrays,
 * and their frames encoded one after another in `frames`.  The benchmark
 * functions encode, decode or copy the whole set once per iteration.
 */
struct push_set {
    const char *label; /* "4KiB" */
    size_t nmsgs;
    uint32_t nkeys;
    uint64_t *keys; /* nmsgs * nkeys keys, strictly increasing */
    float *rows;    /* nmsgs * nkeys * ROW_WIDTH floats */
    struct keel_msg *msgs;
    struct keel_buf frames; /* the encoded frames, each 8-byte aligned */
    size_t frame_len;       /* bytes of one frame */
    struct keel_buf out;    /* encoding target, reused */
    unsigned char *copy;    /* memcpy target, frames.len bytes */
};

static void die(const char *what)
{
    fprintf(stderr, "keel-bench-proto: %s\n", what);
    exit(1);
}

/* Bytes of the frame of a PUSH from WORKER_ID with no keys. */
static size_t push_overhead(void)
{
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_msg m;
    size_t len;

    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_PUSH;
    m.u.push.worker_id = keel_str_of(WORKER_ID);
    m.u.push.data.row_width = ROW_WIDTH;
    if (keel_proto_encode(&b, &m, NULL) != 0)
        die("cannot encode an empty PUSH");
    len = b.len;
    keel_buf_release(&b);
    return len;
}

/* The number of keys that makes a PUSH frame closest to `target` bytes. */
static uint32_t nkeys_for(size_t target)
{
    size_t overhead = push_overhead(), per_key = 8 + 4 * ROW_WIDTH;

    if (target <= overhead + per_key)
        return 1;
    return (uint32_t)((target - overhead + per_key / 2) / per_key);
}

static void set_init(struct push_set *s, const char *label, size_t target, size_t nmsgs)
{
    size_t nkeys_all;

    memset(s, 0, sizeof(*s));
    s->label = label;
    s->nmsgs = nmsgs;
    s->nkeys = nkeys_for(target);
    nkeys_all = keel_size_mul(nmsgs, s->nkeys);
    KEEL_ALLOC_ARRAY(s->keys, nkeys_all);
    KEEL_ALLOC_ARRAY(s->rows, keel_size_mul(nkeys_all, ROW_WIDTH));
    KEEL_ALLOC_ARRAY(s->msgs, nmsgs);
    for (size_t i = 0; i < nkeys_all; i++)
        s->keys[i] = 3 * (uint64_t)i + 1;
    for (size_t i = 0; i < nkeys_all * ROW_WIDTH; i++)
        s->rows[i] = (float)(i % 1000) * 0.001f;

    keel_buf_init(&s->frames, 0);
    keel_buf_init(&s->out, 0);
    for (size_t i = 0; i < nmsgs; i++) {
        struct keel_msg *m = &s->msgs[i];
        size_t before = s->frames.len;

        m->hdr.type = KEEL_MSG_PUSH;
        m->hdr.request_id = i + 1;
        m->hdr.epoch = 7;
        m->u.push.worker_id = keel_str_of(WORKER_ID);
        m->u.push.shard = 3;
        m->u.push.incarnation = 1;
        m->u.push.seq = i;
        m->u.push.clock = 42;
        m->u.push.data.table_id = 1;
        m->u.push.data.row_width = ROW_WIDTH;
        m->u.push.data.nkeys = s->nkeys;
        m->u.push.data.keys = s->keys + i * s->nkeys;
        m->u.push.data.rows = s->rows + i * s->nkeys * ROW_WIDTH;
        if (keel_proto_encode(&s->frames, m, NULL) != 0)
            die("cannot encode the benchmark's PUSH");
        s->frame_len = s->frames.len - before;
    }
    /* Frames are a multiple of 8 bytes, so each one in `frames` is aligned. */
    if (s->frame_len % 8 != 0)
        die("PUSH frame length is not a multiple of 8");
    keel_buf_grow(&s->out, s->frames.len);
    s->copy = keel_malloc(s->frames.len);
    memset(s->copy, 0, s->frames.len);

    /* Check once that decoding gives back what was encoded. */
    for (size_t i = 0; i < nmsgs; i++) {
        const struct keel_rows *want = &s->msgs[i].u.push.data;
        struct keel_error err = {0};
        struct keel_msg m;

        if (keel_proto_decode(s->frames.buf + i * s->frame_len, s->frame_len, s->frame_len, &m,
                              &err) != 0)
            die(err.msg);
        if (m.u.push.data.nkeys != want->nkeys ||
            memcmp(m.u.push.data.keys, want->keys, (size_t)want->nkeys * 8) != 0 ||
            memcmp(m.u.push.data.rows, want->rows, (size_t)want->nkeys * ROW_WIDTH * 4) != 0)
            die("decoded PUSH differs from the encoded one");
    }
}

static void set_release(struct push_set *s)
{
    free(s->keys);
    free(s->rows);
    free(s->msgs);
    free(s->copy);
    keel_buf_release(&s->frames);
    keel_buf_release(&s->out);
}

/* Encode every message of the set into `out`, as a sender fills its buffer. */
static void run_encode(void *ctx, uint64_t iters)
{
    struct push_set *s = ctx;

    for (uint64_t it = 0; it < iters; it++) {
        keel_buf_reset(&s->out);
        for (size_t i = 0; i < s->nmsgs; i++)
            if (keel_proto_encode(&s->out, &s->msgs[i], NULL) != 0)
                die("encode failed");
        keel_bench_use(s->out.buf);
    }
}

/* Decode the frames one after another, as a receive loop walks its buffer. */
static void run_decode(void *ctx, uint64_t iters)
{
    struct push_set *s = ctx;
    uint64_t sum = 0;

    for (uint64_t it = 0; it < iters; it++) {
        const unsigned char *p = s->frames.buf;
        size_t left = s->frames.len;

        for (size_t i = 0; i < s->nmsgs; i++) {
            struct keel_msg m;
            size_t used;

            if (keel_proto_decode(p, left, s->frame_len, &m, NULL) != 0)
                die("decode failed");
            sum += m.u.push.seq + m.u.push.data.keys[m.u.push.data.nkeys - 1];
            used = KEEL_PROTO_HEADER_SIZE + (size_t)m.hdr.body_len;
            p += used;
            left -= used;
        }
    }
    keel_bench_use_u64(sum);
}

/*
 * Decode each frame and copy its keys and rows out, as a receiver that keeps
 * them would: the same bytes moved as the memcpy baseline, plus the checks.
 */
static void run_decode_copy(void *ctx, uint64_t iters)
{
    struct push_set *s = ctx;

    for (uint64_t it = 0; it < iters; it++) {
        const unsigned char *p = s->frames.buf;
        size_t left = s->frames.len;
        unsigned char *dst = s->copy;

        for (size_t i = 0; i < s->nmsgs; i++) {
            const struct keel_rows *d;
            struct keel_msg m;
            size_t used, kb, rb;

            if (keel_proto_decode(p, left, s->frame_len, &m, NULL) != 0)
                die("decode failed");
            d = &m.u.push.data;
            kb = (size_t)d->nkeys * 8;
            rb = (size_t)d->nkeys * d->row_width * 4;
            memcpy(dst, d->keys, kb);
            memcpy(dst + kb, d->rows, rb);
            used = KEEL_PROTO_HEADER_SIZE + (size_t)m.hdr.body_len;
            dst += used;
            p += used;
            left -= used;
        }
        keel_bench_use(s->copy);
    }
}

/* The baseline: memcpy each frame of the set, one call per frame. */
static void run_memcpy(void *ctx, uint64_t iters)
{
    struct push_set *s = ctx;

    for (uint64_t it = 0; it < iters; it++) {
        for (size_t i = 0; i < s->nmsgs; i++)
            memcpy(s->copy + i * s->frame_len, s->frames.buf + i * s->frame_len, s->frame_len);
        keel_bench_use(s->copy);
    }
}

/* Time `run` against memcpy and record MB/s (or msg/s when `per_msg`). */
static void measure(struct keel_bench *b, struct push_set *s, const char *op,
                    void (*run)(void *, uint64_t), int per_msg)
{
    struct keel_bench_fn fn = {run, s}, base = {run_memcpy, s};
    double t_fn, t_base, work;
    char name[64];

    keel_bench_compare(b, &fn, &base, &t_fn, &t_base);
    if (per_msg) {
        work = (double)s->nmsgs;
        snprintf(name, sizeof(name), "push_%s_%s_x%zu", op, s->label, s->nmsgs);
    } else {
        work = (double)s->frames.len / 1e6;
        snprintf(name, sizeof(name), "push_%s_%s", op, s->label);
    }
    keel_bench_record(b, name, work / t_fn, per_msg ? "msg/s" : "MB/s", work / t_base);
}

int main(int argc, char **argv)
{
    static const struct {
        const char *label;
        size_t bytes;
    } sizes[] = {
        {"4KiB", (size_t)4 << 10},
        {"64KiB", (size_t)64 << 10},
        {"1MiB", (size_t)1 << 20},
        {"16MiB", (size_t)16 << 20},
    };
    struct keel_bench b;
    struct push_set s;
    int rc;

    rc = keel_bench_init(&b, "keel-bench-proto",
                         "Wire codec throughput: encode and decode of PUSH frames against memcpy.",
                         argc, argv);
    if (rc >= 0)
        return rc;

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        set_init(&s, sizes[i].label, sizes[i].bytes, 1);
        measure(&b, &s, "encode", run_encode, 0);
        measure(&b, &s, "decode", run_decode, 0);
        measure(&b, &s, "decode_copy", run_decode_copy, 0);
        set_release(&s);
    }

    set_init(&s, "4KiB", (size_t)4 << 10, STREAM_MSGS);
    measure(&b, &s, "encode", run_encode, 1);
    measure(&b, &s, "decode", run_decode, 1);
    set_release(&s);

    return keel_bench_finish(&b);
}
