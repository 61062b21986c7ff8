/*
 * etcd_json.c - decoding etcd's JSON replies (untrusted input), base64 and
 * the line splitter of streams.
 *
 * Every reader checks the JSON type of what it reads and names the reply and
 * the field when it is wrong.  proto3 leaves zero values out, so an absent
 * number is 0, an absent boolean false and absent bytes empty; only fields
 * without which a reply means nothing (a kv's key, a reply's header) are
 * required.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "etcd_internal.h"
#include "alloc.h"

/* ---- base64 ---------------------------------------------------------------- */

void keel_etcd_b64_encode(const void *data, size_t len, struct keel_buf *out)
{
    const unsigned char *p = data;

    /* EVP_EncodeBlock takes an int: encode in pieces that are a multiple of 3. */
    while (len > 0) {
        size_t chunk = len > 3 * (1u << 20) ? 3 * (1u << 20) : len;
        size_t olen = 4 * ((chunk + 2) / 3);
        int n;

        keel_buf_grow(out, olen + 1);
        n = EVP_EncodeBlock(out->buf + out->len, p, (int)chunk);
        keel_buf_setlen(out, out->len + (size_t)n);
        p += chunk;
        len -= chunk;
    }
}

static int b64_char(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '+' || ch == '/';
}

int keel_etcd_b64_decode(const char *text, size_t len, struct keel_buf *out)
{
    size_t pad = 0;
    int n;

    keel_buf_reset(out);
    if (len == 0)
        return 0;
    /* EVP_DecodeBlock skips blanks and does not report padding: check first. */
    if (len % 4 != 0 || len > INT_MAX)
        return KEEL_EINVAL;
    if (text[len - 1] == '=')
        pad = text[len - 2] == '=' ? 2 : 1;
    for (size_t i = 0; i < len - pad; i++)
        if (!b64_char((unsigned char)text[i]))
            return KEEL_EINVAL;
    keel_buf_grow(out, len / 4 * 3 + 1);
    n = EVP_DecodeBlock(out->buf, (const unsigned char *)text, (int)len);
    if (n < 0 || (size_t)n != len / 4 * 3)
        return KEEL_EINVAL;
    /* The decoder wrote the padding as zero bytes: they are not data. */
    keel_buf_setlen(out, (size_t)n - pad);
    return 0;
}

json_t *keel__etcd_b64_json(const void *data, size_t len)
{
    struct keel_buf b = KEEL_BUF_INIT;
    json_t *s;

    keel_etcd_b64_encode(data, len, &b);
    s = json_stringn((const char *)b.buf, b.len);
    keel_buf_release(&b);
    if (s == NULL)
        abort(); /* jansson's allocation failed: out of memory */
    return s;
}

json_t *keel__etcd_int64_json(int64_t v)
{
    char text[32];
    json_t *s;

    snprintf(text, sizeof(text), "%lld", (long long)v);
    s = json_string(text);
    if (s == NULL)
        abort();
    return s;
}

/* ---- field readers ------------------------------------------------------------ */

static int parse_int64_text(const char *s, int64_t *out)
{
    const char *p = s;
    char *end;
    long long v;

    if (*p == '-')
        p++;
    if (*p < '0' || *p > '9')
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = (int64_t)v;
    return 0;
}

int keel__etcd_json_int64(const json_t *obj, const char *name, int64_t *out, const char *what,
                          struct keel_error *err)
{
    const json_t *v = json_object_get(obj, name);

    *out = 0;
    if (v == NULL || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v) &&
        parse_int64_text(json_string_value(v), out) == 0)
        return 0;
    *out = 0;
    return keel_err_set(err, KEEL_EETCD, "%s: field '%s' is not a 64-bit integer", what, name);
}

int keel__etcd_json_bool(const json_t *obj, const char *name, int *out, const char *what,
                         struct keel_error *err)
{
    const json_t *v = json_object_get(obj, name);

    *out = 0;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return keel_err_set(err, KEEL_EETCD, "%s: field '%s' is not a boolean", what, name);
    *out = json_is_true(v);
    return 0;
}

