/*
 * test_keys.c - the etcd key builders and their strict parsers (keys.h).
 */
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "keys.h"

#define ID64 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

/* Build with `fn`, parse back, return the parsed key. */
static struct keel_key round_trip(const struct keel_buf *b, enum keel_key_type want)
{
    struct keel_key k;

    cr_assert_eq(keel_key_parse(keel_key_str(b), "c1", &k), want, "'%s'", keel_key_str(b));
    return k;
}

Test(keys, builders)
{
    struct keel_buf b = KEEL_BUF_INIT;

    keel_key_prefix(&b, "c1");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/");
    keel_key_members(&b, "c1", NULL);
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/members/");
    keel_key_members(&b, "c1", "");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/members/");
    keel_key_members(&b, "c1", "worker");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/members/worker/");
    keel_key_member(&b, "c1", "server", "s1");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/members/server/s1");
    keel_key_election(&b, "c1");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/election/coordinator");
    keel_key_leader(&b, "c1");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/leader");
    keel_key_assignment(&b, "c1");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/assignment");
    keel_key_replicas(&b, "c1", NULL);
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/replicas/");
    keel_key_replicas(&b, "c1", "s_1");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/replicas/s_1");
    keel_key_suspect(&b, "c1", NULL);
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/suspects/");
    keel_key_suspect(&b, "c1", "s_1");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/suspects/s_1");
    keel_key_job_prefix(&b, "c1", "j1");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/jobs/j1/");
    keel_key_job_spec(&b, "c1", "j1");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/jobs/j1/spec");
    keel_key_job_state(&b, "c1", "j1");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/jobs/j1/state");
    keel_key_job_shard(&b, "c1", "j1", 4095);
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/jobs/j1/shards/4095");
    keel_key_job_progress(&b, "c1", "j1", 0);
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/jobs/j1/progress/0");
    keel_key_job_eval(&b, "c1", "j1", 4294967295u, "w_1");
    cr_assert_str_eq(keel_key_str(&b), "/keel/c1/jobs/j1/eval/4294967295/w_1");
    keel_buf_release(&b);
}

Test(keys, round_trips)
{
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_key k;

    keel_key_member(&b, "c1", "server", ID64);
    k = round_trip(&b, KEEL_KEY_MEMBER);
    cr_assert_str_eq(k.role, "server");
    cr_assert_str_eq(k.id, ID64);
    keel_key_leader(&b, "c1");
    round_trip(&b, KEEL_KEY_LEADER);
    keel_key_assignment(&b, "c1");
    round_trip(&b, KEEL_KEY_ASSIGNMENT);
    keel_key_replicas(&b, "c1", "s-1");
    k = round_trip(&b, KEEL_KEY_REPLICAS);
    cr_assert_str_eq(k.id, "s-1");
    cr_assert_eq(k.role[0], '\0');
    cr_assert_eq(k.job[0], '\0');
    keel_key_replicas(&b, "c1", ID64);
    k = round_trip(&b, KEEL_KEY_REPLICAS);
    cr_assert_str_eq(k.id, ID64);
    keel_key_suspect(&b, "c1", "s-2");
    k = round_trip(&b, KEEL_KEY_SUSPECT);
    cr_assert_str_eq(k.id, "s-2");
    keel_key_election(&b, "c1");
    keel_buf_add_str(&b, "/694d7f2a3b1c0e5f");
    k = round_trip(&b, KEEL_KEY_CANDIDATE);
    cr_assert_eq(k.lease, 0x694d7f2a3b1c0e5fLL);
    keel_key_job_spec(&b, "c1", "j-1");
    k = round_trip(&b, KEEL_KEY_JOB_SPEC);
    cr_assert_str_eq(k.job, "j-1");
    keel_key_job_state(&b, "c1", ID64);
    k = round_trip(&b, KEEL_KEY_JOB_STATE);
    cr_assert_str_eq(k.job, ID64);
    keel_key_job_shard(&b, "c1", "j1", 4294967295u);
    k = round_trip(&b, KEEL_KEY_JOB_SHARD);
    cr_assert_str_eq(k.job, "j1");
    cr_assert_eq(k.num, 4294967295u);
    keel_key_job_progress(&b, "c1", "j1", 7);
    k = round_trip(&b, KEEL_KEY_JOB_PROGRESS);
    cr_assert_eq(k.num, 7);
    keel_key_job_eval(&b, "c1", "j1", 3, ID64);
    k = round_trip(&b, KEEL_KEY_JOB_EVAL);
    cr_assert_eq(k.num, 3);
    cr_assert_str_eq(k.id, ID64);
    cr_assert_str_eq(k.job, "j1");
    keel_key_job_prefix(&b, "c1", "j1");
    keel_buf_add_str(&b, "checkpoints/3");
    k = round_trip(&b, KEEL_KEY_JOB_OTHER);
    cr_assert_str_eq(k.job, "j1");
    keel_buf_release(&b);
}

