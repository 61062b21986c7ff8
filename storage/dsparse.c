/*
 * dsparse.c - parsers of IDX, LIBSVM and CSV files into records, and the
 * file loader that reads gzip-compressed or plain files.
 *
 * Every parser walks a memory buffer and checks each length and count
 * against the bytes that are there before using it.  Text numbers are copied
 * into a small NUL-terminated array for strtod(): a field longer than
 * MAX_NUMBER_LEN characters is refused rather than read past.
 */
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "alloc.h"
#include "keel/dataset.h"

#define MAX_NUMBER_LEN 63
/* Dense float records hold at most this many features. */
#define MAX_DENSE_F32 ((KEEL_RECORD_MAX_BYTES - KEEL_RECORD_HEADER_SIZE) / 4)
#define MAX_DENSE_U8  (KEEL_RECORD_MAX_BYTES - KEEL_RECORD_HEADER_SIZE)
#define MAX_PAIRS     ((KEEL_RECORD_MAX_BYTES - KEEL_RECORD_HEADER_SIZE) / 8)

struct keel_dsparse {
    unsigned format;
    struct keel_dsparse_opts opts;
    keel_dsparse_record_fn fn;
    void *ctx;

    uint64_t nrecords;
    uint32_t encoding;   /* of the records made so far, 0 before the first */
    uint32_t nfeatures;  /* dense: fixed by the first record; LIBSVM: largest index */
    uint32_t max_label;  /* largest label seen */
    int idx_done;        /* IDX: a pair was parsed */
    uint32_t csv_ncols;  /* CSV: columns of every line, 0 before the first */
    char csv_first[128]; /* CSV: where the column count came from, for errors */

    struct keel_buf rec; /* the record being made */
    float *values;       /* scratch for features */
    uint32_t *indices;   /* scratch for sparse indices */
    size_t cap;          /* elements allocated in values and indices */
};

const char *keel_dataset_format_name(unsigned format)
{
    switch (format) {
    case KEEL_DATASET_IDX:
        return "idx";
    case KEEL_DATASET_LIBSVM:
        return "libsvm";
    case KEEL_DATASET_CSV:
        return "csv";
    }
    return "unknown";
}

int keel_dataset_format_parse(const char *name)
{
    for (int f = KEEL_DATASET_IDX; f <= KEEL_DATASET_CSV; f++)
        if (strcmp(name, keel_dataset_format_name((unsigned)f)) == 0)
            return f;
    return 0;
}

keel_dsparse *keel_dsparse_new(unsigned format, const struct keel_dsparse_opts *opts,
                               keel_dsparse_record_fn fn, void *ctx)
{
    keel_dsparse *p = keel_calloc(1, sizeof(*p));

    p->format = format;
    if (opts)
        p->opts = *opts;
    p->fn = fn;
    p->ctx = ctx;
    keel_buf_init(&p->rec, 0);
    return p;
}

void keel_dsparse_free(keel_dsparse *p)
{
    if (!p)
        return;
    keel_buf_release(&p->rec);
    free(p->values);
    free(p->indices);
    free(p);
}

/* Make room for `n` features in the scratch arrays. */
static void reserve(keel_dsparse *p, size_t n)
{
    size_t cap;

    if (n <= p->cap)
        return;
    cap = p->cap ? p->cap : 256;
    while (cap < n)
        cap *= 2;
    KEEL_REALLOC_ARRAY(p->values, cap);
    KEEL_REALLOC_ARRAY(p->indices, cap);
    p->cap = cap;
}

/* Hand the record in p->rec to the callback and count it. */
static int emit(keel_dsparse *p, uint32_t label, struct keel_error *err)
{
    int rc = 0;

    if (p->fn)
        rc = p->fn(p->ctx, p->nrecords, p->rec.buf, p->rec.len, err);
    keel_buf_reset(&p->rec);
    if (rc != 0)
        return rc;
    if (label > p->max_label)
        p->max_label = label;
    p->nrecords++;
    return 0;
}

