/*
 * checkpoint.h - signed checkpoints of a store's ranges: take, verify, diff,
 * export, restore, prune.
 *
 * A checkpoint is a copy of the rows of every range (from the range
 * snapshots in the store) under a checkpoint id, plus a manifest: the job,
 * checkpoint id, clock, the job spec's SHA-256, per range its LSN, row count,
 * table directory, exactly-once shard table and the SHA-256 of its rows in
 * canonical order, the job's shard progress, the creation time and the
 * SHA-256 of the previous manifest.  The manifest is JSON, signed with
 * HMAC-SHA256 under the cluster key, inside a small binary envelope.
 * docs/storage.md gives the layout, the canonical row order and the JSON.
 *
 * Invariants:
 *  - Taking, restoring and pruning are each one LMDB transaction that also
 *    appends the audit record (audit.h): a crash leaves all or nothing.
 *  - Checkpoint ids increase: a new checkpoint gets the highest id + 1.
 *  - The manifest is signed over its exact JSON bytes; verification
 *    recomputes the HMAC and every range's SHA-256 from the stored rows.
 *  - Nothing here trusts the bytes in the store: the envelope and JSON
 *    decoder is bounds-checked and fuzzed, and rows are checked as they are
 *    read.
 *
 * Thread safety: as store.h.  Results are owned by the caller.
 */
#ifndef KEEL_CHECKPOINT_H
#define KEEL_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/id.h"
#include "keel/snapshot.h"
#include "keel/store.h"

#define KEEL_MANIFEST_MAGIC       UINT32_C(0x4E414D4B) /* 'K' 'M' 'A' 'N' */
#define KEEL_MANIFEST_VERSION     1
#define KEEL_MANIFEST_HEADER_SIZE 48
#define KEEL_MANIFEST_FORMAT      1 /* the JSON's "format" */
#define KEEL_MANIFEST_MAX_JSON    (64u << 20)
#define KEEL_CKPT_MAX_JOB         128
#define KEEL_CKPT_MAX_RANGES      65536
#define KEEL_CKPT_KEY_MIN         32
#define KEEL_CKPT_KEY_MAX         4096

/* The cluster key that signs manifests. */
struct keel_ckpt_key {
    unsigned char bytes[KEEL_CKPT_KEY_MAX];
    size_t len;
};

/*
 * Read a key file: its raw bytes, KEEL_CKPT_KEY_MIN..KEEL_CKPT_KEY_MAX of
 * them.  Errors name the file.
 */
int keel_ckpt_key_load(struct keel_ckpt_key *key, const char *path, struct keel_error *err);

/*
 * Create a new key file of 32 random bytes (mode 0600, written, fsynced).
 * An existing file is never overwritten (-EEXIST).
 */
int keel_ckpt_key_generate(const char *path, struct keel_error *err);

/* One table of one range in a checkpoint. */
struct keel_ckpt_table {
    uint32_t table_id;
    uint32_t width;
    uint32_t state_width;
    uint64_t rows;
    uint32_t blocks;
};

/* One range in a checkpoint. */
struct keel_ckpt_range {
    uint32_t range;
    uint64_t lsn;
    uint64_t rows;
    uint32_t blocks;
    unsigned char sha256[32]; /* of the rows in canonical order */
    size_t ntables;
    struct keel_ckpt_table *tables;
    size_t nshards;
    struct keel_shard_pos *shards;
};

/* A decoded manifest. */
struct keel_manifest {
    char job[KEEL_CKPT_MAX_JOB + 1];
    uint64_t id;
    uint64_t clock;
    unsigned char spec_sha256[32];
    uint64_t created_ns;
    unsigned char prev_sha256[32]; /* zeros for the first checkpoint */
    size_t nranges;
    struct keel_ckpt_range *ranges; /* increasing range */
    size_t nshards;
    struct keel_shard_pos *shards; /* job progress: per shard, the highest seq of any range */
    char server[KEEL_ID_MAX + 1];  /* the node that took it; "" when not named */
};

/*
 * Where data shard `shard` stands in checkpoint range `r`: the lowest seq
 * over the range's tables (its position ids of that shard), 0 when none is
 * recorded (the shard applied nothing there).
 */
uint64_t keel_ckpt_range_position(const struct keel_ckpt_range *r, uint32_t shard);

/* Free what a decode allocated; safe on a zeroed manifest. */
void keel_manifest_release(struct keel_manifest *m);

/*
 * Encode `m` as JSON inside the signed envelope, appended to `out`.
 * KEEL_EINVAL when a field cannot be represented (a number above 2^63-1).
 */
int keel_manifest_encode(struct keel_buf *out, const struct keel_manifest *m,
                         const struct keel_ckpt_key *key, struct keel_error *err);

/*
 * Decode an envelope: check its header and lengths, parse and check the JSON
 * into *m (allocated; release it).  The signature is not checked here (that
 * needs the key): *mac gets the stored HMAC and *json the signed bytes (a
 * view into `data`); either may be NULL.  Errors name the offset or the JSON
 * field: KEEL_ETRUNCATED, KEEL_EMAGIC, KEEL_EVERSION, KEEL_ERESERVED,
 * KEEL_ECOUNT, KEEL_ECORRUPT (bad JSON or a field of the wrong type/range).
 */
