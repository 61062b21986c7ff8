/*
 * manifest.c - checkpoint manifests: the JSON, its signed envelope, the key file.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "alloc.h"
#include "digest.h"
#include "keel/checkpoint.h"
#include "log.h"

/* ---- key file ---------------------------------------------------------- */

int keel_ckpt_key_load(struct keel_ckpt_key *key, const char *path, struct keel_error *err)
{
    struct stat st;
    ssize_t n;
    int fd;

    memset(key, 0, sizeof(*key));
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return keel_err_set(err, -errno, "cannot open key file '%s': %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return keel_err_set(err, KEEL_EINVAL, "key file '%s' is not a regular file", path);
    }
    if (st.st_mode & 077) {
        close(fd);
        return keel_err_set(err, KEEL_EINVAL,
                            "key file '%s' is open to group or others (mode %03o): a key that "
                            "others can read signs nothing; chmod 600 it",
                            path, (unsigned)(st.st_mode & 0777));
    }
    n = read(fd, key->bytes, sizeof(key->bytes));
    if (n < 0) {
        int e = errno;
        close(fd);
        return keel_err_set(err, -e, "cannot read key file '%s': %s", path, strerror(e));
    }
    if ((size_t)n == sizeof(key->bytes)) {
        unsigned char extra;
        if (read(fd, &extra, 1) == 1) {
            close(fd);
            memset(key, 0, sizeof(*key));
            return keel_err_set(err, KEEL_EINVAL, "key file '%s' is longer than %d bytes", path,
                                KEEL_CKPT_KEY_MAX);
        }
    }
    close(fd);
    if (n < KEEL_CKPT_KEY_MIN) {
        memset(key, 0, sizeof(*key));
        return keel_err_set(err, KEEL_EINVAL,
                            "key file '%s' holds %zd bytes; at least %d random bytes are needed",
                            path, n, KEEL_CKPT_KEY_MIN);
    }
    key->len = (size_t)n;
    return 0;
}

int keel_ckpt_key_generate(const char *path, struct keel_error *err)
{
    unsigned char bytes[32];
    int fd, rc = 0;

    if (RAND_bytes(bytes, sizeof(bytes)) != 1)
        return keel_err_set(err, KEEL_ESTORE, "cannot generate a key: no randomness");
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return keel_err_set(err, -errno, "cannot create key file '%s': %s", path, strerror(errno));
    if (write(fd, bytes, sizeof(bytes)) != (ssize_t)sizeof(bytes) || fsync(fd) != 0) {
        rc = keel_err_set(err, errno ? -errno : -EIO, "cannot write key file '%s': %s", path,
                          strerror(errno ? errno : EIO));
        unlink(path);
    }
    close(fd);
    OPENSSL_cleanse(bytes, sizeof(bytes));
    return rc;
}

/* ---- manifest JSON ----------------------------------------------------- */

void keel_manifest_release(struct keel_manifest *m)
{
    for (size_t i = 0; i < m->nranges; i++) {
        free(m->ranges[i].tables);
        free(m->ranges[i].shards);
    }
    free(m->ranges);
    free(m->shards);
    memset(m, 0, sizeof(*m));
}

static int put_u64(json_t *obj, const char *name, uint64_t v, struct keel_error *err)
{
    if (v > INT64_MAX)
        return keel_err_set(err, KEEL_EINVAL, "manifest: '%s' = %" PRIu64 " is above 2^63-1", name,
                            v);
    json_object_set_new(obj, name, json_integer((json_int_t)v));
    return 0;
}

static json_t *hex_json(const unsigned char *digest)
{
    char hex[65];

    keel_hex(hex, digest, KEEL_SHA256_SIZE);
    return json_string(hex);
}

static int shards_json(json_t **out, const struct keel_shard_pos *sp, size_t n,
                       struct keel_error *err)
{
    json_t *arr = json_array();
    int rc = 0;