/* Check a label against the declared number of classes. */
static int label_ok(const keel_dsparse *p, uint64_t label)
{
    uint64_t limit = p->opts.nclasses ? p->opts.nclasses : KEEL_RECORD_MAX_CLASSES;

    return label < limit;
}

static uint32_t label_limit(const keel_dsparse *p)
{
    return p->opts.nclasses ? p->opts.nclasses : KEEL_RECORD_MAX_CLASSES;
}

/* ---- IDX ---------------------------------------------------------------- */

struct idx_file {
    const char *name;
    const unsigned char *data;
    size_t len;
    unsigned type;     /* the type byte */
    unsigned size;     /* bytes per value */
    unsigned ndims;    /* dimensions */
    uint32_t count;    /* first dimension */
    uint64_t per;      /* values per record: product of the other dimensions */
    size_t data_start; /* offset of the first value */
};

static unsigned idx_type_size(unsigned type)
{
    switch (type) {
    case 0x08: /* unsigned byte */
    case 0x09: /* signed byte */
        return 1;
    case 0x0B: /* short */
        return 2;
    case 0x0C: /* int */
    case 0x0D: /* float */
        return 4;
    case 0x0E: /* double */
        return 8;
    }
    return 0;
}

static uint32_t load_u32be(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Parse and check an IDX header, and that the data is exactly what it says. */
static int idx_header(struct idx_file *f, struct keel_error *err)
{
    uint64_t values, bytes;
    size_t need;

    if (f->len == 0)
        return keel_err_set(err, KEEL_ECORRUPT, "'%s': empty file", f->name);
    if (f->len < 4)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "'%s': byte 0: truncated header: %zu bytes, an IDX header needs 4",
                            f->name, f->len);
    if (f->data[0] != 0 || f->data[1] != 0)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "'%s': byte 0: wrong magic %02x %02x %02x %02x: not an IDX file",
                            f->name, f->data[0], f->data[1], f->data[2], f->data[3]);
    f->type = f->data[2];
    f->size = idx_type_size(f->type);
    if (f->size == 0)
        return keel_err_set(err, KEEL_ECORRUPT, "'%s': byte 2: unknown IDX data type 0x%02x",
                            f->name, f->type);
    f->ndims = f->data[3];
    if (f->ndims == 0)
        return keel_err_set(err, KEEL_ECORRUPT, "'%s': byte 3: no dimensions", f->name);
    need = 4 + 4 * (size_t)f->ndims;
    if (f->len < need)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "'%s': byte %zu: truncated header: %u dimensions need %zu bytes, the "
                            "file has %zu",
                            f->name, f->len, f->ndims, need, f->len);
    f->count = load_u32be(f->data + 4);
    f->per = 1;
    for (unsigned d = 0; d < f->ndims; d++) {
        uint32_t dim = load_u32be(f->data + 4 + 4 * d);

        if (dim == 0)
            return keel_err_set(err, KEEL_ECORRUPT, "'%s': byte %u: dimension %u is zero", f->name,
                                4 + 4 * d, d);
        if (d == 0)
            continue;
        /* Each dimension is below 2^32 and the product is kept below 2^32,
         * so it never overflows 64 bits. */
        f->per *= dim;
        if (f->per > UINT32_MAX)
            return keel_err_set(err, KEEL_ECORRUPT,
                                "'%s': byte %u: dimensions claim more than %" PRIu32
                                " values per record",
                                f->name, 4 + 4 * d, UINT32_MAX);
    }
    f->data_start = need;
    /* count < 2^32, per < 2^32, size <= 8: the products fit in 64 bits. */
    values = (uint64_t)f->count * f->per;
    if (values > UINT64_MAX / f->size)
        return keel_err_set(err, KEEL_ECORRUPT, "'%s': byte 4: dimensions overflow", f->name);
    bytes = values * f->size;
    if (bytes > f->len - need)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "'%s': byte %zu: truncated data: the header claims %" PRIu32
                            " records of %" PRIu64 " values of %u bytes (%" PRIu64
                            " bytes), the file has %zu",
                            f->name, f->len, f->count, f->per, f->size, bytes, f->len - need);
    if (bytes < f->len - need)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "'%s': byte %" PRIu64 ": %" PRIu64
                            " bytes after the data the header describes",
                            f->name, (uint64_t)need + bytes, (uint64_t)(f->len - need) - bytes);
    return 0;
}

