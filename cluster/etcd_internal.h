/*
 * etcd_internal.h - what the etcd client's files share: the decoders of
 * etcd's replies and streams (which the tests and the fuzz target also
 * call), the client struct, the call machinery and the JSON field readers.
 * Not a public API.
 */
#ifndef KEEL_ETCD_INTERNAL_H
#define KEEL_ETCD_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include <curl/curl.h>
#include <jansson.h>

#include "etcd.h"

/* ---- decoders of etcd's replies and streams (the tests and fuzz target use them) ---- */

/*
 * Each decodes one reply body (or one stream line) of `len` bytes; the input
 * need not be NUL-terminated.  On error the output is left released and the
 * message names the call and the field.
 */
int keel_etcd_decode_range(const char *json, size_t len, struct keel_etcd_kvs *out,
                           struct keel_error *err);
int keel_etcd_decode_txn(const char *json, size_t len, struct keel_etcd_txn_result *out,
                         struct keel_error *err);
int keel_etcd_decode_keepalive(const char *json, size_t len, int64_t *ttl, struct keel_error *err);
int keel_etcd_decode_campaign(const char *json, size_t len, struct keel_etcd_leader *out,
                              struct keel_error *err);

/* An error reply ({"error","message","code"}) with its HTTP status, as a Keel error. */
int keel_etcd_decode_error(const char *json, size_t len, long http_status, const char *what,
                           struct keel_error *err);

/* One message of a watch stream. */
struct keel_etcd_watch_msg {
    int created;              /* the watch was set up */
    int canceled;             /* the watch was canceled by etcd */
    int64_t compact_revision; /* with canceled: history before this is gone */
    int64_t revision;         /* header revision */
    size_t n;
    struct keel_etcd_event *events;
};

void keel_etcd_watch_msg_release(struct keel_etcd_watch_msg *m);

/*
 * Decode a watch stream line.  A stream error object ({"error":{...}}) is
 * returned as KEEL_EUNAVAILABLE (gRPC code 14) or KEEL_EETCD with its message.
 */
int keel_etcd_decode_watch(const char *json, size_t len, struct keel_etcd_watch_msg *out,
                           struct keel_error *err);

/* One message of an observe stream: the leader's kv. */
int keel_etcd_decode_observe(const char *json, size_t len, struct keel_etcd_kv *out,
                             struct keel_error *err);

/*
 * Splits a byte stream into lines of at most `max` bytes (the '\n' not
 * counted).  Feed it what arrives, in any pieces; it calls `fn` with each
 * complete line, whose bytes are valid during the call.  A line longer than
 * `max` is KEEL_EETCD; `fn` returning non-zero stops the feed with that value.
 */
struct keel_etcd_lines {
    struct keel_buf buf;
    size_t max;
};

void keel_etcd_lines_init(struct keel_etcd_lines *l, size_t max);
void keel_etcd_lines_release(struct keel_etcd_lines *l);
int keel_etcd_lines_feed(struct keel_etcd_lines *l, const void *data, size_t len,
                         int (*fn)(void *user, const char *line, size_t n), void *user,
                         struct keel_error *err);

/* Base64 (standard alphabet, padded) with OpenSSL: append the encoding of `len` bytes. */
void keel_etcd_b64_encode(const void *data, size_t len, struct keel_buf *out);

/*
 * Decode `len` characters of base64 into `out` (reset first).  Errors:
 * KEEL_EINVAL when the length is not a multiple of 4 or a character is not
 * base64.
 */
int keel_etcd_b64_decode(const char *text, size_t len, struct keel_buf *out);

/* ---- the client ---- */

#define KEEL__ETCD_POOL_MAX 8

struct keel_etcd {
    char **endpoints; /* base URLs without a trailing '/' */
    size_t nendpoints;
    unsigned current; /* endpoint tried first; atomic */
    char *ca_file, *cert_file, *key_file;
    uint64_t connect_timeout_ms;
    uint64_t request_timeout_ms;
    uint64_t retry_timeout_ms; /* atomic */
    size_t max_message;
    struct curl_slist *headers; /* Content-Type, no Expect: 100-continue */

    pthread_mutex_t pool_lock; /* guards pool and npool */
    CURL *pool[KEEL__ETCD_POOL_MAX];
    size_t npool;
};

/* How a failed attempt may be retried. */
enum keel__etcd_retry {
    KEEL__ETCD_RETRY_ALWAYS, /* idempotent: retry whatever happened */
    KEEL__ETCD_RETRY_UNSENT, /* retry only when the request cannot have reached etcd */
};

/* What one attempt came to. */
enum keel__etcd_outcome {
    KEEL__ETCD_OK,          /* HTTP 200 */
    KEEL__ETCD_UNSENT,      /* nothing reached etcd: any request may be retried */
    KEEL__ETCD_UNAVAILABLE, /* etcd may or may not have applied it */
    KEEL__ETCD_FATAL,       /* a definite answer or a local problem: do not retry */
};

/*
 * Classify one attempt from libcurl's result, whether any of the request was
 * sent, the HTTP status and, for an error reply, its gRPC code and message
 * (code -1 and NULL when there is none).  Pure; unit-tested.
 */
enum keel__etcd_outcome keel__etcd_classify(int curl_code, int request_sent, const char *curl_msg,
                                            long http_status, int grpc_code, const char *message);

struct keel__etcd_call {
    const char *what; /* the subject for messages: "put '/a'" */
    const char *path; /* "/v3/kv/put" */
    json_t *body;     /* borrowed */
    enum keel__etcd_retry retry;
    int cancel_fd;        /* >= 0: readable cancels (KEEL_ECANCELED) */
    int blocking;         /* no time limit on an attempt (campaign) */
    uint64_t deadline_ms; /* monotonic; 0 = now + retry_timeout */
    /* out */
    int maybe_applied; /* an earlier attempt may have been applied */
    int grpc_code;     /* of a final error reply, else -1 */
};

