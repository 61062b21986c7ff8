/*
 * test_server.c - keel-server as a real process with a real etcd: the test
 * plays the coordinator's leader (it writes the job and the assignment) and
 * a worker (PUSH and PULL over mutual TLS), kills the server with SIGKILL and
 * checks what survives.
 */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "keel/assign.h"
#include "ca.h"
#include "etcd.h"
#include "keys.h"
#include "keel/jobs.h"
#include "keel/jobspec.h"
#include "log.h"
#include "member.h"
#include "net.h"

#define CLUSTER "st"

static char dir[64];
static char endpoint[128];
static pid_t etcd_pid, server_pid;
static keel_etcd *etcd;
static struct keel_tls *wtls, *w2tls; /* workers w1 and w2 */

static void path_of(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", dir, name);
}

static void start_etcd(void)
{
    char cmd[512];
    FILE *p;
    long pid;

    snprintf(cmd, sizeof(cmd),
             "bash -c '. %s/tests/lib/etcd.sh; etcd_start %s/etcd >/dev/null && "
             "echo \"$ETCD_ENDPOINT $ETCD_PID\"'",
             KEEL_TEST_SRCDIR, dir);
    p = popen(cmd, "r");
    cr_assert_not_null(p);
    cr_assert_eq(fscanf(p, "%127s %ld", endpoint, &pid), 2, "etcd did not start");
    pclose(p);
    etcd_pid = (pid_t)pid;
}

static void issue(enum keel_role role, const char *id)
{
    struct keel_certs_issue_opts o = {0};
    struct keel_error err;
    char ca[128], out[128];

    path_of(ca, sizeof(ca), "ca");
    path_of(out, sizeof(out), "certs");
    o.ca_dir = ca;
    o.out_dir = out;
    o.role = role;
    o.id = id;
    cr_assert_eq(keel_certs_issue(&o, NULL, &err), 0, "%s", err.msg);
}

static void put(const char *rel, const struct keel_buf *v)
{
    struct keel_error err;
    struct keel_buf key = KEEL_BUF_INIT;

    keel_key_prefix(&key, CLUSTER);
    keel_buf_add_str(&key, rel);
    cr_assert_eq(keel_etcd_put(etcd, keel_key_str(&key), v->buf, v->len, 0, NULL, &err), 0, "%s",
                 err.msg);
    keel_buf_release(&key);
}

/* What the coordinator's leader would write: the job, running, and s1 leading every range. */
/* Job `name` (softmax 4-3, SGD) running, and s1 holding every range. */
/* Job `name` running, as submitted with unique id `uid` (NULL: none). */
static void write_job_uid(const char *name, const char *consistency, const char *uid)
{
    char text[512], key[128];
    struct keel_jobspec spec;
    struct keel_job_status st;
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_error err;
    const char *live[] = {"s1"};
    struct keel_assign_stats stats;
    keel_assign *a = keel_assign_new(1);

    snprintf(text, sizeof(text),
             "[job]\nname = %s\nmodel = softmax:4-3\ndataset = d\nbatch_size = 2\nepochs = 1\n"
             "consistency = %s\nshards = 2\nreplication = 1\n[optimizer]\ntype = sgd\nlr = 0.5\n"
             "[init]\nmethod = uniform\nseed = 3\n",
             name, consistency);
    keel_jobspec_init(&spec);
    cr_assert_eq(keel_jobspec_parse(&spec, text, "test", &err), 0, "%s", err.msg);
    if (uid != NULL)
        snprintf(spec.uid, sizeof(spec.uid), "%s", uid);
    keel_jobspec_encode(&spec, &b);
    snprintf(key, sizeof(key), "jobs/%s/spec", name);
    put(key, &b);
    keel_buf_reset(&b);
    keel_job_status_init(&st, 1);
    cr_assert_eq(keel_job_status_move(&st, KEEL_JOB_RUNNING, 2, NULL, &err), 0, "%s", err.msg);
    keel_job_status_encode(&st, &b);
    snprintf(key, sizeof(key), "jobs/%s/state", name);
    put(key, &b);
    keel_buf_reset(&b);
    cr_assert_eq(keel_assign_update(a, live, 1, &stats, &err), 0, "%s", err.msg);
    keel_assign_encode(a, &b);
    put("assignment", &b);
    keel_assign_free(a);
    keel_buf_release(&b);
}

static void write_job(const char *name, const char *consistency)
{
    write_job_uid(name, consistency, NULL);
}

/*
 * keel-server as node `id` with the certificate of server `cert`, logging to
 * <id>.log in the test's directory.
 */