/* Value i of an IDX file as a double (i indexes values, not bytes). */
static double idx_value(const struct idx_file *f, uint64_t i)
{
    const unsigned char *q = f->data + f->data_start + i * f->size;
    uint32_t u;
    uint64_t u64;
    float fl;
    double d;

    switch (f->type) {
    case 0x08:
        return q[0];
    case 0x09:
        return (int8_t)q[0];
    case 0x0B:
        return (int16_t)(uint16_t)(q[0] << 8 | q[1]);
    case 0x0C:
        return (int32_t)load_u32be(q);
    case 0x0D:
        u = load_u32be(q);
        memcpy(&fl, &u, sizeof(fl));
        return fl;
    default:
        u64 = (uint64_t)load_u32be(q) << 32 | load_u32be(q + 4);
        memcpy(&d, &u64, sizeof(d));
        return d;
    }
}

int keel_dsparse_idx(keel_dsparse *p, const char *images_name, struct keel_view images,
                     const char *labels_name, struct keel_view labels, struct keel_error *err)
{
    struct idx_file im = {.name = images_name, .data = images.data, .len = images.len};
    struct idx_file lb = {.name = labels_name, .data = labels.data, .len = labels.len};
    uint32_t nfeat;
    int rc;

    if (p->format != KEEL_DATASET_IDX || p->idx_done)
        return keel_err_set(err, KEEL_EINVAL,
                            "an IDX dataset is one images file and one labels "
                            "file");
    if ((rc = idx_header(&im, err)) != 0 || (rc = idx_header(&lb, err)) != 0)
        return rc;
    if (lb.ndims != 1) {
        if (im.ndims == 1)
            return keel_err_set(err, KEEL_ECORRUPT,
                                "'%s' looks like a labels file and '%s' like an images file: "
                                "give the images file first",
                                im.name, lb.name);
        return keel_err_set(err, KEEL_ECORRUPT,
                            "'%s': byte 3: a labels file has one dimension, this one %u", lb.name,
                            lb.ndims);
    }
    if (lb.type == 0x0D || lb.type == 0x0E)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "'%s': byte 2: labels must be integers, the type is 0x%02x", lb.name,
                            lb.type);
    if (im.count != lb.count)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "'%s': byte 4: %" PRIu32 " labels, but '%s' has %" PRIu32 " records",
                            lb.name, lb.count, im.name, im.count);
    if (im.per > (im.type == 0x08 ? MAX_DENSE_U8 : MAX_DENSE_F32))
        return keel_err_set(err, KEEL_ECORRUPT,
                            "'%s': byte 8: %" PRIu64 " values per record exceed the record limit "
                            "of %" PRIu32 " bytes",
                            im.name, im.per, KEEL_RECORD_MAX_BYTES);
    nfeat = (uint32_t)im.per;
    if (p->opts.nfeatures && nfeat != p->opts.nfeatures)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "'%s': byte 8: %" PRIu32 " features per record, expected %" PRIu32,
                            im.name, nfeat, p->opts.nfeatures);
    p->encoding = im.type == 0x08 ? KEEL_RECORD_DENSE_U8 : KEEL_RECORD_DENSE_F32;
    p->nfeatures = nfeat;
    p->idx_done = 1;
    if (p->encoding == KEEL_RECORD_DENSE_F32)
        reserve(p, nfeat);

    for (uint32_t r = 0; r < im.count; r++) {
        double lv = idx_value(&lb, r);
        uint64_t first = (uint64_t)r * nfeat;
        uint32_t label;

        if (lv < 0 || !label_ok(p, (uint64_t)lv))
            return keel_err_set(err, KEEL_ECORRUPT,
                                "'%s': byte %" PRIu64 ": label %.0f of record %" PRIu32
                                " is not a class index below %" PRIu32,
                                lb.name, (uint64_t)lb.data_start + (uint64_t)r * lb.size, lv, r,
                                label_limit(p));
        label = (uint32_t)lv;
        if (p->encoding == KEEL_RECORD_DENSE_U8) {
            rc = keel_record_encode_dense_u8(&p->rec, label, im.data + im.data_start + first, nfeat,
                                             err);
        } else {
            for (uint32_t i = 0; i < nfeat; i++) {
                double v = idx_value(&im, first + i);

                if (!isfinite(v) || fabs(v) > FLT_MAX)
                    return keel_err_set(err, KEEL_ECORRUPT,
                                        "'%s': byte %" PRIu64 ": value %g is not a finite float",
                                        im.name, (uint64_t)im.data_start + (first + i) * im.size,
                                        v);
                p->values[i] = (float)v;
            }
            rc = keel_record_encode_dense_f32(&p->rec, label, p->values, nfeat, err);
        }
        if (rc != 0)
            return keel_err_prefix(err, rc, "'%s': record %" PRIu32, im.name, r);
        if ((rc = emit(p, label, err)) != 0)
            return rc;
    }
    return 0;
}

