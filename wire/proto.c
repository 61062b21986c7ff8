/*
 * proto.c - frame header and message body encoding and decoding.
 *
 * Decoding walks the body with a cursor that knows how many bytes are left;
 * every read goes through rd_need(), so nothing is read past the frame.  The
 * field checks (strings, rows, offsets) are shared by the encoder, which
 * refuses to produce what the decoder would refuse.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "keel/proto.h"

/*
 * With 64-bit sizes, nkeys (< 2^32) * row_width (<= 2^20) * 4 cannot overflow,
 * so the encoder's size sums are exact; the decoder checks anyway.
 */
_Static_assert(sizeof(size_t) == 8, "Keel's codec assumes a 64-bit size_t");

const char *keel_msg_type_name(unsigned type)
{
    switch (type) {
#define KEEL__MSG_NAME(name, value)                                                                \
    case value:                                                                                    \
        return #name;
        KEEL_MSG_TYPE_MAP(KEEL__MSG_NAME)
#undef KEEL__MSG_NAME
    }
    return "UNKNOWN";
}

static const char *const role_names[] = {NULL, "coordinator", "server", "worker", "admin"};

const char *keel_role_name(unsigned role)
{
    if (role >= 1 && role <= KEEL_ROLE_ADMIN)
        return role_names[role];
    return "unknown";
}

enum keel_role keel_role_parse(const char *name)
{
    for (unsigned r = 1; r <= KEEL_ROLE_ADMIN; r++)
        if (strcmp(name, role_names[r]) == 0)
            return (enum keel_role)r;
    return 0;
}

struct keel_str keel_str_of(const char *s)
{
    struct keel_str r = {s, (uint32_t)strlen(s)};
    return r;
}

static size_t pad8(size_t n)
{
    return (8 - (n & 7)) & 7;
}

/* ---- shared field checks ------------------------------------------------ */

static int check_str(struct keel_str s, uint32_t max, const char *field, struct keel_error *err)
{
    if (s.len > max)
        return keel_err_set(err, KEEL_ESTRING, "%s: length %" PRIu32 " over the limit of %" PRIu32,
                            field, s.len, max);
    if (s.len && memchr(s.ptr, '\0', s.len) != NULL)
        return keel_err_set(err, KEEL_ESTRING, "%s: contains a NUL byte", field);
    return 0;
}

/* A node id (worker_id, node_id): a string as above, and never empty. */
static int check_id(struct keel_str s, const char *field, struct keel_error *err)
{
    if (s.len == 0)
        return keel_err_set(err, KEEL_ESTRING, "%s: empty", field);
    return check_str(s, KEEL_ID_MAX, field, err);
}

static int check_row_width(uint32_t width, struct keel_error *err)
{
    if (width == 0 || width > KEEL_PROTO_MAX_ROW_WIDTH)
        return keel_err_set(err, KEEL_EROWWIDTH, "row_width %" PRIu32 " not in 1..%" PRIu32, width,
                            KEEL_PROTO_MAX_ROW_WIDTH);
    return 0;
}

static int check_sorted(const uint64_t *keys, uint32_t n, struct keel_error *err)
{
    for (uint32_t i = 1; i < n; i++)
        if (keys[i] <= keys[i - 1])
            return keel_err_set(err, KEEL_EUNSORTED,
                                "key %" PRIu32 " (%" PRIu64 ") not above key %" PRIu32 " (%" PRIu64
                                ")",
                                i, keys[i], i - 1, keys[i - 1]);
    return 0;
}

/* Bytes per value of an encoding: 4, or 2 for the 16-bit ones. */
static size_t enc_size(uint32_t enc)
{
    return enc == KEEL_ROWS_F32 ? 4 : 2;
}

/*
 * Bytes of keys (8 each) plus, when with_rows, the values (row_width each, of
 * encoding `enc`) and the zero padding after 16-bit values to a multiple of
 * 8; SIZE_MAX on overflow.
 */
static size_t rows_bytes(uint32_t nkeys, uint32_t width, int with_rows, uint32_t enc)
{
    size_t k, r, total;

    if (__builtin_mul_overflow((size_t)nkeys, (size_t)8, &k))
        return SIZE_MAX;
    if (!with_rows)
        return k;
    if (__builtin_mul_overflow((size_t)nkeys, (size_t)width, &r) ||
        __builtin_mul_overflow(r, enc_size(enc), &r) ||
        (enc != KEEL_ROWS_F32 && __builtin_add_overflow(r, pad8(r), &r)) ||
        __builtin_add_overflow(k, r, &total))
        return SIZE_MAX;
    return total;
}

