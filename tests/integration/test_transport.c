/*
 * test_transport.c - the TLS transport with real handshakes on loopback,
 * certificates made by the test, and real processes killed and restarted.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "ca.h"
#include "log.h"
#include "net.h"
#include "peer_handler.h"

static char dir[64];
static char logpath[128];
static FILE *logfile;

/* ---- fixture: a CA, node certificates, a log file ------------------------- */

static void path_of(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", dir, name);
}

static void issue(const char *ca, enum keel_role role, const char *id, time_t nb, time_t na,
                  int no_identity)
{
    struct keel_certs_issue_opts o = {0};
    struct keel_error err;
    char cadir[128], out[128];

    path_of(cadir, sizeof(cadir), ca);
    path_of(out, sizeof(out), "nodes");
    o.ca_dir = cadir;
    o.out_dir = out;
    o.role = role;
    o.id = id;
    o.not_before = nb;
    o.not_after = na;
    o.no_identity = no_identity;
    o.force = 1;
    cr_assert_eq(keel_certs_issue(&o, NULL, &err), 0, "issue %s: %s", id, err.msg);
}

static void make_ca(const char *name)
{
    struct keel_certs_ca_opts o = {0};
    struct keel_error err;
    char d[128];

    path_of(d, sizeof(d), name);
    mkdir(d, 0700);
    o.dir = d;
    cr_assert_eq(keel_certs_ca_create(&o, &err), 0, "%s", err.msg);
}