    for (size_t i = 0; i < n && rc == 0; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "shard", json_integer(sp[i].shard));
        rc = put_u64(o, "seq", sp[i].seq, err);
        if (rc == 0)
            rc = put_u64(o, "incarnation", sp[i].incarnation, err);
        json_object_set_new(o, "worker", json_string(sp[i].worker_id));
        json_array_append_new(arr, o);
    }
    if (rc != 0) {
        json_decref(arr);
        return rc;
    }
    *out = arr;
    return 0;
}

static int manifest_json(json_t **out, const struct keel_manifest *m, struct keel_error *err)
{
    json_t *root = json_object(), *ranges = json_array(), *shards = NULL;
    int rc;

    json_object_set_new(root, "format", json_integer(KEEL_MANIFEST_FORMAT));
    json_object_set_new(root, "job", json_string(m->job));
    if (m->server[0] != '\0')
        json_object_set_new(root, "server", json_string(m->server));
    rc = put_u64(root, "id", m->id, err);
    if (rc == 0)
        rc = put_u64(root, "clock", m->clock, err);
    if (rc == 0)
        rc = put_u64(root, "created_ns", m->created_ns, err);
    json_object_set_new(root, "spec_sha256", hex_json(m->spec_sha256));
    json_object_set_new(root, "prev_sha256", hex_json(m->prev_sha256));
    for (size_t i = 0; i < m->nranges && rc == 0; i++) {
        const struct keel_ckpt_range *r = &m->ranges[i];
        json_t *o = json_object(), *tables = json_array(), *rs = NULL;

        json_object_set_new(o, "range", json_integer(r->range));
        rc = put_u64(o, "lsn", r->lsn, err);
        if (rc == 0)
            rc = put_u64(o, "rows", r->rows, err);
        json_object_set_new(o, "blocks", json_integer(r->blocks));
        json_object_set_new(o, "sha256", hex_json(r->sha256));
        for (size_t t = 0; t < r->ntables && rc == 0; t++) {
            json_t *to = json_object();
            json_object_set_new(to, "table", json_integer(r->tables[t].table_id));
            json_object_set_new(to, "width", json_integer(r->tables[t].width));
            json_object_set_new(to, "state_width", json_integer(r->tables[t].state_width));
            rc = put_u64(to, "rows", r->tables[t].rows, err);
            json_object_set_new(to, "blocks", json_integer(r->tables[t].blocks));
            json_array_append_new(tables, to);
        }
        json_object_set_new(o, "tables", tables);
        if (rc == 0)
            rc = shards_json(&rs, r->shards, r->nshards, err);
        if (rc == 0)
            json_object_set_new(o, "shards", rs);
        json_array_append_new(ranges, o);
    }
    json_object_set_new(root, "ranges", ranges);
    if (rc == 0)
        rc = shards_json(&shards, m->shards, m->nshards, err);
    if (rc != 0) {
        json_decref(root);
        return rc;
    }
    json_object_set_new(root, "shards", shards);
    *out = root;
    return 0;
}

int keel_manifest_encode(struct keel_buf *out, const struct keel_manifest *m,
                         const struct keel_ckpt_key *key, struct keel_error *err)
{
    json_t *root;
    char *text;
    size_t len;
    unsigned char *h;
    unsigned int maclen = 32;
    int rc;

    rc = manifest_json(&root, m, err);
    if (rc != 0)
        return rc;
    /* Sorted keys, compact: the same manifest always gives the same bytes. */
    text = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(root);
    if (text == NULL)
        return keel_err_set(err, KEEL_EINVAL, "manifest: cannot encode as JSON");
    len = strlen(text);
    if (len > KEEL_MANIFEST_MAX_JSON) {
        free(text);
        return keel_err_set(err, KEEL_EINVAL, "manifest: %zu bytes of JSON is too big", len);
    }
    h = keel_buf_add_zero(out, KEEL_MANIFEST_HEADER_SIZE + len);
    keel_store_u32le(h, KEEL_MANIFEST_MAGIC);
    keel_store_u16le(h + 4, KEEL_MANIFEST_VERSION);
    keel_store_u32le(h + 8, (uint32_t)len);
    memcpy(h + KEEL_MANIFEST_HEADER_SIZE, text, len);
    free(text);
    if (HMAC(EVP_sha256(), key->bytes, (int)key->len, h + KEEL_MANIFEST_HEADER_SIZE, len, h + 16,
             &maclen) == NULL)
        return keel_err_set(err, KEEL_ESTORE, "manifest: cannot compute the HMAC");
    return 0;
}

