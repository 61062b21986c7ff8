/*
 * etcd_check.c - keel-etcd-check, the integration tests' driver of the etcd
 * client against a real etcd.
 *
 *   keel-etcd-check [--endpoints URLS] [--ca F --cert F --key F]
 *                   [--retry-timeout MS] COMMAND ARGS...
 *
 * Scenario commands check a behaviour from end to end and exit 1 with a
 * message naming the first check that failed; the others print what they see
 * for the shell test to compare with etcdctl.  Run with --help for the list.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "coordinator.h"
#include "cview.h"
#include "election.h"

#include "etcd.h"
#include "keys.h"
#include "log.h"
#include "member.h"

static const char *usage_text =
    "usage: keel-etcd-check [--endpoints URLS] [--ca F --cert F --key F]\n"
    "                       [--retry-timeout MS] COMMAND ARGS...\n"
    "commands:\n"
    "  put KEY VALUE              put, print the revision\n"
    "  get KEY                    print the value (exit 3 when absent)\n"
    "  range PREFIX               print KEY=VALUE lines\n"
    "  roundtrip PREFIX           put/get/range/delete/txn/lease checks\n"
    "  lease-hold TTL KEY SECS    keep a lease with KEY on it; print 'lost' when lost\n"
    "  watch PREFIX REV SECS N    print events until N arrived or SECS passed\n"
    "  observe NAME SECS N        print leaders until N arrived or SECS passed\n"
    "  election NAME              campaign/leader/observe/cancel/resign checks\n"
    "  fence CLUSTER PREFIX       a deposed leader's fenced writes change nothing\n"
    "  member-join CLUSTER ROLE ID ADDR TTL WAIT_MS SECS   register and hold\n"
    "  member-rejoin CLUSTER ID   loss is seen, rejoin gets a new incarnation\n"
    "  hooks CLUSTER              the coordinator calls its leader-work hooks in order\n"
    "  cview CLUSTER              the watched cluster view follows puts and deletes\n";

static keel_etcd *client;
static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("keel-etcd-check: FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            die(__VA_ARGS__);                                                                      \
    } while (0)

/* Check that `rc` is 0, or die with the error. */
#define OK(call)                                                                                   \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != 0)                                                                              \
            die("%s: %s (%s)", #call, err.msg, keel_err_name(rc_));                                \
    } while (0)

static struct keel_error err;

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !stop_requested)
        ;
}

static char *key_of(const char *prefix, const char *name)
{
    static char buf[8][512];
    static int next;
    char *b = buf[next++ % 8];

    snprintf(b, 512, "%s%s", prefix, name);
    return b;
}

/* ---- simple commands ---- */

static int cmd_put(int argc, char **argv)
{
    int64_t rev;

    if (argc != 2)
        die("put KEY VALUE");
    if (keel_etcd_put(client, argv[0], argv[1], strlen(argv[1]), 0, &rev, &err) != 0) {
        fprintf(stderr, "keel-etcd-check: %s (%s)\n", err.msg, keel_err_name(err.code));
        return 2;
    }
    printf("revision %" PRId64 "\n", rev);
    return 0;
}

static int cmd_get(int argc, char **argv)
{
    struct keel_etcd_kv kv;
    int rc;

    if (argc != 1)
        die("get KEY");
    rc = keel_etcd_get(client, argv[0], &kv, NULL, &err);
    if (rc == KEEL_ENOTFOUND)
        return 3;
    if (rc != 0) {
        fprintf(stderr, "keel-etcd-check: %s (%s)\n", err.msg, keel_err_name(rc));
        return 2;
    }
    printf("%s\n", (const char *)kv.value);
    keel_etcd_kv_release(&kv);
    return 0;
}

static int cmd_range(int argc, char **argv)
{
    struct keel_etcd_kvs r;

    if (argc != 1)
        die("range PREFIX");
    if (keel_etcd_range_prefix(client, argv[0], NULL, &r, &err) != 0) {
        fprintf(stderr, "keel-etcd-check: %s (%s)\n", err.msg, keel_err_name(err.code));
        return 2;
    }
    for (size_t i = 0; i < r.n; i++)
        printf("%s=%s\n", r.kvs[i].key, (const char *)r.kvs[i].value);
    keel_etcd_kvs_release(&r);
    return 0;
}

/* ---- roundtrip ---- */

static void expect_value(const char *key, const void *want, size_t len)
{
    struct keel_etcd_kv kv;

    OK(keel_etcd_get(client, key, &kv, NULL, &err));
    CHECK(kv.value_len == len && memcmp(kv.value, want, len) == 0,
          "get '%s': value of %zu bytes differs from the %zu put", key, kv.value_len, len);
    CHECK(kv.value[kv.value_len] == '\0', "get '%s': value not NUL-terminated", key);
    keel_etcd_kv_release(&kv);
}