static void setup(void)
{
    char nodes[128];
    time_t now = time(NULL);

    snprintf(dir, sizeof(dir), "/tmp/keel-transport-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    path_of(nodes, sizeof(nodes), "nodes");
    mkdir(nodes, 0700);
    make_ca("ca");
    make_ca("other");
    issue("ca", KEEL_ROLE_SERVER, "s1", 0, 0, 0);
    issue("ca", KEEL_ROLE_WORKER, "w1", 0, 0, 0);
    issue("ca", KEEL_ROLE_COORDINATOR, "c1", 0, 0, 0);
    issue("other", KEEL_ROLE_WORKER, "w9", 0, 0, 0);
    issue("ca", KEEL_ROLE_WORKER, "wold", now - 3 * 86400, now - 86400, 0);
    issue("ca", KEEL_ROLE_WORKER, "wanon", 0, 0, 1);
    path_of(logpath, sizeof(logpath), "log");
    logfile = fopen(logpath, "a"); /* appends: the peers spawned write to it too */
    cr_assert_not_null(logfile);
    keel_log_init("test", KEEL_LOG_LEVEL_DEBUG, logfile);
}

static void teardown(void)
{
    char cmd[128];

    keel_log_init("test", KEEL_LOG_LEVEL_INFO, NULL);
    if (logfile)
        fclose(logfile);
    snprintf(cmd, sizeof(cmd), getenv("KEEP_TMP") ? "true '%s'" : "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

TestSuite(transport, .init = setup, .fini = teardown, .timeout = 60);

static struct keel_tls *tls_for(const char *role, const char *id)
{
    char ca[128], crt[128], key[128];
    struct keel_tls_files f;
    struct keel_tls *tls;
    struct keel_error err;

    path_of(ca, sizeof(ca), "ca/ca.crt");
    snprintf(crt, sizeof(crt), "%s/nodes/%s-%s.crt", dir, role, id);
    snprintf(key, sizeof(key), "%s/nodes/%s-%s.key", dir, role, id);
    f = (struct keel_tls_files){ca, crt, key, NULL};
    cr_assert_eq(keel_tls_new(&f, &tls, &err), 0, "%s", err.msg);
    return tls;
}

/* Wait up to 10 s for `needle` to appear in the log. */
static int log_has(const char *needle)
{
    char buf[65536];

    for (int i = 0; i < 200; i++) {
        FILE *f = fopen(logpath, "r");
        size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;

        if (f)
            fclose(f);
        buf[n] = '\0';
        if (strstr(buf, needle))
            return 1;
        usleep(50000);
    }
    return 0;
}

static int wait_for(int (*cond)(void *), void *arg)
{
    for (int i = 0; i < 200; i++) {
        if (cond(arg))
            return 1;
        usleep(50000);
    }
    return 0;
}

/* ---- an in-process listener ---------------------------------------------- */

static struct peer_handler handler;
static struct keel_tls *server_tls;

static struct keel_listener *listen_with(unsigned max_conns, size_t max_frame, uint64_t idle_ms,
                                         uint64_t hs_ms, const char *crl)
{
    struct keel_listener_options o = {0};
    struct keel_listener *l;
    struct keel_error err;

    if (crl) {
        char ca[128], crt[128], key[128];
        struct keel_tls_files f;

        path_of(ca, sizeof(ca), "ca/ca.crt");
        path_of(crt, sizeof(crt), "nodes/server-s1.crt");
        path_of(key, sizeof(key), "nodes/server-s1.key");
        f = (struct keel_tls_files){ca, crt, key, crl};
        cr_assert_eq(keel_tls_new(&f, &server_tls, &err), 0, "%s", err.msg);
    } else {
        server_tls = tls_for("server", "s1");
    }
    o.listen = "127.0.0.1:0";
    o.io_threads = 2;
    o.max_connections = max_conns;
    o.max_frame_size = max_frame;
    o.handshake_timeout_ms = hs_ms;
    o.idle_timeout_ms = idle_ms;
    o.max_output = 1 << 20;
    o.handler = peer_handler_fn;
    o.handler_ctx = &handler;
    cr_assert_eq(keel_listener_start(&o, server_tls, &l, &err), 0, "%s", err.msg);
    return l;
}

static struct keel_listener *listen_default(void)
{
    return listen_with(64, 1 << 20, 10000, 10000, NULL);
}

static struct keel_client *client_for(unsigned port, struct keel_tls *tls)
{
    struct keel_client_options o;
    struct keel_client *c;
    struct keel_error err;
    char addr[32];

    keel_client_options_default(&o);
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
    o.address = addr;
    o.expect_role = KEEL_ROLE_SERVER;
    o.backoff_min_ms = 20;
    o.backoff_max_ms = 200;
    cr_assert_eq(keel_client_new(&o, tls, &c, &err), 0, "%s", err.msg);
    return c;
}

static struct keel_msg push_msg(uint64_t seq)
{
    static const uint64_t keys[] = {1, 2};
    static const float rows[] = {1, 2};
    struct keel_msg m;

    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_PUSH;
    m.u.push.worker_id = keel_str_of("w1");
    m.u.push.shard = 3;
    m.u.push.seq = seq;
    m.u.push.data = (struct keel_rows){1, 1, 2, keys, rows, 0, NULL};
    return m;
}

/* ---- a raw TLS client, to send what Keel's own client never would -------- */

static int tcp_connect(unsigned port)
{
    struct sockaddr_in sa = {0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "%s", strerror(errno));
    return fd;
}

/*
 * Connect with `who` ("worker-w1", or NULL for no certificate) at TLS version
 * `maxver`, then write one byte and try to read: in TLS 1.3 a server's refusal
 * of the client certificate arrives after the client's handshake "finished".
 * Returns the SSL when the session is usable (fd in *fdp), else NULL.
 */
static SSL *raw_tls(unsigned port, const char *who, int maxver, int *fdp, int probe)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    char ca[128], crt[128], key[128];
    SSL *ssl;
    int fd;

    path_of(ca, sizeof(ca), "ca/ca.crt");
    SSL_CTX_load_verify_locations(ctx, ca, NULL);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_max_proto_version(ctx, maxver);
    if (who) {
        snprintf(crt, sizeof(crt), "%s/nodes/%s.crt", dir, who);
        snprintf(key, sizeof(key), "%s/nodes/%s.key", dir, who);
        cr_assert_eq(SSL_CTX_use_certificate_file(ctx, crt, SSL_FILETYPE_PEM), 1);
        cr_assert_eq(SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM), 1);
    }
    fd = tcp_connect(port);
    ssl = SSL_new(ctx);
    SSL_CTX_free(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1)
        goto refused;
    if (probe) {
        struct keel_msg m = push_msg(1);
        struct keel_buf b = KEEL_BUF_INIT;
        char c;

        m.hdr.request_id = 1;
        keel_proto_encode(&b, &m, NULL);
        SSL_write(ssl, b.buf, (int)b.len);
        keel_buf_release(&b);
        if (SSL_read(ssl, &c, 1) <= 0)
            goto refused;
    }
    *fdp = fd;
    return ssl;
refused:
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
    return NULL;
}

static void raw_close(SSL *ssl, int fd)
{
    SSL_free(ssl);
    close(fd);
}

/* Read one whole frame from a raw TLS session into b (aligned), decode it. */
static int raw_read_frame(SSL *ssl, struct keel_buf *b, struct keel_msg *m)
{
    size_t want = KEEL_PROTO_HEADER_SIZE;

    keel_buf_reset(b);
    keel_buf_grow(b, want);
    while (b->len < want) {
        int n = SSL_read(ssl, b->buf + b->len, (int)(want - b->len));

        if (n <= 0)
            return -1;
        keel_buf_setlen(b, b->len + (size_t)n);
        if (b->len == KEEL_PROTO_HEADER_SIZE && want == KEEL_PROTO_HEADER_SIZE) {
            want += keel_load_u32le(b->buf + 24);
            keel_buf_grow(b, want - b->len);
        }
    }
    return keel_proto_decode(b->buf, b->len, 1 << 24, m, NULL);
}

/* ---- accepted ------------------------------------------------------------ */

Test(transport, valid_worker_reaches_server)
{
    struct keel_listener *l = listen_default();
    struct keel_tls *wt = tls_for("worker", "w1");
    struct keel_client *c = client_for(keel_listener_port(l), wt);
    struct keel_msg m = push_msg(42);
    struct keel_reply *r = NULL;
    struct keel_cert_identity peer;
    struct keel_error err;

    cr_assert_eq(keel_client_call(c, &m, 10000, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ACK);
    cr_assert_eq(r->msg.u.ack.seq, 42);
    cr_assert_eq(r->msg.u.ack.shard, 3);
    cr_assert_eq(keel_client_peer(c, &peer), 0);
    cr_assert_eq(peer.role, KEEL_ROLE_SERVER);
    cr_assert_str_eq(peer.id, "s1");
    cr_assert_eq(handler.executed, 1);
    keel_reply_free(r);
    keel_client_free(c);
    keel_listener_stop(l);
    keel_tls_free(wt);
    keel_tls_free(server_tls);
}

/* ---- refused, each with its reason --------------------------------------- */

static void expect_refused(const char *who, int maxver, const char *reason)
{
    struct keel_listener *l = listen_default();
    int fd;
    SSL *ssl = raw_tls(keel_listener_port(l), who, maxver, &fd, 1);

    cr_assert_null(ssl, "%s was let in", who ? who : "no certificate");
    cr_assert(log_has(reason), "log lacks '%s'", reason);
    cr_assert_eq(handler.executed, 0, "a refused peer's request ran");
    keel_listener_stop(l);
    keel_tls_free(server_tls);
}

Test(transport, no_client_certificate_is_refused)
{
    expect_refused(NULL, TLS1_3_VERSION, "peer did not return a certificate");
}

Test(transport, certificate_from_another_ca_is_refused)
{
    expect_refused("worker-w9", TLS1_3_VERSION,
                   "certificate verify failed: unable to get local issuer certificate");
}

Test(transport, expired_certificate_is_refused)
{
    expect_refused("worker-wold", TLS1_3_VERSION,
                   "certificate verify failed: certificate has expired");
}

Test(transport, tls_1_2_is_refused)
{
    expect_refused("worker-w1", TLS1_2_VERSION, "unsupported protocol");
}

Test(transport, certificate_without_keel_identity_is_refused)
{
    expect_refused("worker-wanon", TLS1_3_VERSION, "no keel:// URI");
}

Test(transport, revoked_certificate_is_refused)
{
    struct keel_certs_issued w2;
    struct keel_certs_issue_opts o = {0};
    struct keel_error err;
    char cadir[128], nodes[128], crl[128];
    struct keel_listener *l;
    int fd;

    path_of(cadir, sizeof(cadir), "ca");
    path_of(nodes, sizeof(nodes), "nodes");
    path_of(crl, sizeof(crl), "ca/ca.crl");
    o.ca_dir = cadir;
    o.out_dir = nodes;
    o.role = KEEL_ROLE_WORKER;
    o.id = "w2";
    cr_assert_eq(keel_certs_issue(&o, &w2, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_certs_revoke(cadir, NULL, w2.serial, &err), 0, "%s", err.msg);
    l = listen_with(64, 1 << 20, 10000, 10000, crl);
    cr_assert_null(raw_tls(keel_listener_port(l), "worker-w2", TLS1_3_VERSION, &fd, 1));
    cr_assert(log_has("certificate revoked"));
    /* Another worker of the same CA is still welcome. */
    SSL *ok = raw_tls(keel_listener_port(l), "worker-w1", TLS1_3_VERSION, &fd, 1);
    cr_assert_not_null(ok);
    raw_close(ok, fd);
    keel_listener_stop(l);
    keel_tls_free(server_tls);
}

/* `out` = the concatenation of the files named (paths relative to the test's directory). */
static void concat(const char *out, const char *const *names, size_t n)
{
    char path[256];
    FILE *o, *in;
    int c;

    path_of(path, sizeof(path), out);
    cr_assert_not_null(o = fopen(path, "w"));
    for (size_t i = 0; i < n; i++) {
        path_of(path, sizeof(path), names[i]);
        cr_assert_not_null(in = fopen(path, "r"), "%s", path);
        while ((c = fgetc(in)) != EOF)
            fputc(c, o);
        fclose(in);
    }
    fclose(o);
}

/*
 * A CRL file may hold CRLs only: with another CA's certificate (and a CRL of
 * that CA) in it, the TLS set-up is refused rather than trusting that CA;
 * with the two CRLs alone it loads, and the other CA's worker stays out.
 */
Test(transport, crl_file_with_a_certificate_is_refused)
{
    static const char *const with_cert[] = {"ca/ca.crl", "other/ca.crt", "other/ca.crl"};
    static const char *const crls_only[] = {"ca/ca.crl", "other/ca.crl"};
    struct keel_certs_issue_opts o = {0};
    struct keel_certs_issued w3;
    char ca[128], crt[128], key[128], crl[128], cadir[128], nodes[128];
    struct keel_tls_files f;
    struct keel_tls *tls = NULL;
    struct keel_error err;
    struct keel_listener *l;
    int fd;

    /* Each CA revokes one certificate of its own, so that each has a CRL. */
    path_of(nodes, sizeof(nodes), "nodes");
    o.out_dir = nodes;
    o.role = KEEL_ROLE_WORKER;
    o.force = 1;
    for (int i = 0; i < 2; i++) {
        path_of(cadir, sizeof(cadir), i == 0 ? "ca" : "other");
        o.ca_dir = cadir;
        o.id = i == 0 ? "w3" : "w8";
        cr_assert_eq(keel_certs_issue(&o, &w3, &err), 0, "%s", err.msg);
        cr_assert_eq(keel_certs_revoke(cadir, NULL, w3.serial, &err), 0, "%s", err.msg);
    }
    path_of(ca, sizeof(ca), "ca/ca.crt");
    path_of(crt, sizeof(crt), "nodes/server-s1.crt");
    path_of(key, sizeof(key), "nodes/server-s1.key");
    path_of(crl, sizeof(crl), "mixed.crl");
    concat("mixed.crl", with_cert, 3);
    f = (struct keel_tls_files){ca, crt, key, crl};
    keel_error_init(&err);
    cr_assert_eq(keel_tls_new(&f, &tls, &err), KEEL_ETLS,
                 "a CRL file with a CA certificate loaded");
    cr_assert_null(tls);
    cr_assert(strstr(err.msg, "holds a certificate") != NULL, "%s", err.msg);

    concat("two.crl", crls_only, 2);
    path_of(crl, sizeof(crl), "two.crl");
    l = listen_with(64, 1 << 20, 10000, 10000, crl);
    cr_assert_null(raw_tls(keel_listener_port(l), "worker-w9", TLS1_3_VERSION, &fd, 1),
                   "a worker of the other CA was let in");
    SSL *ok = raw_tls(keel_listener_port(l), "worker-w1", TLS1_3_VERSION, &fd, 1);
    cr_assert_not_null(ok);
    raw_close(ok, fd);
    keel_listener_stop(l);
    keel_tls_free(server_tls);
}

static void expect_permission_refused(unsigned type)
{
    struct keel_listener *l = listen_default();
    struct keel_tls *wt = tls_for("worker", "w1");
    struct keel_client *c = client_for(keel_listener_port(l), wt);
    struct keel_msg m;
    struct keel_reply *r = NULL;
    struct keel_error err;
    char expect[96];

    memset(&m, 0, sizeof(m));
    m.hdr.type = (uint8_t)type;
    if (type == KEEL_MSG_REPLICATE) {
        struct keel_msg p = push_msg(5);

        m.u.replicate.push = p.u.push;
        m.hdr.type = KEEL_MSG_REPLICATE;
        m.u.replicate.range = 7;
    } else {
        m.u.admin.payload = keel_view_make("{}", 2);
    }
    cr_assert_eq(keel_client_call(c, &m, 10000, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ERROR);
    cr_assert_eq(r->msg.u.error.code, KEEL_EPERM);
    snprintf(expect, sizeof(expect), "role worker may not send %s", keel_msg_type_name(type));
    cr_assert(memmem(r->msg.u.error.message.ptr, r->msg.u.error.message.len, expect,
                     strlen(expect)) != NULL);
    snprintf(expect, sizeof(expect),
             "refused %s from worker/w1@127.0.0.1:", keel_msg_type_name(type));
    cr_assert(log_has(expect), "log lacks '%s'", expect);
    cr_assert_eq(handler.executed, 0, "the refused request was executed");
    keel_reply_free(r);
    keel_client_free(c);
    keel_listener_stop(l);
    keel_tls_free(wt);
    keel_tls_free(server_tls);
}

Test(transport, worker_may_not_send_replicate)
{
    expect_permission_refused(KEEL_MSG_REPLICATE);
}

Test(transport, worker_may_not_send_admin)
{
    expect_permission_refused(KEEL_MSG_ADMIN);
}

Test(transport, coordinator_may_send_admin)
{
    struct keel_listener *l = listen_default();
    struct keel_tls *ct = tls_for("coordinator", "c1");
    struct keel_client *c = client_for(keel_listener_port(l), ct);
    struct keel_msg m;
    struct keel_reply *r = NULL;
    struct keel_error err;

    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_ADMIN;
    m.u.admin.op = 9;
    m.u.admin.payload = keel_view_make("{\"x\":1}", 7);
    cr_assert_eq(keel_client_call(c, &m, 10000, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ADMIN);
    cr_assert_eq(r->msg.u.admin.op, 9);
    cr_assert_eq(r->msg.u.admin.payload.len, 7);
    keel_reply_free(r);
    keel_client_free(c);
    keel_listener_stop(l);
    keel_tls_free(ct);
    keel_tls_free(server_tls);
}

/* ---- many in flight ------------------------------------------------------- */

#define INFLIGHT 1000

struct inflight {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned done, ok, wrong;
};

struct one {
    struct inflight *all;
    uint64_t seq;
};

static void one_done(void *arg, int rc, struct keel_reply *r, const struct keel_error *err)
{
    struct one *o = arg;

    pthread_mutex_lock(&o->all->lock);
    if (rc == 0 && r->msg.hdr.type == KEEL_MSG_ACK && r->msg.u.ack.seq == o->seq)
        o->all->ok++;
    else
        o->all->wrong++;
    o->all->done++;
    pthread_cond_signal(&o->all->cond);
    pthread_mutex_unlock(&o->all->lock);
    keel_reply_free(r);
}

Test(transport, thousand_requests_in_flight_are_correlated)
{
    struct keel_listener *l;
    struct keel_tls *wt = tls_for("worker", "w1");
    struct keel_client *c;
    static struct one ones[INFLIGHT];
    struct inflight all = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};
    struct keel_error err;

    handler.hold = INFLIGHT; /* no reply until all 1000 arrived; then in reverse order */
    l = listen_default();
    c = client_for(keel_listener_port(l), wt);
    for (unsigned i = 0; i < INFLIGHT; i++) {
        struct keel_msg m = push_msg(1000 + i);

        ones[i].all = &all;
        ones[i].seq = 1000 + i;
        cr_assert_eq(keel_client_send(c, &m, 30000, one_done, &ones[i], &err), 0, "%s", err.msg);
    }
    pthread_mutex_lock(&all.lock);
    while (all.done < INFLIGHT)
        pthread_cond_wait(&all.cond, &all.lock);
    pthread_mutex_unlock(&all.lock);
    cr_assert_eq(all.ok, INFLIGHT, "%u correlated, %u wrong", all.ok, all.wrong);
    cr_assert_eq(handler.executed, INFLIGHT);
    keel_client_free(c);
    keel_listener_stop(l);
    keel_tls_free(wt);
    keel_tls_free(server_tls);
}

Test(transport, replies_from_another_thread_arrive)
{
    struct keel_listener *l;
    struct keel_tls *wt = tls_for("worker", "w1");
    struct keel_client *c;
    static struct one ones[200];
    struct inflight all = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};
    struct keel_error err;

    handler.from_thread = 1;
    l = listen_default();
    c = client_for(keel_listener_port(l), wt);
    for (unsigned i = 0; i < 200; i++) {
        struct keel_msg m = push_msg(5000 + i);

        ones[i].all = &all;
        ones[i].seq = 5000 + i;
        cr_assert_eq(keel_client_send(c, &m, 30000, one_done, &ones[i], &err), 0, "%s", err.msg);
    }
    pthread_mutex_lock(&all.lock);
    while (all.done < 200)
        pthread_cond_wait(&all.cond, &all.lock);
    pthread_mutex_unlock(&all.lock);
    cr_assert_eq(all.ok, 200, "%u correlated, %u wrong", all.ok, all.wrong);
    keel_client_free(c);
    keel_listener_stop(l);
    keel_tls_free(wt);
    keel_tls_free(server_tls);
}

/* ---- hostile peers --------------------------------------------------------- */

static int no_connections(void *arg)
{
    return keel_listener_connections(arg) == 0;
}

static int two_connections(void *arg)
{
    return keel_listener_connections(arg) == 2;
}

/* A partial PUSH frame: the header and 8 bytes of a body that claims more. */
static void write_partial_frame(SSL *ssl)
{
    struct keel_msg m = push_msg(1);
    struct keel_buf b = KEEL_BUF_INIT;

    keel_proto_encode(&b, &m, NULL);
    cr_assert_eq(SSL_write(ssl, b.buf, KEEL_PROTO_HEADER_SIZE + 8), KEEL_PROTO_HEADER_SIZE + 8);
    keel_buf_release(&b);
}

Test(transport, peer_killed_mid_frame_leaves_others_alone)
{
    struct keel_listener *l = listen_default();
    struct keel_tls *wt = tls_for("worker", "w1");
    struct keel_client *c = client_for(keel_listener_port(l), wt);
    struct keel_msg m = push_msg(1);
    struct keel_reply *r = NULL;
    struct keel_error err;
    unsigned port = keel_listener_port(l);
    int status;
    pid_t pid;

    cr_assert_eq(keel_client_call(c, &m, 10000, &r, &err), 0, "%s", err.msg);
    keel_reply_free(r);
    pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int fd;
        SSL *ssl = raw_tls(port, "worker-w1", TLS1_3_VERSION, &fd, 0);

        if (ssl == NULL)
            _exit(3);
        write_partial_frame(ssl);
        pause(); /* until killed */
        _exit(0);
    }
    /* Our client's connection and the child's, with its partial frame sent. */
    cr_assert(wait_for(two_connections, l), "the child never connected");
    usleep(300000);
    cr_assert_eq(kill(pid, SIGKILL), 0);
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status), "the child exited by itself (status %d)", status);
    cr_assert(log_has("mid-frame"), "the cut frame was not noticed");
    m = push_msg(2);
    cr_assert_eq(keel_client_call(c, &m, 10000, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r->msg.u.ack.seq, 2);
    keel_reply_free(r);
    keel_client_free(c);
    cr_assert(wait_for(no_connections, l));
    keel_listener_stop(l);
    keel_tls_free(wt);
    keel_tls_free(server_tls);
}

Test(transport, peer_silent_mid_frame_is_closed_after_idle_timeout)
{
    struct keel_listener *l = listen_with(64, 1 << 20, 300, 10000, NULL);
    int fd;
    SSL *ssl = raw_tls(keel_listener_port(l), "worker-w1", TLS1_3_VERSION, &fd, 0);
    char c;

    cr_assert_not_null(ssl);
    write_partial_frame(ssl);
    cr_assert(log_has("silent mid-frame for 300 ms: closing"));
    cr_assert_leq(SSL_read(ssl, &c, 1), 0, "connection still open");
    cr_assert(wait_for(no_connections, l));
    raw_close(ssl, fd);
    keel_listener_stop(l);
    keel_tls_free(server_tls);
}

Test(transport, handshake_that_never_completes_times_out)
{
    struct keel_listener *l = listen_with(64, 1 << 20, 10000, 300, NULL);
    int fd = tcp_connect(keel_listener_port(l));
    char c;

    cr_assert(log_has("not done after 300 ms: closing"));
    cr_assert_eq(read(fd, &c, 1), 0, "socket not closed by the server");
    close(fd);
    keel_listener_stop(l);
    keel_tls_free(server_tls);
}

Test(transport, garbage_instead_of_tls_is_refused)
{
    struct keel_listener *l = listen_default();
    int fd = tcp_connect(keel_listener_port(l));
    static const char http[] = "GET / HTTP/1.0\r\n\r\n";
    char buf[256];

    cr_assert_eq(write(fd, http, sizeof(http) - 1), (ssize_t)sizeof(http) - 1);
    cr_assert(log_has("TLS handshake with 127.0.0.1:"));
    cr_assert(log_has("http request") || log_has("wrong version number"));
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
    close(fd);
    cr_assert(wait_for(no_connections, l));
    keel_listener_stop(l);
    keel_tls_free(server_tls);
}

Test(transport, connection_flood_hits_the_limit_and_others_work)
{
    struct keel_listener *l = listen_with(4, 1 << 20, 10000, 10000, NULL);
    struct keel_tls *wt = tls_for("worker", "w1");
    struct keel_client *c = client_for(keel_listener_port(l), wt);
    struct keel_msg m = push_msg(7);
    struct keel_reply *r = NULL;
    struct keel_error err;
    int fds[20];

    cr_assert_eq(keel_client_call(c, &m, 10000, &r, &err), 0, "%s", err.msg);
    keel_reply_free(r);
    for (int i = 0; i < 20; i++)
        fds[i] = tcp_connect(keel_listener_port(l));
    cr_assert(log_has("connection limit of 4 reached"));
    cr_assert_leq(keel_listener_connections(l), 4);
    m = push_msg(8);
    cr_assert_eq(keel_client_call(c, &m, 10000, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r->msg.u.ack.seq, 8);
    keel_reply_free(r);
    for (int i = 0; i < 20; i++)
        close(fds[i]);
    keel_client_free(c);
    keel_listener_stop(l);
    keel_tls_free(wt);
    keel_tls_free(server_tls);
}

/* How many times `needle` occurs in the test's log, read through `fd` (-1: opened here). */
static int log_count_fd(int fd, const char *needle)
{
    static char buf[1 << 20];
    int own = fd < 0 ? (fd = open(logpath, O_RDONLY)) : -1;
    ssize_t n = fd >= 0 ? pread(fd, buf, sizeof(buf) - 1, 0) : -1;
    int count = 0;

    if (own >= 0)
        close(own);
    buf[n > 0 ? n : 0] = '\0';
    for (const char *p = buf; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        count++;
    return count;
}

static int log_count(const char *needle)
{
    return log_count_fd(-1, needle);
}

/*
 * Out of descriptors, the acceptor pauses instead of spinning on EMFILE and
 * logs one line for many failures; once descriptors are free again it
 * accepts again.  The listener runs in this process, whose descriptor limit
 * the test lowers to just above its open descriptors; the connections come
 * from a child process (its own descriptor table), so that only the
 * listener's accept() runs out.
 */
Test(transport, out_of_descriptors_pauses_accepting_and_recovers)
{
    struct keel_listener *l = listen_with(1000, 1 << 20, 10000, 10000, NULL);
    unsigned port = keel_listener_port(l);
    struct keel_tls *wt = tls_for("worker", "w1");
    struct keel_client *c = client_for(port, wt), *c2;
    struct keel_msg m = push_msg(1);
    struct keel_reply *r = NULL;
    struct keel_error err;
    struct rlimit saved, low;
    int lowest, status, sync[2], logfd = open(logpath, O_RDONLY), paused = 0, failed_lines, call_rc;
    pid_t child;

    cr_assert_eq(keel_client_call(c, &m, 10000, &r, &err), 0, "%s", err.msg);
    keel_reply_free(r);
    cr_assert_eq(pipe(sync), 0);
    child = fork();
    cr_assert_neq(child, -1);
    if (child == 0) { /* 40 connections once the parent's limit is low; held until killed */
        char go;
        int fds[40];

        close(sync[1]);
        if (read(sync[0], &go, 1) != 1)
            _exit(1);
        for (int i = 0; i < 40; i++) {
            struct sockaddr_in sa = {0};

            fds[i] = socket(AF_INET, SOCK_STREAM, 0);
            sa.sin_family = AF_INET;
            sa.sin_port = htons((uint16_t)port);
            sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            (void)connect(fds[i], (struct sockaddr *)&sa, sizeof(sa));
        }
        pause();
        _exit(0);
    }
    close(sync[0]);
    lowest = dup(0); /* the lowest free descriptor */
    close(lowest);
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &saved), 0);
    low = saved;
    low.rlim_cur = (rlim_t)lowest + 2; /* two accepts, then EMFILE */
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0, "%s", strerror(errno));
    cr_assert_eq(write(sync[1], "g", 1), 1);
    /* No assertion until the limit is back: Criterion needs descriptors to report one. */
    for (int i = 0; i < 100 && !paused; i++) {
        paused = log_count_fd(logfd, "not accepting for 100 ms") > 0;
        usleep(50000);
    }
    usleep(1500000); /* 15 pauses' worth: a spinning acceptor would log thousands of lines */
    failed_lines = log_count_fd(logfd, "accept failed");
    /* The open connection works throughout. */
    m = push_msg(2);
    call_rc = keel_client_call(c, &m, 10000, &r, &err);
    keel_reply_free(r);
    /* Descriptors free again: the flood ends, the limit is back; a new client gets in. */
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    close(sync[1]);
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &saved), 0);
    close(logfd);
    cr_assert(paused, "no pause after EMFILE");
    cr_assert_leq(failed_lines, 2, "the acceptor floods the log");
    cr_assert_eq(call_rc, 0, "the open connection failed while descriptors ran out: %s", err.msg);
    c2 = client_for(port, wt);
    m = push_msg(3);
    cr_assert_eq(keel_client_call(c2, &m, 10000, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r->msg.u.ack.seq, 3);
    keel_reply_free(r);
    keel_client_free(c2);
    keel_client_free(c);
    keel_listener_stop(l);
    keel_tls_free(wt);
    keel_tls_free(server_tls);
}