static pid_t spawn_server_as(const char *id, const char *cert)
{
    char ini[128], exe[256], logp[128], name[32];
    FILE *f;
    pid_t pid;

    snprintf(name, sizeof(name), "%s.ini", id);
    path_of(ini, sizeof(ini), name);
    snprintf(name, sizeof(name), "%s.log", id);
    path_of(logp, sizeof(logp), name);
    f = fopen(ini, "w");
    cr_assert_not_null(f);
    fprintf(f,
            "[cluster]\nname = " CLUSTER "\netcd = %s\n[node]\nid = %s\ndata_dir = %s/%s\n"
            "listen = 127.0.0.1:0\n[tls]\nca = %s/ca/ca.crt\ncert = %s/certs/server-%s.crt\n"
            "key = %s/certs/server-%s.key\n[etcd]\nlease_ttl = 2s\n[server]\n"
            "snapshot_interval = 500ms\n[log]\nlevel = debug\n",
            endpoint, id, dir, id, dir, dir, cert, dir, cert);
    fclose(f);
    snprintf(exe, sizeof(exe), "%s/keel-server", KEEL_TEST_BINDIR);
    pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int out = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0644);

        /* A file size limit then fails a write with EFBIG instead of killing the server. */
        signal(SIGXFSZ, SIG_IGN);
        dup2(out, 1);
        dup2(out, 2);
        execl(exe, exe, "--config", ini, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static pid_t spawn_server(void)
{
    return spawn_server_as("s1", "s1");
}

/*
 * The server's address once it has registered (waits up to 15 s); with
 * `old` non-empty, the address of a registration other than that one (a
 * restarted server registers anew once its old lease has expired).
 */
static void server_address(char *addr, size_t n, const char *old)
{
    struct keel_buf key = KEEL_BUF_INIT;

    keel_key_member(&key, CLUSTER, "server", "s1");
    for (int i = 0; i < 300; i++) {
        struct keel_etcd_kv kv = {0};
        struct keel_member_info info;
        struct keel_error err;
        int found = 0;

        if (keel_etcd_get(etcd, keel_key_str(&key), &kv, NULL, &err) == 0 &&
            keel_member_decode(kv.value, kv.value_len, &info, &err) == 0) {
            found = old == NULL || strcmp(info.address, old) != 0;
            if (found)
                snprintf(addr, n, "%s", info.address);
            keel_member_info_release(&info);
        }
        keel_etcd_kv_release(&kv);
        if (found) {
            keel_buf_release(&key);
            return;
        }
        usleep(50000);
    }
    cr_assert_fail("keel-server never registered");
}

static void setup(void)
{
    struct keel_certs_ca_opts ca = {0};
    struct keel_etcd_options eo = {0};
    struct keel_tls_files f;
    struct keel_error err;
    char p[128], crt[128], key[128], cacrt[128];

    snprintf(dir, sizeof(dir), "/tmp/keel-server-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    path_of(p, sizeof(p), "ca");
    mkdir(p, 0700);
    ca.dir = p;
    cr_assert_eq(keel_certs_ca_create(&ca, &err), 0, "%s", err.msg);
    path_of(p, sizeof(p), "certs");
    mkdir(p, 0700);
    issue(KEEL_ROLE_SERVER, "s1");
    issue(KEEL_ROLE_WORKER, "w1");
    issue(KEEL_ROLE_WORKER, "w2");
    start_etcd();
    eo.endpoints = endpoint;
    cr_assert_eq(keel_etcd_new(&eo, &etcd, &err), 0, "%s", err.msg);
    path_of(cacrt, sizeof(cacrt), "ca/ca.crt");
    path_of(crt, sizeof(crt), "certs/worker-w1.crt");
    path_of(key, sizeof(key), "certs/worker-w1.key");
    f = (struct keel_tls_files){cacrt, crt, key, NULL};
    cr_assert_eq(keel_tls_new(&f, &wtls, &err), 0, "%s", err.msg);
    path_of(crt, sizeof(crt), "certs/worker-w2.crt");
    path_of(key, sizeof(key), "certs/worker-w2.key");
    f = (struct keel_tls_files){cacrt, crt, key, NULL};
    cr_assert_eq(keel_tls_new(&f, &w2tls, &err), 0, "%s", err.msg);
}

static void teardown(void)
{
    char cmd[128];
    int status;

    if (server_pid > 0) {
        kill(server_pid, SIGKILL);
        waitpid(server_pid, &status, 0);
    }
    keel_tls_free(wtls);
    keel_tls_free(w2tls);
    keel_etcd_free(etcd);
    if (etcd_pid > 0)
        kill(etcd_pid, SIGKILL);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (getenv("KEEL_TEST_KEEP") == NULL && system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

TestSuite(server, .init = setup, .fini = teardown, .timeout = 120);

static const uint64_t keys3[] = {(UINT64_C(1) << 48) | 0, (UINT64_C(1) << 48) | 1,
                                 (UINT64_C(1) << 48) | 2};

static struct keel_client *client_with(const char *addr, struct keel_tls *tls);

/* A connection as worker w1 (its certificate). */
static struct keel_client *client_to(const char *addr)
{
    return client_with(addr, wtls);
}

static struct keel_client *client_with(const char *addr, struct keel_tls *tls)
{
    struct keel_client_options o;
    struct keel_client *c;
    struct keel_error err;

    keel_client_options_default(&o);
    o.address = addr;
    o.expect_role = KEEL_ROLE_SERVER;
    o.backoff_min_ms = 20;
    o.backoff_max_ms = 200;
    cr_assert_eq(keel_client_new(&o, tls, &c, &err), 0, "%s", err.msg);
    return c;
}

/* PUSH and return the reply (ACK or ERROR); waits out a server still taking up the job. */
static struct keel_reply *push(struct keel_client *c, const char *worker, uint32_t shard,
                               uint64_t seq, uint64_t clock, const float *grads)
{
    for (int i = 0; i < 200; i++) {
        struct keel_msg m;
        struct keel_reply *r = NULL;
        struct keel_error err;

        memset(&m, 0, sizeof(m));
        m.hdr.type = KEEL_MSG_PUSH;
        m.u.push.worker_id = keel_str_of(worker);
        m.u.push.shard = shard;
        m.u.push.seq = seq;
        m.u.push.incarnation = 1;
        m.u.push.clock = clock;
        m.u.push.assignment_version = 1; /* write_job()'s */
        m.u.push.data = (struct keel_rows){1, 5, 3, keys3, grads, 0, NULL};
        if (keel_client_call(c, &m, 10000, &r, &err) == 0) {
            if (r->msg.hdr.type == KEEL_MSG_ERROR && (r->msg.u.error.code == KEEL_EUNAVAILABLE ||
                                                      r->msg.u.error.code == KEEL_EREDIRECT)) {
                keel_reply_free(r);
                usleep(50000);
                continue;
            }
            return r;
        }
        usleep(50000);
    }
    cr_assert_fail("no answer to PUSH");
    return NULL;
}

static struct keel_reply *pull(struct keel_client *c, const char *worker, uint64_t clock,
                               uint64_t timeout_ms, int *rc)
{
    struct keel_msg m;
    struct keel_reply *r = NULL;
    struct keel_error err;

    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_PULL;
    m.u.pull.worker_id = keel_str_of(worker);
    m.u.pull.clock = clock;
    m.u.pull.assignment_version = 1;
    m.u.pull.data = (struct keel_rows){1, 5, 3, keys3, NULL, 0, NULL};
    *rc = keel_client_call(c, &m, timeout_ms, &r, &err);
    return r;
}

static void pull_rows(struct keel_client *c, float *rows)
{
    int rc;
    struct keel_reply *r = pull(c, "w1", 0, 10000, &rc);

    cr_assert_eq(rc, 0);
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_PULL_REPLY, "type %u", r->msg.hdr.type);
    cr_assert_eq(r->msg.u.pull_reply.data.nkeys, 3);
    memcpy(rows, r->msg.u.pull_reply.data.rows, 15 * sizeof(float));
    keel_reply_free(r);
}

/* Wait (up to 10 s) until the server says it runs no job. */
static void wait_no_job(struct keel_client *c)
{
    for (int i = 0; i < 200; i++) {
        int rc;
        struct keel_reply *r = pull(c, "w1", 0, 10000, &rc);
        int none = rc == 0 && r->msg.hdr.type == KEEL_MSG_ERROR &&
                   r->msg.u.error.code == KEEL_EUNAVAILABLE;

        keel_reply_free(r);
        if (none)
            return;
        usleep(50000);
    }
    cr_assert_fail("the server still serves the ended job after 10 s");
}

/* Start the server and connect to it; its address into addr. */
static struct keel_client *start_server(char *addr, size_t n)
{
    server_pid = spawn_server();
    server_address(addr, n, NULL);
    return client_to(addr);
}

/* SIGKILL the server, start it again (a new address) and reconnect `c`. */
static struct keel_client *restart_server(struct keel_client *c, char *addr, size_t n)
{
    char old[64];
    int status;

    kill(server_pid, SIGKILL);
    waitpid(server_pid, &status, 0);
    server_pid = spawn_server();
    snprintf(old, sizeof(old), "%s", addr);
    server_address(addr, n, old);
    keel_client_free(c);
    return client_to(addr);
}

Test(server, pushes_are_acked_applied_once_and_survive_sigkill)
{
    char addr[64];
    float grads[15], before[15], after[15], restored[15];
    struct keel_client *c;
    struct keel_reply *r;

    for (int i = 0; i < 15; i++)
        grads[i] = 0.1f * (float)(i + 1);
    write_job("j1", "asp\ndurability = disk"); /* an ACK once the log record is committed */
    c = start_server(addr, sizeof(addr));

    r = push(c, "w1", 0, 1, 0, grads);
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ACK, "type %u", r->msg.hdr.type);
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_APPLIED);
    keel_reply_free(r);
    pull_rows(c, before);
    r = push(c, "w1", 0, 1, 0, grads); /* the same (shard, seq): a retry */
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_DUPLICATE);
    keel_reply_free(r);
    r = push(c, "w1", 0, 2, 1, grads);
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_APPLIED);
    keel_reply_free(r);
    pull_rows(c, after);
    for (int i = 0; i < 15; i++)
        cr_assert_float_eq(after[i], before[i] - 0.5f * grads[i], 1e-5, "element %d", i);

    /* Every ACK above was given after its log record was committed: kill -9 loses none. */
    c = restart_server(c, addr, sizeof(addr));
    r = push(c, "w1", 0, 2, 1, grads); /* a worker's retry after the crash */
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_DUPLICATE, "an acknowledged push was lost");
    keel_reply_free(r);
    pull_rows(c, restored);
    for (int i = 0; i < 15; i++)
        cr_assert_float_eq(restored[i], after[i], 0, "element %d changed across the restart", i);
    keel_client_free(c);
}