static int cmd_roundtrip(int argc, char **argv)
{
    const char *p;
    static const unsigned char binary[] = {0, 1, 2, 0xff, 0xfe, '\n', '"', '\\', 0};
    struct keel_etcd_range_opts limit2 = {0, 2, 0, 0};
    struct keel_etcd_txn_result r;
    struct keel_etcd_kvs kvs;
    struct keel_etcd_kv kv;
    keel_etcd_txn *t, *inner;
    int64_t rev1, rev2, n, lease, ttl;
    unsigned char *big;
    size_t big_len = 1000 * 1000;
    char outside[512];
    int rc;

    if (argc != 1)
        die("roundtrip PREFIX");
    p = argv[0];

    /* put / get */
    OK(keel_etcd_put(client, key_of(p, "a"), "1", 1, 0, &rev1, &err));
    OK(keel_etcd_get(client, key_of(p, "a"), &kv, &rev2, &err));
    CHECK(strcmp((char *)kv.value, "1") == 0 && kv.version == 1 && kv.create_revision == rev1 &&
              kv.mod_revision == rev1 && rev2 >= rev1,
          "get after put: value '%s' version %" PRId64 " create %" PRId64 " (put at %" PRId64 ")",
          (char *)kv.value, kv.version, kv.create_revision, rev1);
    keel_etcd_kv_release(&kv);
    OK(keel_etcd_put(client, key_of(p, "a"), "2", 1, 0, &rev2, &err));
    CHECK(rev2 > rev1, "second put did not raise the revision");
    OK(keel_etcd_get(client, key_of(p, "a"), &kv, NULL, &err));
    CHECK(kv.version == 2 && kv.create_revision == rev1 && kv.mod_revision == rev2,
          "version/create/mod after the second put");
    keel_etcd_kv_release(&kv);

    /* binary and large values */
    OK(keel_etcd_put(client, key_of(p, "bin"), binary, sizeof(binary), 0, NULL, &err));
    expect_value(key_of(p, "bin"), binary, sizeof(binary));
    OK(keel_etcd_put(client, key_of(p, "empty"), "", 0, 0, NULL, &err));
    expect_value(key_of(p, "empty"), "", 0);
    big = malloc(big_len);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (unsigned char)(i * 7 + i / 251);
    OK(keel_etcd_put(client, key_of(p, "big"), big, big_len, 0, NULL, &err));
    expect_value(key_of(p, "big"), big, big_len);
    free(big);
    OK(keel_etcd_delete(client, key_of(p, "big"), 0, &n, NULL, &err));
    OK(keel_etcd_delete(client, key_of(p, "bin"), 0, &n, NULL, &err));
    OK(keel_etcd_delete(client, key_of(p, "empty"), 0, &n, NULL, &err));

    /* missing key */
    rc = keel_etcd_get(client, key_of(p, "missing"), &kv, NULL, &err);
    CHECK(rc == KEEL_ENOTFOUND && strstr(err.msg, "missing"), "get of a missing key: %s (%s)",
          err.msg, keel_err_name(rc));

    /* range by prefix: the key just past the prefix stays out */
    snprintf(outside, sizeof(outside), "%.*s0", (int)strlen(p) - 1, p);
    OK(keel_etcd_put(client, outside, "out", 3, 0, NULL, &err));
    OK(keel_etcd_put(client, key_of(p, "b"), "B", 1, 0, NULL, &err));
    OK(keel_etcd_put(client, key_of(p, "c"), "C", 1, 0, NULL, &err));
    OK(keel_etcd_range_prefix(client, p, NULL, &kvs, &err));
    CHECK(kvs.n == 3 && kvs.count == 3 && !kvs.more, "range: %zu keys, count %" PRId64, kvs.n,
          kvs.count);
    CHECK(strcmp(kvs.kvs[0].key, key_of(p, "a")) == 0 &&
              strcmp(kvs.kvs[1].key, key_of(p, "b")) == 0 &&
              strcmp(kvs.kvs[2].key, key_of(p, "c")) == 0 &&
              strcmp((char *)kvs.kvs[2].value, "C") == 0,
          "range: keys out of order or wrong");
    keel_etcd_kvs_release(&kvs);
    OK(keel_etcd_range_prefix(client, p, &limit2, &kvs, &err));
    CHECK(kvs.n == 2 && kvs.count == 3 && kvs.more,
          "range limit 2: n %zu count %" PRId64 " more %d", kvs.n, kvs.count, kvs.more);
    keel_etcd_kvs_release(&kvs);

    /* delete */
    OK(keel_etcd_delete(client, key_of(p, "b"), 0, &n, NULL, &err));
    CHECK(n == 1, "delete: %" PRId64 " deleted", n);
    OK(keel_etcd_delete(client, key_of(p, "b"), 0, &n, NULL, &err));
    CHECK(n == 0, "delete of nothing: %" PRId64 " deleted", n);
    OK(keel_etcd_delete(client, p, 1, &n, NULL, &err));
    CHECK(n == 2, "delete prefix: %" PRId64 " deleted", n);
    OK(keel_etcd_get(client, outside, &kv, NULL, &err));
    keel_etcd_kv_release(&kv);
    OK(keel_etcd_delete(client, outside, 0, &n, NULL, &err));

    /* txn: create if absent, twice */
    t = keel_etcd_txn_new();
    keel_etcd_txn_compare(t, key_of(p, "x"), KEEL_ETCD_CREATE, KEEL_ETCD_EQUAL, 0);
    keel_etcd_txn_put(t, KEEL_ETCD_THEN, key_of(p, "x"), "first", 5, 0);
    keel_etcd_txn_get(t, KEEL_ETCD_ELSE, key_of(p, "x"), 0);
    CHECK(keel_etcd_txn_writes(t), "txn with a put does not count as writing");
    OK(keel_etcd_txn_commit(client, t, &r, &err));
    CHECK(r.succeeded && r.n == 1 && r.ops[0].op == KEEL_ETCD_OP_PUT, "create-if-absent failed");
    rev1 = r.revision;
    keel_etcd_txn_result_release(&r);
    OK(keel_etcd_txn_commit(client, t, &r, &err));
    CHECK(!r.succeeded && r.n == 1 && r.ops[0].op == KEEL_ETCD_OP_RANGE && r.ops[0].range.n == 1 &&
              strcmp((char *)r.ops[0].range.kvs[0].value, "first") == 0 &&
              r.ops[0].range.kvs[0].create_revision == rev1,
          "second create-if-absent: succeeded %d", r.succeeded);
    keel_etcd_txn_result_release(&r);
    keel_etcd_txn_free(t);

    /* txn: compare value, mod revision; a read-only txn; a nested txn */
    t = keel_etcd_txn_new();
    keel_etcd_txn_compare_value(t, key_of(p, "x"), KEEL_ETCD_EQUAL, "first", 5);
    keel_etcd_txn_compare(t, key_of(p, "x"), KEEL_ETCD_MOD, KEEL_ETCD_EQUAL, rev1);
    keel_etcd_txn_put(t, KEEL_ETCD_THEN, key_of(p, "x"), "second", 6, 0);
    keel_etcd_txn_delete(t, KEEL_ETCD_THEN, key_of(p, "y"), 0);
    OK(keel_etcd_txn_commit(client, t, &r, &err));
    CHECK(r.succeeded && r.n == 2 && r.ops[1].op == KEEL_ETCD_OP_DELETE && r.ops[1].deleted == 0,
          "compare value and mod: succeeded %d", r.succeeded);
    keel_etcd_txn_result_release(&r);
    OK(keel_etcd_txn_commit(client, t, &r, &err)); /* the value changed: fails now */
    CHECK(!r.succeeded && r.n == 0, "stale compare succeeded");
    keel_etcd_txn_result_release(&r);
    keel_etcd_txn_free(t);
    expect_value(key_of(p, "x"), "second", 6);

    inner = keel_etcd_txn_new();
    keel_etcd_txn_compare(inner, key_of(p, "x"), KEEL_ETCD_VERSION, KEEL_ETCD_GREATER, 1);
    keel_etcd_txn_get(inner, KEEL_ETCD_THEN, p, 1);
    CHECK(!keel_etcd_txn_writes(inner), "read-only txn counts as writing");
    t = keel_etcd_txn_new();
    keel_etcd_txn_nest(t, KEEL_ETCD_THEN, inner);
    OK(keel_etcd_txn_commit(client, t, &r, &err));
    CHECK(r.succeeded && r.n == 1 && r.ops[0].op == KEEL_ETCD_OP_TXN && r.ops[0].txn->succeeded &&
              r.ops[0].txn->n == 1 && r.ops[0].txn->ops[0].range.n == 1,
          "nested txn result");
    keel_etcd_txn_result_release(&r);
    keel_etcd_txn_free(t);
    keel_etcd_txn_free(inner);

    /* leases: ids round-trip exactly; revoke deletes the keys; loss is reported */
    OK(keel_etcd_grant(client, 5, &lease, &ttl, &err));
    CHECK(lease > 0 && ttl == 5, "grant: id %" PRId64 " ttl %" PRId64, lease, ttl);
    OK(keel_etcd_timetolive(client, lease, &ttl, &err));
    CHECK(ttl >= 3 && ttl <= 5, "timetolive of a fresh 5 s lease: %" PRId64, ttl);
    OK(keel_etcd_keepalive(client, lease, &ttl, &err));
    CHECK(ttl == 5, "keepalive ttl %" PRId64, ttl);
    OK(keel_etcd_put(client, key_of(p, "leased"), "v", 1, lease, NULL, &err));
    OK(keel_etcd_get(client, key_of(p, "leased"), &kv, NULL, &err));
    CHECK(kv.lease == lease, "key's lease %" PRId64 " is not %" PRId64, kv.lease, lease);
    keel_etcd_kv_release(&kv);
    OK(keel_etcd_revoke(client, lease, &err));
    rc = keel_etcd_get(client, key_of(p, "leased"), &kv, NULL, &err);
    CHECK(rc == KEEL_ENOTFOUND, "key survived its revoked lease");
    rc = keel_etcd_revoke(client, lease, &err);
    CHECK(rc == KEEL_ENOTFOUND, "second revoke: %s", keel_err_name(rc));
    rc = keel_etcd_keepalive(client, lease, &ttl, &err);
    CHECK(rc == KEEL_ENOTFOUND && strstr(err.msg, "expired"), "keepalive of a revoked lease: %s",
          err.msg);
    rc = keel_etcd_timetolive(client, lease, &ttl, &err);
    CHECK(rc == KEEL_ENOTFOUND, "timetolive of a revoked lease: %s", keel_err_name(rc));
    rc = keel_etcd_put(client, key_of(p, "leased"), "v", 1, lease, NULL, &err);
    CHECK(rc == KEEL_ENOTFOUND && strstr(err.msg, "lease not found"),
          "put under a revoked lease: %s", err.msg);

    OK(keel_etcd_delete(client, p, 1, NULL, NULL, &err));
    printf("roundtrip ok\n");
    return 0;
}