/* Send one hand-made frame on a raw session; return the reply's decoded error code. */
static int raw_exchange(unsigned char *frame, size_t len, struct keel_buf *reply,
                        struct keel_msg *out, SSL **sslp, int *fdp, unsigned port)
{
    *sslp = raw_tls(port, "worker-w1", TLS1_3_VERSION, fdp, 0);
    cr_assert_not_null(*sslp);
    cr_assert_eq(SSL_write(*sslp, frame, (int)len), (int)len);
    return raw_read_frame(*sslp, reply, out);
}

Test(transport, oversize_frame_is_answered_and_closed)
{
    struct keel_listener *l = listen_with(64, 64 << 10, 10000, 10000, NULL);
    struct keel_msg m = push_msg(1), out;
    struct keel_buf b = KEEL_BUF_INIT, reply = KEEL_BUF_INIT;
    SSL *ssl;
    int fd;
    char c;

    m.hdr.request_id = 77;
    keel_proto_encode(&b, &m, NULL);
    keel_store_u32le(b.buf + 24, 1 << 20); /* claims 1 MiB, limit 64 KiB */
    cr_assert_eq(raw_exchange(b.buf, b.len, &reply, &out, &ssl, &fd, keel_listener_port(l)), 0);
    cr_assert_eq(out.hdr.type, KEEL_MSG_ERROR);
    cr_assert_eq(out.hdr.request_id, 77);
    cr_assert_eq(out.u.error.code, KEEL_EFRAMESIZE);
    cr_assert_leq(SSL_read(ssl, &c, 1), 0, "connection not closed");
    cr_assert_eq(handler.executed, 0);
    raw_close(ssl, fd);
    keel_buf_release(&b);
    keel_buf_release(&reply);
    keel_listener_stop(l);
    keel_tls_free(server_tls);
}

