/*
 * keys.c - the etcd keys of a Keel cluster (keys.h).
 */
#include <inttypes.h>
#include <string.h>

#include "keys.h"

/* ---- builders ------------------------------------------------------------------ */

void keel_key_prefix(struct keel_buf *out, const char *cluster)
{
    keel_buf_reset(out);
    keel_buf_addf(out, "/keel/%s/", cluster);
}

void keel_key_members(struct keel_buf *out, const char *cluster, const char *role)
{
    keel_key_prefix(out, cluster);
    keel_buf_add_str(out, "members/");
    if (role != NULL && role[0] != '\0')
        keel_buf_addf(out, "%s/", role);
}

void keel_key_member(struct keel_buf *out, const char *cluster, const char *role, const char *id)
{
    keel_key_members(out, cluster, role);
    keel_buf_add_str(out, id);
}

void keel_key_election(struct keel_buf *out, const char *cluster)
{
    keel_key_prefix(out, cluster);
    keel_buf_add_str(out, "election/coordinator");
}

void keel_key_leader(struct keel_buf *out, const char *cluster)
{
    keel_key_prefix(out, cluster);
    keel_buf_add_str(out, "leader");
}

void keel_key_assignment(struct keel_buf *out, const char *cluster)
{
    keel_key_prefix(out, cluster);
    keel_buf_add_str(out, "assignment");
}

void keel_key_replicas(struct keel_buf *out, const char *cluster, const char *id)
{
    keel_key_prefix(out, cluster);
    keel_buf_add_str(out, "replicas/");
    if (id != NULL)
        keel_buf_add_str(out, id);
}

void keel_key_suspect(struct keel_buf *out, const char *cluster, const char *id)
{
    keel_key_prefix(out, cluster);
    keel_buf_add_str(out, "suspects/");
    if (id != NULL)
        keel_buf_add_str(out, id);
}

void keel_key_job_prefix(struct keel_buf *out, const char *cluster, const char *job)
{
    keel_key_prefix(out, cluster);
    keel_buf_addf(out, "jobs/%s/", job);
}

void keel_key_job_spec(struct keel_buf *out, const char *cluster, const char *job)
{
    keel_key_job_prefix(out, cluster, job);
    keel_buf_add_str(out, "spec");
}

void keel_key_job_state(struct keel_buf *out, const char *cluster, const char *job)
{
    keel_key_job_prefix(out, cluster, job);
    keel_buf_add_str(out, "state");
}

void keel_key_job_shard(struct keel_buf *out, const char *cluster, const char *job, uint32_t shard)
{
    keel_key_job_prefix(out, cluster, job);
    keel_buf_addf(out, "shards/%" PRIu32, shard);
}

void keel_key_job_progress(struct keel_buf *out, const char *cluster, const char *job,
                           uint32_t shard)
{
    keel_key_job_prefix(out, cluster, job);
    keel_buf_addf(out, "progress/%" PRIu32, shard);
}

void keel_key_job_eval(struct keel_buf *out, const char *cluster, const char *job, uint32_t pass,
                       const char *worker)
{
    keel_key_job_prefix(out, cluster, job);
    keel_buf_addf(out, "eval/%" PRIu32 "/%s", pass, worker);
}

/* ---- parsers ------------------------------------------------------------------- */

/* A decimal below 2^32 without sign or leading zeros at `s`; *end is past it. */
static int parse_u32(const char *s, uint32_t *out, const char **end)
{
    uint64_t v = 0;
    const char *p = s;

    if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9'))
        return -1;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX)
            return -1;
        p++;
    }
    *out = (uint32_t)v;
    *end = p;
    return 0;
}

/*
 * An id at `s` ending at `stop` ('/' or '\0'), copied into `out`
 * (KEEL_ID_MAX + 1 bytes); *end is at the stop character.
 */
static int parse_id(const char *s, char stop, char *out, const char **end)
{
    size_t n = 0;

    while (s[n] != '\0' && s[n] != '/') {
        if (n >= KEEL_ID_MAX)
            return -1;
        n++;
    }
    if (n == 0 || s[n] != stop)
        return -1;
    memcpy(out, s, n);
    out[n] = '\0';
    if (!keel_id_valid(out)) {
        out[0] = '\0';
        return -1;
    }
    *end = s + n;
    return 0;
}