int keel__etcd_json_bytes(const json_t *obj, const char *name, char **out, size_t *len,
                          const char *what, struct keel_error *err)
{
    const json_t *v = json_object_get(obj, name);
    struct keel_buf b = KEEL_BUF_INIT;

    *out = NULL;
    *len = 0;
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v))
            return keel_err_set(err, KEEL_EETCD, "%s: field '%s' is not a string", what, name);
        if (keel_etcd_b64_decode(json_string_value(v), json_string_length(v), &b) != 0)
            return keel_err_set(err, KEEL_EETCD, "%s: field '%s' is not valid base64", what, name);
    }
    *out = (char *)keel_buf_detach(&b, len);
    return 0;
}

/*
 * Decode array field `name` of `obj` (absent or null: no element) into *items,
 * a keel_calloc()ed array of `size`-byte elements, each decoded by `fn` from
 * zeroes.  *n counts the elements begun, the failed one included: on error
 * the caller's release frees what was decoded and what the failed one left.
 */
static int array_from_json(const json_t *obj, const char *name, size_t size,
                           int (*fn)(const json_t *, void *, const char *, struct keel_error *),
                           void **items, size_t *n, const char *what, struct keel_error *err)
{
    const json_t *a = json_object_get(obj, name);
    unsigned char *p;
    int rc;

    *items = NULL;
    if (a == NULL || json_is_null(a))
        return 0;
    if (!json_is_array(a))
        return keel_err_set(err, KEEL_EETCD, "%s: field '%s' is not an array", what, name);
    p = keel_calloc(json_array_size(a), size);
    *items = p;
    for (size_t i = 0; i < json_array_size(a); i++) {
        (*n)++;
        if ((rc = fn(json_array_get(a, i), p + i * size, what, err)) != 0)
            return rc;
    }
    return 0;
}

void keel_etcd_kv_release(struct keel_etcd_kv *kv)
{
    free(kv->key);
    free(kv->value);
    memset(kv, 0, sizeof(*kv));
}

int keel__etcd_kv_from_json(const json_t *kv, struct keel_etcd_kv *out, const char *what,
                            struct keel_error *err)
{
    char *value;
    int rc;

    memset(out, 0, sizeof(*out));
    if (!json_is_object(kv))
        return keel_err_set(err, KEEL_EETCD, "%s: a key/value is not an object", what);
    if (json_object_get(kv, "key") == NULL)
        return keel_err_set(err, KEEL_EETCD, "%s: a key/value has no 'key'", what);
    rc = keel__etcd_json_bytes(kv, "key", &out->key, &out->key_len, what, err);
    if (rc == 0)
        rc = keel__etcd_json_bytes(kv, "value", &value, &out->value_len, what, err);
    if (rc != 0)
        goto fail;
    out->value = (unsigned char *)value;
    if ((rc = keel__etcd_json_int64(kv, "create_revision", &out->create_revision, what, err)) ||
        (rc = keel__etcd_json_int64(kv, "mod_revision", &out->mod_revision, what, err)) ||
        (rc = keel__etcd_json_int64(kv, "version", &out->version, what, err)) ||
        (rc = keel__etcd_json_int64(kv, "lease", &out->lease, what, err)))
        goto fail;
    return 0;
fail:
    keel_etcd_kv_release(out);
    return rc;
}

void keel_etcd_kvs_release(struct keel_etcd_kvs *r)
{
    for (size_t i = 0; i < r->n; i++)
        keel_etcd_kv_release(&r->kvs[i]);
    free(r->kvs);
    memset(r, 0, sizeof(*r));
}

static int kv_elem(const json_t *kv, void *out, const char *what, struct keel_error *err)
{
    return keel__etcd_kv_from_json(kv, out, what, err);
}

int keel__etcd_kvs_from_json(const json_t *obj, struct keel_etcd_kvs *out, const char *what,
                             struct keel_error *err)
{
    void *kvs;
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = keel__etcd_json_int64(obj, "count", &out->count, what, err)) ||
        (rc = keel__etcd_json_bool(obj, "more", &out->more, what, err)))
        return rc;
    rc = array_from_json(obj, "kvs", sizeof(*out->kvs), kv_elem, &kvs, &out->n, what, err);
    out->kvs = kvs;
    if (rc != 0)
        keel_etcd_kvs_release(out);
    return rc;
}