Test(transport, version_mismatch_is_answered_with_a_clear_error)
{
    struct keel_listener *l = listen_default();
    struct keel_msg m = push_msg(1), out;
    struct keel_buf b = KEEL_BUF_INIT, reply = KEEL_BUF_INIT;
    SSL *ssl;
    int fd;
    char c;

    m.hdr.request_id = 5;
    keel_proto_encode(&b, &m, NULL);
    b.buf[4] = KEEL_PROTO_VERSION + 1;
    cr_assert_eq(raw_exchange(b.buf, b.len, &reply, &out, &ssl, &fd, keel_listener_port(l)), 0);
    cr_assert_eq(out.u.error.code, KEEL_EVERSION);
    cr_assert_eq(out.hdr.request_id, 5);
    {
        char want[64];

        snprintf(want, sizeof(want), "unsupported protocol version %d", KEEL_PROTO_VERSION + 1);
        cr_assert(memmem(out.u.error.message.ptr, out.u.error.message.len, want, strlen(want)) !=
                  NULL);
    }
    cr_assert_leq(SSL_read(ssl, &c, 1), 0, "connection not closed");
    raw_close(ssl, fd);
    keel_buf_release(&b);
    keel_buf_release(&reply);
    keel_listener_stop(l);
    keel_tls_free(server_tls);
}

