/*
 * etcd.c - the etcd client: endpoints, the HTTP call with retries and
 * failover, key/value calls, transactions, single lease calls and the
 * election calls.  Streams are in etcd_stream.c, the kept-alive lease in
 * etcd_lease.c, reply decoding in etcd_json.c.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "etcd_internal.h"
#include "alloc.h"
#include "clock.h"
#include "log.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 2000
#define DEFAULT_REQUEST_TIMEOUT_MS 5000
#define DEFAULT_RETRY_TIMEOUT_MS   10000
#define DEFAULT_MAX_MESSAGE        ((size_t)64 << 20)
#define WHAT_MAX                   320

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "keel: curl_global_init failed\n");
        abort();
    }
}

/* ---- small helpers ---------------------------------------------------------- */

int keel__etcd_sleep(uint64_t ms, int cancel_fd)
{
    uint64_t end = keel_clock_mono_ms() + ms;

    for (;;) {
        uint64_t now = keel_clock_mono_ms();
        struct pollfd p = {cancel_fd, POLLIN, 0};
        int wait;

        if (now >= end)
            return 0;
        wait = end - now > 1000 ? 1000 : (int)(end - now);
        if (cancel_fd >= 0) {
            if (poll(&p, 1, wait) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)))
                return 1;
        } else {
            (void)poll(NULL, 0, wait);
        }
    }
}

uint64_t keel__etcd_backoff_ms(unsigned attempt)
{
    uint64_t d = 50;
    unsigned r;

    for (unsigned i = 1; i < attempt && d < 1000; i++)
        d *= 2;
    if (d > 1000)
        d = 1000;
    /* Jitter in [d/2, d] so that clients that failed together spread out. */
    if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
        r = (unsigned)getpid();
    return d / 2 + r % (d / 2 + 1);
}

void keel__etcd_jset(json_t *o, const char *k, json_t *v)
{
    if (v == NULL || json_object_set_new(o, k, v) != 0)
        abort(); /* jansson allocation failed: out of memory, as keel_malloc does */
}

json_t *keel__etcd_jobject(void)
{
    json_t *o = json_object();

    if (o == NULL)
        abort();
    return o;
}

static void jappend(json_t *a, json_t *v)
{
    if (v == NULL || json_array_append_new(a, v) != 0)
        abort();
}

/* "put '/keel/c/x'" with the key cut so the message fits. */
static void describe(char *what, const char *verb, const char *key)
{
    snprintf(what, WHAT_MAX, "%s '%.200s'", verb, key);
}

/* Copy a call's local error to the caller's buffer. */
static int give(struct keel_error *err, const struct keel_error *e)
{
    if (err)
        *err = *e;
    return e->code;
}

/* ---- client ------------------------------------------------------------------- */

void keel_etcd_options_from_config(const struct keel_config *c, struct keel_etcd_options *o)
{
    memset(o, 0, sizeof(*o));
    o->endpoints = c->etcd_endpoints;
    o->ca_file = c->etcd_ca[0] ? c->etcd_ca : c->tls_ca;
    o->cert_file = c->etcd_cert[0] ? c->etcd_cert : c->tls_cert;
    o->key_file = c->etcd_key[0] ? c->etcd_key : c->tls_key;
    o->connect_timeout_ms = c->etcd_connect_timeout_ms;
    o->request_timeout_ms = c->etcd_request_timeout_ms;
    o->retry_timeout_ms = c->etcd_retry_timeout_ms;
}

static int check_readable(const char *path, const char *what, struct keel_error *err)
{
    if (path && access(path, R_OK) != 0) {
        int e = errno;
        return keel_err_set(err, -e, "cannot read etcd %s '%s': %s", what, path, strerror(e));
    }
    return 0;
}

int keel_etcd_new(const struct keel_etcd_options *o, keel_etcd **out, struct keel_error *err)
{
    keel_etcd *c;
    const char *p;
    int rc;

    *out = NULL;
    if (o->endpoints == NULL || o->endpoints[0] == '\0')
        return keel_err_set(err, KEEL_EINVAL, "no etcd endpoints given");
    if ((o->cert_file && o->cert_file[0]) != (o->key_file && o->key_file[0]))
        return keel_err_set(err, KEEL_EINVAL,
                            "etcd client certificate and key must be given together");
    if ((rc = check_readable(o->ca_file && o->ca_file[0] ? o->ca_file : NULL, "CA", err)) != 0)
        return rc;
    pthread_once(&curl_once, curl_init_once);

    c = keel_calloc(1, sizeof(*c));
    pthread_mutex_init(&c->pool_lock, NULL);
    c->headers = curl_slist_append(NULL, "Content-Type: application/json");
    c->headers = curl_slist_append(c->headers, "Expect:");
    if (c->headers == NULL)
        abort();
    for (p = o->endpoints; *p;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        char *url = keel_strndup(p, n);

        while (n > 0 && url[n - 1] == '/')
            url[--n] = '\0';
        if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) {
            rc = keel_err_set(err, KEEL_EINVAL,
                              "etcd endpoint '%s' is not an http:// or https:// URL", url);
            free(url);
            keel_etcd_free(c);
            return rc;
        }
        KEEL_REALLOC_ARRAY(c->endpoints, c->nendpoints + 1);
        c->endpoints[c->nendpoints++] = url;
        p = comma ? comma + 1 : p + n;
    }
    c->ca_file = o->ca_file && o->ca_file[0] ? keel_strdup(o->ca_file) : NULL;
    c->cert_file = o->cert_file && o->cert_file[0] ? keel_strdup(o->cert_file) : NULL;
    c->key_file = o->key_file && o->key_file[0] ? keel_strdup(o->key_file) : NULL;
    c->connect_timeout_ms =
        o->connect_timeout_ms ? o->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    c->request_timeout_ms =
        o->request_timeout_ms ? o->request_timeout_ms : DEFAULT_REQUEST_TIMEOUT_MS;
    c->retry_timeout_ms = o->retry_timeout_ms ? o->retry_timeout_ms : DEFAULT_RETRY_TIMEOUT_MS;
    c->max_message = o->max_message ? o->max_message : DEFAULT_MAX_MESSAGE;
    if ((rc = check_readable(c->cert_file, "client certificate", err)) != 0 ||
        (rc = check_readable(c->key_file, "client key", err)) != 0) {
        keel_etcd_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void keel_etcd_free(keel_etcd *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->npool; i++)
        curl_easy_cleanup(c->pool[i]);
    pthread_mutex_destroy(&c->pool_lock);
    curl_slist_free_all(c->headers);
    for (size_t i = 0; i < c->nendpoints; i++)
        free(c->endpoints[i]);
    free(c->endpoints);
    free(c->ca_file);
    free(c->cert_file);
    free(c->key_file);
    free(c);
}