/* ---- lease-hold ---- */

static volatile int lease_lost;
static char lost_why[256];

static void on_lost(void *user, int64_t id, const char *why)
{
    (void)user;
    (void)id;
    snprintf(lost_why, sizeof(lost_why), "%s", why);
    __atomic_store_n(&lease_lost, 1, __ATOMIC_RELEASE);
}

static int cmd_lease_hold(int argc, char **argv)
{
    keel_etcd_lease *l;
    uint64_t start, end;

    if (argc != 3)
        die("lease-hold TTL KEY SECS");
    OK(keel_etcd_lease_new(client, atoll(argv[0]), on_lost, NULL, &l, &err));
    OK(keel_etcd_put(client, argv[1], "held", 4, keel_etcd_lease_id(l), NULL, &err));
    printf("lease %" PRId64 " %" PRIx64 " ttl %" PRId64 "\n", keel_etcd_lease_id(l),
           (uint64_t)keel_etcd_lease_id(l), keel_etcd_lease_ttl(l));
    fflush(stdout);
    start = now_ms();
    end = start + (uint64_t)atoll(argv[2]) * 1000;
    while (now_ms() < end && !stop_requested) {
        if (__atomic_load_n(&lease_lost, __ATOMIC_ACQUIRE)) {
            CHECK(!keel_etcd_lease_alive(l), "lost lease still reads alive");
            printf("lost after %llu ms: %s\n", (unsigned long long)(now_ms() - start), lost_why);
            fflush(stdout);
            keel_etcd_lease_free(l, 0, NULL);
            return 0;
        }
        sleep_ms(50);
    }
    CHECK(keel_etcd_lease_alive(l), "lease not alive yet not reported lost");
    OK(keel_etcd_lease_free(l, 1, &err));
    printf("released\n");
    return 0;
}

/* ---- watch / observe ---- */

static long watch_events;

