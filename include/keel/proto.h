/*
 * proto.h - Keel's wire protocol: frames, message bodies, encoder and decoder.
 *
 * docs/protocol.md describes every byte; this header is the C view of it.
 *
 * A frame is a fixed 32-byte little-endian header followed by `body_len`
 * bytes of a type-specific body.  Invariants the decoder enforces on every
 * frame, whoever sent it:
 *  - magic, version, type and flags are known, reserved fields are zero;
 *  - 32 + body_len <= the configured maximum frame size;
 *  - every count and length inside the body is checked against the bytes that
 *    are actually there, with overflow-checked arithmetic, and the fields fill
 *    the body exactly (no trailing bytes);
 *  - keys are strictly increasing; row widths are 1..KEEL_PROTO_MAX_ROW_WIDTH;
 *    strings hold no NUL byte and fit their field's limit; padding is zero.
 * A decoded message points into the frame it came from (no copy): its
 * pointers are valid as long as that memory is.  The decoder needs the frame
 * to start at an 8-byte aligned address (memory from malloc, a keel_buf, or
 * LMDB values all are) so that keys and rows can be read in place.
 *
 * The codec keeps no state; every function is thread-safe.
 */
#ifndef KEEL_PROTO_H
#define KEEL_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/half.h"
#include "keel/id.h"      /* KEEL_ID_MAX: node ids, worker ids, dataset names */
#include "keel/version.h" /* KEEL_PROTO_VERSION */

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "Keel reads keys and rows in place and needs a little-endian host"
#endif

#define KEEL_PROTO_MAGIC       UINT32_C(0x4C45454B) /* the bytes 'K' 'E' 'E' 'L' */
#define KEEL_PROTO_HEADER_SIZE 32

/* Limits that hold whatever the configured maximum frame size is. */
#define KEEL_PROTO_MIN_FRAME_MAX 4096                /* smallest max frame size allowed */
#define KEEL_PROTO_MAX_ROW_WIDTH (UINT32_C(1) << 20) /* floats per row */
#define KEEL_PROTO_MAX_MESSAGE   1024                /* ERROR message text */
#define KEEL_PROTO_NRANGES       256 /* key ranges; REPLICATE's range is below this */

/* Message types; the numbers are on the wire. */
#define KEEL_MSG_TYPE_MAP(X)                                                                       \
    X(HELLO, 1)                                                                                    \
    X(PUSH, 2)                                                                                     \
    X(PULL, 3)                                                                                     \
    X(PULL_REPLY, 4)                                                                               \
    X(ACK, 5)                                                                                      \
    X(ERROR, 6)                                                                                    \
    X(REPLICATE, 7)                                                                                \
    X(SHARD_READ, 8)                                                                               \
    X(SHARD_DATA, 9)                                                                               \
    X(ADMIN, 10)                                                                                   \
    X(RANGE_COPY, 11)

enum keel_msg_type {
#define KEEL__MSG_ENUM(name, value) KEEL_MSG_##name = value,
    KEEL_MSG_TYPE_MAP(KEEL__MSG_ENUM)
#undef KEEL__MSG_ENUM
};

#define KEEL_MSG_TYPE_MAX 11

/* Header flags; any other bit, or LAST on a type other than SHARD_DATA, is refused (KEEL_EFLAGS).
 */
#define KEEL_FLAG_REPLY 0x0001u /* this frame answers the request with the same id */
#define KEEL_FLAG_LAST  0x0002u /* SHARD_DATA: no records after these in the shard */
/*
 * PUSH and PULL_REPLY: the rows are 16-bit floats of that kind (half.h);
 * PULL: the reply's rows are wanted so.  At most one of the two; on any
 * other type refused.  The codec sets and reads them from keel_rows.enc.
 */
#define KEEL_FLAG_BF16   0x0004u
#define KEEL_FLAG_FP16   0x0008u
#define KEEL_FLAGS_KNOWN (KEEL_FLAG_REPLY | KEEL_FLAG_LAST | KEEL_FLAG_BF16 | KEEL_FLAG_FP16)

/* Roles a node can have; the numbers are on the wire (HELLO). */
enum keel_role {
    KEEL_ROLE_COORDINATOR = 1,
    KEEL_ROLE_SERVER = 2,
    KEEL_ROLE_WORKER = 3,
    KEEL_ROLE_ADMIN = 4,
};