/*
 * 1-16 lowercase hex digits, the whole of `s` (etcd's election keys:
 * <name>/<lease %x>), naming a lease etcd could grant: 1 to 2^63-1.
 */
static int parse_lease_hex(const char *s, int64_t *out)
{
    uint64_t v = 0;
    size_t n = 0;

    for (; s[n] != '\0'; n++) {
        char c = s[n];

        if (n >= 16)
            return -1;
        if (c >= '0' && c <= '9')
            v = v << 4 | (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v = v << 4 | (uint64_t)(c - 'a' + 10);
        else
            return -1;
    }
    if (n == 0 || v == 0 || v > INT64_MAX)
        return -1;
    *out = (int64_t)v;
    return 0;
}

enum keel_key_type keel_key_parse_job_rest(const char *rest, struct keel_key *out)
{
    const char *end;
    char worker[KEEL_ID_MAX + 1];
    uint32_t num;

    if (strcmp(rest, "spec") == 0)
        return out->type = KEEL_KEY_JOB_SPEC;
    if (strcmp(rest, "state") == 0)
        return out->type = KEEL_KEY_JOB_STATE;
    if (strncmp(rest, "shards/", 7) == 0 && parse_u32(rest + 7, &num, &end) == 0 && *end == '\0') {
        out->num = num;
        return out->type = KEEL_KEY_JOB_SHARD;
    }
    if (strncmp(rest, "progress/", 9) == 0 && parse_u32(rest + 9, &num, &end) == 0 &&
        *end == '\0') {
        out->num = num;
        return out->type = KEEL_KEY_JOB_PROGRESS;
    }
    if (strncmp(rest, "eval/", 5) == 0 && parse_u32(rest + 5, &num, &end) == 0 && *end == '/' &&
        parse_id(end + 1, '\0', worker, &end) == 0) {
        out->num = num;
        memcpy(out->id, worker, sizeof(worker));
        return out->type = KEEL_KEY_JOB_EVAL;
    }
    return out->type = KEEL_KEY_JOB_OTHER;
}

enum keel_key_type keel_key_parse_rel(const char *rel, struct keel_key *out)
{
    const char *end;

    memset(out, 0, sizeof(*out));
    if (strcmp(rel, "leader") == 0)
        return out->type = KEEL_KEY_LEADER;
    if (strcmp(rel, "assignment") == 0)
        return out->type = KEEL_KEY_ASSIGNMENT;
    if (strncmp(rel, "election/coordinator/", 21) == 0) {
        if (parse_lease_hex(rel + 21, &out->lease) == 0)
            return out->type = KEEL_KEY_CANDIDATE;
    } else if (strncmp(rel, "members/", 8) == 0) {
        if (parse_id(rel + 8, '/', out->role, &end) == 0 &&
            parse_id(end + 1, '\0', out->id, &end) == 0)
            return out->type = KEEL_KEY_MEMBER;
    } else if (strncmp(rel, "suspects/", 9) == 0) {
        if (parse_id(rel + 9, '\0', out->id, &end) == 0)
            return out->type = KEEL_KEY_SUSPECT;
    } else if (strncmp(rel, "replicas/", 9) == 0) {
        if (parse_id(rel + 9, '\0', out->id, &end) == 0)
            return out->type = KEEL_KEY_REPLICAS;
    } else if (strncmp(rel, "jobs/", 5) == 0) {
        if (parse_id(rel + 5, '/', out->job, &end) == 0 &&
            keel_key_parse_job_rest(end + 1, out) != KEEL_KEY_OTHER)
            return out->type;
    }
    memset(out, 0, sizeof(*out));
    return out->type = KEEL_KEY_OTHER;
}

const char *keel_key_rel(const char *key, const char *prefix)
{
    size_t n = strlen(prefix);

    return strncmp(key, prefix, n) == 0 ? key + n : NULL;
}

enum keel_key_type keel_key_parse(const char *key, const char *cluster, struct keel_key *out)
{
    size_t n = strlen(cluster);

    if (strncmp(key, "/keel/", 6) != 0 || n == 0 || strncmp(key + 6, cluster, n) != 0 ||
        key[6 + n] != '/') {
        memset(out, 0, sizeof(*out));
        return out->type = KEEL_KEY_OTHER;
    }
    return keel_key_parse_rel(key + 6 + n + 1, out);
}