/* Job `name` done (as the leader would write it at the end). */
static void end_job(const char *name)
{
    struct keel_job_status st;
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_error err;
    char key[128];

    keel_job_status_init(&st, 1);
    cr_assert_eq(keel_job_status_move(&st, KEEL_JOB_RUNNING, 2, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_job_status_move(&st, KEEL_JOB_DONE, 3, NULL, &err), 0, "%s", err.msg);
    keel_job_status_encode(&st, &b);
    snprintf(key, sizeof(key), "jobs/%s/state", name);
    put(key, &b);
    keel_buf_release(&b);
}

/*
 * A second job on the same server starts from its initializers and its own
 * exactly-once positions, not from the rows and positions the first job left
 * in the store, also after a restart of the server.
 */
/*
 * Start a server on the job written and push its first gradient (shard 0,
 * seq 1): grads gets the gradient, init the rows the job started from (SGD,
 * lr 0.5: the rows after the push plus half the gradient).
 */
static struct keel_client *start_and_push_first(char *addr, size_t n, float *grads, float *init)
{
    struct keel_client *c;
    struct keel_reply *r;
    float rows[15];

    for (int i = 0; i < 15; i++)
        grads[i] = 0.1f * (float)(i + 1);
    c = start_server(addr, n);
    r = push(c, "w1", 0, 1, 0, grads);
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_APPLIED);
    keel_reply_free(r);
    pull_rows(c, rows);
    for (int i = 0; i < 15; i++)
        init[i] = rows[i] + 0.5f * grads[i];
    return c;
}