/* ACK status. */
enum keel_ack_status {
    KEEL_ACK_APPLIED = 0,   /* the push was applied now */
    KEEL_ACK_DUPLICATE = 1, /* the shard position was applied before; not applied again */
};

struct keel_frame_header {
    uint32_t magic;
    uint8_t version;
    uint8_t type;
    uint16_t flags;
    uint64_t request_id; /* chosen by the requester, echoed in the reply */
    uint64_t epoch;      /* sender's coordinator epoch, 0 when it has none */
    uint32_t body_len;   /* bytes after the header */
};

/* A string on the wire: not NUL-terminated; points into the frame. */
struct keel_str {
    const char *ptr;
    uint32_t len;
};

/*
 * Keys and packed rows: nkeys sorted keys, nkeys * row_width values.  With
 * enc KEEL_ROWS_F32 (0) the values are `rows`; with a 16-bit encoding they
 * are `half` (to encode: the caller narrows them, keel_half_narrow(); decoded:
 * they point into the frame, and keel_rows_widen() gives floats), and `rows`
 * is NULL.  A PULL carries no values: its enc names the encoding it wants.
 */
struct keel_rows {
    uint32_t table_id;
    uint32_t row_width;
    uint32_t nkeys;
    const uint64_t *keys; /* strictly increasing */
    const float *rows;    /* row i is rows[i * row_width .. +row_width) */
    uint32_t enc;         /* enum keel_rows_enc (half.h) */
    const uint16_t *half; /* the values when enc is 16-bit, laid out as rows */
};

/* Rows [first, first + n) of `d` as floats into out (n * row_width of them). */
void keel_rows_widen(const struct keel_rows *d, uint32_t first, uint32_t n, float *out);

/* The rows encoding a frame's flags name (KEEL_ROWS_F32 when neither 16-bit flag is set). */
uint32_t keel_proto_flags_enc(uint16_t flags);

struct keel_msg_hello {
    uint8_t role; /* enum keel_role */
    uint64_t incarnation;
    struct keel_str node_id;
};

struct keel_msg_push {
    struct keel_str worker_id;
    uint32_t shard;       /* data shard the gradient came from */
    uint64_t incarnation; /* worker's incarnation */
    uint64_t seq;         /* position in the shard: grows while the shard is processed */
    uint64_t clock;       /* worker's clock (BSP/SSP) */
    /* The assignment version the sender routed by; a server refuses older ones. */
    uint64_t assignment_version;
    /* The shard lease's fencing token (keel_shard.lease); a server refuses an earlier one. */
    uint64_t lease;
    struct keel_rows data;
};

struct keel_msg_pull {
    struct keel_str worker_id;
    uint64_t clock;              /* the clock the worker is about to compute */
    uint64_t assignment_version; /* the version the sender routed by; older ones are refused */
    struct keel_rows data;       /* rows is NULL: a pull carries keys only */
};

struct keel_msg_pull_reply {
    uint64_t clock; /* the server's view of the slowest live worker's clock */
    struct keel_rows data;
};

struct keel_msg_ack {
    uint64_t lsn; /* log sequence number given to the push, 0 when none */
    uint64_t seq; /* the push's seq, echoed */
    uint32_t shard;
    uint32_t status; /* enum keel_ack_status */
};

struct keel_msg_error {
    int32_t code;                /* a Keel error code (negative) */
    uint64_t assignment_version; /* with KEEL_EREDIRECT: the version the sender has */
    struct keel_str message;
};

/*
 * A primary's update of one range, forwarded to a backup: the part of a push
 * in `range`, as the primary applied it (its shard is the position id), with
 * the LSN it gave it and the range's term (the assignment version at which
 * the sender was chosen as the range's primary).  A backup refuses a term
 * older than the one it knows, and an LSN that does not follow its own.
 * `cut` numbers the last checkpoint the primary cut the range at (its clock
 * over the job's checkpoint_interval; 0: none yet): a backup copies the
 * range for that checkpoint just before the first update that carries it.
 */
struct keel_msg_replicate {
    uint32_t range;
    uint32_t cut;
    uint64_t term;
    uint64_t lsn;
    struct keel_msg_push push;
};

/*
 * A primary's copy of a whole range, sent to a backup before any REPLICATE
 * that follows it: the payload is the range's packed snapshot
 * (keel_snapshot_pack(): rows, optimizer state, exactly-once positions, LSN).
 */