uint32_t keel_proto_flags_enc(uint16_t flags)
{
    return (flags & KEEL_FLAG_BF16)   ? KEEL_ROWS_BF16
           : (flags & KEEL_FLAG_FP16) ? KEEL_ROWS_FP16
                                      : KEEL_ROWS_F32;
}

static uint16_t enc_flag(uint32_t enc)
{
    return enc == KEEL_ROWS_BF16 ? KEEL_FLAG_BF16 : enc == KEEL_ROWS_FP16 ? KEEL_FLAG_FP16 : 0;
}

void keel_rows_widen(const struct keel_rows *d, uint32_t first, uint32_t n, float *out)
{
    size_t at = (size_t)first * d->row_width, count = (size_t)n * d->row_width;

    if (d->enc == KEEL_ROWS_F32)
        memcpy(out, d->rows + at, count * sizeof(float));
    else
        keel_half_widen((enum keel_rows_enc)d->enc, d->half + at, out, count);
}

static int check_offsets(const uint32_t *off, uint32_t n, size_t data_len, struct keel_error *err)
{
    if (off[0] != 0)
        return keel_err_set(err, KEEL_EOFFSETS, "offsets[0] is %" PRIu32 ", not 0", off[0]);
    for (uint32_t i = 1; i <= n; i++)
        if (off[i] < off[i - 1])
            return keel_err_set(err, KEEL_EOFFSETS,
                                "offsets[%" PRIu32 "] (%" PRIu32 ") below offsets[%" PRIu32 "]", i,
                                off[i], i - 1);
    if (off[n] != data_len)
        return keel_err_set(err, KEEL_EOFFSETS,
                            "last offset %" PRIu32 " is not the data length %zu", off[n], data_len);
    return 0;
}

/* ---- header ------------------------------------------------------------- */

/* Known bits only, and LAST only where it means something (SHARD_DATA). */
static int check_flags(const struct keel_frame_header *h, struct keel_error *err)
{
    if (h->flags & ~KEEL_FLAGS_KNOWN)
        return keel_err_set(err, KEEL_EFLAGS, "flags 0x%04x has unknown bits 0x%04x", h->flags,
                            h->flags & ~KEEL_FLAGS_KNOWN);
    if ((h->flags & KEEL_FLAG_LAST) && h->type != KEEL_MSG_SHARD_DATA)
        return keel_err_set(err, KEEL_EFLAGS, "flag LAST on a %s frame",
                            keel_msg_type_name(h->type));
    if ((h->flags & KEEL_FLAG_BF16) && (h->flags & KEEL_FLAG_FP16))
        return keel_err_set(err, KEEL_EFLAGS, "flags BF16 and FP16 together");
    if ((h->flags & (KEEL_FLAG_BF16 | KEEL_FLAG_FP16)) && h->type != KEEL_MSG_PUSH &&
        h->type != KEEL_MSG_PULL && h->type != KEEL_MSG_PULL_REPLY)
        return keel_err_set(err, KEEL_EFLAGS, "flag %s on a %s frame",
                            (h->flags & KEEL_FLAG_BF16) ? "BF16" : "FP16",
                            keel_msg_type_name(h->type));
    return 0;
}

int keel_proto_header_decode(const void *data, size_t len, size_t max_frame,
                             struct keel_frame_header *h, struct keel_error *err)
{
    const unsigned char *p = data;
    uint32_t reserved;

    memset(h, 0, sizeof(*h));
    if (len < KEEL_PROTO_HEADER_SIZE)
        return keel_err_set(err, KEEL_ETRUNCATED, "header needs %d bytes, have %zu",
                            KEEL_PROTO_HEADER_SIZE, len);
    h->magic = keel_load_u32le(p);
    h->version = p[4];
    h->type = p[5];
    h->flags = keel_load_u16le(p + 6);
    h->request_id = keel_load_u64le(p + 8);
    h->epoch = keel_load_u64le(p + 16);
    h->body_len = keel_load_u32le(p + 24);
    reserved = keel_load_u32le(p + 28);
    if (h->magic != KEEL_PROTO_MAGIC)
        return keel_err_set(err, KEEL_EMAGIC, "magic 0x%08" PRIx32 ", expected 0x%08" PRIx32,
                            h->magic, KEEL_PROTO_MAGIC);
    if (h->version != KEEL_PROTO_VERSION)
        return keel_err_set(err, KEEL_EVERSION, "peer speaks protocol version %u, this node %u",
                            h->version, (unsigned)KEEL_PROTO_VERSION);
    if ((uint64_t)h->body_len + KEEL_PROTO_HEADER_SIZE > max_frame)
        return keel_err_set(err, KEEL_EFRAMESIZE,
                            "frame of %" PRIu64 " bytes over the limit of %zu",
                            (uint64_t)h->body_len + KEEL_PROTO_HEADER_SIZE, max_frame);
    if (reserved != 0)
        return keel_err_set(err, KEEL_ERESERVED, "header reserved field is 0x%08" PRIx32, reserved);
    if (h->type < 1 || h->type > KEEL_MSG_TYPE_MAX)
        return keel_err_set(err, KEEL_ETYPE, "message type %u", h->type);
    return check_flags(h, err);
}

