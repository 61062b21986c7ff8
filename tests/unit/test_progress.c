/*
 * test_progress.c - workers' progress reports and evaluation results (their
 * JSON and key names), and the sorting out of a cluster's keys that the
 * leader and keelctl read (cstate), on keys made up here rather than read
 * from etcd.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "alloc.h"
#include "keel/cstate.h"
#include "keel/progress.h"

static struct keel_error err;

static void setup(void)
{
    keel_error_init(&err);
}

TestSuite(progress, .init = setup);
TestSuite(cstate, .init = setup);

/* ---- progress reports ------------------------------------------------------- */

/* The progress and eval codecs are tested in test_worker.c, beside their writer. */

/* ---- key names ------------------------------------------------------------------ */

struct key_case {
    char key[48];
    int kind;
    unsigned num;
    char worker[16];
};

static struct key_case keys[] = {
    {"shards/0", KEEL_JOB_KEY_SHARD, 0, ""},
    {"shards/4095", KEEL_JOB_KEY_SHARD, 4095, ""},
    {"progress/17", KEEL_JOB_KEY_PROGRESS, 17, ""},
    {"progress/4294967295", KEEL_JOB_KEY_PROGRESS, 4294967295u, ""},
    {"eval/3/w-1_x", KEEL_JOB_KEY_EVAL, 3, "w-1_x"},
    {"progress/4294967296", KEEL_JOB_KEY_OTHER, 0, ""},
    {"progress/017", KEEL_JOB_KEY_OTHER, 0, ""},
    {"progress/-1", KEEL_JOB_KEY_OTHER, 0, ""},
    {"progress/", KEEL_JOB_KEY_OTHER, 0, ""},
    {"progress/1/", KEEL_JOB_KEY_OTHER, 0, ""},
    {"shards/1x", KEEL_JOB_KEY_OTHER, 0, ""},
    {"eval/3/", KEEL_JOB_KEY_OTHER, 0, ""},
    {"eval/3/w.1", KEEL_JOB_KEY_OTHER, 0, ""},
    {"eval/x/w1", KEEL_JOB_KEY_OTHER, 0, ""},
    {"spec", KEEL_JOB_KEY_OTHER, 0, ""},
    {"state", KEEL_JOB_KEY_OTHER, 0, ""},
};

ParameterizedTestParameters(progress, job_keys_parse_exactly)
{
    return cr_make_param_array(struct key_case, keys, sizeof(keys) / sizeof(keys[0]));
}

ParameterizedTest(struct key_case *c, progress, job_keys_parse_exactly)
{
    char worker[KEEL_ID_MAX + 1] = "";
    uint32_t num = 0;

    cr_assert_eq((int)keel_job_key_parse(c->key, &num, worker), c->kind, "%s", c->key);
    if (c->kind != KEEL_JOB_KEY_OTHER)
        cr_assert_eq(num, c->num, "%s", c->key);
    if (c->kind == KEEL_JOB_KEY_EVAL)
        cr_assert_str_eq(worker, c->worker);
}

/* ---- cstate: sorting out a cluster's keys ------------------------------------------ */

static void add(struct keel_etcd_kvs *kvs, const char *key, const char *value, int64_t rev)
{
    struct keel_etcd_kv *kv;

    KEEL_REALLOC_ARRAY(kvs->kvs, kvs->n + 1);
    kv = &kvs->kvs[kvs->n++];
    memset(kv, 0, sizeof(*kv));
    kv->key = keel_strdup(key);
    kv->key_len = strlen(key);
    kv->value = (unsigned char *)keel_strdup(value);
    kv->value_len = strlen(value);
    kv->create_revision = rev;
    kv->mod_revision = rev;
}

static const char spec_j1[] =
    "{\"batch_size\":64,\"checkpoint_interval\":1000,\"consistency\":\"bsp\",\"dataset\":\"d1\","
    "\"epochs\":2,\"format\":1,\"init\":{\"method\":\"glorot\",\"seed\":1},\"model\":\"softmax:"
    "4-3\",\"name\":\"j1\",\"optimizer\":{\"lr\":0.01,\"type\":\"sgd\"},\"replication\":2,"
    "\"shards\":3}";

/* Keys as a prefix read returns them: sorted. */
static void cluster(struct keel_etcd_kvs *kvs)
{
    memset(kvs, 0, sizeof(*kvs));
    kvs->revision = 99;
    add(kvs, "/keel/t/assignment", "{}", 20);
    add(kvs, "/keel/t/election/coordinator/1a", "c2", 31);
    add(kvs, "/keel/t/election/coordinator/2b", "c1", 12);
    add(kvs, "/keel/t/jobs/j1/eval/1/w1", "{}", 50);
    add(kvs, "/keel/t/jobs/j1/progress/1", "{}", 51);
    add(kvs, "/keel/t/jobs/j1/progress/x", "{}", 51);
    add(kvs, "/keel/t/jobs/j1/shards/0",
        "{\"batch\":3,\"done\":false,\"incarnation\":7,\"owner\":\"w1\",\"pass\":1}", 40);
    add(kvs, "/keel/t/jobs/j1/shards/2", "{\"batch\":0,\"done\":true,\"owner\":null,\"pass\":2}",
        41);
    add(kvs, "/keel/t/jobs/j1/shards/9", "{\"batch\":0,\"done\":true,\"owner\":null,\"pass\":2}",
        42);
    add(kvs, "/keel/t/jobs/j1/spec", spec_j1, 30);
    add(kvs, "/keel/t/jobs/j1/state", "{\"changed_ms\":5,\"reason\":\"\",\"state\":\"running\"}",
        33);
    add(kvs, "/keel/t/jobs/j2/spec", "{\"name\":\"j2\"}", 60);
    add(kvs, "/keel/t/jobs/j2/state", "{\"state\":\"nonsense\"}", 60);
    add(kvs, "/keel/t/leader", "{\"id\":\"c1\"}", 13);
    add(kvs, "/keel/t/members/server/s1",
        "{\"role\":\"server\",\"id\":\"s1\",\"address\":\"127.0.0.1:7001\",\"incarnation\":4,"
        "\"start_time_ms\":1,\"pid\":2}",
        4);
    add(kvs, "/keel/t/members/server/s2", "not json", 5);
    add(kvs, "/keel/t/members/worker/w1",
        "{\"role\":\"worker\",\"id\":\"w9\",\"address\":\"\",\"incarnation\":7,"
        "\"start_time_ms\":1,\"pid\":3}",
        7);
    add(kvs, "/keel/t/members/worker/w2",
        "{\"role\":\"worker\",\"id\":\"w2\",\"address\":\"\",\"incarnation\":8,"
        "\"start_time_ms\":1,\"pid\":3}",
        8);
    add(kvs, "/keel/tx/members/worker/w3",
        "{\"role\":\"worker\",\"id\":\"w3\",\"address\":\"\",\"incarnation\":8,"
        "\"start_time_ms\":1,\"pid\":3}",
        9);
}