Test(transport, malformed_body_is_answered_and_connection_kept)
{
    struct keel_listener *l = listen_default();
    struct keel_msg m = push_msg(1), out;
    struct keel_buf b = KEEL_BUF_INIT, reply = KEEL_BUF_INIT;
    SSL *ssl;
    int fd;

    m.hdr.request_id = 9;
    keel_proto_encode(&b, &m, NULL);
    keel_store_u32le(b.buf + 32 + 4, 0); /* row width 0 */
    cr_assert_eq(raw_exchange(b.buf, b.len, &reply, &out, &ssl, &fd, keel_listener_port(l)), 0);
    cr_assert_eq(out.u.error.code, KEEL_EROWWIDTH);
    /* The same session still works. */
    keel_buf_reset(&b);
    m = push_msg(2);
    m.hdr.request_id = 10;
    keel_proto_encode(&b, &m, NULL);
    cr_assert_eq(SSL_write(ssl, b.buf, (int)b.len), (int)b.len);
    cr_assert_eq(raw_read_frame(ssl, &reply, &out), 0);
    cr_assert_eq(out.hdr.type, KEEL_MSG_ACK);
    cr_assert_eq(out.u.ack.seq, 2);
    raw_close(ssl, fd);
    keel_buf_release(&b);
    keel_buf_release(&reply);
    keel_listener_stop(l);
    keel_tls_free(server_tls);
}

