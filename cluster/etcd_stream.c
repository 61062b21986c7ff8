/*
 * etcd_stream.c - watch and observe streams, each on its own thread.
 *
 * A stream is a long-lived POST whose reply is a sequence of JSON objects,
 * one per line.  The thread runs the transfer through a curl multi handle
 * that also polls the stream's stop eventfd, so stopping is immediate.  Bytes
 * go from the write callback through a bounded line splitter to the decoder,
 * and each decoded message to the owner's callback.
 *
 * A watch remembers the next revision it owes the owner (`next_rev`): the
 * last delivered event's mod_revision + 1.  A new connection asks for history
 * from exactly there, so a disconnect loses and repeats nothing.  When etcd
 * has compacted that history away it cancels the watch with compact_revision;
 * the stream then lists the range afresh (a reset batch) and watches from the
 * listing's revision + 1.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "etcd_internal.h"
#include "alloc.h"
#include "log.h"

/* Largest error body kept from a non-200 reply. */
#define ERROR_BODY_MAX 4096

enum stream_kind { STREAM_WATCH, STREAM_OBSERVE };

struct keel_etcd_stream {
    keel_etcd *c;
    enum stream_kind kind;
    char what[320];
    int stop_fd; /* eventfd: readable once stopping */
    pthread_t thread;
    unsigned connects; /* atomic */
    void *user;

    /* watch */
    char *key;
    int prefix;
    int prev_kv;
    int64_t next_rev; /* 0: list first */
    keel_etcd_watch_fn *watch_fn;

    /* observe */
    char *name;
    keel_etcd_observe_fn *observe_fn;

    /* per connection, on the stream's thread */
    CURL *easy;
    struct keel_etcd_lines lines;
    long status;           /* HTTP status, known at the first byte */
    struct keel_buf ebody; /* body of a non-200 reply */
    int got_message;       /* a message arrived on this connection */
    int relist;            /* compaction: list again before reconnecting */
    int aborted;           /* we ended the transfer from the callback */
    struct keel_error conn_err;
};

static void deliver_reset(keel_etcd_stream *s, struct keel_etcd_kvs *r)
{
    struct keel_etcd_watch_batch b = {1, r->revision, r->n, NULL};

    KEEL_ALLOC_ARRAY(b.events, r->n ? r->n : 1);
    for (size_t i = 0; i < r->n; i++) {
        b.events[i].type = KEEL_ETCD_PUT;
        b.events[i].kv = r->kvs[i];
    }
    s->watch_fn(s->user, &b);
    free(b.events); /* the kvs still belong to r */
}

/* List the watched range; deliver it as a reset batch; watch from after it. */
static int relist(keel_etcd_stream *s, struct keel_error *err)
{
    struct keel_etcd_kvs r;
    int rc;

    rc = keel__etcd_range(s->c, s->what, s->key, s->prefix, NULL, s->stop_fd, &r, err);
    if (rc != 0)
        return rc;
    deliver_reset(s, &r);
    s->next_rev = r.revision + 1;
    keel_etcd_kvs_release(&r);
    return 0;
}

static int on_watch_line(keel_etcd_stream *s, const char *line, size_t n)
{
    struct keel_etcd_watch_msg m;
    size_t first = 0;
    int rc;

    rc = keel_etcd_decode_watch(line, n, &m, &s->conn_err);
    if (rc != 0)
        return rc;
    if (m.canceled) {
        if (m.compact_revision > 0) {
            KEEL_LOG_INFO("%s: history before revision %lld is compacted (wanted %lld); "
                          "listing again",
                          s->what, (long long)m.compact_revision, (long long)s->next_rev);
            s->relist = 1;
            rc = 1;
        } else {
            rc = keel_err_set(&s->conn_err, KEEL_EETCD, "%s: etcd canceled the watch", s->what);
        }
        keel_etcd_watch_msg_release(&m);
        return rc;
    }
    if (m.created && !s->got_message)
        __atomic_add_fetch(&s->connects, 1, __ATOMIC_RELAXED);
    s->got_message = 1;
    /* Never hand over a revision twice, whatever the server replays. */
    while (first < m.n && m.events[first].kv.mod_revision < s->next_rev)
        first++;
    if (first < m.n) {
        struct keel_etcd_watch_batch b = {0, m.events[m.n - 1].kv.mod_revision, m.n - first,
                                          m.events + first};

        s->watch_fn(s->user, &b);
        s->next_rev = b.revision + 1;
    } else if (m.n == 0 && !m.created && m.revision >= s->next_rev) {
        /* A progress notification: nothing is pending up to its revision. */
        s->next_rev = m.revision + 1;
    }
    keel_etcd_watch_msg_release(&m);
    return 0;
}