/* ---- body decoding ------------------------------------------------------ */

struct rd {
    const unsigned char *p; /* body start, 8-byte aligned */
    size_t off;
    size_t len;
    struct keel_error *err;
};

static int rd_need(struct rd *r, size_t n, const char *field)
{
    if (n > r->len - r->off)
        return keel_err_set(r->err, KEEL_ESHORTBODY,
                            "%s: needs %zu bytes at offset %zu, body has %zu", field, n, r->off,
                            r->len);
    return 0;
}

static uint32_t rd_u32(struct rd *r)
{
    uint32_t v = keel_load_u32le(r->p + r->off);
    r->off += 4;
    return v;
}

static uint64_t rd_u64(struct rd *r)
{
    uint64_t v = keel_load_u64le(r->p + r->off);
    r->off += 8;
    return v;
}

static int rd_reserved32(struct rd *r, const char *field)
{
    uint32_t v = rd_u32(r);

    if (v != 0)
        return keel_err_set(r->err, KEEL_ERESERVED, "%s is 0x%08" PRIx32, field, v);
    return 0;
}

static int rd_pad(struct rd *r, const char *field)
{
    size_t n = pad8(r->off);
    int rc;

    if ((rc = rd_need(r, n, field)) != 0)
        return rc;
    for (size_t i = 0; i < n; i++)
        if (r->p[r->off + i] != 0)
            return keel_err_set(r->err, KEEL_EPADDING, "%s: padding byte %zu is 0x%02x", field, i,
                                r->p[r->off + i]);
    r->off += n;
    return 0;
}

/* A string: u16 length, bytes, zero padding to the next multiple of 8. */
static int rd_str(struct rd *r, uint32_t max, const char *field, struct keel_str *s)
{
    int rc;

    if ((rc = rd_need(r, 2, field)) != 0)
        return rc;
    s->len = keel_load_u16le(r->p + r->off);
    r->off += 2;
    if (s->len > max)
        return keel_err_set(r->err, KEEL_ESTRING,
                            "%s: length %" PRIu32 " over the limit of %" PRIu32, field, s->len,
                            max);
    if ((rc = rd_need(r, s->len, field)) != 0)
        return rc;
    s->ptr = (const char *)r->p + r->off;
    r->off += s->len;
    if ((rc = check_str(*s, max, field, r->err)) != 0)
        return rc;
    return rd_pad(r, field);
}

/* The 16-byte rows header: table_id, row_width, nkeys, then one u32 of the caller's. */
static int rd_rows_head(struct rd *r, struct keel_rows *d, uint32_t *extra)
{
    int rc;

    if ((rc = rd_need(r, 16, "rows header")) != 0)
        return rc;
    d->table_id = rd_u32(r);
    d->row_width = rd_u32(r);
    d->nkeys = rd_u32(r);
    *extra = rd_u32(r);
    return check_row_width(d->row_width, r->err);
}

/*
 * Keys (8-byte aligned here) and, when with_rows, the values after them, of
 * the encoding d->enc (the frame's flags): 16-bit ones padded with zeros to
 * a multiple of 8 bytes.
 */
static int rd_rows_data(struct rd *r, struct keel_rows *d, int with_rows)
{
    size_t need = rows_bytes(d->nkeys, d->row_width, with_rows, d->enc);
    int rc;

    if (need > r->len - r->off)
        return keel_err_set(
            r->err, KEEL_ECOUNT, "%" PRIu32 " keys of width %" PRIu32 " need %s bytes, %zu left",
            d->nkeys, d->row_width, need == SIZE_MAX ? "too many" : "more", r->len - r->off);
    d->keys = (const uint64_t *)(const void *)(r->p + r->off);
    r->off += (size_t)d->nkeys * 8;
    d->rows = NULL;
    d->half = NULL;
    if (with_rows && d->enc == KEEL_ROWS_F32) {
        d->rows = (const float *)(const void *)(r->p + r->off);
        r->off += (size_t)d->nkeys * d->row_width * 4;
    } else if (with_rows) {
        d->half = (const uint16_t *)(const void *)(r->p + r->off);
        r->off += (size_t)d->nkeys * d->row_width * 2;
        if ((rc = rd_pad(r, "16-bit rows")) != 0)
            return rc;
    }
    return check_sorted(d->keys, d->nkeys, r->err);
}