/*
 * Send `call` as a POST and return the reply object in *reply (the caller
 * json_decref()s it), retrying as call->retry allows.  On error *reply is
 * NULL and the error says what failed and where.
 */
int keel__etcd_call(keel_etcd *c, struct keel__etcd_call *call, json_t **reply,
                    struct keel_error *err);

/* Sleep `ms`, or less when `cancel_fd` (>= 0) becomes readable: returns 1 then. */
int keel__etcd_sleep(uint64_t ms, int cancel_fd);

/* Backoff before retry number `attempt` (1-based): 50 ms doubling to 1 s, jittered. */
uint64_t keel__etcd_backoff_ms(unsigned attempt);

/* Set up `h` for a POST of `body` to `url` with the client's TLS and timeouts. */
void keel__etcd_easy_setup(keel_etcd *c, CURL *h, const char *url, const char *body, size_t len,
                           struct curl_slist *headers, char *errbuf);

/* The endpoint to try first, and moving to the next one after a failure. */
unsigned keel__etcd_endpoint_first(keel_etcd *c);
void keel__etcd_endpoint_failed(keel_etcd *c, unsigned index);

/* keel__etcd_call() with RETRY_ALWAYS; `out_call` (may be NULL) gets the call's outcome flags. */
int keel__etcd_simple_call(keel_etcd *c, const char *what, const char *path, json_t *body,
                           int cancel_fd, json_t **reply, struct keel__etcd_call *out_call,
                           struct keel_error *err);

/* A range read of `key` (or the prefix `key`), cancellable. */
int keel__etcd_range(keel_etcd *c, const char *what, const char *key, int prefix,
                     const struct keel_etcd_range_opts *opts, int cancel_fd,
                     struct keel_etcd_kvs *out, struct keel_error *err);

/* One keep-alive, retried until `deadline_ms` (0: the retry time), cancellable. */
int keel__etcd_keepalive_until(keel_etcd *c, int64_t id, uint64_t deadline_ms, int cancel_fd,
                               int64_t *ttl, struct keel_error *err);

/* Set "key" and, for a prefix, "range_end" of request object `o`. */
void keel__etcd_set_range(json_t *o, const char *key, int prefix);

/* jansson building that aborts on out-of-memory, as keel_malloc does. */
void keel__etcd_jset(json_t *o, const char *k, json_t *v);
json_t *keel__etcd_jobject(void);

/* ---- JSON helpers (etcd_json.c) ---- */

/* A JSON string of the base64 encoding of `len` bytes. */
json_t *keel__etcd_b64_json(const void *data, size_t len);

/* An int64 as the decimal JSON string etcd wants. */
json_t *keel__etcd_int64_json(int64_t v);

/*
 * Read field `name` of `obj` as an int64: a decimal string or a JSON integer;
 * absent or null reads as 0.  `what` names the reply for the message.
 */
int keel__etcd_json_int64(const json_t *obj, const char *name, int64_t *out, const char *what,
                          struct keel_error *err);

/* Field `name` as a boolean; absent reads as 0. */
int keel__etcd_json_bool(const json_t *obj, const char *name, int *out, const char *what,
                         struct keel_error *err);

/* Field `name` as base64 bytes into a keel_malloc()ed NUL-terminated copy; absent reads as "". */
int keel__etcd_json_bytes(const json_t *obj, const char *name, char **out, size_t *len,
                          const char *what, struct keel_error *err);

/* A mvccpb.KeyValue object into `out` (the key is required). */
int keel__etcd_kv_from_json(const json_t *kv, struct keel_etcd_kv *out, const char *what,
                            struct keel_error *err);

/* The "kvs", "count" and "more" of a range reply into `out`. */
int keel__etcd_kvs_from_json(const json_t *obj, struct keel_etcd_kvs *out, const char *what,
                             struct keel_error *err);

/* The header's revision of a reply (the header is required). */
int keel__etcd_header_revision(const json_t *reply, int64_t *rev, const char *what,
                               struct keel_error *err);

/* Parse `len` bytes as one JSON object; KEEL_EETCD naming `what` otherwise. */
int keel__etcd_parse_object(const char *json, size_t len, json_t **out, const char *what,
                            struct keel_error *err);

/* Internal forms of the public decoders, on parsed JSON. */
int keel__etcd_range_from_json(const json_t *reply, struct keel_etcd_kvs *out, const char *what,
                               struct keel_error *err);
int keel__etcd_txn_from_json(const json_t *reply, struct keel_etcd_txn_result *out,
                             const char *what, struct keel_error *err);
int keel__etcd_leader_from_json(const json_t *reply, struct keel_etcd_leader *out, const char *what,
                                struct keel_error *err);
int keel__etcd_keepalive_from_json(const json_t *reply, int64_t *ttl, const char *what,
                                   struct keel_error *err);
int keel__etcd_watch_from_json(const json_t *msg, struct keel_etcd_watch_msg *out, const char *what,
                               struct keel_error *err);
int keel__etcd_observe_from_json(const json_t *msg, struct keel_etcd_kv *out, const char *what,
                                 struct keel_error *err);

/*
 * An error object of a unary reply ({"error":msg,"message":msg,"code":n}) or
 * of a stream ({"error":{"grpc_code":n,"message":msg,...}}): its gRPC code in
 * *code (-1 when absent) and a borrowed message in *msg ("" when absent).
 */
void keel__etcd_error_fields(const json_t *obj, int *code, const char **msg);

/* The Keel error for gRPC code `code`: KEEL_ENOTFOUND, KEEL_EUNAVAILABLE, ... */
int keel__etcd_map_code(int code);

#endif