void keel_etcd_set_retry_timeout(keel_etcd *c, uint64_t ms)
{
    __atomic_store_n(&c->retry_timeout_ms, ms, __ATOMIC_RELAXED);
}

unsigned keel__etcd_endpoint_first(keel_etcd *c)
{
    return __atomic_load_n(&c->current, __ATOMIC_RELAXED) % (unsigned)c->nendpoints;
}

void keel__etcd_endpoint_failed(keel_etcd *c, unsigned index)
{
    unsigned expected = index;

    /* Move everyone on, unless another thread already did. */
    __atomic_compare_exchange_n(&c->current, &expected, (index + 1) % (unsigned)c->nendpoints, 0,
                                __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

static void endpoint_worked(keel_etcd *c, unsigned index)
{
    __atomic_store_n(&c->current, index, __ATOMIC_RELAXED);
}

static CURL *pool_get(keel_etcd *c)
{
    CURL *h = NULL;

    pthread_mutex_lock(&c->pool_lock);
    if (c->npool > 0)
        h = c->pool[--c->npool];
    pthread_mutex_unlock(&c->pool_lock);
    if (h == NULL && (h = curl_easy_init()) == NULL)
        abort();
    return h;
}

static void pool_put(keel_etcd *c, CURL *h)
{
    pthread_mutex_lock(&c->pool_lock);
    if (c->npool < KEEL__ETCD_POOL_MAX) {
        c->pool[c->npool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&c->pool_lock);
    if (h)
        curl_easy_cleanup(h);
}

void keel__etcd_easy_setup(keel_etcd *c, CURL *h, const char *url, const char *body, size_t len,
                           struct curl_slist *headers, char *errbuf)
{
    /* Reset keeps the handle's open connections and TLS sessions. */
    curl_easy_reset(h);
    errbuf[0] = '\0';
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(h, CURLOPT_PROXY, ""); /* never through a proxy from the environment */
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_timeout_ms);
    /* Keep-alive probes find a dead peer under a long-lived stream or campaign. */
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 5L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 2L);
    if (c->ca_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
    if (c->cert_file) {
        curl_easy_setopt(h, CURLOPT_SSLCERT, c->cert_file);
        curl_easy_setopt(h, CURLOPT_SSLKEY, c->key_file);
    }
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
}

/* ---- one call --------------------------------------------------------------- */

enum keel__etcd_outcome keel__etcd_classify(int curl_code, int request_sent, const char *curl_msg,
                                            long http_status, int grpc_code, const char *message)
{
    if (curl_code != CURLE_OK) {
        switch (curl_code) {
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CIPHER:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_ISSUER_ERROR:
        case CURLE_SSL_CRL_BADFILE:
        case CURLE_SSL_ENGINE_NOTFOUND:
        case CURLE_SSL_ENGINE_SETFAILED:
        case CURLE_SSL_ENGINE_INITFAILED:
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_URL_MALFORMAT:
        case CURLE_WRITE_ERROR: /* our callback refused: the reply is too large */
        case CURLE_OUT_OF_MEMORY:
            return KEEL__ETCD_FATAL;
        default:
            break;
        }
        /* A TLS alert is the peer refusing us (a client certificate it does not
         * trust), and an error of OpenSSL's SSL library itself ("error:0A...",
         * such as the "bad write retry" that follows an alert cutting a write
         * short) is a protocol failure, not a broken connection: retrying
         * cannot help. */
        if (curl_msg && (strstr(curl_msg, "alert") || strstr(curl_msg, "error:0A")))
            return KEEL__ETCD_FATAL;
        return request_sent ? KEEL__ETCD_UNAVAILABLE : KEEL__ETCD_UNSENT;
    }
    if (http_status == 200)
        return KEEL__ETCD_OK;
    if (http_status == 502 || http_status == 503 || http_status == 504 || grpc_code == 14)
        return KEEL__ETCD_UNAVAILABLE;
    /* The gateway reports some unavailability as code 2 (Unknown). */
    if (message &&
        (strstr(message, "request timed out") || strstr(message, "context deadline exceeded") ||
         (strstr(message, "no leader") && !strstr(message, "election: no leader")) ||
         strstr(message, "leader changed") || strstr(message, "transport is closing")))
        return KEEL__ETCD_UNAVAILABLE;
    return KEEL__ETCD_FATAL;
}

static int is_tls_error(CURLcode cc, const char *msg)
{
    return cc == CURLE_SSL_CONNECT_ERROR || cc == CURLE_SSL_CERTPROBLEM || cc == CURLE_SSL_CIPHER ||
           cc == CURLE_SSL_CACERT_BADFILE || cc == CURLE_PEER_FAILED_VERIFICATION ||
           cc == CURLE_SSL_ISSUER_ERROR || cc == CURLE_SSL_CRL_BADFILE ||
           (msg && (strstr(msg, "alert") || strstr(msg, "error:0A")));
}

struct reply_sink {
    struct keel_buf buf;
    size_t max;
    int too_large;
};

static size_t on_reply_data(char *data, size_t size, size_t n, void *user)
{
    struct reply_sink *r = user;
    size_t len = size * n;

    if (len > r->max - r->buf.len) {
        r->too_large = 1;
        return 0;
    }
    keel_buf_add(&r->buf, data, len);
    return len;
}

static int fd_readable(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};

    return fd >= 0 && poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}

/* Run the transfer on `h`; with a cancel fd through a multi handle so that it
 * can be abandoned at once (*canceled is then set). */
static CURLcode perform(CURL *h, int cancel_fd, int *canceled)
{
    CURLM *m;
    CURLcode res = CURLE_OK;
    int running = 1;

    *canceled = 0;
    if (cancel_fd < 0)
        return curl_easy_perform(h);
    if (fd_readable(cancel_fd)) {
        *canceled = 1;
        return CURLE_ABORTED_BY_CALLBACK;
    }
    if ((m = curl_multi_init()) == NULL)
        abort();
    curl_multi_add_handle(m, h);
    while (running) {
        struct curl_waitfd wfd = {cancel_fd, CURL_WAIT_POLLIN, 0};

        if (curl_multi_perform(m, &running) != CURLM_OK) {
            res = CURLE_RECV_ERROR;
            break;
        }
        if (!running)
            break;
        if (curl_multi_poll(m, &wfd, 1, 1000, NULL) != CURLM_OK) {
            res = CURLE_RECV_ERROR;
            break;
        }
        if (wfd.revents != 0) {
            *canceled = 1;
            res = CURLE_ABORTED_BY_CALLBACK;
            break;
        }
    }
    if (!*canceled && res == CURLE_OK) {
        CURLMsg *msg;
        int left;

        while ((msg = curl_multi_info_read(m, &left)) != NULL)
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == h)
                res = msg->data.result;
    }
    curl_multi_remove_handle(m, h);
    curl_multi_cleanup(m);
    return res;
}