/* The same first push for a job that must start afresh: applied to its initial rows. */
static void expect_fresh_start(struct keel_client *c, const float *grads, const float *init,
                               const char *who)
{
    struct keel_reply *r = push(c, "w1", 0, 1, 0, grads);
    float rows[15];

    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ACK, "type %u", r->msg.hdr.type);
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_APPLIED,
                 "%s: its push was taken for the last job's duplicate", who);
    keel_reply_free(r);
    pull_rows(c, rows);
    for (int i = 0; i < 15; i++)
        cr_assert_float_eq(rows[i], init[i] - 0.5f * grads[i], 1e-5,
                           "element %d: %s did not start from its initializer", i, who);
}

Test(server, a_new_job_does_not_inherit_the_last_jobs_rows_or_positions)
{
    char addr[64];
    float grads[15], init[15], rows[15];
    struct keel_client *c;
    struct keel_reply *r;

    write_job("j1", "asp\ndurability = disk");
    c = start_and_push_first(addr, sizeof(addr), grads, init);

    /*
     * j1 ends; j2 (the same model and seed) starts on the same server.  A push
     * carries no job name: a worker of j2 only pushes once the server has
     * left j1 (its shard lease is j2's), so the test waits for that too.
     */
    end_job("j1");
    wait_no_job(c);
    write_job("j2", "asp\ndurability = disk"); /* its ACK survives the SIGKILL below */
    expect_fresh_start(c, grads, init, "j2");  /* j2's first push has j1's (shard, seq) */

    /* A restart finds j2's own rows again (the store is j2's now). */
    c = restart_server(c, addr, sizeof(addr));
    r = push(c, "w1", 0, 1, 0, grads);
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_DUPLICATE, "j2's acknowledged push was lost");
    keel_reply_free(r);
    pull_rows(c, rows);
    for (int i = 0; i < 15; i++)
        cr_assert_float_eq(rows[i], init[i] - 0.5f * grads[i], 1e-5, "element %d", i);
    keel_client_free(c);
}

/*
 * A job submitted again under the same name (etcd rebuilt, the servers' data
 * directories kept) is another job: its unique id differs, so the server does
 * not take the store's rows and exactly-once positions for its own.
 */
Test(server, a_job_submitted_again_under_its_name_does_not_inherit_the_store)
{
    char addr[64];
    float grads[15], init[15];
    struct keel_client *c;
    struct keel_reply *r;

    write_job_uid("j1", "asp\ndurability = disk", "0123456789abcdef0123456789abcdef");
    c = start_and_push_first(addr, sizeof(addr), grads, init);

    /* The same job after a restart: its own state, the push a duplicate. */
    c = restart_server(c, addr, sizeof(addr));
    r = push(c, "w1", 0, 1, 0, grads);
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_DUPLICATE, "the job lost its own state");
    keel_reply_free(r);

    /* Submitted again: the same name and spec, a new id. */
    end_job("j1");
    wait_no_job(c);
    write_job_uid("j1", "asp\ndurability = disk", "fedcba9876543210fedcba9876543210");
    expect_fresh_start(c, grads, init, "the new submission");
    keel_client_free(c);
}

static void register_worker(const char *id, int64_t *lease)
{
    struct keel_error err;
    struct keel_buf key = KEEL_BUF_INIT;
    char value[128];

    cr_assert_eq(keel_etcd_grant(etcd, 30, lease, NULL, &err), 0, "%s", err.msg);
    keel_key_member(&key, CLUSTER, "worker", id);
    snprintf(value, sizeof(value),
             "{\"address\":\"\",\"incarnation\":1,\"start_time_ms\":1,\"pid\":1}");
    cr_assert_eq(keel_etcd_put(etcd, keel_key_str(&key), value, strlen(value), *lease, NULL, &err),
                 0, "%s", err.msg);
    keel_buf_release(&key);
}

/*
 * A BSP job on a server with two registered workers, both done with clock 0
 * (w1 shard 0, w2 shard 1, each one push); w2's membership lease in *l2.
 * Returns w1's client.
 */
static struct keel_client *bsp_both_at_clock_0(int64_t *l2, const float *grads)
{
    char addr[64];
    struct keel_client *c, *c2;
    struct keel_reply *r;
    int64_t l1;

    write_job("j1", "bsp");
    register_worker("w1", &l1);
    register_worker("w2", l2);
    server_pid = spawn_server();
    server_address(addr, sizeof(addr), NULL);
    c = client_to(addr);
    c2 = client_with(addr, w2tls);
    r = push(c, "w1", 0, 1, 0, grads);
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ACK);
    keel_reply_free(r);
    r = push(c2, "w2", 1, 1, 0, grads);
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ACK);
    keel_reply_free(r);
    keel_client_free(c2);
    return c;
}