static int on_observe_line(keel_etcd_stream *s, const char *line, size_t n)
{
    struct keel_etcd_kv kv;
    int rc;

    rc = keel_etcd_decode_observe(line, n, &kv, &s->conn_err);
    if (rc != 0)
        return rc;
    if (!s->got_message)
        __atomic_add_fetch(&s->connects, 1, __ATOMIC_RELAXED);
    s->got_message = 1;
    s->observe_fn(s->user, &kv);
    keel_etcd_kv_release(&kv);
    return 0;
}

static int on_line(void *user, const char *line, size_t n)
{
    keel_etcd_stream *s = user;

    return s->kind == STREAM_WATCH ? on_watch_line(s, line, n) : on_observe_line(s, line, n);
}

static size_t on_data(char *data, size_t size, size_t nmemb, void *user)
{
    keel_etcd_stream *s = user;
    size_t len = size * nmemb;

    if (s->status == 0)
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);
    if (s->status != 200) {
        size_t room = ERROR_BODY_MAX - s->ebody.len;

        keel_buf_add(&s->ebody, data, len < room ? len : room);
        return len;
    }
    if (keel_etcd_lines_feed(&s->lines, data, len, on_line, s, &s->conn_err) != 0) {
        s->aborted = 1;
        return 0; /* ends the transfer */
    }
    return len;
}

static json_t *request_body(keel_etcd_stream *s)
{
    json_t *body = keel__etcd_jobject();

    if (s->kind == STREAM_WATCH) {
        json_t *req = keel__etcd_jobject();

        keel__etcd_set_range(req, s->key, s->prefix);
        keel__etcd_jset(req, "start_revision", keel__etcd_int64_json(s->next_rev));
        keel__etcd_jset(req, "progress_notify", json_true());
        if (s->prev_kv)
            keel__etcd_jset(req, "prev_kv", json_true());
        keel__etcd_jset(body, "create_request", req);
    } else {
        keel__etcd_jset(body, "name", keel__etcd_b64_json(s->name, strlen(s->name)));
    }
    return body;
}

/*
 * One connection to endpoint `idx`, until it ends or the stream is stopped.
 * Returns 1 when stopped, else 0 with s->conn_err set when it failed.
 */
static int run_connection(keel_etcd_stream *s, unsigned idx)
{
    keel_etcd *c = s->c;
    struct keel_buf url = KEEL_BUF_INIT;
    char errbuf[CURL_ERROR_SIZE];
    json_t *body = request_body(s);
    char *text = json_dumps(body, JSON_COMPACT);
    CURLM *m = curl_multi_init();
    CURLcode res = CURLE_OK;
    int running = 1, stopped = 0;

    if (text == NULL || m == NULL)
        abort();
    keel_buf_addf(&url, "%s%s", c->endpoints[idx],
                  s->kind == STREAM_WATCH ? "/v3/watch" : "/v3/election/observe");
    keel_etcd_lines_init(&s->lines, c->max_message);
    keel_buf_reset(&s->ebody);
    s->status = 0;
    s->got_message = 0;
    s->relist = 0;
    s->aborted = 0;
    keel_error_init(&s->conn_err);
    keel__etcd_easy_setup(c, s->easy, (const char *)url.buf, text, strlen(text), c->headers,
                          errbuf);
    curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, s);
    curl_multi_add_handle(m, s->easy);
    while (running) {
        struct curl_waitfd wfd = {s->stop_fd, CURL_WAIT_POLLIN, 0};

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
            stopped = 1;
            break;
        }
    }
    if (!stopped) {
        CURLMsg *msg;
        int left;

        while ((msg = curl_multi_info_read(m, &left)) != NULL)
            if (msg->msg == CURLMSG_DONE)
                res = msg->data.result;
    }
    curl_multi_remove_handle(m, s->easy);
    curl_multi_cleanup(m);
    if (!stopped && !s->aborted && s->conn_err.code == 0) {
        if (res != CURLE_OK)
            keel_err_set(&s->conn_err, KEEL_EUNAVAILABLE, "%s: connection to '%s' failed: %s",
                         s->what, c->endpoints[idx], errbuf[0] ? errbuf : curl_easy_strerror(res));
        else if (s->status != 200)
            keel_etcd_decode_error((const char *)s->ebody.buf, s->ebody.len, s->status, s->what,
                                   &s->conn_err);
        else
            keel_err_set(&s->conn_err, KEEL_EUNAVAILABLE, "%s: '%s' ended the stream", s->what,
                         c->endpoints[idx]);
    }
    keel_etcd_lines_release(&s->lines);
    keel_buf_release(&url);
    json_decref(body);
    free(text);
    return stopped;
}

