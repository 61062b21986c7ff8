/*
 * dataset.h - datasets: parsing IDX, LIBSVM and CSV files into records.
 *
 * docs/datasets.md describes the formats accepted, the record encoding
 * (keel/record.h), shards and digests.
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
 * A parser is not thread-safe; use one per thread.
 */
#ifndef KEEL_DATASET_H
#define KEEL_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/record.h"

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

#endif