int keel__etcd_call(keel_etcd *c, struct keel__etcd_call *call, json_t **reply,
                    struct keel_error *err)
{
    char *body;
    size_t body_len;
    uint64_t start = keel_clock_mono_ms();
    uint64_t retry_ms = __atomic_load_n(&c->retry_timeout_ms, __ATOMIC_RELAXED);
    uint64_t deadline = call->deadline_ms ? call->deadline_ms : start + retry_ms;
    int deadline_from_failure = call->blocking && call->deadline_ms == 0;
    unsigned idx = keel__etcd_endpoint_first(c);
    unsigned attempt = 0;
    struct reply_sink sink = {KEEL_BUF_INIT, c->max_message, 0};
    struct keel_buf url = KEEL_BUF_INIT;
    struct keel_error last;
    char errbuf[CURL_ERROR_SIZE];
    CURL *h;
    int rc;

    *reply = NULL;
    call->maybe_applied = 0;
    call->grpc_code = -1;
    keel_error_init(&last);
    if ((body = json_dumps(call->body, JSON_COMPACT)) == NULL)
        abort();
    body_len = strlen(body);
    h = pool_get(c);
    for (;;) {
        enum keel__etcd_outcome outcome;
        const char *msg = NULL;
        long status = 0, sent = 0;
        int canceled, code = -1;
        json_t *j = NULL;
        CURLcode cc;
        uint64_t now;

        attempt++;
        keel_buf_reset(&url);
        keel_buf_addf(&url, "%s%s", c->endpoints[idx], call->path);
        keel_buf_reset(&sink.buf);
        sink.too_large = 0;
        keel__etcd_easy_setup(c, h, (const char *)url.buf, body, body_len, c->headers, errbuf);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_reply_data);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
        if (!call->blocking) {
            uint64_t left = keel_clock_mono_ms() < deadline ? deadline - keel_clock_mono_ms() : 0;
            uint64_t t = c->request_timeout_ms < left ? c->request_timeout_ms : left;

            curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(t < 200 ? 200 : t));
        }
        cc = perform(h, call->cancel_fd, &canceled);
        if (canceled) {
            rc = keel_err_set(err, KEEL_ECANCELED, "%s: canceled", call->what);
            break;
        }
        curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &sent);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        if (cc == CURLE_OK && status == 200) {
            rc = keel__etcd_parse_object((const char *)sink.buf.buf, sink.buf.len, &j, call->what,
                                         err);
            /* A streaming endpoint (keep-alive) reports failure in a 200 reply
             * as {"error":{"grpc_code":..}}: handle it as the error it is. */
            if (rc == 0 && json_is_object(json_object_get(j, "error"))) {
                keel__etcd_error_fields(j, &code, &msg);
                outcome =
                    keel__etcd_classify(cc, sent > 0, NULL, code == 14 ? 503 : 500, code, msg);
                keel_err_set(&last, keel__etcd_map_code(code), "%s: etcd: %s (code %d)", call->what,
                             msg[0] ? msg : "no message", code);
                json_decref(j);
            } else {
                if (rc == 0) {
                    endpoint_worked(c, idx);
                    *reply = j;
                }
                break;
            }
        } else if (cc == CURLE_OK) {
            json_t *e = json_loadb((const char *)sink.buf.buf, sink.buf.len, 0, NULL);

            if (json_is_object(e))
                keel__etcd_error_fields(e, &code, &msg);
            outcome = keel__etcd_classify(cc, sent > 0, NULL, status, code, msg);
            keel_etcd_decode_error((const char *)sink.buf.buf, sink.buf.len, status, call->what,
                                   &last);
            json_decref(e);
        } else {
            outcome = keel__etcd_classify(cc, sent > 0, errbuf, 0, -1, NULL);
            if (sink.too_large)
                keel_err_set(&last, KEEL_EETCD, "%s: reply from '%s' larger than %zu bytes",
                             call->what, (const char *)url.buf, c->max_message);
            else if (outcome == KEEL__ETCD_FATAL && is_tls_error(cc, errbuf))
                keel_err_set(&last, KEEL_ETLS, "%s: TLS with etcd at '%s' failed: %s", call->what,
                             c->endpoints[idx], errbuf[0] ? errbuf : curl_easy_strerror(cc));
            else
                keel_err_set(&last, outcome == KEEL__ETCD_FATAL ? KEEL_EETCD : KEEL_EUNAVAILABLE,
                             "%s: cannot reach etcd at '%s': %s", call->what, c->endpoints[idx],
                             errbuf[0] ? errbuf : curl_easy_strerror(cc));
        }
        if (outcome == KEEL__ETCD_FATAL) {
            call->grpc_code = code;
            rc = give(err, &last);
            break;
        }
        if (outcome == KEEL__ETCD_UNAVAILABLE) {
            if (call->retry == KEEL__ETCD_RETRY_UNSENT) {
                rc = keel_err_set(err, KEEL_EINDOUBT,
                                  "%s: outcome unknown, not retried (read back to check): %s",
                                  call->what, last.msg);
                break;
            }
            call->maybe_applied = 1;
        }
        KEEL_LOG_DEBUG("%s: attempt %u failed: %s", call->what, attempt, last.msg);
        keel__etcd_endpoint_failed(c, idx);
        idx = (idx + 1) % (unsigned)c->nendpoints;
        now = keel_clock_mono_ms();
        if (deadline_from_failure) {
            deadline = now + retry_ms;
            deadline_from_failure = 0;
        }
        if (now >= deadline) {
            rc = keel_err_set(err, KEEL_EUNAVAILABLE,
                              "%s: etcd unavailable (%u attempts in %llu ms); last: %s", call->what,
                              attempt, (unsigned long long)(now - start), last.msg);
            break;
        }
        /* Try every endpoint once before waiting. */
        if (attempt % c->nendpoints == 0) {
            uint64_t wait = keel__etcd_backoff_ms(attempt / (unsigned)c->nendpoints);

            if (wait > deadline - now)
                wait = deadline - now;
            if (keel__etcd_sleep(wait, call->cancel_fd)) {
                rc = keel_err_set(err, KEEL_ECANCELED, "%s: canceled", call->what);
                break;
            }
        }
    }
    pool_put(c, h);
    keel_buf_release(&url);
    keel_buf_release(&sink.buf);
    free(body);
    return rc;
}