/* ---- text: lines, fields, numbers ---------------------------------------- */

struct line {
    const char *s; /* the line, without its '\n' and a trailing '\r' */
    size_t len;
    uint64_t no; /* 1-based */
};

/* Take the next line from [*pos, end); returns 0 at the end. */
static int next_line(const char **pos, const char *end, struct line *l)
{
    const char *s = *pos, *nl;

    if (s >= end)
        return 0;
    nl = memchr(s, '\n', (size_t)(end - s));
    l->s = s;
    l->len = (size_t)((nl ? nl : end) - s);
    if (l->len && s[l->len - 1] == '\r')
        l->len--;
    l->no++;
    *pos = nl ? nl + 1 : end;
    return 1;
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* A line with nothing but blanks, or (`comments`) blanks and a comment. */
static int line_is_blank(const struct line *l, int comments)
{
    for (size_t i = 0; i < l->len; i++) {
        if (comments && l->s[i] == '#')
            return 1;
        if (!is_blank(l->s[i]))
            return 0;
    }
    return 1;
}

/* Parse a whole field as a finite double. Returns 0, or -1 when it is not a
 * number (or too long), -2 when it is not finite. */
static int parse_number(const char *s, size_t len, double *out)
{
    char tmp[MAX_NUMBER_LEN + 1];
    char *end;

    if (len == 0 || len > MAX_NUMBER_LEN)
        return -1;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    if (is_blank(tmp[0]) || tmp[0] == '\n')
        return -1;
    errno = 0;
    *out = strtod(tmp, &end);
    if (end != tmp + len)
        return -1;
    if (!isfinite(*out))
        return -2;
    return 0;
}

/* Parse a feature value; fills `why` for the error. */
static int parse_value(const char *s, size_t len, float *out, const char **why)
{
    double d;
    int rc = parse_number(s, len, &d);

    if (rc == -1) {
        *why = len > MAX_NUMBER_LEN ? "is too long for a number" : "is not a number";
        return -1;
    }
    if (rc == -2 || fabs(d) > FLT_MAX) {
        *why = "is not a finite float";
        return -1;
    }
    *out = (float)d;
    return 0;
}

/* Parse a label: a non-negative integer (written as an integer or as a
 * number with a zero fraction, "3" or "3.0") below the class limit. */
static int parse_label(const keel_dsparse *p, const char *s, size_t len, uint32_t *out)
{
    double d;

    if (parse_number(s, len, &d) != 0 || d < 0 || d != floor(d) || d >= (double)label_limit(p))
        return -1;
    *out = (uint32_t)d;
    return 0;
}

/* Print at most 32 characters of a field for an error message. */
#define FIELD_FMT        "'%.*s%s'"
#define FIELD_ARGS(s, n) (int)((n) > 32 ? 32 : (n)), (s), ((n) > 32 ? "..." : "")

static int line_err(struct keel_error *err, const char *name, const struct line *l, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));