/* Field readers: each names the field on failure. */
struct jctx {
    const char *where; /* "range 3" or "" */
    struct keel_error *err;
};

static int bad(struct jctx *c, const char *field, const char *what)
{
    return keel_err_set(c->err, KEEL_ECORRUPT, "manifest JSON: %s%s'%s' %s", c->where,
                        c->where[0] ? ": " : "", field, what);
}

static int get_u64(struct jctx *c, json_t *obj, const char *field, uint64_t max, uint64_t *out)
{
    json_t *v = json_object_get(obj, field);

    if (!json_is_integer(v))
        return bad(c, field, "is missing or not an integer");
    if (json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max)
        return bad(c, field, "is out of range");
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int get_u32(struct jctx *c, json_t *obj, const char *field, uint32_t max, uint32_t *out)
{
    uint64_t v;
    int rc = get_u64(c, obj, field, max, &v);

    if (rc == 0)
        *out = (uint32_t)v;
    return rc;
}

static int get_str(struct jctx *c, json_t *obj, const char *field, char *out, size_t cap,
                   int allow_empty)
{
    json_t *v = json_object_get(obj, field);
    size_t len;

    if (!json_is_string(v))
        return bad(c, field, "is missing or not a string");
    len = json_string_length(v);
    if (len >= cap || (!allow_empty && len == 0) || memchr(json_string_value(v), '\0', len) != NULL)
        return bad(c, field, "has a bad length");
    memcpy(out, json_string_value(v), len);
    out[len] = '\0';
    return 0;
}

static int get_hex32(struct jctx *c, json_t *obj, const char *field, unsigned char *out)
{
    json_t *v = json_object_get(obj, field);
    const char *s;

    if (!json_is_string(v) || json_string_length(v) != 64)
        return bad(c, field, "is missing or not 64 hex digits");
    s = json_string_value(v);
    for (int i = 0; i < 32; i++) {
        int hi, lo;
        char a = s[2 * i], b = s[2 * i + 1];
        hi = a >= '0' && a <= '9' ? a - '0' : a >= 'a' && a <= 'f' ? a - 'a' + 10 : -1;
        lo = b >= '0' && b <= '9' ? b - '0' : b >= 'a' && b <= 'f' ? b - 'a' + 10 : -1;
        if (hi < 0 || lo < 0)
            return bad(c, field, "is not lowercase hex");
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

static int get_array(struct jctx *c, json_t *obj, const char *field, size_t max, json_t **out)
{
    json_t *v = json_object_get(obj, field);

    if (!json_is_array(v))
        return bad(c, field, "is missing or not an array");
    if (json_array_size(v) > max)
        return bad(c, field, "has too many elements");
    *out = v;
    return 0;
}

static int parse_shards(struct jctx *c, json_t *arr, struct keel_shard_pos **out, size_t *n)
{
    size_t count = json_array_size(arr);

    *n = 0;
    KEEL_ALLOC_ARRAY(*out, count);
    for (size_t i = 0; i < count; i++) {
        json_t *o = json_array_get(arr, i);
        struct keel_shard_pos *sp = &(*out)[i];
        int rc;

        if (!json_is_object(o))
            return bad(c, "shards", "holds a non-object");
        rc = get_u32(c, o, "shard", UINT32_MAX, &sp->shard);
        if (rc == 0)
            rc = get_u64(c, o, "seq", INT64_MAX, &sp->seq);
        if (rc == 0)
            rc = get_u64(c, o, "incarnation", INT64_MAX, &sp->incarnation);
        if (rc == 0)
            rc = get_str(c, o, "worker", sp->worker_id, sizeof(sp->worker_id), 1);
        if (rc != 0)
            return rc;
        if (i > 0 && sp->shard <= (*out)[i - 1].shard)
            return bad(c, "shards", "are not in increasing shard order");
        (*n)++;
    }
    return 0;
}

static int parse_range(struct jctx *c, json_t *o, struct keel_ckpt_range *r)
{
    json_t *tables, *shards;
    uint64_t rows = 0, blocks = 0;
    int rc;

    if (!json_is_object(o))
        return bad(c, "ranges", "holds a non-object");
    rc = get_u32(c, o, "range", UINT32_MAX, &r->range);
    if (rc == 0)
        rc = get_u64(c, o, "lsn", INT64_MAX, &r->lsn);
    if (rc == 0)
        rc = get_u64(c, o, "rows", (uint64_t)1 << 48, &r->rows);
    if (rc == 0)
        rc = get_u32(c, o, "blocks", UINT32_MAX, &r->blocks);
    if (rc == 0)
        rc = get_hex32(c, o, "sha256", r->sha256);
    if (rc == 0)
        rc = get_array(c, o, "tables", 65536, &tables);
    if (rc == 0)
        rc = get_array(c, o, "shards", 1u << 20, &shards);
    if (rc != 0)
        return rc;
    KEEL_ALLOC_ARRAY(r->tables, json_array_size(tables));
    for (size_t i = 0; i < json_array_size(tables); i++) {
        json_t *to = json_array_get(tables, i);
        struct keel_ckpt_table *t = &r->tables[i];

        if (!json_is_object(to))
            return bad(c, "tables", "holds a non-object");
        rc = get_u32(c, to, "table", 0xFFFF, &t->table_id);
        if (rc == 0)
            rc = get_u32(c, to, "width", KEEL_PROTO_MAX_ROW_WIDTH, &t->width);
        if (rc == 0)
            rc = get_u32(c, to, "state_width", KEEL_PROTO_MAX_ROW_WIDTH, &t->state_width);
        if (rc == 0)
            rc = get_u64(c, to, "rows", (uint64_t)1 << 48, &t->rows);
        if (rc == 0)
            rc = get_u32(c, to, "blocks", UINT32_MAX, &t->blocks);
        if (rc != 0)
            return rc;
        r->ntables++;
        if (t->width == 0)
            return bad(c, "width", "is zero");
        if (i > 0 && t->table_id <= r->tables[i - 1].table_id)
            return bad(c, "tables", "are not in increasing table order");
        if ((t->rows == 0) != (t->blocks == 0) || t->blocks > t->rows)
            return bad(c, "blocks", "does not fit the rows");
        rows += t->rows;
        blocks += t->blocks;
    }
    if (rows != r->rows || blocks != r->blocks)
        return bad(c, "rows", "do not add up over the tables");
    return parse_shards(c, shards, &r->shards, &r->nshards);
}

static int parse_manifest(json_t *root, struct keel_manifest *m, struct keel_error *err)
{
    struct jctx c = {"", err};
    json_t *ranges, *shards;
    uint64_t format;
    char where[32];
    int rc;

    if (!json_is_object(root))
        return bad(&c, "(root)", "is not an object");
    rc = get_u64(&c, root, "format", INT64_MAX, &format);
    if (rc == 0 && format != KEEL_MANIFEST_FORMAT)
        return keel_err_set(err, KEEL_EFORMAT, "manifest JSON: format %" PRIu64 " is unknown",
                            format);
    if (rc == 0)
        rc = get_str(&c, root, "job", m->job, sizeof(m->job), 0);
    if (rc == 0 && json_object_get(root, "server") != NULL)
        rc = get_str(&c, root, "server", m->server, sizeof(m->server), 0);
    if (rc == 0)
        rc = get_u64(&c, root, "id", INT64_MAX, &m->id);
    if (rc == 0)
        rc = get_u64(&c, root, "clock", INT64_MAX, &m->clock);
    if (rc == 0)
        rc = get_u64(&c, root, "created_ns", INT64_MAX, &m->created_ns);
    if (rc == 0)
        rc = get_hex32(&c, root, "spec_sha256", m->spec_sha256);
    if (rc == 0)
        rc = get_hex32(&c, root, "prev_sha256", m->prev_sha256);
    if (rc == 0)
        rc = get_array(&c, root, "ranges", KEEL_CKPT_MAX_RANGES, &ranges);
    if (rc == 0)
        rc = get_array(&c, root, "shards", 1u << 20, &shards);
    if (rc != 0)
        return rc;
    if (m->id == 0)
        return bad(&c, "id", "is zero");
    KEEL_ALLOC_ARRAY(m->ranges, json_array_size(ranges));
    for (size_t i = 0; i < json_array_size(ranges); i++) {
        snprintf(where, sizeof(where), "ranges[%zu]", i);
        c.where = where;
        m->nranges++;
        rc = parse_range(&c, json_array_get(ranges, i), &m->ranges[i]);
        if (rc != 0)
            return rc;
        if (i > 0 && m->ranges[i].range <= m->ranges[i - 1].range)
            return bad(&c, "range", "is not increasing");
    }
    c.where = "";
    return parse_shards(&c, shards, &m->shards, &m->nshards);
}

int keel_manifest_decode(const void *data, size_t len, struct keel_manifest *m, unsigned char *mac,
                         struct keel_view *json, struct keel_error *err)
{
    const unsigned char *p = data;
    json_error_t jerr;
    json_t *root;
    size_t jlen;
    int rc;

    memset(m, 0, sizeof(*m));
    if (len < KEEL_MANIFEST_HEADER_SIZE)
        return keel_err_set(err, KEEL_ETRUNCATED, "manifest of %zu bytes, shorter than its header",
                            len);
    if (keel_load_u32le(p) != KEEL_MANIFEST_MAGIC)
        return keel_err_set(err, KEEL_EMAGIC, "manifest offset 0: bad magic");
    if (keel_load_u16le(p + 4) != KEEL_MANIFEST_VERSION)
        return keel_err_set(err, KEEL_EVERSION, "manifest offset 4: unknown version %u",
                            (unsigned)keel_load_u16le(p + 4));
    if (keel_load_u16le(p + 6) != 0 || keel_load_u32le(p + 12) != 0)
        return keel_err_set(err, KEEL_ERESERVED, "manifest: reserved bytes not zero");
    jlen = keel_load_u32le(p + 8);
    if (jlen > KEEL_MANIFEST_MAX_JSON || jlen != len - KEEL_MANIFEST_HEADER_SIZE)
        return keel_err_set(err, KEEL_ECOUNT,
                            "manifest offset 8: JSON length %zu, but %zu bytes follow", jlen,
                            len - KEEL_MANIFEST_HEADER_SIZE);
    root = json_loadb((const char *)p + KEEL_MANIFEST_HEADER_SIZE, jlen, JSON_REJECT_DUPLICATES,
                      &jerr);
    if (root == NULL)
        return keel_err_set(err, KEEL_ECORRUPT, "manifest JSON: byte %d: %s", jerr.position,
                            jerr.text);
    rc = parse_manifest(root, m, err);
    json_decref(root);
    if (rc != 0) {
        keel_manifest_release(m);
        return rc;
    }
    if (mac != NULL)
        memcpy(mac, p + 16, 32);
    if (json != NULL)
        *json = keel_view_make(p + KEEL_MANIFEST_HEADER_SIZE, jlen);
    return 0;
}