int keel__etcd_header_revision(const json_t *reply, int64_t *rev, const char *what,
                               struct keel_error *err)
{
    const json_t *h = json_object_get(reply, "header");

    *rev = 0;
    if (!json_is_object(h))
        return keel_err_set(err, KEEL_EETCD, "%s: reply has no 'header' object", what);
    return keel__etcd_json_int64(h, "revision", rev, what, err);
}

int keel__etcd_parse_object(const char *json, size_t len, json_t **out, const char *what,
                            struct keel_error *err)
{
    json_error_t jerr;
    json_t *j;

    *out = NULL;
    j = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (j == NULL)
        return keel_err_set(err, KEEL_EETCD, "%s: reply is not JSON: %s at offset %d", what,
                            jerr.text, jerr.position);
    if (!json_is_object(j)) {
        json_decref(j);
        return keel_err_set(err, KEEL_EETCD, "%s: reply is not a JSON object", what);
    }
    *out = j;
    return 0;
}

/* ---- errors --------------------------------------------------------------- */

void keel__etcd_error_fields(const json_t *obj, int *code, const char **msg)
{
    const json_t *e = json_object_get(obj, "error");
    const json_t *c, *m;

    *code = -1;
    *msg = "";
    if (json_is_object(e)) { /* a stream's error */
        c = json_object_get(e, "grpc_code");
        m = json_object_get(e, "message");
    } else {
        c = json_object_get(obj, "code");
        m = json_object_get(obj, "message");
        if (!json_is_string(m))
            m = e;
    }
    if (json_is_integer(c) && json_integer_value(c) >= 0 && json_integer_value(c) <= 1000)
        *code = (int)json_integer_value(c);
    if (json_is_string(m))
        *msg = json_string_value(m);
}

int keel__etcd_map_code(int code)
{
    switch (code) {
    case 5: /* NotFound */
        return KEEL_ENOTFOUND;
    case 6: /* AlreadyExists */
    case 9: /* FailedPrecondition: "lease already exists" */
        return KEEL_EEXIST;
    case 7:  /* PermissionDenied */
    case 16: /* Unauthenticated */
        return KEEL_EPERM;
    case 14: /* Unavailable */
        return KEEL_EUNAVAILABLE;
    case 4: /* DeadlineExceeded */
        return KEEL_ETIMEDOUT;
    default:
        return KEEL_EETCD;
    }
}

int keel_etcd_decode_error(const char *json, size_t len, long http_status, const char *what,
                           struct keel_error *err)
{
    json_t *j = NULL;
    json_error_t jerr;
    const char *msg;
    int code;
    int rc;

    j = json_loadb(json, len, 0, &jerr);
    if (!json_is_object(j)) {
        json_decref(j);
        return keel_err_set(err, KEEL_EETCD, "%s: etcd answered HTTP %ld without a JSON error",
                            what, http_status);
    }
    keel__etcd_error_fields(j, &code, &msg);
    rc = keel_err_set(err, keel__etcd_map_code(code), "%s: etcd: %s (HTTP %ld, code %d)", what,
                      msg[0] ? msg : "no message", http_status, code);
    json_decref(j);
    return rc;
}

/* ---- replies -------------------------------------------------------------- */

int keel__etcd_range_from_json(const json_t *reply, struct keel_etcd_kvs *out, const char *what,
                               struct keel_error *err)
{
    int64_t rev;
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = keel__etcd_header_revision(reply, &rev, what, err)) == 0 &&
        (rc = keel__etcd_kvs_from_json(reply, out, what, err)) == 0)
        out->revision = rev;
    return rc;
}

int keel_etcd_decode_range(const char *json, size_t len, struct keel_etcd_kvs *out,
                           struct keel_error *err)
{
    json_t *j;
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = keel__etcd_parse_object(json, len, &j, "range", err)) != 0)
        return rc;
    rc = keel__etcd_range_from_json(j, out, "range", err);
    json_decref(j);
    return rc;
}

static int txn_from_json(const json_t *reply, struct keel_etcd_txn_result *out, int nested,
                         const char *what, struct keel_error *err);