Test(cstate, sorts_out_leader_members_assignment_and_jobs)
{
    struct keel_etcd_kvs kvs;
    struct keel_cstate s;
    const struct keel_member_info *m;
    const struct keel_cstate_job *j;
    size_t n;

    cluster(&kvs);
    keel_cstate_parse(&s, "t", &kvs);
    cr_assert_eq(kvs.n, 0, "the keys were taken over");
    cr_assert_eq(s.revision, 99);
    cr_assert_not_null(s.leader);
    cr_assert_str_eq((const char *)s.leader->value, "c1", "the oldest candidate leads");
    cr_assert_eq(s.leader->create_revision, 12);
    cr_assert_not_null(s.leader_record);
    cr_assert_not_null(s.assignment);

    /* s2 does not decode, w1's value names another id, w3 is another cluster's. */
    cr_assert_eq(s.nmembers, 2);
    m = keel_cstate_members(&s, "server", &n);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(m[0].id, "s1");
    cr_assert_eq(m[0].incarnation, 4);
    m = keel_cstate_members(&s, "worker", &n);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(m[0].id, "w2");
    cr_assert_null(keel_cstate_members(&s, "coordinator", &n));
    cr_assert_eq(n, 0);

    cr_assert_eq(s.njobs, 2);
    j = keel_cstate_job(&s, "j1");
    cr_assert_not_null(j);
    cr_assert(j->spec_ok && j->status_ok, "%s", j->error);
    cr_assert_eq(j->status.state, KEEL_JOB_RUNNING);
    cr_assert_eq(j->spec.shards, 3);
    cr_assert_eq(j->nshards, 3);
    cr_assert_eq(j->nprogress, 1, "progress/x is not a progress key");
    cr_assert_eq(j->progress[0].num, 1);
    cr_assert_eq(j->neval, 1);
    cr_assert_str_eq(j->eval[0].worker, "w1");

    j = keel_cstate_job(&s, "j2");
    cr_assert_not_null(j);
    cr_assert(!j->spec_ok && !j->status_ok);
    cr_assert(strstr(j->error, "job 'j2': job spec: ") != NULL, "%s", j->error);
    cr_assert_null(keel_cstate_job(&s, "j3"));
    keel_cstate_release(&s);
}

Test(cstate, builds_the_shard_table_from_the_keys_present)
{
    struct keel_etcd_kvs kvs;
    struct keel_shard_table t;
    struct keel_cstate s;
    int64_t mods[3];

    cluster(&kvs);
    keel_cstate_parse(&s, "t", &kvs);
    cr_assert_eq(keel_cstate_shards(keel_cstate_job(&s, "j1"), &t, mods, &err), 0, "%s", err.msg);
    cr_assert_eq(t.nshards, 3);
    cr_assert_eq(t.epochs, 2);
    cr_assert_str_eq(t.shards[0].owner, "w1");
    cr_assert_eq(t.shards[0].pass, 1);
    cr_assert_eq(t.shards[0].batch, 3);
    cr_assert_eq(t.shards[1].owner[0], '\0', "a missing key is a fresh shard");
    cr_assert_eq(t.shards[1].pass, 0);
    cr_assert(t.shards[2].done);
    cr_assert_eq(mods[0], 40);
    cr_assert_eq(mods[1], 0);
    cr_assert_eq(mods[2], 41);
    keel_shards_release(&t);
    cr_assert_eq(keel_cstate_shards(keel_cstate_job(&s, "j2"), &t, NULL, &err), KEEL_EINVAL);
    keel_cstate_release(&s);
}

Test(cstate, a_corrupt_shard_is_named)
{
    struct keel_etcd_kvs kvs;
    struct keel_shard_table t;
    struct keel_cstate s;

    cluster(&kvs);
    free(kvs.kvs[6].value);
    kvs.kvs[6].value = (unsigned char *)keel_strdup("{\"batch\":0,\"done\":false,\"owner\":null,"
                                                    "\"pass\":7}");
    kvs.kvs[6].value_len = strlen((char *)kvs.kvs[6].value);
    keel_cstate_parse(&s, "t", &kvs);
    cr_assert_eq(keel_cstate_shards(keel_cstate_job(&s, "j1"), &t, NULL, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "job 'j1': shard 0: ") != NULL, "%s", err.msg);
    cr_assert_null(t.shards);
    keel_cstate_release(&s);
}
