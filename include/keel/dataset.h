/*
 * dataset.h - datasets: parsing IDX, LIBSVM and CSV files into records, and
 * immutable, sharded datasets in a node's store.
 *
 * docs/datasets.md describes the formats accepted, the record encoding
 * (keel/record.h), shards, digests and the layout in the store.
 *
 * Parsing.  A parser (keel_dsparse) reads whole files given as memory
 * buffers, so that a fuzzer can drive it, and hands every record it makes, in
 * order, to a callback.  It trusts nothing in the files: every header value
 * is checked against the bytes that are actually there before anything is
 * allocated from it, and a malformed file is refused with an error that names
 * the file and the line (text formats) or byte offset (IDX) at fault.  Byte
 * offsets count bytes of the decompressed content.  Records already handed to
 * the callback before an error stay handed: the caller discards them (the
 * import does this by never completing the dataset).
 *
 * Datasets in the store.  keel_dataset_import() parses files into a new
 * dataset: records dealt round-robin to N shards (record g goes to shard
 * g mod N, at index g div N), each record with an XXH3-64 checksum, each
 * shard with a SHA-256 of its records and the whole with a SHA-256 content
 * digest that does not depend on the name or the number of shards.
 * Invariants:
 *  - A dataset is immutable: a name is imported once; importing it again is
 *    refused (KEEL_EEXIST).
 *  - A dataset appears whole or not at all.  The import writes records in
 *    several transactions but marks the dataset complete in the last one;
 *    until then every reader (info, verify, open) refuses it, and an import
 *    killed half way leaves an incomplete dataset that the next import of
 *    the same name removes.
 *  - Every record read is checked against its checksum, which also binds it
 *    to its dataset, shard and index: a damaged or misplaced record is never
 *    handed out.
 *
 * A parser is not thread-safe; use one per thread.  The functions taking a
 * keel_store are thread-safe as the store is (keel/store.h); a keel_dataset
 * handle may be shared by threads once opened (it is read-only).
 */
#ifndef KEEL_DATASET_H
#define KEEL_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/id.h"
#include "keel/proto.h"
#include "keel/record.h"
#include "keel/store.h"

/* File formats; the numbers are stored in dataset metadata. */
enum keel_dataset_format {
    KEEL_DATASET_IDX = 1,
    KEEL_DATASET_LIBSVM = 2,
    KEEL_DATASET_CSV = 3,
};

/* "idx", "libsvm", "csv" or "unknown". */
const char *keel_dataset_format_name(unsigned format);

/* The format named `name` ("idx", "libsvm", "csv"), or 0 when unknown. */
int keel_dataset_format_parse(const char *name);

/* What a parse found: the shape every record of the dataset has. */
struct keel_dataset_shape {
    uint32_t format;    /* enum keel_dataset_format */
    uint32_t encoding;  /* enum keel_record_encoding of every record */
    uint32_t nfeatures; /* features per record (dense) or bound on indices (sparse) */
    uint32_t nclasses;  /* labels are below this */
    uint64_t nrecords;
};

/* Options; zero-initialize for the defaults. */
struct keel_dsparse_opts {
    /* 0: from the data (dense: the header or first line; LIBSVM: the largest
     * index).  Otherwise dense records must have exactly this many features
     * and LIBSVM indices must not exceed it. */
    uint32_t nfeatures;
    /* 0: the largest label + 1.  Otherwise every label must be below it. */
    uint32_t nclasses;
    int csv_header;     /* CSV: skip the first line of each file */
    int csv_label_last; /* CSV: the label is the last column (default: the first) */
};

/*
 * Called for each record, in order: `index` counts records from 0 across all
 * the files given to the parser, `rec` (valid only during the call) holds
 * `len` bytes in the encoding of keel/record.h.  A non-zero return stops the
 * parse and is returned from it, with the callback's error in `err`.
 */
typedef int (*keel_dsparse_record_fn)(void *ctx, uint64_t index, const unsigned char *rec,
                                      size_t len, struct keel_error *err);

typedef struct keel_dsparse keel_dsparse;

/*
 * A parser for `format` with `opts` (NULL for the defaults), calling `fn`
 * (which may be NULL: only check) with `ctx`.  Free it with keel_dsparse_free().
 */
keel_dsparse *keel_dsparse_new(unsigned format, const struct keel_dsparse_opts *opts,
                               keel_dsparse_record_fn fn, void *ctx);
void keel_dsparse_free(keel_dsparse *p);