void keel_etcd_txn_result_release(struct keel_etcd_txn_result *r)
{
    for (size_t i = 0; i < r->n; i++) {
        keel_etcd_kvs_release(&r->ops[i].range);
        if (r->ops[i].txn) {
            keel_etcd_txn_result_release(r->ops[i].txn);
            free(r->ops[i].txn);
        }
    }
    free(r->ops);
    memset(r, 0, sizeof(*r));
}

static int op_from_json(const json_t *resp, void *out, const char *what, struct keel_error *err)
{
    struct keel_etcd_op_result *op = out;
    const json_t *v;

    if (!json_is_object(resp))
        return keel_err_set(err, KEEL_EETCD, "%s: a response is not an object", what);
    if ((v = json_object_get(resp, "response_put")) != NULL) {
        op->op = KEEL_ETCD_OP_PUT;
        if (!json_is_object(v))
            return keel_err_set(err, KEEL_EETCD, "%s: 'response_put' is not an object", what);
        return 0;
    }
    if ((v = json_object_get(resp, "response_range")) != NULL) {
        op->op = KEEL_ETCD_OP_RANGE;
        if (!json_is_object(v))
            return keel_err_set(err, KEEL_EETCD, "%s: 'response_range' is not an object", what);
        return keel__etcd_kvs_from_json(v, &op->range, what, err);
    }
    if ((v = json_object_get(resp, "response_delete_range")) != NULL) {
        op->op = KEEL_ETCD_OP_DELETE;
        if (!json_is_object(v))
            return keel_err_set(err, KEEL_EETCD, "%s: 'response_delete_range' is not an object",
                                what);
        return keel__etcd_json_int64(v, "deleted", &op->deleted, what, err);
    }
    if ((v = json_object_get(resp, "response_txn")) != NULL) {
        op->op = KEEL_ETCD_OP_TXN;
        if (!json_is_object(v))
            return keel_err_set(err, KEEL_EETCD, "%s: 'response_txn' is not an object", what);
        op->txn = keel_calloc(1, sizeof(*op->txn));
        return txn_from_json(v, op->txn, 1, what, err);
    }
    return keel_err_set(err, KEEL_EETCD, "%s: a response of an unknown kind", what);
}

int keel__etcd_txn_from_json(const json_t *reply, struct keel_etcd_txn_result *out,
                             const char *what, struct keel_error *err)
{
    return txn_from_json(reply, out, 0, what, err);
}

/* A nested txn's reply has an empty header (or none); the outer one's is required. */
static int txn_from_json(const json_t *reply, struct keel_etcd_txn_result *out, int nested,
                         const char *what, struct keel_error *err)
{
    void *ops;
    int rc = 0;

    memset(out, 0, sizeof(*out));
    if ((!nested || json_object_get(reply, "header") != NULL) &&
        (rc = keel__etcd_header_revision(reply, &out->revision, what, err)) != 0)
        return rc;
    if ((rc = keel__etcd_json_bool(reply, "succeeded", &out->succeeded, what, err)) != 0)
        return rc;
    rc = array_from_json(reply, "responses", sizeof(*out->ops), op_from_json, &ops, &out->n, what,
                         err);
    out->ops = ops;
    if (rc != 0)
        keel_etcd_txn_result_release(out);
    return rc;
}

int keel_etcd_decode_txn(const char *json, size_t len, struct keel_etcd_txn_result *out,
                         struct keel_error *err)
{
    json_t *j;
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = keel__etcd_parse_object(json, len, &j, "txn", err)) != 0)
        return rc;
    rc = keel__etcd_txn_from_json(j, out, "txn", err);
    json_decref(j);
    return rc;
}

int keel__etcd_keepalive_from_json(const json_t *reply, int64_t *ttl, const char *what,
                                   struct keel_error *err)
{
    const json_t *r = json_object_get(reply, "result");
    int rc;

    *ttl = 0;
    if (!json_is_object(r))
        return keel_err_set(err, KEEL_EETCD, "%s: reply has no 'result' object", what);
    if ((rc = keel__etcd_json_int64(r, "TTL", ttl, what, err)) != 0)
        return rc;
    if (*ttl < 0) {
        *ttl = 0;
        return keel_err_set(err, KEEL_EETCD, "%s: negative TTL", what);
    }
    return 0;
}