static void on_watch(void *user, const struct keel_etcd_watch_batch *b)
{
    (void)user;
    if (b->reset) {
        printf("RESET %" PRId64 " %zu\n", b->revision, b->n);
        for (size_t i = 0; i < b->n; i++)
            printf("STATE %s %s\n", b->events[i].kv.key, (const char *)b->events[i].kv.value);
    } else {
        for (size_t i = 0; i < b->n; i++) {
            const struct keel_etcd_event *e = &b->events[i];

            if (e->type == KEEL_ETCD_PUT)
                printf("PUT %s %s %" PRId64 "\n", e->kv.key, (const char *)e->kv.value,
                       e->kv.mod_revision);
            else
                printf("DELETE %s %" PRId64 "\n", e->kv.key, e->kv.mod_revision);
        }
        __atomic_add_fetch(&watch_events, (long)b->n, __ATOMIC_RELAXED);
    }
    fflush(stdout);
}

static int cmd_watch(int argc, char **argv)
{
    struct keel_etcd_watch_opts o = {0};
    keel_etcd_stream *s;
    uint64_t end;
    long want;

    if (argc != 4)
        die("watch PREFIX REV SECS N");
    o.key = argv[0];
    o.prefix = 1;
    o.start_revision = atoll(argv[1]);
    end = now_ms() + (uint64_t)atoll(argv[2]) * 1000;
    want = atol(argv[3]);
    OK(keel_etcd_watch_start(client, &o, on_watch, NULL, &s, &err));
    while (now_ms() < end && !stop_requested &&
           __atomic_load_n(&watch_events, __ATOMIC_RELAXED) < want)
        sleep_ms(20);
    printf("CONNECTS %u\n", keel_etcd_stream_connects(s));
    keel_etcd_stream_stop(s);
    return 0;
}

static long observed;
static char observed_last[256];
static pthread_mutex_t observed_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_observe(void *user, const struct keel_etcd_kv *kv)
{
    (void)user;
    pthread_mutex_lock(&observed_lock);
    snprintf(observed_last, sizeof(observed_last), "%s", (const char *)kv->value);
    observed++;
    pthread_mutex_unlock(&observed_lock);
    printf("LEADER %s %" PRId64 "\n", (const char *)kv->value, kv->create_revision);
    fflush(stdout);
}

static int cmd_observe(int argc, char **argv)
{
    keel_etcd_stream *s;
    uint64_t end;
    long want;

    if (argc != 3)
        die("observe NAME SECS N");
    end = now_ms() + (uint64_t)atoll(argv[1]) * 1000;
    want = atol(argv[2]);
    OK(keel_etcd_observe_start(client, argv[0], on_observe, NULL, &s, &err));
    while (now_ms() < end && !stop_requested && __atomic_load_n(&observed, __ATOMIC_RELAXED) < want)
        sleep_ms(20);
    keel_etcd_stream_stop(s);
    return 0;
}

/* Wait up to `ms` for the observer to report `value`. */
static int wait_observed(const char *value, unsigned ms)
{
    uint64_t end = now_ms() + ms;

    while (now_ms() < end) {
        int seen;

        pthread_mutex_lock(&observed_lock);
        seen = strcmp(observed_last, value) == 0;
        pthread_mutex_unlock(&observed_lock);
        if (seen)
            return 1;
        sleep_ms(20);
    }
    return 0;
}

/* ---- election ---- */

struct campaign_job {
    const char *name;
    const char *value;
    int64_t lease;
    int cancel_fd;
    struct keel_etcd_leader leader;
    struct keel_error err;
    int rc;
    int done; /* atomic */
};