/*
 * Parse one LIBSVM or CSV file, `text`, named `name` in errors.  Several files
 * may be given one after the other; they must agree on the shape (CSV: the
 * number of columns).  A file without any record is refused.
 * Errors: KEEL_ECORRUPT for malformed content ("'a.csv': line 7: field 3:
 * 'x1' is not a number"), KEEL_EINVAL when the parser is for IDX, or what the
 * callback returned.
 */
int keel_dsparse_text(keel_dsparse *p, const char *name, struct keel_view text,
                      struct keel_error *err);

/*
 * Parse an IDX pair: `images` (first dimension: records; the others:
 * features) and `labels` (one dimension, the same record count, integers).
 * Unsigned-byte images become dense-u8 records, every other type dense-f32.
 * Errors: KEEL_ECORRUPT naming the file and byte offset, KEEL_EINVAL when the
 * parser is not for IDX or was already given a pair, or the callback's error.
 */
int keel_dsparse_idx(keel_dsparse *p, const char *images_name, struct keel_view images,
                     const char *labels_name, struct keel_view labels, struct keel_error *err);

/*
 * After the last file: fill *shape.  Errors: KEEL_ECORRUPT when there were no
 * records at all or (LIBSVM) no feature in any record.
 */
int keel_dsparse_finish(keel_dsparse *p, struct keel_dataset_shape *shape, struct keel_error *err);

/*
 * Read the file at `path` into `out` (appended), decompressing it when it is
 * gzip-compressed; a plain file is read as it is.  Refuses content over
 * `max_bytes` (after decompression).
 * Errors: -errno when the file cannot be opened or read, KEEL_ECORRUPT for a
 * damaged or truncated gzip stream, KEEL_EFRAMESIZE over `max_bytes`.
 */
int keel_dataset_load_file(const char *path, size_t max_bytes, struct keel_buf *out,
                           struct keel_error *err);

/* ---- datasets in a store ------------------------------------------------ */

/* A dataset name is 1 to KEEL_ID_MAX bytes of [A-Za-z0-9._-], not starting with '.'. */
#define KEEL_DATASET_SPLIT_MAX   32 /* bytes of the split label ("train", "test") */
#define KEEL_DATASET_SOURCES_MAX 255
#define KEEL_DATASET_MAX_SHARDS  4096
#define KEEL_DATASET_DIGEST_SIZE 32
#define KEEL_DATASET_MAX_FILE    ((size_t)4 << 30) /* bytes of one input file, decompressed */

/* What the store knows of a dataset. */
struct keel_dataset_info {
    char name[KEEL_ID_MAX + 1];
    char split[KEEL_DATASET_SPLIT_MAX + 1];     /* "" when not given */
    char sources[KEEL_DATASET_SOURCES_MAX + 1]; /* file names, ", "-separated, maybe cut */
    struct keel_dataset_shape shape;
    uint32_t nshards;
    int complete;                                   /* 0 while (or if) the import is unfinished */
    uint32_t importer_pid;                          /* the importing process (incomplete only) */
    uint64_t bytes;                                 /* sum of the records' sizes */
    uint64_t created;                               /* Unix time of the import */
    unsigned char digest[KEEL_DATASET_DIGEST_SIZE]; /* content digest (complete only) */
};

/* Import progress: records and bytes written so far, after each batch. */
typedef void (*keel_dataset_progress_fn)(void *ctx, uint64_t records, uint64_t bytes);

struct keel_dataset_import_opts {
    uint32_t nshards;  /* 1..KEEL_DATASET_MAX_SHARDS */
    const char *split; /* "train", "test", ... or NULL */
    struct keel_dsparse_opts parse;
    keel_dataset_progress_fn progress; /* may be NULL */
    void *progress_ctx;
};

/* Check a dataset name; KEEL_EINVAL naming what is wrong. */
int keel_dataset_name_check(const char *name, struct keel_error *err);

/*
 * Import `files` (IDX: the images file then the labels file; LIBSVM and
 * CSV: one or more files, concatenated in order) as dataset `name` of
 * `format`.  Files may be gzip-compressed.  On success fills *info (may be
 * NULL).  On failure nothing of the dataset stays in the store.
 * Errors: KEEL_EINVAL (bad name, option or file count), KEEL_EEXIST (the
 * name exists, or another live process is importing it), the parser's
 * KEEL_ECORRUPT naming file and line or offset, -errno reading a file, the
 * store's errors (-ENOSPC when the store is full).
 */
int keel_dataset_import(keel_store *s, const char *name, unsigned format, const char *const *files,
                        size_t nfiles, const struct keel_dataset_import_opts *opts,
                        struct keel_dataset_info *info, struct keel_error *err);