int keel_manifest_decode(const void *data, size_t len, struct keel_manifest *m, unsigned char *mac,
                         struct keel_view *json, struct keel_error *err);

/* What the caller says about the job when taking a checkpoint. */
struct keel_ckpt_params {
    const char *job;
    uint64_t clock;
    unsigned char spec_sha256[32];
    /*
     * The ranges' copies to checkpoint, in increasing range order (a server's
     * copies taken at the checkpoint's clock); nsnaps 0: every range that has
     * a snapshot in the store.
     */
    const struct keel_snapshot *snaps;
    size_t nsnaps;
    const char *server; /* the node taking it, named in the manifest (NULL: not named) */
};

/*
 * Take a checkpoint of p->snaps, or of every range that has a snapshot in
 * the store (each loaded and verified): rows copied and hashed, and the
 * signed manifest and a "taken" audit record written, in one transaction.
 * *id gets the new checkpoint id.  KEEL_ENOTFOUND when there is no range to
 * checkpoint; KEEL_EINVAL when p->snaps is not in increasing range order.
 */
int keel_checkpoint_take(keel_store *s, const struct keel_ckpt_key *key,
                         const struct keel_ckpt_params *p, uint64_t *id, struct keel_error *err);

/* The checkpoint ids in the store, increasing (caller frees *ids). */
int keel_checkpoint_list(keel_store *s, uint64_t **ids, size_t *n, struct keel_error *err);

/*
 * Read and decode a checkpoint's manifest (without verifying it).
 * KEEL_ENOTFOUND naming the id when there is none.
 */
int keel_checkpoint_manifest(keel_store *s, uint64_t id, struct keel_manifest *m,
                             struct keel_error *err);

/*
 * Verify a checkpoint: the envelope decodes, the HMAC matches under `key`,
 * every range's rows are all there, in order, with good block checksums and
 * the manifest's SHA-256 and counts, and the previous manifest (when it is
 * still stored) has the digest this one names.  Returns 0, or an error whose
 * message names the first failing place ("checkpoint 3: range 17: ...").
 * When `record` is set, a "verified" audit record with the outcome is added.
 */
int keel_checkpoint_verify(keel_store *s, const struct keel_ckpt_key *key, uint64_t id, int record,
                           struct keel_error *err);

/*
 * Load one table of a checkpoint, gathered from all its ranges and sorted by
 * key, into *t (caller frees t->keys, t->rows, t->state).  Block checksums
 * are verified.  KEEL_ENOTFOUND when the checkpoint has no such table.
 */
int keel_checkpoint_table(keel_store *s, const struct keel_manifest *m, uint32_t table_id,
                          struct keel_snap_table *t, struct keel_error *err);

/* The distinct table ids of a manifest, increasing (caller frees). */
size_t keel_manifest_tables(const struct keel_manifest *m, uint32_t **ids);

/* Per-table difference of two checkpoints. */
struct keel_ckpt_diff {
    uint32_t table_id;
    uint64_t rows_a;
    uint64_t rows_b;
    uint64_t changed; /* rows in both that differ, plus rows in only one */
    double l2;        /* L2 norm of b - a over all rows (a missing row counts as zeros) */
    int width_differs;
};

/* Compare checkpoints a and b table by table; *diffs is allocated (free it). */
int keel_checkpoint_diff(keel_store *s, uint64_t a, uint64_t b, struct keel_ckpt_diff **diffs,
                         size_t *n, struct keel_error *err);

/*
 * Export each table of the checkpoint as NumPy files in `dir` (created):
 * table_<id>.npy (float32, shape (rows, width), rows in key order) and
 * table_<id>.keys.npy (uint64, the keys).  Files are written to a temporary
 * name, fsynced and renamed.  Adds an "exported" audit record.
 */
int keel_checkpoint_export(keel_store *s, uint64_t id, const char *dir, struct keel_error *err);

/*
 * Roll the ranges of a checkpoint back: after verifying it, each range's
 * snapshot becomes the checkpoint's rows, LSN and shard table, and the
 * range's log is dropped; with a "restored" audit record, in one
 * transaction.
 */
int keel_checkpoint_restore(keel_store *s, const struct keel_ckpt_key *key, uint64_t id,
                            struct keel_error *err);

/*
 * The same from the checkpoint `id` of store `src` into store `dst` (which
 * may be `src`), for the ranges r with only[r] set (all when `only` is NULL;
 * KEEL_PROTO_NRANGES entries).  The "restored" audit record goes to `dst`.
 * A job rolled back this way finds every range's checkpoint in whichever
 * server's store the assignment gives it to.
 */
int keel_checkpoint_restore_into(keel_store *src, const struct keel_ckpt_key *key, uint64_t id,
                                 keel_store *dst, const unsigned char *only,
                                 struct keel_error *err);

/*
 * Keep the `keep` newest checkpoints and delete the others (manifest and
 * rows), each with a "pruned" audit record, in one transaction.  *pruned
 * (may be NULL) gets how many went.
 */
int keel_checkpoint_prune(keel_store *s, size_t keep, size_t *pruned, struct keel_error *err);

#endif