/* Run a call with RETRY_ALWAYS and no cancel fd. */
static int simple_call(keel_etcd *c, const char *what, const char *path, json_t *body,
                       json_t **reply, struct keel__etcd_call *out_call, struct keel_error *err)
{
    return keel__etcd_simple_call(c, what, path, body, -1, reply, out_call, err);
}

int keel__etcd_simple_call(keel_etcd *c, const char *what, const char *path, json_t *body,
                           int cancel_fd, json_t **reply, struct keel__etcd_call *out_call,
                           struct keel_error *err)
{
    struct keel__etcd_call call = {what, path, body, KEEL__ETCD_RETRY_ALWAYS, cancel_fd, 0,
                                   0,    0,    -1};
    int rc = keel__etcd_call(c, &call, reply, err);

    if (out_call)
        *out_call = call;
    return rc;
}

/* ---- key/value ---------------------------------------------------------------- */

void keel_etcd_prefix_end(const char *prefix, struct keel_buf *out)
{
    size_t n = strlen(prefix);

    keel_buf_reset(out);
    while (n > 0 && (unsigned char)prefix[n - 1] == 0xff)
        n--;
    if (n == 0)
        return;
    keel_buf_add(out, prefix, n);
    out->buf[n - 1]++;
}

void keel__etcd_set_range(json_t *o, const char *key, int prefix)
{
    struct keel_buf end = KEEL_BUF_INIT;

    if (prefix && key[0] == '\0') {
        keel__etcd_jset(o, "key", keel__etcd_b64_json("", 1)); /* "\0" .. "\0": every key */
        keel__etcd_jset(o, "range_end", keel__etcd_b64_json("", 1));
        return;
    }
    keel__etcd_jset(o, "key", keel__etcd_b64_json(key, strlen(key)));
    if (prefix) {
        keel_etcd_prefix_end(key, &end);
        if (end.len == 0)
            keel__etcd_jset(o, "range_end", keel__etcd_b64_json("", 1));
        else
            keel__etcd_jset(o, "range_end", keel__etcd_b64_json(end.buf, end.len));
        keel_buf_release(&end);
    }
}