Test(server, bsp_pull_waits_for_the_slowest_live_worker)
{
    float grads[15] = {0};
    struct keel_client *c;
    struct keel_reply *r;
    struct keel_error err;
    int64_t l2;
    int rc;

    c = bsp_both_at_clock_0(&l2, grads);
    r = push(c, "w1", 0, 2, 1, grads); /* w1 finished clock 1 too; w2 has not */
    keel_reply_free(r);
    /* w1 wants clock 2: BSP holds it until w2 finished clock 1. */
    r = pull(c, "w1", 2, 1500, &rc);
    cr_assert_eq(rc, KEEL_ETIMEDOUT, "BSP let w1 run two clocks ahead of w2");
    /* w2 dies: its lease ends, it leaves the clock set, and the pull goes through. */
    cr_assert_eq(keel_etcd_revoke(etcd, l2, &err), 0, "%s", err.msg);
    r = pull(c, "w1", 2, 10000, &rc);
    cr_assert_eq(rc, 0, "a dead worker still holds the others");
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_PULL_REPLY);
    keel_reply_free(r);
    keel_client_free(c);
}

/*
 * Pulls a clock ahead park until the clock allows them; a peer that parks
 * more than 64 on one connection has the next refused at once (not parked,
 * not holding its keys), and the server goes on answering: once the clock
 * moves, a pull is answered again.
 */
Test(server, parked_pulls_are_capped_per_connection)
{
    float grads[15] = {0};
    struct keel_client *c;
    struct keel_reply *r;
    struct keel_error err;
    int64_t l2;
    int rc;

    c = bsp_both_at_clock_0(&l2, grads);
    for (int i = 0; i < 64; i++) { /* each parks: the client gives up, the server keeps it */
        r = pull(c, "w1", 5, 100, &rc);
        cr_assert_eq(rc, KEEL_ETIMEDOUT, "pull %d of clock 5 was answered before w2 moved", i);
    }
    r = pull(c, "w1", 5, 10000, &rc);
    cr_assert_eq(rc, 0);
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ERROR, "the 65th parked pull was not refused");
    cr_assert_eq(r->msg.u.error.code, KEEL_EUNAVAILABLE);
    cr_assert_not_null(strstr(r->msg.u.error.message.ptr, "64 pulls are already waiting"), "%.*s",
                       (int)r->msg.u.error.message.len, r->msg.u.error.message.ptr);
    keel_reply_free(r);
    /* w2 leaves: the parked pulls are answered, and new ones go through. */
    cr_assert_eq(keel_etcd_revoke(etcd, l2, &err), 0, "%s", err.msg);
    r = pull(c, "w1", 1, 10000, &rc);
    cr_assert_eq(rc, 0);
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_PULL_REPLY, "the server stopped answering pulls");
    keel_reply_free(r);
    keel_client_free(c);
}

/* Whether server `id`'s log has a line containing `text` (and `also`, when not NULL). */
static int log_says(const char *id, const char *text, const char *also)
{
    char logp[128], name[32], line[512];
    int said = 0;
    FILE *f;

    snprintf(name, sizeof(name), "%s.log", id);
    path_of(logp, sizeof(logp), name);
    f = fopen(logp, "r");
    cr_assert_not_null(f);
    while (fgets(line, sizeof(line), f))
        said |= strstr(line, text) != NULL && (also == NULL || strstr(line, also) != NULL);
    fclose(f);
    return said;
}

/*
 * One PUSH routed by assignment `version`, no retries: 0 with the reply, or
 * -1 when the server did not answer.
 */
static int push_routed(struct keel_client *c, uint64_t seq, uint64_t version, const float *grads,
                       struct keel_reply **r)
{
    struct keel_msg m;
    struct keel_error err;

    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_PUSH;
    m.u.push.worker_id = keel_str_of("w1");
    m.u.push.shard = 0;
    m.u.push.seq = seq;
    m.u.push.incarnation = 1;
    m.u.push.clock = seq;
    m.u.push.assignment_version = version;
    m.u.push.data = (struct keel_rows){1, 5, 3, keys3, grads, 0, NULL};
    *r = NULL;
    return keel_client_call(c, &m, 2000, r, &err) == 0 ? 0 : -1;
}

/* One PUSH routed by write_job()'s assignment, no retries. */
static int push_once(struct keel_client *c, uint64_t seq, const float *grads, struct keel_reply **r)
{
    return push_routed(c, seq, 1, grads, r);
}

/* Whether the server process has ended; its wait status into *status. */
static int server_ended(int *status)
{
    return waitpid(server_pid, status, WNOHANG) == server_pid;
}

