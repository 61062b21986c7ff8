/*
 * test_dsparse.c - IDX, LIBSVM and CSV parsing: what valid files become, and
 * malformed files refused with the file and line or byte offset named.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <zlib.h>

#include "keel/dataset.h"

/* Records collected by the callback: bytes back to back, with offsets. */
struct collected {
    struct keel_buf data;
    size_t off[64];
    uint64_t n;
};

static int collect(void *ctx, uint64_t index, const unsigned char *rec, size_t len,
                   struct keel_error *err)
{
    struct collected *c = ctx;

    cr_assert_eq(index, c->n, "records come in order");
    if (c->n < 63) {
        c->off[c->n] = c->data.len;
        keel_buf_add(&c->data, rec, len);
        c->off[c->n + 1] = c->data.len;
    }
    c->n++;
    return 0;
}

static struct keel_record record_at(struct collected *c, uint64_t i, uint32_t nfeatures)
{
    struct keel_record r;
    struct keel_error err;

    cr_assert_eq(
        keel_record_decode(c->data.buf + c->off[i], c->off[i + 1] - c->off[i], nfeatures, &r, &err),
        0, "record %llu: %s", (unsigned long long)i, err.msg);
    return r;
}

static struct keel_view text_view(const char *s)
{
    return keel_view_make(s, strlen(s));
}

/* Parse `text` as one file named "t"; returns the code, fills err and shape. */
static int parse_text(unsigned format, const struct keel_dsparse_opts *opts, const char *text,
                      struct collected *c, struct keel_dataset_shape *shape, struct keel_error *err)
{
    keel_dsparse *p = keel_dsparse_new(format, opts, collect, c);
    int rc;

    keel_error_init(err);
    rc = keel_dsparse_text(p, "t", text_view(text), err);
    if (rc == 0)
        rc = keel_dsparse_finish(p, shape, err);
    keel_dsparse_free(p);
    return rc;
}

/* ---- IDX ---------------------------------------------------------------- */

