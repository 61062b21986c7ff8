/*
 * bench_transport.c - keel-bench-transport: request/response throughput of
 * the mutual-TLS transport, against bounds measured in the same run.
 *
 * Each configuration (payload size x connections) runs for a fixed time with
 * a window of requests in flight per connection: a request carries the
 * payload (ADMIN, from a coordinator certificate), the reply is a small
 * ADMIN.  The same exchange runs over plain TCP loopback (blocking sockets,
 * length-prefixed, the same window): the bound without TLS and without
 * Keel's framing.  The AES-128-GCM bound is EVP encryption of 16 KiB
 * records on one core (TLS encrypts on one side and decrypts on the other).
 *
 * Rows: tls_<size>_c<conns> in MB/s of payload (baseline: plain TCP),
 * tls_<size>_c<conns>_vs_aesgcm (baseline: AES-GCM), and rt_4KiB_w8 in
 * round trips/s with 8 in flight on one connection (baseline: plain TCP).
 */
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "bench.h"
#include "alloc.h"
#include "ca.h"
#include "log.h"
#include "net.h"

static char tmpdir[64];

static void die(const char *what, const char *why)
{
    fprintf(stderr, "keel-bench-transport: %s: %s\n", what, why);
    exit(1);
}

/* ---- the TLS side ------------------------------------------------------ */

static int ack_handler(void *ctx, struct keel_conn *conn, const struct keel_cert_identity *peer,
                       const struct keel_msg *msg, struct keel_error *err)
{
    struct keel_msg reply;

    memset(&reply, 0, sizeof(reply));
    reply.hdr.type = KEEL_MSG_ADMIN;
    reply.u.admin.op = msg->u.admin.op;
    return keel_conn_reply(conn, &msg->hdr, &reply, err);
}

struct window {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned inflight;
    uint64_t done;
    int failed;
};

static void on_reply(void *arg, int rc, struct keel_reply *r, const struct keel_error *err)
{
    struct window *w = arg;

    pthread_mutex_lock(&w->lock);
    if (rc != 0 || r->msg.hdr.type != KEEL_MSG_ADMIN)
        w->failed = 1;
    w->inflight--;
    w->done++;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    keel_reply_free(r);
}

struct driver {
    struct keel_client *client;
    const unsigned char *payload;
    size_t size;
    unsigned window;
    double seconds;
    struct window w;
    pthread_t tid;
};

static void *drive_tls(void *arg)
{
    struct driver *d = arg;
    double end = keel_bench_now() + d->seconds;
    struct keel_error err;

    while (keel_bench_now() < end) {
        struct keel_msg m;

        pthread_mutex_lock(&d->w.lock);
        while (d->w.inflight >= d->window)
            pthread_cond_wait(&d->w.cond, &d->w.lock);
        d->w.inflight++;
        pthread_mutex_unlock(&d->w.lock);
        memset(&m, 0, sizeof(m));
        m.hdr.type = KEEL_MSG_ADMIN;
        m.u.admin.payload = keel_view_make(d->payload, d->size);
        if (keel_client_send(d->client, &m, 60000, on_reply, &d->w, &err) != 0)
            die("send", err.msg);
    }
    pthread_mutex_lock(&d->w.lock);
    while (d->w.inflight > 0)
        pthread_cond_wait(&d->w.cond, &d->w.lock);
    pthread_mutex_unlock(&d->w.lock);
    return NULL;
}

static struct keel_tls *tls_of(const char *role, const char *id)
{
    char ca[128], crt[128], key[128];
    struct keel_tls_files f;
    struct keel_tls *tls;
    struct keel_error err;

    snprintf(ca, sizeof(ca), "%s/ca.crt", tmpdir);
    snprintf(crt, sizeof(crt), "%s/%s-%s.crt", tmpdir, role, id);
    snprintf(key, sizeof(key), "%s/%s-%s.key", tmpdir, role, id);
    f = (struct keel_tls_files){ca, crt, key, NULL};
    if (keel_tls_new(&f, &tls, &err) != 0)
        die("tls", err.msg);
    return tls;
}

/* Payload bytes per second over `conns` connections. */
static double run_tls(unsigned port, struct keel_tls *tls, const unsigned char *payload,
                      size_t size, unsigned conns, unsigned window, double seconds,
                      double *msgs_per_s)
{
    struct driver d[8];
    char addr[32];
    uint64_t total = 0;
    double t0, t;

    snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
    for (unsigned i = 0; i < conns; i++) {
        struct keel_client_options o;
        struct keel_error err;

        keel_client_options_default(&o);
        o.address = addr;
        if (keel_client_new(&o, tls, &d[i].client, &err) != 0)
            die("client", err.msg);
        while (!keel_client_connected(d[i].client))
            usleep(1000);
        d[i].payload = payload;
        d[i].size = size;
        d[i].window = window;
        d[i].seconds = seconds;
        memset(&d[i].w, 0, sizeof(d[i].w));
        pthread_mutex_init(&d[i].w.lock, NULL);
        pthread_cond_init(&d[i].w.cond, NULL);
    }
    t0 = keel_bench_now();
    for (unsigned i = 0; i < conns; i++)
        pthread_create(&d[i].tid, NULL, drive_tls, &d[i]);
    for (unsigned i = 0; i < conns; i++) {
        pthread_join(d[i].tid, NULL);
        if (d[i].w.failed)
            die("tls run", "a request failed");
        total += d[i].w.done;
    }
    t = keel_bench_now() - t0;
    for (unsigned i = 0; i < conns; i++)
        keel_client_free(d[i].client);
    *msgs_per_s = (double)total / t;
    return (double)total * (double)size / t;
}