static int rd_push(struct rd *r, struct keel_msg_push *m, uint32_t enc)
{
    int rc;

    if ((rc = rd_rows_head(r, &m->data, &m->shard)) != 0)
        return rc;
    m->data.enc = enc;
    if ((rc = rd_need(r, 40, "push header")) != 0)
        return rc;
    m->incarnation = rd_u64(r);
    m->seq = rd_u64(r);
    m->clock = rd_u64(r);
    m->assignment_version = rd_u64(r);
    m->lease = rd_u64(r);
    if ((rc = rd_str(r, KEEL_ID_MAX, "worker_id", &m->worker_id)) != 0 ||
        (rc = check_id(m->worker_id, "worker_id", r->err)) != 0)
        return rc;
    return rd_rows_data(r, &m->data, 1);
}

static int decode_body(struct rd *r, unsigned type, uint16_t flags, struct keel_msg *m)
{
    uint32_t u32;
    int rc;

    switch (type) {
    case KEEL_MSG_HELLO:
        if ((rc = rd_need(r, 16, "hello")) != 0)
            return rc;
        m->u.hello.role = r->p[0];
        if (r->p[1] || r->p[2] || r->p[3] || keel_load_u32le(r->p + 4))
            return keel_err_set(r->err, KEEL_ERESERVED, "hello reserved bytes not zero");
        if (m->u.hello.role < KEEL_ROLE_COORDINATOR || m->u.hello.role > KEEL_ROLE_ADMIN)
            return keel_err_set(r->err, KEEL_EINVAL, "hello: role %u", m->u.hello.role);
        r->off = 8;
        m->u.hello.incarnation = rd_u64(r);
        if ((rc = rd_str(r, KEEL_ID_MAX, "node_id", &m->u.hello.node_id)) != 0)
            return rc;
        return check_id(m->u.hello.node_id, "node_id", r->err);
    case KEEL_MSG_PUSH:
        return rd_push(r, &m->u.push, keel_proto_flags_enc(flags));
    case KEEL_MSG_PULL:
        if ((rc = rd_rows_head(r, &m->u.pull.data, &u32)) != 0)
            return rc;
        m->u.pull.data.enc = keel_proto_flags_enc(flags); /* the reply's, wanted */
        if (u32 != 0)
            return keel_err_set(r->err, KEEL_ERESERVED, "pull reserved field not zero");
        if ((rc = rd_need(r, 16, "pull clock and assignment version")) != 0)
            return rc;
        m->u.pull.clock = rd_u64(r);
        m->u.pull.assignment_version = rd_u64(r);
        if ((rc = rd_str(r, KEEL_ID_MAX, "worker_id", &m->u.pull.worker_id)) != 0 ||
            (rc = check_id(m->u.pull.worker_id, "worker_id", r->err)) != 0)
            return rc;
        return rd_rows_data(r, &m->u.pull.data, 0);
    case KEEL_MSG_PULL_REPLY:
        if ((rc = rd_rows_head(r, &m->u.pull_reply.data, &u32)) != 0)
            return rc;
        if (u32 != 0)
            return keel_err_set(r->err, KEEL_ERESERVED, "pull reply reserved field not zero");
        m->u.pull_reply.data.enc = keel_proto_flags_enc(flags);
        if ((rc = rd_need(r, 8, "pull reply clock")) != 0)
            return rc;
        m->u.pull_reply.clock = rd_u64(r);
        return rd_rows_data(r, &m->u.pull_reply.data, 1);
    case KEEL_MSG_ACK:
        if ((rc = rd_need(r, 24, "ack")) != 0)
            return rc;
        m->u.ack.lsn = rd_u64(r);
        m->u.ack.seq = rd_u64(r);
        m->u.ack.shard = rd_u32(r);
        m->u.ack.status = rd_u32(r);
        if (m->u.ack.status > KEEL_ACK_DUPLICATE)
            return keel_err_set(r->err, KEEL_EINVAL, "ack: status %" PRIu32, m->u.ack.status);
        return 0;
    case KEEL_MSG_ERROR:
        if ((rc = rd_need(r, 16, "error")) != 0)
            return rc;
        m->u.error.code = (int32_t)rd_u32(r);
        if ((rc = rd_reserved32(r, "error reserved field")) != 0)
            return rc;
        m->u.error.assignment_version = rd_u64(r);
        if (m->u.error.code >= 0)
            return keel_err_set(r->err, KEEL_EINVAL, "error: code %" PRId32 " is not negative",
                                m->u.error.code);
        return rd_str(r, KEEL_PROTO_MAX_MESSAGE, "message", &m->u.error.message);
    case KEEL_MSG_REPLICATE:
        if ((rc = rd_need(r, 24, "replicate")) != 0)
            return rc;
        m->u.replicate.range = rd_u32(r);
        m->u.replicate.cut = rd_u32(r);
        m->u.replicate.term = rd_u64(r);
        m->u.replicate.lsn = rd_u64(r);
        if (m->u.replicate.range >= KEEL_PROTO_NRANGES)
            return keel_err_set(r->err, KEEL_EINVAL, "replicate: range %" PRIu32 " not below %d",
                                m->u.replicate.range, KEEL_PROTO_NRANGES);
        return rd_push(r, &m->u.replicate.push, KEEL_ROWS_F32);
    case KEEL_MSG_RANGE_COPY:
        if ((rc = rd_need(r, 16, "range copy")) != 0)
            return rc;
        m->u.range_copy.range = rd_u32(r);
        if ((rc = rd_reserved32(r, "range copy reserved field")) != 0)
            return rc;
        m->u.range_copy.term = rd_u64(r);
        if (m->u.range_copy.range >= KEEL_PROTO_NRANGES)
            return keel_err_set(r->err, KEEL_EINVAL, "range copy: range %" PRIu32 " not below %d",
                                m->u.range_copy.range, KEEL_PROTO_NRANGES);
        m->u.range_copy.payload = keel_view_make(r->p + r->off, r->len - r->off);
        r->off = r->len;
        return 0;
    case KEEL_MSG_SHARD_READ:
        if ((rc = rd_need(r, 16, "shard read")) != 0)
            return rc;
        m->u.shard_read.shard = rd_u32(r);
        m->u.shard_read.max_records = rd_u32(r);
        m->u.shard_read.first = rd_u64(r);
        return rd_str(r, KEEL_ID_MAX, "dataset", &m->u.shard_read.dataset);
    case KEEL_MSG_SHARD_DATA: {
        struct keel_msg_shard_data *sd = &m->u.shard_data;
        size_t off_bytes;

        if ((rc = rd_need(r, 24, "shard data")) != 0)
            return rc;
        sd->shard = rd_u32(r);
        sd->nrecords = rd_u32(r);
        sd->first = rd_u64(r);
        sd->total = rd_u64(r);
        off_bytes = ((size_t)sd->nrecords + 1) * 4;
        if (off_bytes > r->len - r->off)
            return keel_err_set(r->err, KEEL_ECOUNT,
                                "%" PRIu32 " records need %zu bytes of offsets, %zu left",
                                sd->nrecords, off_bytes, r->len - r->off);
        sd->offsets = (const uint32_t *)(const void *)(r->p + r->off);
        r->off += off_bytes;
        sd->data = r->p + r->off;
        if ((rc = check_offsets(sd->offsets, sd->nrecords, r->len - r->off, r->err)) != 0)
            return rc;
        r->off = r->len;
        return 0;
    }
    case KEEL_MSG_ADMIN:
        if ((rc = rd_need(r, 8, "admin")) != 0)
            return rc;
        m->u.admin.op = rd_u32(r);
        if ((rc = rd_reserved32(r, "admin reserved field")) != 0)
            return rc;
        m->u.admin.payload = keel_view_make(r->p + r->off, r->len - r->off);
        r->off = r->len;
        return 0;
    }
    return keel_err_set(r->err, KEEL_ETYPE, "message type %u", type);
}