int keel_etcd_decode_keepalive(const char *json, size_t len, int64_t *ttl, struct keel_error *err)
{
    json_t *j;
    int rc;

    *ttl = 0;
    if ((rc = keel__etcd_parse_object(json, len, &j, "keepalive", err)) != 0)
        return rc;
    rc = keel__etcd_keepalive_from_json(j, ttl, "keepalive", err);
    json_decref(j);
    return rc;
}

void keel_etcd_leader_release(struct keel_etcd_leader *l)
{
    free(l->name);
    free(l->key);
    memset(l, 0, sizeof(*l));
}

int keel__etcd_leader_from_json(const json_t *reply, struct keel_etcd_leader *out, const char *what,
                                struct keel_error *err)
{
    const json_t *l = json_object_get(reply, "leader");
    int rc;

    memset(out, 0, sizeof(*out));
    if (!json_is_object(l))
        return keel_err_set(err, KEEL_EETCD, "%s: reply has no 'leader' object", what);
    if (json_object_get(l, "key") == NULL)
        return keel_err_set(err, KEEL_EETCD, "%s: the leader has no 'key'", what);
    if ((rc = keel__etcd_json_bytes(l, "name", &out->name, &out->name_len, what, err)) ||
        (rc = keel__etcd_json_bytes(l, "key", &out->key, &out->key_len, what, err)) ||
        (rc = keel__etcd_json_int64(l, "rev", &out->rev, what, err)) ||
        (rc = keel__etcd_json_int64(l, "lease", &out->lease, what, err)))
        goto fail;
    if (out->key_len == 0 || out->rev <= 0) {
        rc = keel_err_set(err, KEEL_EETCD, "%s: the leader has an empty key or no revision", what);
        goto fail;
    }
    return 0;
fail:
    keel_etcd_leader_release(out);
    return rc;
}

int keel_etcd_decode_campaign(const char *json, size_t len, struct keel_etcd_leader *out,
                              struct keel_error *err)
{
    json_t *j;
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = keel__etcd_parse_object(json, len, &j, "campaign", err)) != 0)
        return rc;
    rc = keel__etcd_leader_from_json(j, out, "campaign", err);
    json_decref(j);
    return rc;
}

/* ---- streams -------------------------------------------------------------- */

void keel_etcd_watch_msg_release(struct keel_etcd_watch_msg *m)
{
    for (size_t i = 0; i < m->n; i++) {
        keel_etcd_kv_release(&m->events[i].kv);
        keel_etcd_kv_release(&m->events[i].prev_kv);
    }
    free(m->events);
    memset(m, 0, sizeof(*m));
}

/* The 'result' object of stream message `msg` in *r, or its error object as a Keel error. */
static int stream_result(const json_t *msg, const json_t **r, const char *what,
                         struct keel_error *err)
{
    const char *text;
    int code;

    *r = NULL;
    if (json_object_get(msg, "error") != NULL) {
        keel__etcd_error_fields(msg, &code, &text);
        return keel_err_set(err, code == 14 ? KEEL_EUNAVAILABLE : keel__etcd_map_code(code),
                            "%s: etcd: %s (code %d)", what, text[0] ? text : "no message", code);
    }
    *r = json_object_get(msg, "result");
    if (!json_is_object(*r))
        return keel_err_set(err, KEEL_EETCD, "%s: message has no 'result' object", what);
    return 0;
}

static int event_from_json(const json_t *ev, void *elem, const char *what, struct keel_error *err)
{
    struct keel_etcd_event *out = elem;
    const json_t *type, *prev;
    int rc;

    if (!json_is_object(ev))
        return keel_err_set(err, KEEL_EETCD, "%s: an event is not an object", what);
    type = json_object_get(ev, "type");
    if (type == NULL || (json_is_string(type) && strcmp(json_string_value(type), "PUT") == 0) ||
        (json_is_integer(type) && json_integer_value(type) == 0))
        out->type = KEEL_ETCD_PUT;
    else if ((json_is_string(type) && strcmp(json_string_value(type), "DELETE") == 0) ||
             (json_is_integer(type) && json_integer_value(type) == 1))
        out->type = KEEL_ETCD_DELETE;
    else
        return keel_err_set(err, KEEL_EETCD, "%s: an event has an unknown 'type'", what);
    if ((rc = keel__etcd_kv_from_json(json_object_get(ev, "kv"), &out->kv, what, err)) != 0)
        return rc;
    prev = json_object_get(ev, "prev_kv");
    if (prev != NULL && !json_is_null(prev)) {
        if ((rc = keel__etcd_kv_from_json(prev, &out->prev_kv, what, err)) != 0)
            return rc;
        out->has_prev = 1;
    }
    return 0;
}