static void put_be32(struct keel_buf *b, uint32_t v)
{
    unsigned char p[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    keel_buf_add(b, p, 4);
}

/* An images file of `n` records of 2x2 unsigned bytes (value = 10*record+i). */
static void idx_images(struct keel_buf *b, uint32_t n)
{
    const unsigned char magic[4] = {0, 0, 0x08, 3};

    keel_buf_init(b, 0);
    keel_buf_add(b, magic, 4);
    put_be32(b, n);
    put_be32(b, 2);
    put_be32(b, 2);
    for (uint32_t r = 0; r < n; r++)
        for (int i = 0; i < 4; i++)
            keel_buf_add_u8(b, (uint8_t)(10 * r + (uint32_t)i));
}

static void idx_labels(struct keel_buf *b, uint32_t n)
{
    const unsigned char magic[4] = {0, 0, 0x08, 1};

    keel_buf_init(b, 0);
    keel_buf_add(b, magic, 4);
    put_be32(b, n);
    for (uint32_t r = 0; r < n; r++)
        keel_buf_add_u8(b, (uint8_t)((r * 7) % 3));
}

static int parse_idx(const struct keel_dsparse_opts *opts, struct keel_buf *im, struct keel_buf *lb,
                     struct collected *c, struct keel_dataset_shape *shape, struct keel_error *err)
{
    keel_dsparse *p = keel_dsparse_new(KEEL_DATASET_IDX, opts, collect, c);
    int rc;

    keel_error_init(err);
    rc = keel_dsparse_idx(p, "img", keel_buf_view(im), "lab", keel_buf_view(lb), err);
    if (rc == 0)
        rc = keel_dsparse_finish(p, shape, err);
    keel_dsparse_free(p);
    return rc;
}

Test(dsparse, idx_unsigned_bytes_become_dense_u8_records)
{
    struct keel_buf im, lb;
    struct collected c = {KEEL_BUF_INIT, {0}, 0};
    struct keel_dataset_shape shape;
    struct keel_error err;
    struct keel_record r;
    float f[4];

    idx_images(&im, 3);
    idx_labels(&lb, 3);
    cr_assert_eq(parse_idx(NULL, &im, &lb, &c, &shape, &err), 0, "%s", err.msg);
    cr_assert_eq(shape.nrecords, 3);
    cr_assert_eq(shape.nfeatures, 4);
    cr_assert_eq(shape.nclasses, 3); /* labels 0, 1, 2 */
    cr_assert_eq(shape.encoding, KEEL_RECORD_DENSE_U8);
    cr_assert_eq(shape.format, KEEL_DATASET_IDX);
    r = record_at(&c, 2, 4);
    cr_assert_eq(r.label, 14 % 3);
    keel_record_to_dense(&r, f, 4);
    cr_assert_eq(f[0], 20.0f);
    cr_assert_eq(f[3], 23.0f);
    keel_buf_release(&im);
    keel_buf_release(&lb);
    keel_buf_release(&c.data);
}

Test(dsparse, idx_floats_become_dense_f32_records)
{
    const unsigned char magic[4] = {0, 0, 0x0D, 2};
    const float vals[4] = {0.5f, -1.0f, 3.25f, 8.0f};
    struct keel_buf im = KEEL_BUF_INIT, lb;
    struct collected c = {KEEL_BUF_INIT, {0}, 0};
    struct keel_dataset_shape shape;
    struct keel_error err;
    struct keel_record r;

    keel_buf_add(&im, magic, 4);
    put_be32(&im, 2);
    put_be32(&im, 2);
    for (int i = 0; i < 4; i++) {
        uint32_t u;

        memcpy(&u, &vals[i], 4);
        put_be32(&im, u);
    }
    idx_labels(&lb, 2);
    cr_assert_eq(parse_idx(NULL, &im, &lb, &c, &shape, &err), 0, "%s", err.msg);
    cr_assert_eq(shape.encoding, KEEL_RECORD_DENSE_F32);
    cr_assert_eq(shape.nfeatures, 2);
    r = record_at(&c, 1, 2);
    cr_assert_eq(keel_record_dense_at(&r, 0), 3.25f);
    keel_buf_release(&im);
    keel_buf_release(&lb);
    keel_buf_release(&c.data);
}

struct bad_idx {
    char name[48];
    int labels;     /* 0: change the images file, 1: the labels file */
    int offset;     /* byte to overwrite, -1 for none */
    int width;      /* 1 or 4 (big-endian) */
    uint32_t value; /* what to write */
    int cut;        /* bytes to drop from the end (-1: leave 3 bytes; -2: empty) */
    int append;     /* zero bytes to add at the end */
    char expect[96];
};

ParameterizedTestParameters(dsparse, malformed_idx_refused_with_the_offset)
{
    static struct bad_idx cases[] = {
        {"empty file", 0, -1, 0, 0, -2, 0, "'img': empty file"},
        {"truncated header", 0, -1, 0, 0, -1, 0, "'img': byte 0: truncated header"},
        {"truncated dimensions", 0, 3, 1, 40, 0, 0, "'img': byte 28: truncated header"},
        {"wrong magic", 0, 0, 1, 0x1f, 0, 0, "'img': byte 0: wrong magic 1f 00 08 03"},
        {"unknown type", 0, 2, 1, 0x0A, 0, 0, "'img': byte 2: unknown IDX data type 0x0a"},
        {"no dimensions", 1, 3, 1, 0, 0, 0, "'lab': byte 3: no dimensions"},
        {"zero dimension", 0, 12, 4, 0, 0, 0, "'img': byte 12: dimension 2 is zero"},
        {"truncated data", 0, -1, 0, 0, 1, 0, "'img': byte 27: truncated data"},
        {"trailing bytes", 1, -1, 0, 0, 0, 3, "'lab': byte 11: 3 bytes after the data"},
        {"count mismatch", 1, 4, 4, 2, 1, 0, "'lab': byte 4: 2 labels, but 'img' has 3"},
        {"huge count", 0, 4, 4, 0xFFFFFFFF, 0, 0, "'img': byte 28: truncated data"},
        {"huge dimensions", 0, 8, 4, 0xFFFFFFFF, 0, 0, "'img': byte 12: dimensions claim more"},
        {"labels of two dimensions", 1, -1, 0, 0, 0, 0, "'lab': byte 3: a labels file has one"},
        {"float labels", 1, 2, 1, 0x0D, 0, 9, "'lab': byte 2: labels must be integers"},
        {"negative label", 1, 8, 1, 0xFF, 0, 0, "byte 8: label -1 of record 0"},
    };
    return cr_make_param_array(struct bad_idx, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(struct bad_idx *c, dsparse, malformed_idx_refused_with_the_offset)
{
    struct keel_buf im, lb, *b;
    struct collected col = {KEEL_BUF_INIT, {0}, 0};
    struct keel_dataset_shape shape;
    struct keel_error err;
    int rc;

    idx_images(&im, 3);
    idx_labels(&lb, 3);
    b = c->labels ? &lb : &im;
    if (strcmp(c->name, "negative label") == 0)
        b->buf[2] = 0x09; /* signed bytes */
    if (strcmp(c->name, "labels of two dimensions") == 0) {
        /* 3 x 1 labels: the sizes agree, only the shape is wrong. */
        const unsigned char hdr[12] = {0, 0, 8, 2, 0, 0, 0, 3, 0, 0, 0, 1};

        keel_buf_reset(b);
        keel_buf_add(b, hdr, sizeof(hdr));
        keel_buf_add_zero(b, 3);
    }
    for (int i = 0; c->offset >= 0 && i < c->width; i++)
        b->buf[c->offset + i] = (unsigned char)(c->value >> (8 * (c->width - 1 - i)));
    if (c->cut == -1)
        keel_buf_setlen(b, 3);
    else if (c->cut == -2)
        keel_buf_setlen(b, 0);
    else
        keel_buf_setlen(b, b->len - (size_t)c->cut);
    keel_buf_add_zero(b, (size_t)c->append);
    rc = parse_idx(NULL, &im, &lb, &col, &shape, &err);
    cr_assert_eq(rc, KEEL_ECORRUPT, "%s: got %s (%s)", c->name, keel_err_name(rc), err.msg);
    cr_assert(strstr(err.msg, c->expect), "%s: '%s' lacks '%s'", c->name, err.msg, c->expect);
    cr_assert_eq(col.n, 0, "%s: no record before the error", c->name);
    keel_buf_release(&im);
    keel_buf_release(&lb);
    keel_buf_release(&col.data);
}

Test(dsparse, idx_files_given_in_the_wrong_order_are_named)
{
    struct keel_buf im, lb;
    struct collected c = {KEEL_BUF_INIT, {0}, 0};
    struct keel_dataset_shape shape;
    struct keel_error err;

    idx_images(&im, 3);
    idx_labels(&lb, 3);
    cr_assert_eq(parse_idx(NULL, &lb, &im, &c, &shape, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "give the images file first"), "%s", err.msg);
    keel_buf_release(&im);
    keel_buf_release(&lb);
}

Test(dsparse, idx_labels_checked_against_declared_classes_and_features)
{
    struct keel_buf im, lb;
    struct collected c = {KEEL_BUF_INIT, {0}, 0};
    struct keel_dataset_shape shape;
    struct keel_error err;
    struct keel_dsparse_opts opts = {.nclasses = 2};

    idx_images(&im, 3);
    idx_labels(&lb, 3); /* labels 0, 1, 2 */
    cr_assert_eq(parse_idx(&opts, &im, &lb, &c, &shape, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "'lab': byte 10: label 2 of record 2 is not a class index below 2"),
              "%s", err.msg);
    opts.nclasses = 10;
    opts.nfeatures = 5;
    cr_assert_eq(parse_idx(&opts, &im, &lb, &c, &shape, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "4 features per record, expected 5"), "%s", err.msg);
    opts.nfeatures = 4;
    c.n = 0;
    keel_buf_reset(&c.data);
    cr_assert_eq(parse_idx(&opts, &im, &lb, &c, &shape, &err), 0, "%s", err.msg);
    cr_assert_eq(shape.nclasses, 10);
    keel_buf_release(&im);
    keel_buf_release(&lb);
    keel_buf_release(&c.data);
}

/* ---- LIBSVM ------------------------------------------------------------- */

Test(dsparse, libsvm_lines_become_sparse_records)
{
    struct collected c = {KEEL_BUF_INIT, {0}, 0};
    struct keel_dataset_shape shape;
    struct keel_error err;
    struct keel_record r;
    uint32_t idx;
    float v;

    cr_assert_eq(parse_text(KEEL_DATASET_LIBSVM, NULL,
                            "1 1:0.5 3:2\n"
                            "0  2:-1e-3\t7:4 # a comment\r\n"
                            "\n"
                            "# only a comment\n"
                            "2.0\n"
                            "+1 5:1",
                            &c, &shape, &err),
                 0, "%s", err.msg);
    cr_assert_eq(shape.nrecords, 4);
    cr_assert_eq(shape.nfeatures, 7);
    cr_assert_eq(shape.nclasses, 3);
    cr_assert_eq(shape.encoding, KEEL_RECORD_SPARSE_F32);
    r = record_at(&c, 1, 7);
    cr_assert_eq(r.label, 0);
    cr_assert_eq(r.n, 2);
    keel_record_sparse_at(&r, 1, &idx, &v);
    cr_assert_eq(idx, 6, "indices are stored 0-based");
    cr_assert_eq(v, 4.0f);
    r = record_at(&c, 2, 7);
    cr_assert_eq(r.label, 2);
    cr_assert_eq(r.n, 0);
    cr_assert_eq(record_at(&c, 3, 7).label, 1);
    keel_buf_release(&c.data);
}

struct bad_text {
    char name[40];
    unsigned format;
    char text[96];
    char expect[112];
};

ParameterizedTestParameters(dsparse, malformed_text_refused_with_the_line)
{
    static struct bad_text cases[] = {
        {"libsvm empty file", KEEL_DATASET_LIBSVM, "", "'t': empty file"},
        {"libsvm blank lines only", KEEL_DATASET_LIBSVM, "\n  \n", "'t': no records in 2 lines"},
        {"libsvm non-numeric value", KEEL_DATASET_LIBSVM, "1 1:2\n0 1:x2\n",
         "'t': line 2: pair 1: value 'x2' is not a number"},
        {"libsvm index not ascending", KEEL_DATASET_LIBSVM, "1 3:1 2:1\n",
         "'t': line 1: pair 2: index 2 is not above 3: indices must be ascending"},
        {"libsvm duplicate index", KEEL_DATASET_LIBSVM, "1 3:1 3:1\n",
         "line 1: pair 2: index 3 is not above 3"},
        {"libsvm index zero", KEEL_DATASET_LIBSVM, "\n1 0:1\n",
         "'t': line 2: pair 1: index 0: indices start at 1"},
        {"libsvm no colon", KEEL_DATASET_LIBSVM, "1 5\n", "line 1: pair 1: '5' is not index:value"},
        {"libsvm negative index", KEEL_DATASET_LIBSVM, "1 -5:1\n",
         "line 1: pair 1: index '-5' is not a positive integer"},
        {"libsvm huge index", KEEL_DATASET_LIBSVM, "1 99999999999999999999:1\n",
         "line 1: pair 1: index '99999999999999999999' exceeds"},
        {"libsvm negative label", KEEL_DATASET_LIBSVM, "-1 1:1\n",
         "line 1: label '-1' is not a class index"},
        {"libsvm fractional label", KEEL_DATASET_LIBSVM, "1.5 1:1\n",
         "line 1: label '1.5' is not a class index"},
        {"libsvm huge label", KEEL_DATASET_LIBSVM, "1e30 1:1\n",
         "line 1: label '1e30' is not a class index"},
        {"libsvm qid", KEEL_DATASET_LIBSVM, "1 qid:3 1:1\n", "line 1: qid is not supported"},
        {"libsvm infinite value", KEEL_DATASET_LIBSVM, "1 1:1e99\n",
         "line 1: pair 1: value '1e99' is not a finite float"},
        {"libsvm nan value", KEEL_DATASET_LIBSVM, "1 1:nan\n",
         "line 1: pair 1: value 'nan' is not a finite float"},
        {"libsvm empty value", KEEL_DATASET_LIBSVM, "1 1:\n",
         "line 1: pair 1: value '' is not a number"},
        {"libsvm no features at all", KEEL_DATASET_LIBSVM, "1\n0\n", "no feature in any record"},
        {"libsvm NUL byte", KEEL_DATASET_LIBSVM, "1 1:1\n\0", "'t': byte 6: NUL byte"},
        {"csv empty file", KEEL_DATASET_CSV, "", "'t': empty file"},
        {"csv too many columns", KEEL_DATASET_CSV, "1,2,3\n0,1,2\n1,2,3,4\n",
         "'t': line 3: too many fields: more than the 3 of line 1 of 't'"},
        {"csv too few columns", KEEL_DATASET_CSV, "1,2,3\n0,1\n",
         "'t': line 2: 2 fields, expected 3 as on line 1 of 't'"},
        {"csv non-numeric field", KEEL_DATASET_CSV, "1,2,3\n0,1,abc\n",
         "'t': line 2: field 3: 'abc' is not a number"},
        {"csv empty field", KEEL_DATASET_CSV, "1,,3\n", "'t': line 1: field 2 is empty"},
        {"csv quoted field", KEEL_DATASET_CSV, "1,\"2\",3\n", "field 2: quoted fields"},
        {"csv one column", KEEL_DATASET_CSV, "1\n", "line 1: one field: need a label"},
        {"csv label not integer", KEEL_DATASET_CSV, "0.5,1\n",
         "line 1: label '0.5' is not a class index"},
        {"csv header as data", KEEL_DATASET_CSV, "label,x\n1,2\n",
         "line 1: label 'label' is not a class index"},
        {"csv long field", KEEL_DATASET_CSV,
         "1,1.0000000000000000000000000000000000000000000000000000000000000000001\n",
         "line 1: field 2: '1.000000000000000000000000000000...' is too long"},
    };
    return cr_make_param_array(struct bad_text, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(struct bad_text *c, dsparse, malformed_text_refused_with_the_line)
{
    struct collected col = {KEEL_BUF_INIT, {0}, 0};
    struct keel_dataset_shape shape;
    struct keel_error err;
    keel_dsparse *p = keel_dsparse_new(c->format, NULL, collect, &col);
    size_t len = strlen(c->text);
    int rc;

    if (strcmp(c->name, "libsvm NUL byte") == 0)
        len += 1; /* the NUL is part of the file */
    keel_error_init(&err);
    rc = keel_dsparse_text(p, "t", keel_view_make(c->text, len), &err);
    if (rc == 0)
        rc = keel_dsparse_finish(p, &shape, &err);
    cr_assert_eq(rc, KEEL_ECORRUPT, "%s: got %s (%s)", c->name, keel_err_name(rc), err.msg);
    cr_assert(strstr(err.msg, c->expect), "%s: '%s' lacks '%s'", c->name, err.msg, c->expect);
    keel_dsparse_free(p);
    keel_buf_release(&col.data);
}

Test(dsparse, libsvm_indices_checked_against_declared_features)
{
    struct collected c = {KEEL_BUF_INIT, {0}, 0};
    struct keel_dataset_shape shape;
    struct keel_error err;
    struct keel_dsparse_opts opts = {.nfeatures = 10};

    cr_assert_eq(parse_text(KEEL_DATASET_LIBSVM, &opts, "1 2:1\n1 11:1\n", &c, &shape, &err),
                 KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "'t': line 2: pair 1: index 11 beyond the 10 features"), "%s",
              err.msg);
    c.n = 0;
    cr_assert_eq(parse_text(KEEL_DATASET_LIBSVM, &opts, "1 2:1\n", &c, &shape, &err), 0);
    cr_assert_eq(shape.nfeatures, 10);
    keel_buf_release(&c.data);
}

/* ---- CSV ---------------------------------------------------------------- */

Test(dsparse, csv_lines_become_dense_records)
{
    struct collected c = {KEEL_BUF_INIT, {0}, 0};
    struct keel_dataset_shape shape;
    struct keel_error err;
    struct keel_record r;

    cr_assert_eq(parse_text(KEEL_DATASET_CSV, NULL, "3, 0.5 ,1e2\r\n\n0,-1,2\n", &c, &shape, &err),
                 0, "%s", err.msg);
    cr_assert_eq(shape.nrecords, 2);
    cr_assert_eq(shape.nfeatures, 2);
    cr_assert_eq(shape.nclasses, 4);
    cr_assert_eq(shape.encoding, KEEL_RECORD_DENSE_F32);
    r = record_at(&c, 0, 2);
    cr_assert_eq(r.label, 3);
    cr_assert_eq(keel_record_dense_at(&r, 0), 0.5f);
    cr_assert_eq(keel_record_dense_at(&r, 1), 100.0f);
    keel_buf_release(&c.data);
}

Test(dsparse, csv_header_is_skipped_and_label_may_be_last)
{
    struct collected c = {KEEL_BUF_INIT, {0}, 0};
    struct keel_dataset_shape shape;
    struct keel_error err;
    struct keel_dsparse_opts opts = {.csv_header = 1, .csv_label_last = 1};
    struct keel_record r;

    cr_assert_eq(parse_text(KEEL_DATASET_CSV, &opts, "x,y,label\n0.5,2,1\n", &c, &shape, &err), 0,
                 "%s", err.msg);
    cr_assert_eq(shape.nrecords, 1);
    cr_assert_eq(shape.nfeatures, 2);
    r = record_at(&c, 0, 2);
    cr_assert_eq(r.label, 1);
    cr_assert_eq(keel_record_dense_at(&r, 1), 2.0f);
    keel_buf_release(&c.data);
}

Test(dsparse, csv_files_must_agree_on_columns)
{
    struct collected c = {KEEL_BUF_INIT, {0}, 0};
    struct keel_dataset_shape shape;
    struct keel_error err;
    keel_dsparse *p = keel_dsparse_new(KEEL_DATASET_CSV, NULL, collect, &c);

    keel_error_init(&err);
    cr_assert_eq(keel_dsparse_text(p, "a.csv", text_view("1,2,3\n"), &err), 0, "%s", err.msg);
    cr_assert_eq(keel_dsparse_text(p, "b.csv", text_view("1,2\n"), &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "'b.csv': line 1: 2 fields, expected 3 as on line 1 of 'a.csv'"),
              "%s", err.msg);
    cr_assert_eq(keel_dsparse_text(p, "c.csv", text_view("\n0,5,6\n"), &err), 0, "%s", err.msg);
    cr_assert_eq(keel_dsparse_finish(p, &shape, &err), 0, "%s", err.msg);
    cr_assert_eq(shape.nrecords, 2, "records count across files");
    cr_assert_eq(c.n, 2);
    keel_dsparse_free(p);
    keel_buf_release(&c.data);
}

Test(dsparse, callback_error_stops_the_parse)
{
    keel_dsparse *p = keel_dsparse_new(KEEL_DATASET_CSV, NULL, NULL, NULL);
    struct keel_error err;
    struct keel_dataset_shape shape;

    keel_error_init(&err);
    /* Without a callback the parser only checks. */
    cr_assert_eq(keel_dsparse_text(p, "t", text_view("1,2\n0,3\n"), &err), 0, "%s", err.msg);
    cr_assert_eq(keel_dsparse_finish(p, &shape, &err), 0);
    cr_assert_eq(shape.nrecords, 2);
    cr_assert_eq(keel_dsparse_idx(p, "a", text_view("x"), "b", text_view("y"), &err), KEEL_EINVAL);
    keel_dsparse_free(p);
}

/* ---- files -------------------------------------------------------------- */

Test(dsparse, load_file_reads_gzip_and_plain_files)
{
    char gz[64], plain[64];
    const char *content = "1,2,3\n0,4,5\n";
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_error err;
    gzFile g;
    FILE *f;

    snprintf(gz, sizeof(gz), "/tmp/keel-test-ds-%d.gz", (int)getpid());
    snprintf(plain, sizeof(plain), "/tmp/keel-test-ds-%d.csv", (int)getpid());
    g = gzopen(gz, "wb");
    cr_assert_not_null(g);
    cr_assert_eq(gzwrite(g, content, (unsigned)strlen(content)), (int)strlen(content));
    cr_assert_eq(gzclose(g), Z_OK);
    f = fopen(plain, "w");
    fputs(content, f);
    fclose(f);

    keel_error_init(&err);
    cr_assert_eq(keel_dataset_load_file(gz, 1 << 20, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(b.len, strlen(content));
    cr_assert_eq(memcmp(b.buf, content, b.len), 0);
    keel_buf_reset(&b);
    cr_assert_eq(keel_dataset_load_file(plain, 1 << 20, &b, &err), 0, "%s", err.msg);
    cr_assert_str_eq((const char *)b.buf, content);
    keel_buf_reset(&b);
    cr_assert_eq(keel_dataset_load_file(plain, 4, &b, &err), KEEL_EFRAMESIZE);
    cr_assert_eq(b.len, 0);

    /* A gzip stream cut short is refused, not taken as a short file. */
    cr_assert_eq(truncate(gz, 20), 0);
    cr_assert_eq(keel_dataset_load_file(gz, 1 << 20, &b, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "gzip"), "%s", err.msg);
    cr_assert_eq(b.len, 0);

    unlink(gz);
    unlink(plain);
    cr_assert_eq(keel_dataset_load_file(gz, 1 << 20, &b, &err), -ENOENT);
    cr_assert(strstr(err.msg, "cannot open"), "%s", err.msg);
    keel_buf_release(&b);
}