static void *stream_main(void *arg)
{
    keel_etcd_stream *s = arg;
    unsigned idx = keel__etcd_endpoint_first(s->c);
    unsigned failures = 0;

    for (;;) {
        uint64_t wait;

        if (s->kind == STREAM_WATCH && s->next_rev == 0) {
            struct keel_error e;
            int rc;

            keel_error_init(&e);
            rc = relist(s, &e);
            if (rc == KEEL_ECANCELED)
                break;
            if (rc != 0) {
                if (failures++ == 0)
                    KEEL_LOG_WARN("%s: cannot list: %s", s->what, e.msg);
                if (keel__etcd_sleep(keel__etcd_backoff_ms(failures), s->stop_fd))
                    break;
                continue;
            }
        }
        if (run_connection(s, idx))
            break;
        if (s->relist) {
            s->next_rev = 0;
            continue;
        }
        if (s->got_message) {
            if (failures)
                KEEL_LOG_INFO("%s: stream was back for a while", s->what);
            failures = 0;
        }
        if (failures++ == 0)
            KEEL_LOG_WARN("%s: stream interrupted, resuming%s: %s", s->what,
                          s->kind == STREAM_WATCH ? " after the last revision seen" : "",
                          s->conn_err.msg);
        else
            KEEL_LOG_DEBUG("%s: reconnect %u failed: %s", s->what, failures, s->conn_err.msg);
        keel__etcd_endpoint_failed(s->c, idx);
        idx = (idx + 1) % (unsigned)s->c->nendpoints;
        wait = s->got_message ? 0 : keel__etcd_backoff_ms(failures);
        if (keel__etcd_sleep(wait, s->stop_fd))
            break;
    }
    return NULL;
}

static int start(keel_etcd_stream *s, keel_etcd_stream **out, struct keel_error *err)
{
    int rc;

    s->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->stop_fd < 0) {
        rc = -errno;
        goto fail;
    }
    if ((s->easy = curl_easy_init()) == NULL)
        abort();
    keel_buf_init(&s->ebody, 0);
    if ((rc = pthread_create(&s->thread, NULL, stream_main, s)) != 0) {
        rc = -rc;
        curl_easy_cleanup(s->easy);
        close(s->stop_fd);
        goto fail;
    }
    *out = s;
    return 0;
fail:
    rc = keel_err_set(err, rc, "%s: cannot start the stream: %s", s->what, keel_strerror(rc));
    free(s->key);
    free(s->name);
    free(s);
    return rc;
}

int keel_etcd_watch_start(keel_etcd *c, const struct keel_etcd_watch_opts *o,
                          keel_etcd_watch_fn *fn, void *user, keel_etcd_stream **out,
                          struct keel_error *err)
{
    keel_etcd_stream *s;

    *out = NULL;
    if (o->key == NULL || (o->key[0] == '\0' && !o->prefix) || fn == NULL || o->start_revision < 0)
        return keel_err_set(err, KEEL_EINVAL, "watch needs a key, a callback and a revision >= 0");
    s = keel_calloc(1, sizeof(*s));
    s->c = c;
    s->kind = STREAM_WATCH;
    snprintf(s->what, sizeof(s->what), "watch %s'%.200s'", o->prefix ? "prefix " : "", o->key);
    s->key = keel_strdup(o->key);
    s->prefix = o->prefix;
    s->prev_kv = o->prev_kv;
    s->next_rev = o->start_revision;
    s->watch_fn = fn;
    s->user = user;
    return start(s, out, err);
}

int keel_etcd_observe_start(keel_etcd *c, const char *name, keel_etcd_observe_fn *fn, void *user,
                            keel_etcd_stream **out, struct keel_error *err)
{
    keel_etcd_stream *s;

    *out = NULL;
    if (name == NULL || name[0] == '\0' || fn == NULL)
        return keel_err_set(err, KEEL_EINVAL, "observe needs an election name and a callback");
    s = keel_calloc(1, sizeof(*s));
    s->c = c;
    s->kind = STREAM_OBSERVE;
    snprintf(s->what, sizeof(s->what), "observe election '%.200s'", name);
    s->name = keel_strdup(name);
    s->observe_fn = fn;
    s->user = user;
    return start(s, out, err);
}

void keel_etcd_stream_stop(keel_etcd_stream *s)
{
    uint64_t one = 1;

    if (s == NULL)
        return;
    if (write(s->stop_fd, &one, sizeof(one)) != (ssize_t)sizeof(one))
        abort();
    pthread_join(s->thread, NULL);
    close(s->stop_fd);
    curl_easy_cleanup(s->easy);
    keel_buf_release(&s->ebody);
    free(s->key);
    free(s->name);
    free(s);
}

unsigned keel_etcd_stream_connects(const keel_etcd_stream *s)
{
    return __atomic_load_n(&s->connects, __ATOMIC_RELAXED);
}