struct keel_msg_range_copy {
    uint32_t range;
    uint64_t term;
    struct keel_view payload;
};

struct keel_msg_shard_read {
    struct keel_str dataset;
    uint32_t shard;
    uint32_t max_records;
    uint64_t first; /* index of the first record wanted */
};

struct keel_msg_shard_data {
    uint32_t shard;
    uint32_t nrecords;
    uint64_t first;            /* index of records[0] in the shard */
    uint64_t total;            /* records in the shard */
    const uint32_t *offsets;   /* nrecords + 1 offsets into data, offsets[0] == 0 */
    const unsigned char *data; /* record i is data[offsets[i] .. offsets[i+1]) */
};

struct keel_msg_admin {
    uint32_t op;
    struct keel_view payload; /* op-specific bytes (JSON for the ops defined so far) */
};

struct keel_msg {
    struct keel_frame_header hdr;
    union {
        struct keel_msg_hello hello;
        struct keel_msg_push push;
        struct keel_msg_pull pull;
        struct keel_msg_pull_reply pull_reply;
        struct keel_msg_ack ack;
        struct keel_msg_error error;
        struct keel_msg_replicate replicate;
        struct keel_msg_range_copy range_copy;
        struct keel_msg_shard_read shard_read;
        struct keel_msg_shard_data shard_data;
        struct keel_msg_admin admin;
    } u;
};

/* "PUSH", "PULL_REPLY", ... or "UNKNOWN". */
const char *keel_msg_type_name(unsigned type);

/* "coordinator", "server", "worker", "admin", or "unknown". */
const char *keel_role_name(unsigned role);

/* The role named `name`, or 0 when there is none. */
enum keel_role keel_role_parse(const char *name);

/* A keel_str of a C string (not copied). */
struct keel_str keel_str_of(const char *s);

/*
 * Decode and check the 32-byte header at `data` (of `len` available bytes).
 * Fills *h as far as it could read it: on KEEL_EVERSION the request id is
 * valid, so the caller can answer with keel_proto_encode_reject().
 * Errors: KEEL_ETRUNCATED (len < 32: wait for more bytes), KEEL_EMAGIC,
 * KEEL_EVERSION, KEEL_EFRAMESIZE (32 + body_len > max_frame), KEEL_ERESERVED,
 * KEEL_ETYPE, KEEL_EFLAGS.
 */
int keel_proto_header_decode(const void *data, size_t len, size_t max_frame,
                             struct keel_frame_header *h, struct keel_error *err);

/*
 * Decode the frame at `frame`, of which `len` bytes are available (more may
 * follow: only 32 + body_len are used).  `frame` must be 8-byte aligned
 * (KEEL_EINVAL otherwise: a bug of the caller, refused rather than read).
 * On success *m points into `frame`.
 * Errors: those of keel_proto_header_decode(); KEEL_EBODYLEN when the body
 * is longer than what is available; then, for the body: KEEL_ESHORTBODY,
 * KEEL_ECOUNT, KEEL_EUNSORTED, KEEL_EROWWIDTH, KEEL_ESTRING, KEEL_EPADDING,
 * KEEL_EOFFSETS, KEEL_ERESERVED, KEEL_EINVAL (a field out of its range),
 * KEEL_ETRAILING.  `err` names the field.
 */
int keel_proto_decode(const void *frame, size_t len, size_t max_frame, struct keel_msg *m,
                      struct keel_error *err);

/*
 * Append the frame for `m` to `out`: header from m->hdr (magic, version and
 * body_len are filled in), body from the union member for m->hdr.type.
 * Keys and rows are copied in bulk; nothing is allocated per key.
 * Errors (with `out` unchanged): the same checks the decoder makes on the
 * fields (KEEL_EUNSORTED, KEEL_EROWWIDTH, KEEL_ESTRING, KEEL_EINVAL, ...),
 * and KEEL_EFRAMESIZE when the body would not fit in 32 bits.
 */
int keel_proto_encode(struct keel_buf *out, const struct keel_msg *m, struct keel_error *err);

/*
 * Append an ERROR reply to a request with header `req` (as far as it was
 * decoded) that failed with `code`: the reply carries the request id, the
 * code and `message`.  For KEEL_EVERSION the message says which version this
 * node speaks.  The reply is always encoded in KEEL_PROTO_VERSION.
 */
void keel_proto_encode_reject(struct keel_buf *out, const struct keel_frame_header *req, int code,
                              const char *message);

#endif