static int line_err(struct keel_error *err, const char *name, const struct line *l, const char *fmt,
                    ...)
{
    char msg[KEEL_ERROR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return keel_err_set(err, KEEL_ECORRUPT, "'%s': line %" PRIu64 ": %s", name, l->no, msg);
}

/* ---- LIBSVM ------------------------------------------------------------- */

/* Parse one non-blank LIBSVM line into p->rec. */
static int libsvm_line(keel_dsparse *p, const char *name, const struct line *l, uint32_t *label,
                       struct keel_error *err)
{
    const char *s = l->s, *end = l->s + l->len, *hash;
    uint32_t n = 0, prev = 0;
    const char *why;
    size_t tlen;
    int rc;

    if ((hash = memchr(s, '#', l->len)) != NULL)
        end = hash;
    while (s < end && is_blank(*s))
        s++;
    for (tlen = 0; s + tlen < end && !is_blank(s[tlen]);)
        tlen++;
    if (tlen == 0)
        return line_err(err, name, l, "no label");
    if (parse_label(p, s, tlen, label) != 0)
        return line_err(err, name, l,
                        "label " FIELD_FMT " is not a class index (an integer from 0 to %" PRIu32
                        ")",
                        FIELD_ARGS(s, tlen), label_limit(p) - 1);
    s += tlen;

    for (;;) {
        const char *colon;
        uint64_t index = 0;

        while (s < end && is_blank(*s))
            s++;
        if (s >= end)
            break;
        for (tlen = 0; s + tlen < end && !is_blank(s[tlen]);)
            tlen++;
        colon = memchr(s, ':', tlen);
        if (!colon || colon == s)
            return line_err(err, name, l, "pair %" PRIu32 ": " FIELD_FMT " is not index:value",
                            n + 1, FIELD_ARGS(s, tlen));
        if (colon - s == 3 && memcmp(s, "qid", 3) == 0)
            return line_err(err, name, l, "qid is not supported");
        for (const char *c = s; c < colon; c++) {
            if (*c < '0' || *c > '9')
                return line_err(err, name, l,
                                "pair %" PRIu32 ": index " FIELD_FMT " is not a positive integer",
                                n + 1, FIELD_ARGS(s, (size_t)(colon - s)));
            index = index * 10 + (uint64_t)(*c - '0');
            if (index > KEEL_RECORD_MAX_INDEX)
                return line_err(err, name, l,
                                "pair %" PRIu32 ": index " FIELD_FMT " exceeds %" PRIu32, n + 1,
                                FIELD_ARGS(s, (size_t)(colon - s)), KEEL_RECORD_MAX_INDEX);
        }
        if (index == 0)
            return line_err(err, name, l, "pair %" PRIu32 ": index 0: indices start at 1", n + 1);
        if (n > 0 && index <= prev)
            return line_err(err, name, l,
                            "pair %" PRIu32 ": index %" PRIu64 " is not above %" PRIu32
                            ": indices must be ascending",
                            n + 1, index, prev);
        if (p->opts.nfeatures && index > p->opts.nfeatures)
            return line_err(err, name, l,
                            "pair %" PRIu32 ": index %" PRIu64 " beyond the %" PRIu32 " features",
                            n + 1, index, p->opts.nfeatures);
        if (n >= MAX_PAIRS)
            return line_err(err, name, l, "more than %u pairs in one record", (unsigned)MAX_PAIRS);
        reserve(p, (size_t)n + 1);
        tlen -= (size_t)(colon + 1 - s);
        if (parse_value(colon + 1, tlen, &p->values[n], &why) != 0)
            return line_err(err, name, l, "pair %" PRIu32 ": value " FIELD_FMT " %s", n + 1,
                            FIELD_ARGS(colon + 1, tlen), why);
        p->indices[n] = (uint32_t)index - 1;
        prev = (uint32_t)index;
        n++;
        s = colon + 1 + tlen;
    }
    if (prev > p->nfeatures)
        p->nfeatures = prev;
    rc = keel_record_encode_sparse_f32(&p->rec, *label, p->indices, p->values, n, err);
    if (rc != 0)
        return keel_err_prefix(err, KEEL_ECORRUPT, "'%s': line %" PRIu64, name, l->no);
    return 0;
}

/* ---- CSV ---------------------------------------------------------------- */

/* Parse one non-blank CSV line into p->rec. */
static int csv_line(keel_dsparse *p, const char *name, const struct line *l, uint32_t *label,
                    struct keel_error *err)
{
    const char *s = l->s, *end = l->s + l->len;
    uint32_t col = 0, nfeat = 0, ncols = p->csv_ncols;
    const char *label_s = NULL;
    size_t label_len = 0;
    int label_last = p->opts.csv_label_last;
    int rc;

    for (;;) {
        const char *f = s, *fe;
        const char *comma = memchr(s, ',', (size_t)(end - s));
        const char *why;
        size_t flen;

        fe = comma ? comma : end;
        s = comma ? comma + 1 : end;
        while (f < fe && is_blank(*f))
            f++;
        while (fe > f && is_blank(fe[-1]))
            fe--;
        flen = (size_t)(fe - f);
        col++;
        if (ncols && col > ncols)
            return line_err(err, name, l, "too many fields: more than the %" PRIu32 " of %s", ncols,
                            p->csv_first);
        if (flen == 0)
            return line_err(err, name, l, "field %" PRIu32 " is empty", col);
        if (f[0] == '"' || f[0] == '\'')
            return line_err(err, name, l, "field %" PRIu32 ": quoted fields are not supported",
                            col);
        /* The label is the first field, or (label last) the one at the end;
         * in that case each field is taken as a feature until the end shows
         * it was the label. */
        if (!label_last && col == 1) {
            label_s = f;
            label_len = flen;
            if (parse_label(p, label_s, label_len, label) != 0)
                break;
        } else {
            if (!comma && label_last) {
                label_s = f;
                label_len = flen;
                break;
            }
            if (nfeat >= MAX_DENSE_F32)
                return line_err(err, name, l, "more than %u features", (unsigned)MAX_DENSE_F32);
            reserve(p, (size_t)nfeat + 1);
            if (parse_value(f, flen, &p->values[nfeat], &why) != 0)
                return line_err(err, name, l, "field %" PRIu32 ": " FIELD_FMT " %s", col,
                                FIELD_ARGS(f, flen), why);
            nfeat++;
        }
        if (!comma)
            break;
    }
    if (parse_label(p, label_s, label_len, label) != 0)
        return line_err(err, name, l,
                        "label " FIELD_FMT " is not a class index (an integer from 0 to %" PRIu32
                        ")",
                        FIELD_ARGS(label_s, label_len), label_limit(p) - 1);
    if (ncols == 0) {
        if (col < 2)
            return line_err(err, name, l, "one field: need a label and at least one feature");
        if (p->opts.nfeatures && col - 1 != p->opts.nfeatures)
            return line_err(err, name, l, "%" PRIu32 " features, expected %" PRIu32, col - 1,
                            p->opts.nfeatures);
        p->csv_ncols = col;
        p->nfeatures = col - 1;
        snprintf(p->csv_first, sizeof(p->csv_first), "line %" PRIu64 " of '%s'", l->no, name);
    } else if (col != ncols) {
        return line_err(err, name, l, "%" PRIu32 " fields, expected %" PRIu32 " as on %s", col,
                        ncols, p->csv_first);
    }
    rc = keel_record_encode_dense_f32(&p->rec, *label, p->values, nfeat, err);
    if (rc != 0)
        return keel_err_prefix(err, KEEL_ECORRUPT, "'%s': line %" PRIu64, name, l->no);
    return 0;
}

int keel_dsparse_text(keel_dsparse *p, const char *name, struct keel_view text,
                      struct keel_error *err)
{
    const char *pos = (const char *)text.data, *end = pos + text.len;
    struct line l = {NULL, 0, 0};
    uint64_t before = p->nrecords;
    uint32_t label;
    int rc;

    if (p->format != KEEL_DATASET_LIBSVM && p->format != KEEL_DATASET_CSV)
        return keel_err_set(err, KEEL_EINVAL, "'%s': a %s dataset is not a text file", name,
                            keel_dataset_format_name(p->format));
    if (text.len == 0)
        return keel_err_set(err, KEEL_ECORRUPT, "'%s': empty file", name);
    if (memchr(text.data, '\0', text.len))
        return keel_err_set(
            err, KEEL_ECORRUPT, "'%s': byte %zu: NUL byte in a text file", name,
            (size_t)((const unsigned char *)memchr(text.data, '\0', text.len) - text.data));
    p->encoding = p->format == KEEL_DATASET_CSV ? KEEL_RECORD_DENSE_F32 : KEEL_RECORD_SPARSE_F32;
    while (next_line(&pos, end, &l)) {
        if (p->format == KEEL_DATASET_CSV && p->opts.csv_header && l.no == 1)
            continue;
        if (line_is_blank(&l, p->format == KEEL_DATASET_LIBSVM))
            continue;
        if (p->format == KEEL_DATASET_LIBSVM)
            rc = libsvm_line(p, name, &l, &label, err);
        else
            rc = csv_line(p, name, &l, &label, err);
        if (rc != 0) {
            keel_buf_reset(&p->rec);
            return rc;
        }
        if ((rc = emit(p, label, err)) != 0)
            return rc;
    }
    if (p->nrecords == before)
        return keel_err_set(err, KEEL_ECORRUPT, "'%s': no records in %" PRIu64 " lines", name,
                            l.no);
    return 0;
}

int keel_dsparse_finish(keel_dsparse *p, struct keel_dataset_shape *shape, struct keel_error *err)
{
    if (p->nrecords == 0)
        return keel_err_set(err, KEEL_ECORRUPT, "no records");
    if (p->format == KEEL_DATASET_LIBSVM && p->opts.nfeatures)
        p->nfeatures = p->opts.nfeatures;
    if (p->nfeatures == 0)
        return keel_err_set(err, KEEL_ECORRUPT, "no feature in any record");
    shape->format = p->format;
    shape->encoding = p->encoding;
    shape->nfeatures = p->nfeatures;
    shape->nclasses = p->opts.nclasses ? p->opts.nclasses : p->max_label + 1;
    shape->nrecords = p->nrecords;
    return 0;
}

/* ---- files -------------------------------------------------------------- */

int keel_dataset_load_file(const char *path, size_t max_bytes, struct keel_buf *out,
                           struct keel_error *err)
{
    const unsigned chunk = 1u << 20;
    size_t start = out->len;
    gzFile f;
    int n, zerr, rc = 0;

    errno = 0;
    f = gzopen(path, "rb");
    if (!f) {
        int e = errno ? errno : ENOMEM;

        return keel_err_set(err, -e, "cannot open '%s': %s", path, strerror(e));
    }
    gzbuffer(f, 256u << 10);
    for (;;) {
        keel_buf_grow(out, chunk);
        n = gzread(f, out->buf + out->len, chunk);
        if (n < 0) {
            const char *msg = gzerror(f, &zerr);

            if (zerr == Z_ERRNO)
                rc = keel_err_set(err, -errno, "cannot read '%s': %s", path, strerror(errno));
            else
                rc = keel_err_set(err, KEEL_ECORRUPT, "'%s': byte %zu: %s", path, out->len - start,
                                  msg);
            goto close;
        }
        if (n == 0)
            break;
        if ((size_t)n > max_bytes - (out->len - start)) {
            rc = keel_err_set(err, KEEL_EFRAMESIZE, "'%s': more than %zu bytes", path, max_bytes);
            goto close;
        }
        keel_buf_setlen(out, out->len + (size_t)n);
    }
close:
    zerr = gzclose_r(f);
    if (rc == 0 && zerr != Z_OK)
        rc = keel_err_set(err, KEEL_ECORRUPT, "'%s': byte %zu: %s", path, out->len - start,
                          zerr == Z_BUF_ERROR ? "truncated gzip stream" : "damaged gzip stream");
    if (rc != 0)
        keel_buf_setlen(out, start);
    return rc;
}