Test(server, a_failed_log_commit_stops_the_server_before_any_ack)
{
    enum { MAX_PUSHES = 20000 };
    static uint8_t acked[MAX_PUSHES + 1];
    char addr[64], old[64], mdb[160];
    float grads[15];
    struct keel_client *c;
    struct keel_reply *r;
    struct stat st;
    struct rlimit lim;
    uint64_t seq, first_unacked = 0, nacked = 0;
    int status = 0, ended = 0;

    for (int i = 0; i < 15; i++)
        grads[i] = 0.01f * (float)(i + 1);
    write_job("j1", "asp\ndurability = disk"); /* an ACK once the log record is committed */
    c = start_server(addr, sizeof(addr));
    r = push(c, "w1", 0, 1, 1, grads);
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_APPLIED);
    keel_reply_free(r);
    acked[1] = 1;

    /* The disk fills up: the store's file may grow by 64 KiB more, no further. */
    snprintf(mdb, sizeof(mdb), "%s/s1/data.mdb", dir);
    cr_assert_eq(stat(mdb, &st), 0);
    lim.rlim_cur = lim.rlim_max = (rlim_t)st.st_size + (64 << 10);
    cr_assert_eq(prlimit(server_pid, RLIMIT_FSIZE, &lim, NULL), 0, "prlimit: %s", strerror(errno));

    /* Push until the log cannot grow: the server must stop rather than acknowledge. */
    for (seq = 2; seq <= MAX_PUSHES && !ended; seq++) {
        if (push_once(c, seq, grads, &r) == 0 && r->msg.hdr.type == KEEL_MSG_ACK) {
            cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_APPLIED, "push %llu",
                         (unsigned long long)seq);
            acked[seq] = 1;
            nacked++;
        } else if (first_unacked == 0) {
            first_unacked = seq;
        }
        keel_reply_free(r);
        ended = server_ended(&status);
        if (first_unacked && !ended) {
            /* The failed push's retry: a duplicate in memory, which must not be acked either. */
            for (int i = 0; i < 100 && !ended; i++) {
                if (push_once(c, first_unacked, grads, &r) == 0)
                    cr_assert_neq(r->msg.hdr.type, KEEL_MSG_ACK,
                                  "push %llu acknowledged after its log commit failed",
                                  (unsigned long long)first_unacked);
                keel_reply_free(r);
                usleep(50000);
                ended = server_ended(&status);
            }
            break;
        }
    }
    cr_assert(first_unacked > 0, "%llu pushes were all acknowledged within the file size limit",
              (unsigned long long)nacked);
    cr_assert(nacked > 0, "no push was acknowledged before the limit");
    cr_assert(ended, "the server did not stop after push %llu failed",
              (unsigned long long)first_unacked);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "the server ended with status %d",
              status);
    server_pid = 0;
    cr_assert(log_says("s1", "cannot commit", "(fail-stop)"),
              "the server did not log why it stopped");

    /* Started again: every acknowledged push is there, the unacknowledged one is not. */
    keel_client_free(c);
    snprintf(old, sizeof(old), "%s", addr);
    server_pid = spawn_server();
    server_address(addr, sizeof(addr), old); /* once the dead server's lease has expired */
    c = client_to(addr);
    for (uint64_t q = 1; q < first_unacked; q++) {
        if (!acked[q])
            continue;
        r = push(c, "w1", 0, q, q, grads);
        cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_DUPLICATE, "acknowledged push %llu was lost",
                     (unsigned long long)q);
        keel_reply_free(r);
    }
    r = push(c, "w1", 0, first_unacked, first_unacked, grads);
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_APPLIED,
                 "push %llu, never acknowledged, was applied before the crash",
                 (unsigned long long)first_unacked);
    keel_reply_free(r);
    printf("file size limit hit after %llu acknowledged pushes; the server stopped itself\n",
           (unsigned long long)nacked);
    keel_client_free(c);
}

/* A PULL of rows the job does not have: refused, with nothing allocated for them. */
static void expect_refused_pull(struct keel_client *c, uint32_t table_id, uint32_t width,
                                uint32_t nkeys, const char *says)
{
    uint64_t *keys = calloc(nkeys, sizeof(*keys));
    struct keel_msg m;
    struct keel_reply *r = NULL;
    struct keel_error err;

    cr_assert_not_null(keys);
    for (uint32_t i = 0; i < nkeys; i++)
        keys[i] = ((uint64_t)table_id << 48) | i;
    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_PULL;
    m.u.pull.worker_id = keel_str_of("w1");
    m.u.pull.assignment_version = 1;
    m.u.pull.data = (struct keel_rows){table_id, width, nkeys, keys, NULL, 0, NULL};
    cr_assert_eq(keel_client_call(c, &m, 10000, &r, &err), 0, "no answer to the PULL: %s", err.msg);
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ERROR, "a PULL of %u rows of width %u was answered",
                 nkeys, width);
    cr_assert_eq(r->msg.u.error.code, KEEL_EINVAL);
    cr_assert(memmem(r->msg.u.error.message.ptr, r->msg.u.error.message.len, says, strlen(says)) !=
                  NULL,
              "refused with '%.*s'", (int)r->msg.u.error.message.len, r->msg.u.error.message.ptr);
    keel_reply_free(r);
    free(keys);
}

Test(server, a_pull_of_rows_the_job_lacks_is_refused_before_any_allocation)
{
    char addr[64];
    float rows[15];
    struct keel_client *c;
    int status;

    write_job("j1", "asp");
    c = start_server(addr, sizeof(addr));
    pull_rows(c, rows); /* the job is taken up */
    /* 2^20 keys of 2^20 floats: a 4 TiB reply, asked for in an 8 MiB frame. */
    expect_refused_pull(c, 1, 1u << 20, 1u << 20, "not 1048576");
    expect_refused_pull(c, 9, 5, 3, "no table 9");
    cr_assert_eq(waitpid(server_pid, &status, WNOHANG), 0, "the server died");
    pull_rows(c, rows); /* and it still answers a real worker */
    keel_client_free(c);
}

/* Assignment `version` in etcd: s1 holds every range, as in write_job(). */
/* s1 leading every range, at `version`, written under leader epoch `epoch` (0: none said). */
static void write_assignment_epoch(uint64_t version, uint64_t epoch)
{
    const char *live[] = {"s1"};
    struct keel_assign_stats stats;
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_error err;
    keel_assign *a = keel_assign_new(1);

    cr_assert_eq(keel_assign_update(a, live, 1, &stats, &err), 0, "%s", err.msg);
    /* Each change of the replication bumps the version; with one server the sets stay. */
    for (unsigned r = 2; keel_assign_version(a) < version - (epoch != 0); r = r == 2 ? 1 : 2)
        cr_assert_eq(keel_assign_set_replication(a, r, &stats, &err), 0, "%s", err.msg);
    if (epoch != 0)
        keel_assign_set_epoch(a, epoch); /* a change: the version rises */
    cr_assert_eq(keel_assign_version(a), version);
    keel_assign_encode(a, &b);
    put("assignment", &b);
    keel_assign_free(a);
    keel_buf_release(&b);
}