int keel_etcd_put(keel_etcd *c, const char *key, const void *value, size_t len, int64_t lease,
                  int64_t *revision, struct keel_error *err)
{
    char what[WHAT_MAX];
    json_t *body = keel__etcd_jobject(), *reply;
    int64_t rev = 0;
    int rc;

    describe(what, "put", key);
    keel__etcd_jset(body, "key", keel__etcd_b64_json(key, strlen(key)));
    keel__etcd_jset(body, "value", keel__etcd_b64_json(value, len));
    if (lease)
        keel__etcd_jset(body, "lease", keel__etcd_int64_json(lease));
    rc = simple_call(c, what, "/v3/kv/put", body, &reply, NULL, err);
    json_decref(body);
    if (rc != 0)
        return rc;
    rc = keel__etcd_header_revision(reply, &rev, what, err);
    json_decref(reply);
    if (revision)
        *revision = rev;
    return rc;
}

int keel__etcd_range(keel_etcd *c, const char *what, const char *key, int prefix,
                     const struct keel_etcd_range_opts *opts, int cancel_fd,
                     struct keel_etcd_kvs *out, struct keel_error *err)
{
    json_t *body = keel__etcd_jobject(), *reply;
    int rc;

    memset(out, 0, sizeof(*out));
    keel__etcd_set_range(body, key, prefix);
    if (opts) {
        if (opts->revision)
            keel__etcd_jset(body, "revision", keel__etcd_int64_json(opts->revision));
        if (opts->limit)
            keel__etcd_jset(body, "limit", keel__etcd_int64_json(opts->limit));
        if (opts->keys_only)
            keel__etcd_jset(body, "keys_only", json_true());
        if (opts->serializable)
            keel__etcd_jset(body, "serializable", json_true());
    }
    rc = keel__etcd_simple_call(c, what, "/v3/kv/range", body, cancel_fd, &reply, NULL, err);
    json_decref(body);
    if (rc != 0)
        return rc;
    rc = keel__etcd_range_from_json(reply, out, what, err);
    json_decref(reply);
    return rc;
}

int keel_etcd_get(keel_etcd *c, const char *key, struct keel_etcd_kv *out, int64_t *revision,
                  struct keel_error *err)
{
    char what[WHAT_MAX];
    struct keel_etcd_kvs r;
    int rc;

    memset(out, 0, sizeof(*out));
    describe(what, "get", key);
    if ((rc = keel__etcd_range(c, what, key, 0, NULL, -1, &r, err)) != 0)
        return rc;
    if (revision)
        *revision = r.revision;
    if (r.n == 0) {
        keel_etcd_kvs_release(&r);
        return keel_err_set(err, KEEL_ENOTFOUND, "%s: no such key", what);
    }
    *out = r.kvs[0];
    memset(&r.kvs[0], 0, sizeof(r.kvs[0]));
    keel_etcd_kvs_release(&r);
    return 0;
}

int keel_etcd_range_prefix(keel_etcd *c, const char *prefix,
                           const struct keel_etcd_range_opts *opts, struct keel_etcd_kvs *out,
                           struct keel_error *err)
{
    char what[WHAT_MAX];

    describe(what, "range", prefix);
    return keel__etcd_range(c, what, prefix, 1, opts, -1, out, err);
}

int keel_etcd_delete(keel_etcd *c, const char *key, int prefix, int64_t *deleted, int64_t *revision,
                     struct keel_error *err)
{
    char what[WHAT_MAX];
    json_t *body = keel__etcd_jobject(), *reply;
    int64_t rev = 0, n = 0;
    int rc;

    describe(what, prefix ? "delete prefix" : "delete", key);
    keel__etcd_set_range(body, key, prefix);
    rc = simple_call(c, what, "/v3/kv/deleterange", body, &reply, NULL, err);
    json_decref(body);
    if (rc != 0)
        return rc;
    if ((rc = keel__etcd_header_revision(reply, &rev, what, err)) == 0)
        rc = keel__etcd_json_int64(reply, "deleted", &n, what, err);
    json_decref(reply);
    if (deleted)
        *deleted = n;
    if (revision)
        *revision = rev;
    return rc;
}

/* ---- transactions ------------------------------------------------------------- */