/* ---- a real server process: restart and SIGHUP ----------------------------- */

static unsigned free_port(void)
{
    struct sockaddr_in sa = {0};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    unsigned port;

    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/*
 * Start keel-test-peer as server s1 on `port`; its log goes to the test's log.
 * nofile > 0: its descriptor limit (soft and hard) is set to that.
 */
static pid_t spawn_peer_limited(unsigned port, unsigned nofile)
{
    char ini[128], exe[256];
    FILE *f;
    pid_t pid;

    path_of(ini, sizeof(ini), "peer.ini");
    f = fopen(ini, "w");
    cr_assert_not_null(f);
    fprintf(f,
            "[node]\nid = s1\nlisten = 127.0.0.1:%u\n[tls]\nca = %s/ca/ca.crt\n"
            "cert = %s/nodes/server-s1.crt\nkey = %s/nodes/server-s1.key\n[log]\nlevel = debug\n",
            port, dir, dir, dir);
    fclose(f);
    snprintf(exe, sizeof(exe), "%s/keel-test-peer", KEEL_TEST_BINDIR);
    pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int out = open(logpath, O_WRONLY | O_APPEND);
        int null = open("/dev/null", O_WRONLY);

        dup2(null, 1);
        dup2(out, 2);
        if (nofile > 0) {
            struct rlimit rl = {nofile, nofile};

            if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
                _exit(126);
        }
        execl(exe, exe, "--config", ini, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static pid_t spawn_peer(unsigned port)
{
    return spawn_peer_limited(port, 0);
}

static int client_up(void *arg)
{
    return keel_client_connected(arg);
}

static int client_down(void *arg)
{
    return !keel_client_connected(arg);
}

Test(transport, client_reconnects_after_server_restart)
{
    unsigned port = free_port();
    pid_t pid = spawn_peer(port);
    struct keel_tls *wt = tls_for("worker", "w1");
    struct keel_client *c = client_for(port, wt);
    struct keel_msg m = push_msg(1);
    struct keel_reply *r = NULL;
    struct keel_error err;
    int status;

    cr_assert(wait_for(client_up, c), "client never connected");
    cr_assert_eq(keel_client_call(c, &m, 10000, &r, &err), 0, "%s", err.msg);
    keel_reply_free(r);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    cr_assert(wait_for(client_down, c), "client did not notice the server died");
    m = push_msg(2);
    cr_assert_neq(keel_client_call(c, &m, 300, &r, &err), 0, "a dead server answered");
    pid = spawn_peer(port);
    cr_assert(wait_for(client_up, c), "client did not reconnect");
    m = push_msg(3);
    cr_assert_eq(keel_client_call(c, &m, 10000, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r->msg.u.ack.seq, 3);
    keel_reply_free(r);
    keel_client_free(c);
    kill(pid, SIGTERM);
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "peer did not stop cleanly");
    keel_tls_free(wt);
}

static void server_serial(unsigned port, char *serial, size_t n)
{
    int fd;
    SSL *ssl = raw_tls(port, "worker-w1", TLS1_3_VERSION, &fd, 0);

    cr_assert_not_null(ssl);
    cr_assert_eq(keel_certs_serial_hex(SSL_get0_peer_certificate(ssl), serial, n), 0);
    raw_close(ssl, fd);
}

Test(transport, sighup_rotation_serves_new_certificate_and_keeps_connections)
{
    unsigned port = free_port();
    pid_t pid = spawn_peer(port);
    struct keel_certs_issue_opts o = {0};
    struct keel_certs_issued fresh;
    struct keel_buf b = KEEL_BUF_INIT, reply = KEEL_BUF_INIT;
    struct keel_msg m, out;
    struct keel_error err;
    char before[64], after[64], cadir[128], nodes[128];
    SSL *old;
    int fd, status;

    cr_assert(log_has("listening on 127.0.0.1:"));
    server_serial(port, before, sizeof(before));
    old = raw_tls(port, "worker-w1", TLS1_3_VERSION, &fd, 0);
    cr_assert_not_null(old);

    path_of(cadir, sizeof(cadir), "ca");
    path_of(nodes, sizeof(nodes), "nodes");
    o.ca_dir = cadir;
    o.out_dir = nodes;
    o.role = KEEL_ROLE_SERVER;
    o.id = "s1";
    o.force = 1;
    cr_assert_eq(keel_certs_issue(&o, &fresh, &err), 0, "%s", err.msg);
    cr_assert_eq(kill(pid, SIGHUP), 0);
    cr_assert(log_has("SIGHUP: certificates reloaded"));

    server_serial(port, after, sizeof(after));
    cr_assert_str_neq(before, after);
    cr_assert_str_eq(after, fresh.serial, "new connections do not get the new certificate");
    /* The connection made before the reload still works. */
    m = push_msg(11);
    m.hdr.request_id = 1;
    keel_proto_encode(&b, &m, NULL);
    cr_assert_eq(SSL_write(old, b.buf, (int)b.len), (int)b.len);
    cr_assert_eq(raw_read_frame(old, &reply, &out), 0);
    cr_assert_eq(out.u.ack.seq, 11);
    raw_close(old, fd);
    keel_buf_release(&b);
    keel_buf_release(&reply);
    kill(pid, SIGTERM);
    waitpid(pid, &status, 0);
}

/*
 * A node whose descriptor limit cannot hold [net] max_connections (1024 by
 * default; here the hard limit is 160) lowers its connection limit to fit,
 * says so, and a flood of connections then meets that limit instead of
 * EMFILE: the node stays up and a legitimate client still gets in.
 */
Test(transport, connection_limit_fits_the_descriptor_limit)
{
    unsigned port = free_port();
    pid_t pid = spawn_peer_limited(port, 160);
    struct keel_tls *wt = tls_for("worker", "w1");
    struct keel_client *c = client_for(port, wt);
    struct keel_msg m = push_msg(1);
    struct keel_reply *r = NULL;
    struct keel_error err;
    int fds[130], status;

    cr_assert(wait_for(client_up, c), "client never connected");
    cr_assert(
        log_has("max_connections 1024 does not fit the open-file limit of 160 (hard limit 160): "
                "accepting at most 96 connections"));
    for (int i = 0; i < 130; i++)
        fds[i] = tcp_connect(port);
    cr_assert(log_has("connection limit of 96 reached"));
    cr_assert_eq(log_count("accept failed"), 0, "the node ran out of descriptors");
    cr_assert_eq(keel_client_call(c, &m, 10000, &r, &err), 0, "%s", err.msg);
    keel_reply_free(r);
    for (int i = 0; i < 130; i++)
        close(fds[i]);
    keel_client_free(c);
    kill(pid, SIGTERM);
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "peer did not stop cleanly");
    keel_tls_free(wt);
}