static void write_assignment(uint64_t version)
{
    write_assignment_epoch(version, 0);
}

/* PUSH `seq` routed by `version`: 0 when applied, 1 when redirected (*current: the server's). */
static int push_answer(struct keel_client *c, uint64_t seq, uint64_t version, const float *grads,
                       uint64_t *current)
{
    struct keel_reply *r;
    int redirected = 0;

    cr_assert_eq(push_routed(c, seq, version, grads, &r), 0, "no answer to PUSH %llu",
                 (unsigned long long)seq);
    if (r->msg.hdr.type == KEEL_MSG_ERROR) {
        cr_assert_eq(r->msg.u.error.code, KEEL_EREDIRECT, "PUSH %llu: error %d",
                     (unsigned long long)seq, r->msg.u.error.code);
        *current = r->msg.u.error.assignment_version;
        redirected = 1;
    } else {
        cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ACK);
        cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_APPLIED, "PUSH %llu", (unsigned long long)seq);
    }
    keel_reply_free(r);
    return redirected;
}

Test(server, requests_routed_by_an_older_assignment_are_redirected)
{
    char addr[64];
    float grads[15];
    struct keel_client *c;
    struct keel_reply *r;
    struct keel_msg m;
    struct keel_error err;
    uint64_t current = 0;
    int ignored = 0;

    for (int i = 0; i < 15; i++)
        grads[i] = 0.01f;
    write_job("j1", "asp");
    c = start_server(addr, sizeof(addr));
    r = push(c, "w1", 0, 1, 1, grads);
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_APPLIED);
    keel_reply_free(r);

    /* Version 2 in etcd: once the server has it, a sender routing by 1 is told of 2. */
    write_assignment(2);
    for (uint64_t seq = 2; current != 2; seq++) {
        cr_assert(seq < 200, "the server never refused a PUSH routed by version 1");
        if (push_answer(c, seq, 1, grads, &current) == 0)
            usleep(20000); /* applied: the server has not seen version 2 yet */
    }
    cr_assert_eq(push_answer(c, 500, 2, grads, &current), 0, "a PUSH routed by version 2");
    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_PULL;
    m.u.pull.worker_id = keel_str_of("w1");
    m.u.pull.assignment_version = 1;
    m.u.pull.data = (struct keel_rows){1, 5, 3, keys3, NULL, 0, NULL};
    cr_assert_eq(keel_client_call(c, &m, 5000, &r, &err), 0, "%s", err.msg);
    cr_assert(r->msg.hdr.type == KEEL_MSG_ERROR && r->msg.u.error.code == KEEL_EREDIRECT,
              "a PULL routed by version 1 was answered with %s",
              keel_msg_type_name(r->msg.hdr.type));
    keel_reply_free(r);

    /* An older table written afterwards is ignored: versions only rise. */
    write_assignment(1);
    for (int i = 0; i < 100 && !ignored; i++) {
        ignored = log_says("s1", "ignoring assignment version 1: not above version 2", NULL);
        if (!ignored)
            usleep(50000);
    }
    cr_assert(ignored, "the server did not say it ignored the older assignment");
    cr_assert_eq(push_answer(c, 501, 1, grads, &current), 1, "version 1 accepted again");
    cr_assert_eq(current, 2);
    cr_assert_eq(push_answer(c, 502, 2, grads, &current), 0);
    keel_client_free(c);
}

Test(server, a_worker_id_other_than_the_certificates_is_refused)
{
    char addr[64];
    float grads[15] = {0}, rows[15];
    struct keel_client *c;
    struct keel_reply *r;
    struct keel_msg m;
    struct keel_error err;

    write_job("j1", "asp");
    c = start_server(addr, sizeof(addr));
    pull_rows(c, rows);
    /* w1's certificate, w2's name: neither a PUSH nor a PULL gets through. */
    r = push(c, "w2", 1, UINT64_MAX, 0, grads);
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ERROR, "a PUSH under another worker's id was answered");
    cr_assert_eq(r->msg.u.error.code, KEEL_EPERM);
    keel_reply_free(r);
    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_PULL;
    m.u.pull.worker_id = keel_str_of("w2");
    m.u.pull.clock = 7;
    m.u.pull.assignment_version = 1;
    m.u.pull.data = (struct keel_rows){1, 5, 3, keys3, NULL, 0, NULL};
    cr_assert_eq(keel_client_call(c, &m, 5000, &r, &err), 0, "%s", err.msg);
    cr_assert(r->msg.hdr.type == KEEL_MSG_ERROR && r->msg.u.error.code == KEEL_EPERM,
              "a PULL under another worker's id was answered with %s",
              keel_msg_type_name(r->msg.hdr.type));
    keel_reply_free(r);
    /* The forged seq = UINT64_MAX on shard 1 was not applied: w1's real push there is. */
    r = push(c, "w1", 1, 1, 0, grads);
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_APPLIED, "the forged push moved shard 1's position");
    keel_reply_free(r);
    keel_client_free(c);
}

Test(server, refuses_to_start_under_an_id_its_certificate_does_not_name)
{
    int status = 0;
    pid_t pid = spawn_server_as("s9", "s1");

    for (int i = 0; i < 100 && waitpid(pid, &status, WNOHANG) != pid; i++)
        usleep(50000);
    if (!WIFEXITED(status)) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        cr_assert_fail("keel-server ran as s9 with s1's certificate");
    }
    cr_assert_eq(WEXITSTATUS(status), 78, "exit status %d", WEXITSTATUS(status));
    cr_assert(
        log_says("s9", "[node] id is server 's9' but the certificate names server 's1'", NULL),
        "the server did not say why it refused to start");
}