struct keel_etcd_txn {
    json_t *compare;
    json_t *branch[2];
    int writes;
};

keel_etcd_txn *keel_etcd_txn_new(void)
{
    keel_etcd_txn *t = keel_calloc(1, sizeof(*t));

    t->compare = json_array();
    t->branch[0] = json_array();
    t->branch[1] = json_array();
    if (!t->compare || !t->branch[0] || !t->branch[1])
        abort();
    return t;
}

void keel_etcd_txn_free(keel_etcd_txn *t)
{
    if (t == NULL)
        return;
    json_decref(t->compare);
    json_decref(t->branch[0]);
    json_decref(t->branch[1]);
    free(t);
}

static const char *const target_names[] = {"VERSION", "CREATE", "MOD", "VALUE", "LEASE"};
static const char *const target_fields[] = {"version", "create_revision", "mod_revision", "value",
                                            "lease"};
static const char *const cmp_names[] = {"EQUAL", "GREATER", "LESS", "NOT_EQUAL"};

void keel_etcd_txn_compare(keel_etcd_txn *t, const char *key, enum keel_etcd_target target,
                           enum keel_etcd_cmp cmp, int64_t number)
{
    json_t *o = keel__etcd_jobject();

    keel__etcd_jset(o, "key", keel__etcd_b64_json(key, strlen(key)));
    keel__etcd_jset(o, "result", json_string(cmp_names[cmp]));
    keel__etcd_jset(o, "target", json_string(target_names[target]));
    keel__etcd_jset(o, target_fields[target], keel__etcd_int64_json(number));
    jappend(t->compare, o);
}

void keel_etcd_txn_compare_value(keel_etcd_txn *t, const char *key, enum keel_etcd_cmp cmp,
                                 const void *value, size_t len)
{
    json_t *o = keel__etcd_jobject();

    keel__etcd_jset(o, "key", keel__etcd_b64_json(key, strlen(key)));
    keel__etcd_jset(o, "result", json_string(cmp_names[cmp]));
    keel__etcd_jset(o, "target", json_string("VALUE"));
    keel__etcd_jset(o, "value", keel__etcd_b64_json(value, len));
    jappend(t->compare, o);
}

static void add_op(keel_etcd_txn *t, enum keel_etcd_branch b, const char *kind, json_t *req)
{
    json_t *op = keel__etcd_jobject();

    keel__etcd_jset(op, kind, req);
    jappend(t->branch[b == KEEL_ETCD_ELSE], op);
}

void keel_etcd_txn_put(keel_etcd_txn *t, enum keel_etcd_branch b, const char *key,
                       const void *value, size_t len, int64_t lease)
{
    json_t *r = keel__etcd_jobject();

    keel__etcd_jset(r, "key", keel__etcd_b64_json(key, strlen(key)));
    keel__etcd_jset(r, "value", keel__etcd_b64_json(value, len));
    if (lease)
        keel__etcd_jset(r, "lease", keel__etcd_int64_json(lease));
    add_op(t, b, "request_put", r);
    t->writes = 1;
}

void keel_etcd_txn_get(keel_etcd_txn *t, enum keel_etcd_branch b, const char *key, int prefix)
{
    json_t *r = keel__etcd_jobject();

    keel__etcd_set_range(r, key, prefix);
    add_op(t, b, "request_range", r);
}

void keel_etcd_txn_delete(keel_etcd_txn *t, enum keel_etcd_branch b, const char *key, int prefix)
{
    json_t *r = keel__etcd_jobject();

    keel__etcd_set_range(r, key, prefix);
    add_op(t, b, "request_delete_range", r);
    t->writes = 1;
}

void keel_etcd_txn_nest(keel_etcd_txn *t, enum keel_etcd_branch b, const keel_etcd_txn *inner)
{
    json_t *r = keel__etcd_jobject();

    keel__etcd_jset(r, "compare", json_deep_copy(inner->compare));
    keel__etcd_jset(r, "success", json_deep_copy(inner->branch[0]));
    keel__etcd_jset(r, "failure", json_deep_copy(inner->branch[1]));
    add_op(t, b, "request_txn", r);
    t->writes |= inner->writes;
}

int keel_etcd_txn_writes(const keel_etcd_txn *t)
{
    return t->writes;
}

int keel_etcd_txn_commit(keel_etcd *c, const keel_etcd_txn *t, struct keel_etcd_txn_result *out,
                         struct keel_error *err)
{
    struct keel__etcd_call call = {
        "txn", "/v3/kv/txn",
        NULL,  t->writes ? KEEL__ETCD_RETRY_UNSENT : KEEL__ETCD_RETRY_ALWAYS,
        -1,    0,
        0,     0,
        -1};
    struct keel_etcd_txn_result r;
    json_t *body = keel__etcd_jobject(), *reply;
    int rc;

    if (out)
        memset(out, 0, sizeof(*out));
    keel__etcd_jset(body, "compare", json_incref(t->compare));
    keel__etcd_jset(body, "success", json_incref(t->branch[0]));
    keel__etcd_jset(body, "failure", json_incref(t->branch[1]));
    call.body = body;
    rc = keel__etcd_call(c, &call, &reply, err);
    json_decref(body);
    if (rc != 0)
        return rc;
    rc = keel__etcd_txn_from_json(reply, &r, "txn", err);
    json_decref(reply);
    if (rc != 0)
        return rc;
    if (out)
        *out = r;
    else
        keel_etcd_txn_result_release(&r);
    return 0;
}

