/*
 * ctl_etcd.c - what keelctl's etcd commands (job, status) share: a client
 * with short timeouts, job progress figures, ages and times for humans.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "keel/jobs.h"
#include "keelctl.h"

/* An operator waits: give up on an unreachable etcd after about a second. */
#define CTL_CONNECT_TIMEOUT_MS 1000
#define CTL_REQUEST_TIMEOUT_MS 3000
#define CTL_RETRY_TIMEOUT_MS   1000

int keelctl_etcd_open(const struct keel_config *config, keel_etcd **out, struct keel_error *err)
{
    struct keel_etcd_options o;
    int rc;

    keel_etcd_options_from_config(config, &o);
    if (o.connect_timeout_ms == 0 || o.connect_timeout_ms > CTL_CONNECT_TIMEOUT_MS)
        o.connect_timeout_ms = CTL_CONNECT_TIMEOUT_MS;
    if (o.request_timeout_ms == 0 || o.request_timeout_ms > CTL_REQUEST_TIMEOUT_MS)
        o.request_timeout_ms = CTL_REQUEST_TIMEOUT_MS;
    o.retry_timeout_ms = CTL_RETRY_TIMEOUT_MS;
    if ((rc = keel_etcd_new(&o, out, err)) != 0)
        return rc;
    keel_etcd_set_retry_timeout(*out, CTL_RETRY_TIMEOUT_MS);
    return 0;
}

int keelctl_etcd_fail(const char *what, const struct keel_config *config,
                      const struct keel_error *err)
{
    if (err->code == KEEL_EUNAVAILABLE)
        fprintf(stderr, "keelctl %s: etcd is unreachable at %s: %s\n", what, config->etcd_endpoints,
                err->msg);
    else
        fprintf(stderr, "keelctl %s: %s\n", what, err->msg);
    return KEEL_EXIT_FAILURE;
}

void keelctl_job_progress(const struct keel_cstate_job *j, struct keelctl_progress *p)
{
    struct keel_shard_table t;

    memset(p, 0, sizeof(*p));
    if (!j->spec_ok)
        return;
    p->shards = j->spec.shards;
    p->epochs = j->spec.epochs;
    p->passes_total = (uint64_t)j->spec.shards * j->spec.epochs;
    if (keel_cstate_shards(j, &t, NULL, NULL) != 0) {
        p->unreadable = 1;
        return;
    }
    keel_shards_summary(&t, &p->shards_done, &p->passes_done);
    for (uint32_t i = 0; i < t.nshards; i++)
        p->leased += t.shards[i].owner[0] != '\0';
    keel_shards_release(&t);
}

void keelctl_format_age(int64_t ms, char *out, size_t n)
{
    int64_t s = ms / 1000;

    if (ms < 0)
        snprintf(out, n, "-");
    else if (s < 60)
        snprintf(out, n, "%" PRId64 ".%" PRId64 "s", s, (ms % 1000) / 100);
    else if (s < 3600)
        snprintf(out, n, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(out, n, "%" PRId64 "h%02" PRId64 "m", s / 3600, (s / 60) % 60);
    else
        snprintf(out, n, "%" PRId64 "d%02" PRId64 "h", s / 86400, (s / 3600) % 24);
}

void keelctl_format_time(uint64_t ms, char *out, size_t n)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}