int keel_proto_decode(const void *frame, size_t len, size_t max_frame, struct keel_msg *m,
                      struct keel_error *err)
{
    struct rd r;
    int rc;

    memset(m, 0, sizeof(*m));
    /* The caller's bug, not the peer's; refused rather than read misaligned. */
    if (((uintptr_t)frame & 7) != 0)
        return keel_err_set(err, KEEL_EINVAL, "frame at %p is not 8-byte aligned", frame);
    rc = keel_proto_header_decode(frame, len, max_frame, &m->hdr, err);
    if (rc != 0)
        return rc;
    if (m->hdr.body_len > len - KEEL_PROTO_HEADER_SIZE)
        return keel_err_set(err, KEEL_EBODYLEN, "body length %" PRIu32 " but only %zu bytes follow",
                            m->hdr.body_len, len - KEEL_PROTO_HEADER_SIZE);
    r.p = (const unsigned char *)frame + KEEL_PROTO_HEADER_SIZE;
    r.off = 0;
    r.len = m->hdr.body_len;
    r.err = err;
    rc = decode_body(&r, m->hdr.type, m->hdr.flags, m);
    if (rc != 0)
        return keel_err_prefix(err, rc, "%s", keel_msg_type_name(m->hdr.type));
    if (r.off != r.len)
        return keel_err_set(err, KEEL_ETRAILING, "%s: %zu bytes after the last field",
                            keel_msg_type_name(m->hdr.type), r.len - r.off);
    return 0;
}

/* ---- encoding ----------------------------------------------------------- */