/* ---- leases --------------------------------------------------------------------- */

static int64_t random_lease_id(void)
{
    uint64_t v = 0;

    while (v == 0) {
        if (RAND_bytes((unsigned char *)&v, sizeof(v)) != 1)
            v = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ keel_clock_mono_ms();
        v &= (uint64_t)INT64_MAX;
    }
    return (int64_t)v;
}

int keel_etcd_grant(keel_etcd *c, int64_t ttl_s, int64_t *id, int64_t *granted_ttl,
                    struct keel_error *err)
{
    char what[WHAT_MAX];
    struct keel__etcd_call call;
    struct keel_error e;
    json_t *body, *reply = NULL;
    const json_t *msg;
    int64_t want = 0, got_id = 0, ttl = 0;
    int rc = 0;

    snprintf(what, sizeof(what), "grant a lease of %lld s", (long long)ttl_s);
    keel_error_init(&e);
    /* A few tries: a random id taken by another lease is refused with "exists". */
    for (int tries = 0; tries < 3; tries++) {
        want = random_lease_id();
        body = keel__etcd_jobject();
        keel__etcd_jset(body, "TTL", keel__etcd_int64_json(ttl_s));
        keel__etcd_jset(body, "ID", keel__etcd_int64_json(want));
        rc = simple_call(c, what, "/v3/lease/grant", body, &reply, &call, &e);
        json_decref(body);
        if (rc == KEEL_EEXIST && call.maybe_applied) {
            /* Our earlier attempt made it: the lease is ours. */
            rc = keel_etcd_timetolive(c, want, &ttl, &e);
            if (rc == 0) {
                got_id = want;
                ttl = ttl < 1 ? ttl_s : ttl + 1;
            }
            break;
        }
        if (rc != KEEL_EEXIST)
            break;
    }
    if (rc != 0)
        return give(err, &e);
    if (reply) {
        msg = json_object_get(reply, "error");
        if (json_is_string(msg) && json_string_length(msg) > 0)
            rc = keel_err_set(&e, KEEL_EETCD, "%s: etcd: %s", what, json_string_value(msg));
        else if ((rc = keel__etcd_json_int64(reply, "ID", &got_id, what, &e)) == 0 &&
                 (rc = keel__etcd_json_int64(reply, "TTL", &ttl, what, &e)) == 0 &&
                 (got_id != want || ttl <= 0))
            rc = keel_err_set(&e, KEEL_EETCD, "%s: reply has lease %lld with TTL %lld, asked %lld",
                              what, (long long)got_id, (long long)ttl, (long long)want);
        json_decref(reply);
        if (rc != 0)
            return give(err, &e);
    }
    if (id)
        *id = got_id;
    if (granted_ttl)
        *granted_ttl = ttl;
    return 0;
}

int keel__etcd_keepalive_until(keel_etcd *c, int64_t id, uint64_t deadline_ms, int cancel_fd,
                               int64_t *ttl, struct keel_error *err)
{
    char what[WHAT_MAX];
    struct keel__etcd_call call = {
        what, "/v3/lease/keepalive", NULL, KEEL__ETCD_RETRY_ALWAYS, cancel_fd, 0, deadline_ms, 0,
        -1};
    json_t *body = keel__etcd_jobject(), *reply;
    int rc;

    *ttl = 0;
    snprintf(what, sizeof(what), "keep lease %lld alive", (long long)id);
    keel__etcd_jset(body, "ID", keel__etcd_int64_json(id));
    call.body = body;
    rc = keel__etcd_call(c, &call, &reply, err);
    json_decref(body);
    if (rc != 0)
        return rc;
    rc = keel__etcd_keepalive_from_json(reply, ttl, what, err);
    json_decref(reply);
    if (rc == 0 && *ttl == 0)
        rc = keel_err_set(err, KEEL_ENOTFOUND, "lease %lld has expired (keep-alive without TTL)",
                          (long long)id);
    return rc;
}

int keel_etcd_keepalive(keel_etcd *c, int64_t id, int64_t *ttl, struct keel_error *err)
{
    return keel__etcd_keepalive_until(c, id, 0, -1, ttl, err);
}

int keel_etcd_revoke(keel_etcd *c, int64_t id, struct keel_error *err)
{
    char what[WHAT_MAX];
    struct keel__etcd_call call;
    struct keel_error e;
    json_t *body = keel__etcd_jobject(), *reply;
    int rc;

    snprintf(what, sizeof(what), "revoke lease %lld", (long long)id);
    keel_error_init(&e);
    keel__etcd_jset(body, "ID", keel__etcd_int64_json(id));
    rc = simple_call(c, what, "/v3/lease/revoke", body, &reply, &call, &e);
    json_decref(body);
    if (rc == 0) {
        json_decref(reply);
        return 0;
    }
    if (rc == KEEL_ENOTFOUND && call.maybe_applied)
        return 0; /* an earlier attempt revoked it */
    return give(err, &e);
}