static const char *const rejected[] = {
    /* wrong prefix */
    "/keel/c2/leader",
    "/keel/c1leader",
    "/keel/c/leader",
    "/kee/c1/leader",
    "keel/c1/leader",
    "/keel//leader",
    "/keel/c1",
    "/keel/c1/",
    "",
    "/keel/c1/leader/",
    "/keel/c1/leaders",
    "/keel/c1/assignment/x",
    /* members */
    "/keel/c1/members/",
    "/keel/c1/members/server",
    "/keel/c1/members/server/",
    "/keel/c1/members//s1",
    "/keel/c1/members/server/s1/",
    "/keel/c1/members/server/s1/x",
    "/keel/c1/members/server/s.1",
    "/keel/c1/members/server/" ID64 "a",
    "/keel/c1/members/" ID64 "a/s1",
    /* replica reports: replicas/<id> and nothing else */
    "/keel/c1/replicas",
    "/keel/c1/replicas/",
    "/keel/c1/replicas//s1",
    "/keel/c1/replicas/s1/",
    "/keel/c1/replicas/s1/x",
    "/keel/c1/replicas/s.1",
    "/keel/c1/replicas/s 1",
    "/keel/c1/replicas/" ID64 "a",
    "/keel/c1/replica/s1",
    "/keel/c2/replicas/s1",
    /* suspects: suspects/<id> and nothing else */
    "/keel/c1/suspects",
    "/keel/c1/suspects/",
    "/keel/c1/suspects/s1/",
    "/keel/c1/suspects/s.1",
    "/keel/c1/suspects/" ID64 "a",
    /* election candidates */
    "/keel/c1/election/coordinator",
    "/keel/c1/election/coordinator/",
    "/keel/c1/election/coordinator/12G",
    "/keel/c1/election/coordinator/ABC",
    "/keel/c1/election/coordinator/12345678901234567",
    "/keel/c1/election/coordinator/1/2",
    "/keel/c1/election/coordinator/0",                /* no lease is 0 */
    "/keel/c1/election/coordinator/8000000000000000", /* above 2^63-1 */
    "/keel/c1/election/coordinator/ffffffffffffffff",
    "/keel/c1/election/other/12",
    /* jobs: bad job names */
    "/keel/c1/jobs/",
    "/keel/c1/jobs/spec",
    "/keel/c1/jobs//spec",
    "/keel/c1/jobs/j.1/spec",
    "/keel/c1/jobs/" ID64 "a/spec",
};

Test(keys, rejects_malformed_keys)
{
    for (size_t i = 0; i < sizeof(rejected) / sizeof(rejected[0]); i++) {
        struct keel_key k;

        memset(&k, 0x55, sizeof(k));
        cr_expect_eq(keel_key_parse(rejected[i], "c1", &k), KEEL_KEY_OTHER, "'%s'", rejected[i]);
        cr_expect_eq(k.job[0], '\0', "'%s'", rejected[i]);
        cr_expect_eq(k.id[0], '\0', "'%s'", rejected[i]);
    }
}

/* Parts after jobs/<job>/ that are no numbered key: a job's key of no known kind. */
static const char *const job_other[] = {
    "",
    "spec/",
    "state/x",
    "specs",
    "shards/",
    "shards/-1",
    "shards/+1",
    "shards/01",
    "shards/00",
    "shards/1x",
    "shards/1/",
    "shards/1/2",
    "shards/ 1",
    "shards/4294967296",
    "shards/99999999999999999999999",
    "progress/",
    "progress/x",
    "progress/007",
    "progress/4294967296",
    "eval/1",
    "eval/1/",
    "eval//w1",
    "eval/x/w1",
    "eval/01/w1",
    "eval/4294967296/w1",
    "eval/1/w1/",
    "eval/1/w1/x",
    "eval/1/w.1",
    "eval/1/" ID64 "a",
};

Test(keys, numbered_keys_are_strict)
{
    for (size_t i = 0; i < sizeof(job_other) / sizeof(job_other[0]); i++) {
        char rel[256];
        struct keel_key k;

        snprintf(rel, sizeof(rel), "jobs/j1/%s", job_other[i]);
        cr_expect_eq(keel_key_parse_rel(rel, &k), KEEL_KEY_JOB_OTHER, "'%s'", rel);
        cr_expect_str_eq(k.job, "j1", "'%s'", rel);
        cr_expect_eq(k.num, 0, "'%s'", rel);
    }
}

Test(keys, rel)
{
    cr_assert_str_eq(keel_key_rel("/keel/c1/leader", "/keel/c1/"), "leader");
    cr_assert_null(keel_key_rel("/keel/c10/leader", "/keel/c1/"));
    cr_assert_null(keel_key_rel("/keel/c1", "/keel/c1/"));
}