/*
 * Strings start at a body offset that is a multiple of 8 in every message of
 * this version, so their size including the padding does not depend on where
 * they are; wr_str() checks that layout rule against the body start.
 */
static size_t str_size(struct keel_str s)
{
    return 2 + s.len + pad8(2 + s.len);
}

static void wr_str(struct keel_buf *b, size_t body_start, struct keel_str s)
{
    assert(((b->len - body_start) & 7) == 0 && "strings start 8-byte aligned in the body");
    keel_buf_add_u16le(b, (uint16_t)s.len);
    keel_buf_add(b, s.ptr, s.len);
    keel_buf_add_zero(b, pad8(b->len - body_start));
}

/* with_rows: the values are sent, so a 16-bit encoding needs them in d->half. */
static int check_rows(const struct keel_rows *d, int with_rows, struct keel_error *err)
{
    int rc = check_row_width(d->row_width, err);

    if (rc != 0)
        return rc;
    if (keel_rows_enc_name(d->enc) == NULL)
        return keel_err_set(err, KEEL_EINVAL, "rows: encoding %" PRIu32, d->enc);
    if (with_rows && d->enc != KEEL_ROWS_F32 && d->nkeys > 0 && d->half == NULL)
        return keel_err_set(err, KEEL_EINVAL, "rows: %s encoding but no 16-bit values",
                            keel_rows_enc_name(d->enc));
    return check_sorted(d->keys, d->nkeys, err);
}

static void wr_rows_head(struct keel_buf *b, const struct keel_rows *d, uint32_t extra)
{
    keel_buf_add_u32le(b, d->table_id);
    keel_buf_add_u32le(b, d->row_width);
    keel_buf_add_u32le(b, d->nkeys);
    keel_buf_add_u32le(b, extra);
}

static void wr_rows_data(struct keel_buf *b, const struct keel_rows *d, int with_rows)
{
    size_t n = (size_t)d->nkeys * d->row_width;

    keel_buf_add(b, d->keys, (size_t)d->nkeys * 8);
    if (with_rows && d->enc == KEEL_ROWS_F32) {
        keel_buf_add(b, d->rows, n * 4);
    } else if (with_rows) {
        keel_buf_add(b, d->half, n * 2);
        keel_buf_add_zero(b, pad8(n * 2));
    }
}

static int push_size(const struct keel_msg_push *p, size_t *size, struct keel_error *err)
{
    int rc;

    if ((rc = check_id(p->worker_id, "worker_id", err)) != 0 ||
        (rc = check_rows(&p->data, 1, err)) != 0)
        return rc;
    *size =
        56 + str_size(p->worker_id) + rows_bytes(p->data.nkeys, p->data.row_width, 1, p->data.enc);
    return 0;
}

static void wr_push(struct keel_buf *b, size_t body, const struct keel_msg_push *p)
{
    wr_rows_head(b, &p->data, p->shard);
    keel_buf_add_u64le(b, p->incarnation);
    keel_buf_add_u64le(b, p->seq);
    keel_buf_add_u64le(b, p->clock);
    keel_buf_add_u64le(b, p->assignment_version);
    keel_buf_add_u64le(b, p->lease);
    wr_str(b, body, p->worker_id);
    wr_rows_data(b, &p->data, 1);
}