/*
 * Fill *info for dataset `name`.  Errors: KEEL_ENOTFOUND (no such dataset,
 * or its import is unfinished: the message says which), KEEL_ECORRUPT when
 * its metadata is damaged.
 */
int keel_dataset_stat(keel_store *s, const char *name, struct keel_dataset_info *info,
                      struct keel_error *err);

/*
 * Call `fn` for every dataset, complete or not, in name order (inside a read
 * transaction: `fn` must not write to the store).  A non-zero return from
 * `fn` stops the walk and is returned.
 */
int keel_dataset_list(keel_store *s, int (*fn)(void *ctx, const struct keel_dataset_info *info),
                      void *ctx, struct keel_error *err);

/*
 * Re-read every record of dataset `name` and check its checksum, every
 * shard's record count and SHA-256, and the content digest.  `report` (may
 * be NULL) is called with a sentence for each problem found, such as
 * "record 1234 (shard 2, index 411): checksum mismatch"; at most
 * `max_reports` are reported, all are counted.
 * Errors: KEEL_ECHECKSUM when a record, shard or the digest does not match
 * (`err` names the first), KEEL_ECORRUPT for damaged structure, and those
 * of keel_dataset_stat().
 */
int keel_dataset_verify(keel_store *s, const char *name,
                        void (*report)(void *ctx, const char *problem), void *ctx,
                        unsigned max_reports, struct keel_error *err);

/* ---- reading shards (what a data server does) ---------------------------- */

typedef struct keel_dataset keel_dataset;

/*
 * Open dataset `name` of store `s` for reading; the store must stay open
 * while the handle is.  Errors: those of keel_dataset_stat().
 */
int keel_dataset_open(keel_store *s, const char *name, keel_dataset **out, struct keel_error *err);
void keel_dataset_close(keel_dataset *ds);

/* The dataset's metadata; valid until keel_dataset_close(). */
const struct keel_dataset_info *keel_dataset_get_info(const keel_dataset *ds);

/* Records in `shard`, or 0 when there is no such shard. */
uint64_t keel_dataset_shard_records(const keel_dataset *ds, uint32_t shard);

/* What the store holds about one shard. */
struct keel_dataset_shard {
    uint64_t nrecords;
    uint64_t bytes;                              /* sum of its records' sizes */
    uint32_t nblocks;                            /* storage blocks holding its records */
    unsigned char sha[KEEL_DATASET_DIGEST_SIZE]; /* SHA-256 of its records, in order */
};

/* Shard `shard`, or NULL when there is none; valid until keel_dataset_close(). */
const struct keel_dataset_shard *keel_dataset_shard(const keel_dataset *ds, uint32_t shard);

/*
 * Records of one shard read for a SHARD_DATA frame: `offsets` holds
 * nrecords + 1 u32 values (native order, offsets[0] == 0) into `data`.
 * Initialize with keel_shard_batch_init(), free with _release().
 */
struct keel_shard_batch {
    uint32_t shard;
    uint32_t nrecords;
    uint64_t first; /* index in the shard of the first record */
    uint64_t total; /* records in the shard */
    struct keel_buf offsets;
    struct keel_buf data;
};

void keel_shard_batch_init(struct keel_shard_batch *b);
void keel_shard_batch_release(struct keel_shard_batch *b);

/*
 * Read records [first, first + n) of `shard` into *out (replacing what it
 * held), where n is the most records, at most `max_records`, whose SHARD_DATA
 * body (24 + 4 (n + 1) + data bytes) fits in `max_body` bytes; at least one
 * record is read unless `first` is at or past the end of the shard (then n
 * is 0).  Every record is checked against its checksum.
 * Errors: KEEL_EINVAL (no such shard), KEEL_EFRAMESIZE (the first record
 * alone does not fit in max_body), KEEL_ECHECKSUM naming the record that
 * failed, KEEL_ECORRUPT, store errors.
 */
int keel_dataset_read(keel_dataset *ds, uint32_t shard, uint64_t first, uint32_t max_records,
                      size_t max_body, struct keel_shard_batch *out, struct keel_error *err);

/*
 * Point the SHARD_DATA body `m` at batch `b` (no copy: valid while `b` is
 * unchanged).  Returns non-zero when the batch ends the shard (set the LAST
 * flag on the frame).
 */
int keel_shard_batch_message(const struct keel_shard_batch *b, struct keel_msg_shard_data *m);

#endif