int keel__etcd_watch_from_json(const json_t *msg, struct keel_etcd_watch_msg *out, const char *what,
                               struct keel_error *err)
{
    const json_t *r;
    void *events;
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = stream_result(msg, &r, what, err)) != 0)
        return rc;
    /* A cancel message may come without a header; every other has one. */
    if (json_object_get(r, "header") != NULL &&
        (rc = keel__etcd_header_revision(r, &out->revision, what, err)) != 0)
        return rc;
    if ((rc = keel__etcd_json_bool(r, "created", &out->created, what, err)) ||
        (rc = keel__etcd_json_bool(r, "canceled", &out->canceled, what, err)) ||
        (rc = keel__etcd_json_int64(r, "compact_revision", &out->compact_revision, what, err)))
        return rc;
    if (!out->canceled && json_object_get(r, "header") == NULL)
        return keel_err_set(err, KEEL_EETCD, "%s: message has no 'header' object", what);
    rc = array_from_json(r, "events", sizeof(*out->events), event_from_json, &events, &out->n, what,
                         err);
    out->events = events;
    if (rc != 0)
        keel_etcd_watch_msg_release(out);
    return rc;
}

int keel_etcd_decode_watch(const char *json, size_t len, struct keel_etcd_watch_msg *out,
                           struct keel_error *err)
{
    json_t *j;
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = keel__etcd_parse_object(json, len, &j, "watch", err)) != 0)
        return rc;
    rc = keel__etcd_watch_from_json(j, out, "watch", err);
    json_decref(j);
    return rc;
}

int keel__etcd_observe_from_json(const json_t *msg, struct keel_etcd_kv *out, const char *what,
                                 struct keel_error *err)
{
    const json_t *r;
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = stream_result(msg, &r, what, err)) != 0)
        return rc;
    if (!json_is_object(json_object_get(r, "kv")))
        return keel_err_set(err, KEEL_EETCD, "%s: message has no 'kv' object", what);
    return keel__etcd_kv_from_json(json_object_get(r, "kv"), out, what, err);
}

int keel_etcd_decode_observe(const char *json, size_t len, struct keel_etcd_kv *out,
                             struct keel_error *err)
{
    json_t *j;
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = keel__etcd_parse_object(json, len, &j, "observe", err)) != 0)
        return rc;
    rc = keel__etcd_observe_from_json(j, out, "observe", err);
    json_decref(j);
    return rc;
}

/* ---- line splitter ---------------------------------------------------------- */

void keel_etcd_lines_init(struct keel_etcd_lines *l, size_t max)
{
    keel_buf_init(&l->buf, 0);
    l->max = max;
}

void keel_etcd_lines_release(struct keel_etcd_lines *l)
{
    keel_buf_release(&l->buf);
}

int keel_etcd_lines_feed(struct keel_etcd_lines *l, const void *data, size_t len,
                         int (*fn)(void *user, const char *line, size_t n), void *user,
                         struct keel_error *err)
{
    const char *p = data;
    const char *end = p + len;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t take = nl ? (size_t)(nl - p) : (size_t)(end - p);
        int rc;

        if (l->buf.len + take > l->max) {
            keel_buf_reset(&l->buf);
            return keel_err_set(err, KEEL_EETCD,
                                "stream message longer than %zu bytes without a newline", l->max);
        }
        if (nl == NULL) {
            keel_buf_add(&l->buf, p, take);
            return 0;
        }
        if (l->buf.len == 0) {
            rc = take ? fn(user, p, take) : 0;
        } else {
            keel_buf_add(&l->buf, p, take);
            rc = fn(user, (const char *)l->buf.buf, l->buf.len);
            keel_buf_reset(&l->buf);
        }
        if (rc != 0)
            return rc;
        p = nl + 1;
    }
    return 0;
}