/* Shard `n` of job `job` leased to `owner` ("" for free), as the coordinator's leader writes it. */
static void write_lease(const char *job, uint32_t n, const char *owner)
{
    struct keel_shard sh;
    struct keel_buf b = KEEL_BUF_INIT;
    char key[128];

    memset(&sh, 0, sizeof(sh));
    snprintf(sh.owner, sizeof(sh.owner), "%s", owner);
    sh.incarnation = owner[0] ? 1 : 0;
    keel_shard_encode(&sh, &b);
    snprintf(key, sizeof(key), "jobs/%s/shards/%" PRIu32, job, n);
    put(key, &b);
    keel_buf_release(&b);
}

/*
 * Once etcd holds the job's shard leases, a push for a shard leased to
 * another worker is refused (to be retried, as the server's view may lag a
 * new lease) and changes nothing; when the lease comes to the worker its
 * push is applied.
 */
Test(server, a_push_for_a_shard_leased_to_another_worker_is_refused)
{
    char addr[64];
    float grads[15], before[15], after[15];
    struct keel_client *c;
    struct keel_reply *r = NULL;
    struct keel_msg m;
    struct keel_error err;

    for (int i = 0; i < 15; i++)
        grads[i] = 0.25f;
    write_job("j1", "asp");
    write_lease("j1", 0, "w1");
    write_lease("j1", 1, "w2");
    c = start_server(addr, sizeof(addr));
    pull_rows(c, before);
    r = push(c, "w1", 0, 1, 0, grads); /* its own shard: applied */
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ACK);
    keel_reply_free(r);
    pull_rows(c, before);
    /* Shard 1 is w2's: w1's push there is refused, however often it asks. */
    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_PUSH;
    m.u.push.worker_id = keel_str_of("w1");
    m.u.push.shard = 1;
    m.u.push.seq = 5;
    m.u.push.incarnation = 1;
    m.u.push.assignment_version = 1;
    m.u.push.data = (struct keel_rows){1, 5, 3, keys3, grads, 0, NULL};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(keel_client_call(c, &m, 5000, &r, &err), 0, "%s", err.msg);
        cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ERROR, "a push for w2's shard was answered");
        cr_assert_eq(r->msg.u.error.code, KEEL_EUNAVAILABLE);
        cr_assert(memmem(r->msg.u.error.message.ptr, r->msg.u.error.message.len, "leased to 'w2'",
                         14) != NULL,
                  "%.*s", (int)r->msg.u.error.message.len, r->msg.u.error.message.ptr);
        keel_reply_free(r);
    }
    /* A shard the job does not have. */
    m.u.push.shard = 7;
    cr_assert_eq(keel_client_call(c, &m, 5000, &r, &err), 0, "%s", err.msg);
    cr_assert(r->msg.hdr.type == KEEL_MSG_ERROR && r->msg.u.error.code == KEEL_EINVAL);
    keel_reply_free(r);
    pull_rows(c, after);
    cr_assert_eq(memcmp(before, after, sizeof(before)), 0, "a refused push changed rows");
    /* The lease moves to w1: its push is applied (push() retries while the view catches up). */
    write_lease("j1", 1, "w1");
    r = push(c, "w1", 1, 5, 0, grads);
    cr_assert_eq(r->msg.hdr.type, KEEL_MSG_ACK);
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_APPLIED);
    keel_reply_free(r);
    keel_client_free(c);
}

/*
 * Once a coordinator campaigns, a server applies only a table written under
 * the leader's epoch (the oldest candidate's create revision): a table of
 * another epoch, stale or forged, is ignored with a log line, whatever its
 * version; the leader's own is applied.
 */
Test(server, an_assignment_not_written_under_the_leaders_epoch_is_ignored)
{
    char addr[64];
    float grads[15] = {0};
    struct keel_client *c;
    struct keel_reply *r;
    struct keel_buf key = KEEL_BUF_INIT;
    struct keel_error err;
    int64_t epoch = 0;
    uint64_t current = 0;
    int ignored = 0;

    write_job("j1", "asp");
    c = start_server(addr, sizeof(addr));
    r = push(c, "w1", 0, 1, 1, grads);
    cr_assert_eq(r->msg.u.ack.status, KEEL_ACK_APPLIED);
    keel_reply_free(r);
    /* A coordinator campaigns: its candidate key's create revision is the leader's epoch. */
    keel_key_election(&key, CLUSTER);
    keel_buf_add_str(&key, "/1a2b3c");
    cr_assert_eq(keel_etcd_put(etcd, keel_key_str(&key), "c1", 2, 0, &epoch, &err), 0, "%s",
                 err.msg);
    keel_buf_release(&key);
    write_assignment_epoch(5, (uint64_t)epoch + 7);
    for (int i = 0; i < 100 && !ignored; i++) {
        ignored = log_says("s1", "ignoring assignment version 5: written under epoch", NULL);
        if (!ignored)
            usleep(50000);
    }
    cr_assert(ignored, "the server did not say it ignored a table of another epoch");
    cr_assert_eq(push_answer(c, 2, 1, grads, &current), 0, "the other epoch's table was applied");
    /* The leader's table is applied: a sender routing by version 1 is told of version 6. */
    write_assignment_epoch(6, (uint64_t)epoch);
    for (uint64_t seq = 3; current != 6; seq++) {
        cr_assert(seq < 200, "the server never applied the leader's table");
        if (push_answer(c, seq, 1, grads, &current) == 0)
            usleep(20000);
    }
    keel_client_free(c);
}