static void *campaign_thread(void *arg)
{
    struct campaign_job *j = arg;

    keel_error_init(&j->err);
    j->rc = keel_etcd_campaign(client, j->name, j->value, strlen(j->value), j->lease, j->cancel_fd,
                               &j->leader, &j->err);
    __atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static int wait_done(struct campaign_job *j, unsigned ms)
{
    uint64_t end = now_ms() + ms;

    while (now_ms() < end && !__atomic_load_n(&j->done, __ATOMIC_ACQUIRE))
        sleep_ms(10);
    return __atomic_load_n(&j->done, __ATOMIC_ACQUIRE);
}

static int cmd_election(int argc, char **argv)
{
    const char *name;
    keel_etcd_lease *la, *lb, *lc;
    struct keel_etcd_leader a;
    struct keel_etcd_kv kv;
    struct campaign_job jb = {0};
    keel_etcd_stream *obs;
    pthread_t th;
    uint64_t one = 1, t0;
    int64_t dead;
    int rc;

    if (argc != 1)
        die("election NAME");
    name = argv[0];
    rc = keel_etcd_election_leader(client, name, &kv, &err);
    CHECK(rc == KEEL_ENOTFOUND, "leader of an empty election: %s", keel_err_name(rc));
    OK(keel_etcd_lease_new(client, 5, NULL, NULL, &la, &err));
    OK(keel_etcd_lease_new(client, 5, NULL, NULL, &lb, &err));
    OK(keel_etcd_campaign(client, name, "A", 1, keel_etcd_lease_id(la), -1, &a, &err));
    CHECK(a.rev > 0 && a.lease == keel_etcd_lease_id(la), "campaign A: rev %" PRId64, a.rev);
    OK(keel_etcd_election_leader(client, name, &kv, &err));
    CHECK(strcmp((char *)kv.value, "A") == 0 && kv.create_revision == a.rev &&
              strcmp(kv.key, a.key) == 0,
          "leader after A won: '%s' rev %" PRId64, (char *)kv.value, kv.create_revision);
    keel_etcd_kv_release(&kv);
    OK(keel_etcd_observe_start(client, name, on_observe, NULL, &obs, &err));
    CHECK(wait_observed("A", 5000), "observe did not report A");
    OK(keel_etcd_proclaim(client, &a, "A2", 2, &err));
    CHECK(wait_observed("A2", 5000), "observe did not report the proclaimed value");

    /* B blocks while A leads, and a cancel ends its campaign at once. */
    jb.name = name;
    jb.value = "B";
    jb.lease = keel_etcd_lease_id(lb);
    jb.cancel_fd = eventfd(0, EFD_CLOEXEC);
    pthread_create(&th, NULL, campaign_thread, &jb);
    CHECK(!wait_done(&jb, 1500), "B won while A leads: %s", jb.err.msg);
    t0 = now_ms();
    CHECK(write(jb.cancel_fd, &one, sizeof(one)) == sizeof(one), "eventfd write");
    CHECK(wait_done(&jb, 2000), "canceled campaign did not return");
    pthread_join(th, NULL);
    CHECK(jb.rc == KEEL_ECANCELED, "canceled campaign returned %s", keel_err_name(jb.rc));
    printf("cancel took %llu ms\n", (unsigned long long)(now_ms() - t0));
    close(jb.cancel_fd);

    /*
     * B campaigns again; A resigns; B wins with a higher revision.  Under a
     * new lease: etcd removes the canceled campaign's key (named by its
     * lease) some time after the cancel, and would take a new key of the
     * same name with it.
     */
    OK(keel_etcd_lease_new(client, 5, NULL, NULL, &lc, &err));
    jb.lease = keel_etcd_lease_id(lc);
    jb.cancel_fd = -1;
    jb.done = 0;
    pthread_create(&th, NULL, campaign_thread, &jb);
    CHECK(!wait_done(&jb, 500), "B won while A leads");
    OK(keel_etcd_resign(client, &a, &err));
    CHECK(wait_done(&jb, 5000), "B did not win after A resigned");
    pthread_join(th, NULL);
    CHECK(jb.rc == 0 && jb.leader.rev > a.rev, "B's campaign: %s rev %" PRId64, jb.err.msg,
          jb.leader.rev);
    OK(keel_etcd_election_leader(client, name, &kv, &err));
    CHECK(strcmp((char *)kv.value, "B") == 0, "leader after A resigned: '%s'", (char *)kv.value);
    keel_etcd_kv_release(&kv);
    CHECK(wait_observed("B", 5000), "observe did not report B");
    OK(keel_etcd_resign(client, &a, &err)); /* resigning again is harmless */
    keel_etcd_leader_release(&a);

    /* Campaigning with a lease that is gone fails clearly. */
    OK(keel_etcd_grant(client, 5, &dead, NULL, &err));
    OK(keel_etcd_revoke(client, dead, &err));
    rc = keel_etcd_campaign(client, name, "C", 1, dead, -1, &a, &err);
    CHECK(rc == KEEL_ENOTFOUND, "campaign with a revoked lease: %s (%s)", err.msg,
          keel_err_name(rc));

    keel_etcd_stream_stop(obs);
    OK(keel_etcd_resign(client, &jb.leader, &err));
    keel_etcd_leader_release(&jb.leader);
    keel_etcd_leader_release(&a);
    OK(keel_etcd_lease_free(la, 1, &err));
    OK(keel_etcd_lease_free(lb, 1, &err));
    OK(keel_etcd_lease_free(lc, 1, &err));
    printf("election ok\n");
    return 0;
}

/* ---- fence ---- */

struct election_job {
    keel_election *e;
    int64_t lease;
    int rc;
    int done;
};

static void *election_thread(void *arg)
{
    struct election_job *j = arg;
    struct keel_error e;

    keel_error_init(&e);
    j->rc = keel_election_campaign(j->e, j->lease, -1, &e);
    __atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static int cmd_fence(int argc, char **argv)
{
    const char *cluster, *p;
    keel_election *ea, *eb;
    keel_etcd_lease *lb;
    struct election_job jb = {0};
    struct keel_etcd_kv before, after;
    struct keel_etcd_kvs all_before, all_after;
    keel_etcd_txn *t;
    int64_t lease_a, epoch_a, epoch_b;
    pthread_t th;
    int rc;

    if (argc != 2)
        die("fence CLUSTER PREFIX");
    cluster = argv[0];
    p = argv[1];
    /* A's lease is never kept alive: it stands for a leader stopped past its TTL. */
    OK(keel_etcd_grant(client, 2, &lease_a, NULL, &err));
    OK(keel_election_new(client, cluster, "A", &ea, &err));
    OK(keel_election_campaign(ea, lease_a, -1, &err));
    epoch_a = keel_election_epoch(ea);
    CHECK(epoch_a > 0, "A has no epoch");
    OK(keel_election_put(ea, key_of(p, "x"), "a1", 2, &err));
    OK(keel_election_verify(ea, &err));

    OK(keel_etcd_lease_new(client, 5, NULL, NULL, &lb, &err));
    OK(keel_election_new(client, cluster, "B", &eb, &err));
    jb.e = eb;
    jb.lease = keel_etcd_lease_id(lb);
    pthread_create(&th, NULL, election_thread, &jb);
    for (int i = 0; i < 200 && !__atomic_load_n(&jb.done, __ATOMIC_ACQUIRE); i++)
        sleep_ms(50);
    pthread_join(th, NULL);
    CHECK(jb.done && jb.rc == 0, "B did not win after A's lease expired");
    epoch_b = keel_election_epoch(eb);
    CHECK(epoch_b > epoch_a, "B's epoch %" PRId64 " not above A's %" PRId64, epoch_b, epoch_a);

    /* A still believes it leads; nothing it writes may land. */
    OK(keel_etcd_get(client, key_of(p, "x"), &before, NULL, &err));
    OK(keel_etcd_range_prefix(client, "", NULL, &all_before, &err));
    CHECK(keel_election_epoch(ea) == epoch_a, "A forgot its epoch on its own");
    rc = keel_election_put(ea, key_of(p, "x"), "a2", 2, &err);
    CHECK(rc == KEEL_EEPOCH && strstr(err.msg, "deposed"), "deposed A's put: %s (%s)", err.msg,
          keel_err_name(rc));
    CHECK(keel_election_epoch(ea) == 0, "A still has an epoch after being fenced");
    /* ... not even through the else-branch of its own transaction. */
    t = keel_etcd_txn_new();
    keel_etcd_txn_compare(t, key_of(p, "x"), KEEL_ETCD_VERSION, KEEL_ETCD_EQUAL, 12345);
    keel_etcd_txn_put(t, KEEL_ETCD_ELSE, key_of(p, "y"), "a3", 2, 0);
    rc = keel_election_commit(ea, t, NULL, &err);
    CHECK(rc == KEEL_EEPOCH, "deposed A's txn: %s", keel_err_name(rc));
    OK(keel_etcd_get(client, key_of(p, "x"), &after, NULL, &err));
    CHECK(strcmp((char *)after.value, "a1") == 0 && after.mod_revision == before.mod_revision,
          "deposed leader changed '%s' to '%s'", after.key, (char *)after.value);
    keel_etcd_kv_release(&after);
    OK(keel_etcd_range_prefix(client, "", NULL, &all_after, &err));
    CHECK(all_after.revision == all_before.revision,
          "store revision moved from %" PRId64 " to %" PRId64 " during the fenced writes",
          all_before.revision, all_after.revision);
    keel_etcd_kvs_release(&all_before);
    keel_etcd_kvs_release(&all_after);
    keel_etcd_kv_release(&before);

    /* B's fenced writes, including the else-branch, go through. */
    OK(keel_election_commit(eb, t, NULL, &err));
    OK(keel_etcd_get(client, key_of(p, "y"), &after, NULL, &err));
    CHECK(strcmp((char *)after.value, "a3") == 0, "leader B's else-branch did not run");
    keel_etcd_kv_release(&after);
    keel_etcd_txn_free(t);
    OK(keel_election_put(eb, key_of(p, "x"), "b1", 2, &err));

    OK(keel_election_resign(eb, &err));
    keel_election_free(ea);
    keel_election_free(eb);
    OK(keel_etcd_lease_free(lb, 1, &err));
    OK(keel_etcd_delete(client, p, 1, NULL, NULL, &err));
    printf("fence ok (epochs %" PRId64 " -> %" PRId64 ")\n", epoch_a, epoch_b);
    return 0;
}

/* ---- members ---- */

static int cmd_member_join(int argc, char **argv)
{
    struct keel_member_opts o = {0};
    keel_member *m;
    uint64_t end;
    int rc;

    if (argc != 7)
        die("member-join CLUSTER ROLE ID ADDR TTL WAIT_MS SECS");
    o.cluster = argv[0];
    o.role = argv[1];
    o.id = argv[2];
    o.address = argv[3];
    o.ttl_s = atoll(argv[4]);
    o.wait_ms = (uint64_t)atoll(argv[5]);
    o.on_lost = on_lost;
    rc = keel_member_join(client, &o, &m, &err);
    if (rc != 0) {
        fprintf(stderr, "keel-etcd-check: %s\n", err.msg);
        return rc == KEEL_EEXIST ? 2 : 1;
    }
    printf("joined %s incarnation %" PRIu64 " lease %" PRId64 "\n", keel_member_key(m),
           keel_member_incarnation(m), keel_member_lease(m));
    fflush(stdout);
    end = now_ms() + (uint64_t)atoll(argv[6]) * 1000;
    while (now_ms() < end && !stop_requested && !__atomic_load_n(&lease_lost, __ATOMIC_ACQUIRE))
        sleep_ms(50);
    OK(keel_member_leave(m, &err));
    printf("left\n");
    return 0;
}

static int cmd_member_rejoin(int argc, char **argv)
{
    struct keel_member_opts o = {0};
    struct keel_member_info *list;
    struct keel_etcd_kv kv;
    keel_member *m;
    uint64_t inc1, t0;
    int64_t lease1;
    size_t n;

    if (argc != 2)
        die("member-rejoin CLUSTER ID");
    o.cluster = argv[0];
    o.role = "worker";
    o.id = argv[1];
    o.address = "127.0.0.1:9";
    o.ttl_s = 2;
    o.wait_ms = 0;
    o.on_lost = on_lost;
    OK(keel_member_join(client, &o, &m, &err));
    inc1 = keel_member_incarnation(m);
    lease1 = keel_member_lease(m);
    OK(keel_member_list(client, argv[0], "worker", &list, &n, &err));
    CHECK(n == 1 && strcmp(list[0].id, argv[1]) == 0 && list[0].incarnation == inc1 &&
              list[0].lease == lease1 && strcmp(list[0].address, "127.0.0.1:9") == 0 &&
              list[0].pid == getpid(),
          "member list after join");
    keel_member_list_free(list, n);

    /* Someone revokes our lease: the keep-alive sees it within TTL/3 and says so. */
    t0 = now_ms();
    OK(keel_etcd_revoke(client, lease1, &err));
    while (!__atomic_load_n(&lease_lost, __ATOMIC_ACQUIRE) && now_ms() - t0 < 5000)
        sleep_ms(20);
    CHECK(lease_lost, "loss not reported within 5 s");
    printf("loss seen after %llu ms: %s\n", (unsigned long long)(now_ms() - t0), lost_why);
    CHECK(!keel_member_alive(m), "member alive after its lease was revoked");

    OK(keel_member_rejoin(m, &err));
    CHECK(keel_member_alive(m), "not alive after rejoin");
    CHECK(keel_member_incarnation(m) > inc1 && keel_member_lease(m) != lease1,
          "rejoin kept incarnation %" PRIu64 " or lease", keel_member_incarnation(m));
    OK(keel_etcd_get(client, keel_member_key(m), &kv, NULL, &err));
    CHECK(kv.lease == keel_member_lease(m), "key not under the new lease");
    keel_etcd_kv_release(&kv);
    printf("rejoined: incarnation %" PRIu64 " -> %" PRIu64 "\n", inc1, keel_member_incarnation(m));
    OK(keel_member_leave(m, &err));
    OK(keel_member_list(client, argv[0], NULL, &list, &n, &err));
    CHECK(n == 0, "member still listed after leaving");
    keel_member_list_free(list, n);
    printf("member-rejoin ok\n");
    return 0;
}

/* ---- coordinator hooks ---- */

struct hook_log {
    pthread_mutex_t lock;
    char calls[64]; /* 'E' elected, 'L' lead, 'D' deposed */
    size_t n;
    int64_t epochs[8]; /* the epoch at each elected() */
    size_t nepochs;
    char last_why[256];
};

static void hook_note(struct hook_log *h, char what)
{
    pthread_mutex_lock(&h->lock);
    /* Collapse runs of ticks: "ELLLD" reads as "ELD". */
    if (h->n < sizeof(h->calls) - 1 && !(what == 'L' && h->n > 0 && h->calls[h->n - 1] == 'L'))
        h->calls[h->n++] = what;
    pthread_mutex_unlock(&h->lock);
}

static int hook_elected(void *user, keel_election *e, struct keel_error *herr)
{
    struct hook_log *h = user;

    pthread_mutex_lock(&h->lock);
    if (h->nepochs < 8)
        h->epochs[h->nepochs++] = keel_election_epoch(e);
    pthread_mutex_unlock(&h->lock);
    hook_note(h, 'E');
    /* Leader work writes through the fence. */
    return keel_election_put(e, "/hooks/work", "done", 4, herr);
}

static int hook_lead(void *user, keel_election *e, struct keel_error *herr)
{
    (void)e;
    (void)herr;
    hook_note(user, 'L');
    return 0;
}

static void hook_deposed(void *user, const char *why)
{
    struct hook_log *h = user;

    pthread_mutex_lock(&h->lock);
    snprintf(h->last_why, sizeof(h->last_why), "%s", why);
    pthread_mutex_unlock(&h->lock);
    hook_note(h, 'D');
}

static void *coordinator_thread(void *arg)
{
    struct keel_error e;

    keel_error_init(&e);
    if (keel_coordinator_run(arg, &e) != 0)
        die("coordinator run: %s", e.msg);
    return NULL;
}

static int hook_calls_are(struct hook_log *h, const char *want)
{
    int same;

    pthread_mutex_lock(&h->lock);
    same = strlen(want) == h->n && memcmp(h->calls, want, h->n) == 0;
    pthread_mutex_unlock(&h->lock);
    return same;
}

static int wait_calls(struct hook_log *h, const char *want, unsigned ms)
{
    uint64_t end = now_ms() + ms;

    while (now_ms() < end && !hook_calls_are(h, want))
        sleep_ms(20);
    return hook_calls_are(h, want);
}

static int cmd_hooks(int argc, char **argv)
{
    static struct hook_log h = {PTHREAD_MUTEX_INITIALIZER, {0}, 0, {0}, 0, {0}};
    struct keel_coordinator_hooks hooks = {&h, hook_elected, hook_lead, hook_deposed};
    struct keel_coordinator_opts o = {0};
    struct keel_etcd_kv kv;
    keel_coordinator *co;
    struct keel_buf member_key = KEEL_BUF_INIT;
    int64_t lease;
    pthread_t th;

    if (argc != 1)
        die("hooks CLUSTER");
    o.etcd = client;
    o.cluster = argv[0];
    o.id = "h1";
    o.address = "127.0.0.1:9";
    o.lease_ttl_s = 2;
    o.heartbeat_ms = 100;
    o.join_wait_ms = 0;
    OK(keel_coordinator_new(&o, &hooks, &co, &err));
    pthread_create(&th, NULL, coordinator_thread, co);
    CHECK(wait_calls(&h, "EL", 5000), "hooks after election: '%s'", h.calls);
    CHECK(keel_coordinator_state(co) == KEEL_COORD_LEADING, "state %s",
          keel_coordinator_state_name(keel_coordinator_state(co)));
    OK(keel_etcd_get(client, "/hooks/work", &kv, NULL, &err));
    keel_etcd_kv_release(&kv);

    /* The lease goes: deposed() with the reason, then a new leadership. */
    keel_key_member(&member_key, argv[0], "coordinator", "h1");
    OK(keel_etcd_get(client, keel_key_str(&member_key), &kv, NULL, &err));
    keel_buf_release(&member_key);
    lease = kv.lease;
    keel_etcd_kv_release(&kv);
    OK(keel_etcd_revoke(client, lease, &err));
    CHECK(wait_calls(&h, "ELDEL", 8000), "hooks after lease loss: '%s'", h.calls);
    /* Whichever sees it first: the keep-alive (lease lost) or a fenced write (deposed). */
    CHECK(strstr(h.last_why, "lease lost") != NULL || strstr(h.last_why, "deposed") != NULL,
          "deposed because '%s'", h.last_why);
    CHECK(h.nepochs == 2 && h.epochs[1] > h.epochs[0], "epochs %lld then %lld",
          (long long)h.epochs[0], (long long)h.epochs[1]);

    keel_coordinator_stop(co);
    pthread_join(th, NULL);
    CHECK(hook_calls_are(&h, "ELDELD") && strcmp(h.last_why, "shutting down") == 0,
          "hooks after stop: '%s' (%s)", h.calls, h.last_why);
    keel_coordinator_free(co);
    OK(keel_etcd_delete(client, "/hooks/", 1, NULL, NULL, &err));
    printf("hooks ok: %s\n", h.calls);
    return 0;
}

/* ---- the watched cluster view ---- */

static long cview_batches;

static void on_cview(void *user, keel_cview *v, const struct keel_etcd_watch_batch *b)
{
    (void)user;
    (void)v;
    (void)b;
    __atomic_add_fetch(&cview_batches, 1, __ATOMIC_RELAXED);
}

static void cview_put(const char *cluster, uint32_t shard, const char *value, int64_t *rev)
{
    struct keel_buf key = KEEL_BUF_INIT;

    keel_key_job_shard(&key, cluster, "j1", shard);
    OK(keel_etcd_put(client, keel_key_str(&key), value, strlen(value), 0, rev, &err));
    keel_buf_release(&key);
}

/* Wait up to 10 s for the view to reach revision `rev`. */
static void cview_wait(keel_cview *v, int64_t rev)
{
    uint64_t end = now_ms() + 10000;

    while (keel_cview_revision(v) < rev && now_ms() < end)
        sleep_ms(10);
    CHECK(keel_cview_revision(v) >= rev, "the view is at revision %lld, not %lld",
          (long long)keel_cview_revision(v), (long long)rev);
}

static int count_kv(void *user, const struct keel_etcd_kv *kv)
{
    (void)kv;
    (*(int *)user)++;
    return 0;
}

/* The value of shard `n` of job j1 in the view, or "-" when absent. */
static const char *cview_value(keel_cview *v, const char *cluster, uint32_t n, struct keel_buf *out)
{
    struct keel_buf key = KEEL_BUF_INIT;
    int rc;

    keel_key_job_shard(&key, cluster, "j1", n);
    rc = keel_cview_get(v, keel_key_str(&key), out, NULL);
    keel_buf_release(&key);
    if (rc == KEEL_ENOTFOUND)
        return "-";
    return (const char *)out->buf;
}

static int cmd_cview(int argc, char **argv)
{
    struct keel_buf prefix = KEEL_BUF_INIT, val = KEEL_BUF_INIT;
    const char *cluster;
    struct keel_cstate st;
    const struct keel_cstate_job *j;
    keel_cview *v;
    int64_t rev = 0;
    int n = 0;

    if (argc != 1)
        die("cview CLUSTER");
    cluster = argv[0];
    keel_key_prefix(&prefix, cluster);
    OK(keel_etcd_delete(client, keel_key_str(&prefix), 1, NULL, NULL, &err));
    cview_put(cluster, 0, "a", NULL);
    cview_put(cluster, 1, "b", &rev);

    /* The listing. */
    OK(keel_cview_start(client, cluster, on_cview, NULL, &v, &err));
    cview_wait(v, rev);
    CHECK(strcmp(cview_value(v, cluster, 0, &val), "a") == 0, "shard 0: '%s'",
          cview_value(v, cluster, 0, &val));
    keel_buf_add_str(&prefix, "jobs/j1/shards/");
    keel_cview_each(v, keel_key_str(&prefix), count_kv, &n);
    CHECK(n == 2, "%d shard keys in the view, not 2", n);

    /* Changes: a put, a delete, an update. */
    cview_put(cluster, 2, "c", NULL);
    cview_put(cluster, 1, "bb", NULL);
    {
        struct keel_buf key = KEEL_BUF_INIT;

        keel_key_job_shard(&key, cluster, "j1", 0);
        OK(keel_etcd_delete(client, keel_key_str(&key), 0, NULL, &rev, &err));
        keel_buf_release(&key);
    }
    cview_wait(v, rev);
    CHECK(strcmp(cview_value(v, cluster, 0, &val), "-") == 0, "deleted shard 0: '%s'",
          cview_value(v, cluster, 0, &val));
    CHECK(strcmp(cview_value(v, cluster, 1, &val), "bb") == 0, "shard 1: '%s'",
          cview_value(v, cluster, 1, &val));
    CHECK(strcmp(cview_value(v, cluster, 2, &val), "c") == 0, "shard 2: '%s'",
          cview_value(v, cluster, 2, &val));
    n = 0;
    keel_cview_each(v, keel_key_str(&prefix), count_kv, &n);
    CHECK(n == 2, "%d shard keys in the view, not 2", n);

    /* The snapshot sorts them out as a range read would. */
    keel_cview_snapshot(v, &st);
    CHECK(st.revision >= rev, "snapshot at %lld", (long long)st.revision);
    j = keel_cstate_job(&st, "j1");
    CHECK(j != NULL && j->nshards == 2 && j->shards[0].num == 1 && j->shards[1].num == 2,
          "snapshot: job j1 with %zu shard keys", j ? j->nshards : 0);
    keel_cstate_release(&st);
    CHECK(__atomic_load_n(&cview_batches, __ATOMIC_RELAXED) >= 2, "%ld batches",
          __atomic_load_n(&cview_batches, __ATOMIC_RELAXED));
    keel_cview_stop(v);
    keel_key_prefix(&prefix, cluster);
    OK(keel_etcd_delete(client, keel_key_str(&prefix), 1, NULL, NULL, &err));
    keel_buf_release(&prefix);
    keel_buf_release(&val);
    printf("cview ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"put", cmd_put},
        {"get", cmd_get},
        {"range", cmd_range},
        {"roundtrip", cmd_roundtrip},
        {"lease-hold", cmd_lease_hold},
        {"watch", cmd_watch},
        {"observe", cmd_observe},
        {"election", cmd_election},
        {"fence", cmd_fence},
        {"member-join", cmd_member_join},
        {"member-rejoin", cmd_member_rejoin},
        {"hooks", cmd_hooks},
        {"cview", cmd_cview},
    };
    struct keel_etcd_options o = {0};
    struct sigaction sa;
    int i = 1, rc;

    o.endpoints = getenv("ETCD_ENDPOINT");
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (strcmp(argv[i], "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (i + 1 >= argc)
            die("option '%s' needs a value", argv[i]);
        if (strcmp(argv[i], "--endpoints") == 0)
            o.endpoints = argv[i + 1];
        else if (strcmp(argv[i], "--ca") == 0)
            o.ca_file = argv[i + 1];
        else if (strcmp(argv[i], "--cert") == 0)
            o.cert_file = argv[i + 1];
        else if (strcmp(argv[i], "--key") == 0)
            o.key_file = argv[i + 1];
        else if (strcmp(argv[i], "--retry-timeout") == 0)
            o.retry_timeout_ms = (uint64_t)atoll(argv[i + 1]);
        else
            die("unknown option '%s'", argv[i]);
    }
    if (i >= argc) {
        fputs(usage_text, stderr);
        return 64;
    }
    keel_log_init("keel-etcd-check",
                  getenv("KEEL_CHECK_DEBUG") ? KEEL_LOG_LEVEL_DEBUG : KEEL_LOG_LEVEL_INFO, NULL);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    keel_error_init(&err);
    if (keel_etcd_new(&o, &client, &err) != 0) {
        fprintf(stderr, "keel-etcd-check: %s\n", err.msg);
        return 1;
    }
    for (size_t c = 0; c < sizeof(cmds) / sizeof(cmds[0]); c++) {
        if (strcmp(argv[i], cmds[c].name) == 0) {
            rc = cmds[c].fn(argc - i - 1, argv + i + 1);
            keel_etcd_free(client);
            return rc;
        }
    }
    fprintf(stderr, "keel-etcd-check: unknown command '%s'\n%s", argv[i], usage_text);
    keel_etcd_free(client);
    return 64;
}