/* Check m's fields and compute its body size. */
static int body_size(const struct keel_msg *m, size_t *size, struct keel_error *err)
{
    const struct keel_msg_shard_data *sd;
    int rc;

    switch (m->hdr.type) {
    case KEEL_MSG_HELLO:
        if (m->u.hello.role < KEEL_ROLE_COORDINATOR || m->u.hello.role > KEEL_ROLE_ADMIN)
            return keel_err_set(err, KEEL_EINVAL, "hello: role %u", m->u.hello.role);
        *size = 16 + str_size(m->u.hello.node_id);
        return check_id(m->u.hello.node_id, "node_id", err);
    case KEEL_MSG_PUSH:
        return push_size(&m->u.push, size, err);
    case KEEL_MSG_PULL:
        if ((rc = check_id(m->u.pull.worker_id, "worker_id", err)) != 0)
            return rc;
        *size = 32 + str_size(m->u.pull.worker_id) +
                rows_bytes(m->u.pull.data.nkeys, m->u.pull.data.row_width, 0, 0);
        return check_rows(&m->u.pull.data, 0, err);
    case KEEL_MSG_PULL_REPLY:
        *size = 24 + rows_bytes(m->u.pull_reply.data.nkeys, m->u.pull_reply.data.row_width, 1,
                                m->u.pull_reply.data.enc);
        return check_rows(&m->u.pull_reply.data, 1, err);
    case KEEL_MSG_ACK:
        *size = 24;
        if (m->u.ack.status > KEEL_ACK_DUPLICATE)
            return keel_err_set(err, KEEL_EINVAL, "ack: status %" PRIu32, m->u.ack.status);
        return 0;
    case KEEL_MSG_ERROR:
        if (m->u.error.code >= 0)
            return keel_err_set(err, KEEL_EINVAL, "error: code %" PRId32 " is not negative",
                                m->u.error.code);
        *size = 16 + str_size(m->u.error.message);
        return check_str(m->u.error.message, KEEL_PROTO_MAX_MESSAGE, "message", err);
    case KEEL_MSG_REPLICATE:
        if (m->u.replicate.range >= KEEL_PROTO_NRANGES)
            return keel_err_set(err, KEEL_EINVAL, "replicate: range %" PRIu32 " not below %d",
                                m->u.replicate.range, KEEL_PROTO_NRANGES);
        if (m->u.replicate.push.data.enc != KEEL_ROWS_F32)
            return keel_err_set(err, KEEL_EINVAL, "replicate: rows must be 32-bit floats");
        if ((rc = push_size(&m->u.replicate.push, size, err)) != 0)
            return rc;
        *size += 24;
        return 0;
    case KEEL_MSG_RANGE_COPY:
        if (m->u.range_copy.range >= KEEL_PROTO_NRANGES)
            return keel_err_set(err, KEEL_EINVAL, "range copy: range %" PRIu32 " not below %d",
                                m->u.range_copy.range, KEEL_PROTO_NRANGES);
        *size = 16 + m->u.range_copy.payload.len;
        return 0;
    case KEEL_MSG_SHARD_READ:
        *size = 16 + str_size(m->u.shard_read.dataset);
        return check_str(m->u.shard_read.dataset, KEEL_ID_MAX, "dataset", err);
    case KEEL_MSG_SHARD_DATA:
        sd = &m->u.shard_data;
        if (sd->offsets == NULL)
            return keel_err_set(err, KEEL_EINVAL, "shard data: no offsets");
        if ((rc = check_offsets(sd->offsets, sd->nrecords, sd->offsets[sd->nrecords], err)) != 0)
            return rc;
        if (sd->offsets[sd->nrecords] != 0 && sd->data == NULL)
            return keel_err_set(err, KEEL_EINVAL, "shard data: %" PRIu32 " bytes but no data",
                                sd->offsets[sd->nrecords]);
        *size = 24 + ((size_t)sd->nrecords + 1) * 4 + sd->offsets[sd->nrecords];
        return 0;
    case KEEL_MSG_ADMIN:
        *size = 8 + m->u.admin.payload.len;
        return 0;
    }
    return keel_err_set(err, KEEL_ETYPE, "message type %u", m->hdr.type);
}

/* The encoding of m's rows, which its frame's flags say (F32 for types without rows). */
static uint32_t msg_enc(const struct keel_msg *m)
{
    switch (m->hdr.type) {
    case KEEL_MSG_PUSH:
        return m->u.push.data.enc;
    case KEEL_MSG_PULL:
        return m->u.pull.data.enc;
    case KEEL_MSG_PULL_REPLY:
        return m->u.pull_reply.data.enc;
    }
    return KEEL_ROWS_F32;
}

