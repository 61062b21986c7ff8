/*
 * etcd_lease.c - a lease kept alive by a background thread.
 *
 * The thread sends one keep-alive every TTL/3.  The lease's local deadline is
 * the send time of the last keep-alive that succeeded plus the TTL etcd gave
 * with it: after that etcd may have expired the lease (it certainly has, if it
 * kept running), so Keel treats the lease as lost.  The deadline is measured on
 * the monotonic clock when the request goes out, never when the reply comes
 * back, so a slow reply can only make the local view more pessimistic.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "etcd_internal.h"
#include "alloc.h"
#include "clock.h"
#include "log.h"

/* How soon a failed keep-alive is tried again (well inside TTL/3 for any TTL >= 2 s). */
#define RETRY_MS 250

struct keel_etcd_lease {
    keel_etcd *c;
    int64_t id;
    int64_t ttl;
    keel_etcd_lease_lost_fn *on_lost;
    void *user;
    int stop_fd;          /* eventfd: readable once the owner wants the thread gone */
    uint64_t deadline_ms; /* atomic: monotonic time the lease may be gone by */
    int lost;             /* atomic: 1 once reported lost */
    pthread_t thread;
};

static void lose(keel_etcd_lease *l, const char *why)
{
    if (__atomic_exchange_n(&l->lost, 1, __ATOMIC_SEQ_CST))
        return;
    KEEL_LOG_WARN("lease %lld lost: %s", (long long)l->id, why);
    if (l->on_lost)
        l->on_lost(l->user, l->id, why);
}

static void *keeper(void *arg)
{
    keel_etcd_lease *l = arg;
    int64_t ttl = l->ttl;
    uint64_t next = keel_clock_mono_ms() + (uint64_t)ttl * 1000 / 3;
    int failures = 0;

    for (;;) {
        uint64_t now = keel_clock_mono_ms();
        uint64_t deadline = __atomic_load_n(&l->deadline_ms, __ATOMIC_ACQUIRE);
        struct keel_error e;
        uint64_t sent;
        int rc;

        if (now < next && keel__etcd_sleep(next - now, l->stop_fd))
            break;
        sent = keel_clock_mono_ms();
        if (sent >= deadline) {
            lose(l, "no keep-alive succeeded within the lease's TTL");
            break;
        }
        keel_error_init(&e);
        rc = keel__etcd_keepalive_until(l->c, l->id, deadline, l->stop_fd, &ttl, &e);
        if (rc == KEEL_ECANCELED)
            break;
        if (rc == 0) {
            __atomic_store_n(&l->deadline_ms, sent + (uint64_t)ttl * 1000, __ATOMIC_RELEASE);
            next = sent + (uint64_t)ttl * 1000 / 3;
            if (failures)
                KEEL_LOG_INFO("lease %lld kept alive again (TTL %lld s)", (long long)l->id,
                              (long long)ttl);
            failures = 0;
            continue;
        }
        if (rc == KEEL_ENOTFOUND) {
            lose(l, e.msg);
            break;
        }
        if (failures++ == 0)
            KEEL_LOG_WARN("lease %lld: keep-alive failed: %s", (long long)l->id, e.msg);
        next = keel_clock_mono_ms() + RETRY_MS;
    }
    return NULL;
}

int keel_etcd_lease_new(keel_etcd *c, int64_t ttl_s, keel_etcd_lease_lost_fn *on_lost, void *user,
                        keel_etcd_lease **out, struct keel_error *err)
{
    keel_etcd_lease *l;
    uint64_t sent = keel_clock_mono_ms();
    int64_t id, ttl;
    int rc;

    *out = NULL;
    if ((rc = keel_etcd_grant(c, ttl_s, &id, &ttl, err)) != 0)
        return rc;
    l = keel_calloc(1, sizeof(*l));
    l->c = c;
    l->id = id;
    l->ttl = ttl;
    l->on_lost = on_lost;
    l->user = user;
    l->deadline_ms = sent + (uint64_t)ttl * 1000;
    l->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->stop_fd < 0) {
        rc = -errno;
        goto fail;
    }
    if ((rc = pthread_create(&l->thread, NULL, keeper, l)) != 0) {
        rc = -rc;
        close(l->stop_fd);
        goto fail;
    }
    KEEL_LOG_DEBUG("lease %lld granted, TTL %lld s", (long long)id, (long long)ttl);
    *out = l;
    return 0;
fail:
    (void)keel_etcd_revoke(c, id, NULL);
    free(l);
    return keel_err_set(err, rc, "cannot start the keep-alive of lease %lld: %s", (long long)id,
                        keel_strerror(rc));
}

int64_t keel_etcd_lease_id(const keel_etcd_lease *l)
{
    return l->id;
}

int64_t keel_etcd_lease_ttl(const keel_etcd_lease *l)
{
    return l->ttl;
}

int keel_etcd_lease_alive(const keel_etcd_lease *l)
{
    return !__atomic_load_n(&l->lost, __ATOMIC_ACQUIRE) &&
           keel_clock_mono_ms() < __atomic_load_n(&l->deadline_ms, __ATOMIC_ACQUIRE);
}

int keel_etcd_lease_free(keel_etcd_lease *l, int revoke, struct keel_error *err)
{
    uint64_t one = 1;
    int rc = 0;

    if (l == NULL)
        return 0;
    if (write(l->stop_fd, &one, sizeof(one)) != (ssize_t)sizeof(one))
        abort(); /* an eventfd write of 1 cannot fail short of a bug */
    pthread_join(l->thread, NULL);
    close(l->stop_fd);
    if (revoke) {
        struct keel_error e;

        /* Also when lost by the clock: etcd may still hold it and our keys. */
        keel_error_init(&e);
        rc = keel_etcd_revoke(l->c, l->id, &e);
        if (rc == KEEL_ENOTFOUND)
            rc = 0;
        else if (rc != 0 && err)
            *err = e;
    }
    free(l);
    return rc;
}