int keel_etcd_timetolive(keel_etcd *c, int64_t id, int64_t *remaining, struct keel_error *err)
{
    char what[WHAT_MAX];
    json_t *body = keel__etcd_jobject(), *reply;
    int64_t ttl = 0;
    int rc;

    snprintf(what, sizeof(what), "time to live of lease %lld", (long long)id);
    keel__etcd_jset(body, "ID", keel__etcd_int64_json(id));
    rc = simple_call(c, what, "/v3/lease/timetolive", body, &reply, NULL, err);
    json_decref(body);
    if (rc != 0)
        return rc;
    rc = keel__etcd_json_int64(reply, "TTL", &ttl, what, err);
    json_decref(reply);
    if (rc == 0 && ttl < 0)
        rc = keel_err_set(err, KEEL_ENOTFOUND, "lease %lld has expired", (long long)id);
    if (remaining)
        *remaining = ttl < 0 ? 0 : ttl;
    return rc;
}

/* ---- election ------------------------------------------------------------------ */

static json_t *leader_json(const struct keel_etcd_leader *l)
{
    json_t *o = keel__etcd_jobject();

    keel__etcd_jset(o, "name", keel__etcd_b64_json(l->name, l->name_len));
    keel__etcd_jset(o, "key", keel__etcd_b64_json(l->key, l->key_len));
    keel__etcd_jset(o, "rev", keel__etcd_int64_json(l->rev));
    keel__etcd_jset(o, "lease", keel__etcd_int64_json(l->lease));
    return o;
}

int keel_etcd_campaign(keel_etcd *c, const char *name, const void *value, size_t len, int64_t lease,
                       int cancel_fd, struct keel_etcd_leader *out, struct keel_error *err)
{
    char what[WHAT_MAX];
    struct keel__etcd_call call = {
        what, "/v3/election/campaign", NULL, KEEL__ETCD_RETRY_ALWAYS, cancel_fd, 1, 0, 0, -1};
    struct keel_error e;
    json_t *body = keel__etcd_jobject(), *reply;
    int rc;

    memset(out, 0, sizeof(*out));
    describe(what, "campaign in election", name);
    keel_error_init(&e);
    keel__etcd_jset(body, "name", keel__etcd_b64_json(name, strlen(name)));
    keel__etcd_jset(body, "lease", keel__etcd_int64_json(lease));
    keel__etcd_jset(body, "value", keel__etcd_b64_json(value, len));
    call.body = body;
    rc = keel__etcd_call(c, &call, &reply, &e);
    json_decref(body);
    if (rc != 0) {
        if (strstr(e.msg, "lease not found"))
            e.code = KEEL_ENOTFOUND;
        return give(err, &e);
    }
    rc = keel__etcd_leader_from_json(reply, out, what, err);
    json_decref(reply);
    if (rc == 0 && out->lease != lease) {
        keel_etcd_leader_release(out);
        return keel_err_set(err, KEEL_EETCD, "%s: won with lease %lld, not ours (%lld)", what,
                            (long long)out->lease, (long long)lease);
    }
    return rc;
}

int keel_etcd_election_leader(keel_etcd *c, const char *name, struct keel_etcd_kv *out,
                              struct keel_error *err)
{
    char what[WHAT_MAX];
    struct keel_error e;
    json_t *body = keel__etcd_jobject(), *reply;
    int rc;

    memset(out, 0, sizeof(*out));
    describe(what, "leader of election", name);
    keel_error_init(&e);
    keel__etcd_jset(body, "name", keel__etcd_b64_json(name, strlen(name)));
    rc = simple_call(c, what, "/v3/election/leader", body, &reply, NULL, &e);
    json_decref(body);
    if (rc != 0) {
        if (strstr(e.msg, "election: no leader"))
            return keel_err_set(err, KEEL_ENOTFOUND, "%s: no leader", what);
        return give(err, &e);
    }
    if (!json_is_object(json_object_get(reply, "kv")))
        rc = keel_err_set(err, KEEL_EETCD, "%s: reply has no 'kv' object", what);
    else
        rc = keel__etcd_kv_from_json(json_object_get(reply, "kv"), out, what, err);
    json_decref(reply);
    return rc;
}

int keel_etcd_proclaim(keel_etcd *c, const struct keel_etcd_leader *l, const void *value,
                       size_t len, struct keel_error *err)
{
    char what[WHAT_MAX];
    json_t *body = keel__etcd_jobject(), *reply;
    int rc;

    snprintf(what, sizeof(what), "proclaim as '%.200s'", l->key);
    keel__etcd_jset(body, "leader", leader_json(l));
    keel__etcd_jset(body, "value", keel__etcd_b64_json(value, len));
    rc = simple_call(c, what, "/v3/election/proclaim", body, &reply, NULL, err);
    json_decref(body);
    if (rc == 0)
        json_decref(reply);
    return rc;
}

int keel_etcd_resign(keel_etcd *c, const struct keel_etcd_leader *l, struct keel_error *err)
{
    char what[WHAT_MAX];
    json_t *body = keel__etcd_jobject(), *reply;
    int rc;

    snprintf(what, sizeof(what), "resign as '%.200s'", l->key);
    keel__etcd_jset(body, "leader", leader_json(l));
    rc = simple_call(c, what, "/v3/election/resign", body, &reply, NULL, err);
    json_decref(body);
    if (rc == 0)
        json_decref(reply);
    return rc;
}