int keel_proto_encode(struct keel_buf *out, const struct keel_msg *m, struct keel_error *err)
{
    struct keel_frame_header hdr = m->hdr, *h = &hdr;
    size_t size = 0, body;
    int rc;

    /* The 16-bit flags follow the rows' encoding, whatever the caller set. */
    hdr.flags = (uint16_t)((hdr.flags & ~(KEEL_FLAG_BF16 | KEEL_FLAG_FP16)) | enc_flag(msg_enc(m)));
    if ((rc = check_flags(h, err)) != 0)
        return rc;
    rc = body_size(m, &size, err);
    if (rc != 0)
        return keel_err_prefix(err, rc, "encode %s", keel_msg_type_name(h->type));
    if (size > UINT32_MAX - KEEL_PROTO_HEADER_SIZE)
        return keel_err_set(err, KEEL_EFRAMESIZE, "encode %s: body of %zu bytes",
                            keel_msg_type_name(h->type), size);

    keel_buf_grow(out, KEEL_PROTO_HEADER_SIZE + size);
    keel_buf_add_u32le(out, KEEL_PROTO_MAGIC);
    keel_buf_add_u8(out, KEEL_PROTO_VERSION);
    keel_buf_add_u8(out, h->type);
    keel_buf_add_u16le(out, h->flags);
    keel_buf_add_u64le(out, h->request_id);
    keel_buf_add_u64le(out, h->epoch);
    keel_buf_add_u32le(out, (uint32_t)size);
    keel_buf_add_u32le(out, 0);
    body = out->len;

    switch (h->type) {
    case KEEL_MSG_HELLO:
        keel_buf_add_u8(out, m->u.hello.role);
        keel_buf_add_zero(out, 7);
        keel_buf_add_u64le(out, m->u.hello.incarnation);
        wr_str(out, body, m->u.hello.node_id);
        break;
    case KEEL_MSG_PUSH:
        wr_push(out, body, &m->u.push);
        break;
    case KEEL_MSG_PULL:
        wr_rows_head(out, &m->u.pull.data, 0);
        keel_buf_add_u64le(out, m->u.pull.clock);
        keel_buf_add_u64le(out, m->u.pull.assignment_version);
        wr_str(out, body, m->u.pull.worker_id);
        wr_rows_data(out, &m->u.pull.data, 0);
        break;
    case KEEL_MSG_PULL_REPLY:
        wr_rows_head(out, &m->u.pull_reply.data, 0);
        keel_buf_add_u64le(out, m->u.pull_reply.clock);
        wr_rows_data(out, &m->u.pull_reply.data, 1);
        break;
    case KEEL_MSG_ACK:
        keel_buf_add_u64le(out, m->u.ack.lsn);
        keel_buf_add_u64le(out, m->u.ack.seq);
        keel_buf_add_u32le(out, m->u.ack.shard);
        keel_buf_add_u32le(out, m->u.ack.status);
        break;
    case KEEL_MSG_ERROR:
        keel_buf_add_u32le(out, (uint32_t)m->u.error.code);
        keel_buf_add_u32le(out, 0);
        keel_buf_add_u64le(out, m->u.error.assignment_version);
        wr_str(out, body, m->u.error.message);
        break;
    case KEEL_MSG_REPLICATE:
        keel_buf_add_u32le(out, m->u.replicate.range);
        keel_buf_add_u32le(out, m->u.replicate.cut);
        keel_buf_add_u64le(out, m->u.replicate.term);
        keel_buf_add_u64le(out, m->u.replicate.lsn);
        wr_push(out, body, &m->u.replicate.push);
        break;
    case KEEL_MSG_RANGE_COPY:
        keel_buf_add_u32le(out, m->u.range_copy.range);
        keel_buf_add_u32le(out, 0);
        keel_buf_add_u64le(out, m->u.range_copy.term);
        keel_buf_add(out, m->u.range_copy.payload.data, m->u.range_copy.payload.len);
        break;
    case KEEL_MSG_SHARD_READ:
        keel_buf_add_u32le(out, m->u.shard_read.shard);
        keel_buf_add_u32le(out, m->u.shard_read.max_records);
        keel_buf_add_u64le(out, m->u.shard_read.first);
        wr_str(out, body, m->u.shard_read.dataset);
        break;
    case KEEL_MSG_SHARD_DATA:
        keel_buf_add_u32le(out, m->u.shard_data.shard);
        keel_buf_add_u32le(out, m->u.shard_data.nrecords);
        keel_buf_add_u64le(out, m->u.shard_data.first);
        keel_buf_add_u64le(out, m->u.shard_data.total);
        keel_buf_add(out, m->u.shard_data.offsets, ((size_t)m->u.shard_data.nrecords + 1) * 4);
        keel_buf_add(out, m->u.shard_data.data, m->u.shard_data.offsets[m->u.shard_data.nrecords]);
        break;
    case KEEL_MSG_ADMIN:
        keel_buf_add_u32le(out, m->u.admin.op);
        keel_buf_add_u32le(out, 0);
        keel_buf_add(out, m->u.admin.payload.data, m->u.admin.payload.len);
        break;
    }
    assert(out->len - body == size && "the body is as long as its header says");
    return 0;
}

void keel_proto_encode_reject(struct keel_buf *out, const struct keel_frame_header *req, int code,
                              const char *message)
{
    char text[KEEL_PROTO_MAX_MESSAGE + 1];
    struct keel_msg m;

    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_ERROR;
    m.hdr.flags = KEEL_FLAG_REPLY;
    m.hdr.request_id = req ? req->request_id : 0;
    m.u.error.code = code < 0 ? code : KEEL_EINVAL;
    if (code == KEEL_EVERSION && req)
        snprintf(text, sizeof(text), "unsupported protocol version %u: this node speaks version %u",
                 req->version, (unsigned)KEEL_PROTO_VERSION);
    else if (message != NULL && message[0] != '\0')
        snprintf(text, sizeof(text), "%s: %s", keel_strerror(m.u.error.code), message);
    else
        snprintf(text, sizeof(text), "%s", keel_strerror(m.u.error.code));
    m.u.error.message = keel_str_of(text);
    /* Our own text, bounded above and free of NUL: encoding cannot fail. */
    if (keel_proto_encode(out, &m, NULL) != 0)
        assert(!"reject frame failed to encode");
}