/* ---- the plain TCP side --------------------------------------------------- */

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n)
{
    char *c = p;

    while (n > 0) {
        ssize_t r = read(fd, c, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

struct tcp_peer {
    int fd;
    size_t size;
    pthread_t tid;
};

/* Server: read length + payload, answer an 8-byte ack, until EOF. */
static void *tcp_serve(void *arg)
{
    struct tcp_peer *p = arg;
    unsigned char *buf = keel_malloc(p->size);
    uint64_t len;

    while (read_all(p->fd, &len, 8) == 0 && len == p->size && read_all(p->fd, buf, len) == 0)
        if (write_all(p->fd, &len, 8) != 0)
            break;
    free(buf);
    close(p->fd);
    return NULL;
}

struct tcp_client {
    int fd;
    const unsigned char *payload;
    size_t size;
    unsigned window;
    double seconds;
    uint64_t done;
    pthread_t tid;
};

/* Client: keep `window` requests outstanding; count acks. */
static void *tcp_drive(void *arg)
{
    struct tcp_client *c = arg;
    double end = keel_bench_now() + c->seconds;
    uint64_t len = c->size, ack;
    unsigned out = 0;

    for (;;) {
        while (out < c->window && keel_bench_now() < end) {
            if (write_all(c->fd, &len, 8) != 0 || write_all(c->fd, c->payload, c->size) != 0)
                die("tcp", strerror(errno));
            out++;
        }
        if (out == 0)
            break;
        if (read_all(c->fd, &ack, 8) != 0)
            die("tcp", "ack lost");
        out--;
        c->done++;
    }
    shutdown(c->fd, SHUT_WR);
    return NULL;
}

static double run_tcp(const unsigned char *payload, size_t size, unsigned conns, unsigned window,
                      double seconds, double *msgs_per_s)
{
    struct sockaddr_in sa = {0};
    socklen_t salen = sizeof(sa);
    struct tcp_peer srv[8];
    struct tcp_client cl[8];
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    uint64_t total = 0;
    double t0, t;

    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 16) != 0)
        die("tcp listen", strerror(errno));
    getsockname(lfd, (struct sockaddr *)&sa, &salen);
    for (unsigned i = 0; i < conns; i++) {
        cl[i] = (struct tcp_client){
            socket(AF_INET, SOCK_STREAM, 0), payload, size, window, seconds, 0, 0};
        if (connect(cl[i].fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
            die("tcp connect", strerror(errno));
        srv[i].fd = accept(lfd, NULL, NULL);
        /* Like the transport: no Nagle delay on small writes. */
        setsockopt(cl[i].fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
        setsockopt(srv[i].fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
        srv[i].size = size;
        pthread_create(&srv[i].tid, NULL, tcp_serve, &srv[i]);
    }
    t0 = keel_bench_now();
    for (unsigned i = 0; i < conns; i++)
        pthread_create(&cl[i].tid, NULL, tcp_drive, &cl[i]);
    for (unsigned i = 0; i < conns; i++) {
        pthread_join(cl[i].tid, NULL);
        total += cl[i].done;
    }
    t = keel_bench_now() - t0;
    for (unsigned i = 0; i < conns; i++) {
        pthread_join(srv[i].tid, NULL);
        close(cl[i].fd);
    }
    close(lfd);
    *msgs_per_s = (double)total / t;
    return (double)total * (double)size / t;
}

/* ---- the AES-GCM bound ----------------------------------------------------- */

static double aes_gcm_bytes_per_s(double seconds)
{
    static unsigned char in[16384], out[16384 + 16];
    unsigned char key[16] = {1}, iv[12] = {2}, tag[16];
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    double t0 = keel_bench_now(), t;
    uint64_t n = 0;
    int len;

    do {
        for (int i = 0; i < 64; i++) {
            iv[0] = (unsigned char)n;
            EVP_EncryptInit_ex(ctx, EVP_aes_128_gcm(), NULL, key, iv);
            EVP_EncryptUpdate(ctx, out, &len, in, sizeof(in));
            EVP_EncryptFinal_ex(ctx, out + len, &len);
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag);
            n++;
        }
        t = keel_bench_now() - t0;
    } while (t < seconds);
    keel_bench_use(out);
    EVP_CIPHER_CTX_free(ctx);
    return (double)n * sizeof(in) / t;
}

/* ---- set-up --------------------------------------------------------------- */

static void make_certs(void)
{
    struct keel_certs_ca_opts ca = {0};
    struct keel_certs_issue_opts o = {0};
    struct keel_error err;

    snprintf(tmpdir, sizeof(tmpdir), "/tmp/keel-bench-transport-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        die("mkdtemp", strerror(errno));
    ca.dir = tmpdir;
    if (keel_certs_ca_create(&ca, &err) != 0)
        die("ca", err.msg);
    o.ca_dir = tmpdir;
    o.out_dir = tmpdir;
    o.role = KEEL_ROLE_SERVER;
    o.id = "bench-s";
    if (keel_certs_issue(&o, NULL, &err) != 0)
        die("issue", err.msg);
    o.role = KEEL_ROLE_COORDINATOR;
    o.id = "bench-c";
    if (keel_certs_issue(&o, NULL, &err) != 0)
        die("issue", err.msg);
}

static void remove_certs(void)
{
    const char *names[] = {"ca.crt",
                           "ca.key",
                           "server-bench-s.crt",
                           "server-bench-s.key",
                           "coordinator-bench-c.crt",
                           "coordinator-bench-c.key"};
    char p[128];

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    rmdir(tmpdir);
}

int main(int argc, char **argv)
{
    static const struct {
        const char *label;
        size_t size;
        unsigned window;
    } sizes[] = {{"4KiB", 4u << 10, 8},
                 {"64KiB", 64u << 10, 8},
                 {"1MiB", 1u << 20, 4},
                 {"16MiB", 16u << 20, 2}};
    static const unsigned conn_counts[] = {1, 4};
    struct keel_listener_options lo = {0};
    struct keel_listener *l;
    struct keel_tls *stls, *ctls;
    struct keel_bench b;
    struct keel_error err;
    unsigned char *payload;
    double seconds, aes, tls, tcp, tls_m, tcp_m;
    char name[64];
    int rc;

    rc = keel_bench_init(&b, "keel-bench-transport",
                         "Mutual-TLS transport throughput against plain TCP and AES-GCM.", argc,
                         argv);
    if (rc >= 0)
        return rc;
    seconds = b.quick ? 0.1 : 1.0;
    keel_log_init("bench", KEEL_LOG_LEVEL_WARN, NULL);
    make_certs();
    stls = tls_of("server", "bench-s");
    ctls = tls_of("coordinator", "bench-c");
    lo.listen = "127.0.0.1:0";
    lo.io_threads = 2;
    lo.max_connections = 64;
    lo.max_frame_size = 64u << 20;
    lo.handshake_timeout_ms = 10000;
    lo.idle_timeout_ms = 60000;
    lo.max_output = 128u << 20;
    lo.handler = ack_handler;
    if (keel_listener_start(&lo, stls, &l, &err) != 0)
        die("listen", err.msg);
    payload = keel_malloc(16u << 20);
    for (size_t i = 0; i < (16u << 20); i++)
        payload[i] = (unsigned char)(i * 131);

    aes = aes_gcm_bytes_per_s(b.quick ? 0.05 : 0.5) / 1e6;
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        for (size_t c = 0; c < sizeof(conn_counts) / sizeof(conn_counts[0]); c++) {
            unsigned conns = conn_counts[c];

            tcp = run_tcp(payload, sizes[s].size, conns, sizes[s].window, seconds, &tcp_m) / 1e6;
            tls = run_tls(keel_listener_port(l), ctls, payload, sizes[s].size, conns,
                          sizes[s].window, seconds, &tls_m) /
                  1e6;
            snprintf(name, sizeof(name), "tls_%s_c%u", sizes[s].label, conns);
            keel_bench_record(&b, name, tls, "MB/s", tcp);
            snprintf(name, sizeof(name), "tls_%s_c%u_vs_aesgcm", sizes[s].label, conns);
            keel_bench_record(&b, name, tls, "MB/s", aes);
            snprintf(name, sizeof(name), "tls_%s_c%u_msgs", sizes[s].label, conns);
            keel_bench_record(&b, name, tls_m, "msg/s", tcp_m);
        }
    }
    tcp = run_tcp(payload, 4096, 1, 8, seconds, &tcp_m);
    tls = run_tls(keel_listener_port(l), ctls, payload, 4096, 1, 8, seconds, &tls_m);
    keel_bench_record(&b, "rt_4KiB_w8_c1", tls_m, "rt/s", tcp_m);

    keel_listener_stop(l);
    keel_tls_free(stls);
    keel_tls_free(ctls);
    free(payload);
    remove_certs();
    return keel_bench_finish(&b);
}
