/*
 * fuzz_keys.c - libFuzzer target for the etcd key parser (cluster/keys.h),
 * which reads keys that come from etcd.
 *
 * The input, up to its first NUL, is parsed as a key of cluster "c1".  A key
 * that is recognised must have well-formed parts, and the builder of its
 * type must give back exactly the input.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keys.h"

#define CLUSTER "c1"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_id(const char *id, const char *what, const char *key)
{
    size_t n = strlen(id);

    if (n == 0 || n > KEEL_ID_MAX ||
        strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                   "0123456789_-") != n) {
        fprintf(stderr, "key '%s' parsed with a bad %s '%s'\n", key, what, id);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_key k;
    char *key = malloc(size + 1);
    int rebuilt = 1;

    if (key == NULL)
        return 0;
    memcpy(key, data, size);
    key[size] = '\0';
    switch (keel_key_parse(key, CLUSTER, &k)) {
    case KEEL_KEY_MEMBER:
        check_id(k.role, "role", key);
        check_id(k.id, "id", key);
        keel_key_member(&b, CLUSTER, k.role, k.id);
        break;
    case KEEL_KEY_LEADER:
        keel_key_leader(&b, CLUSTER);
        break;
    case KEEL_KEY_ASSIGNMENT:
        keel_key_assignment(&b, CLUSTER);
        break;
    case KEEL_KEY_JOB_SPEC:
        check_id(k.job, "job", key);
        keel_key_job_spec(&b, CLUSTER, k.job);
        break;
    case KEEL_KEY_JOB_STATE:
        check_id(k.job, "job", key);
        keel_key_job_state(&b, CLUSTER, k.job);
        break;
    case KEEL_KEY_JOB_SHARD:
        check_id(k.job, "job", key);
        keel_key_job_shard(&b, CLUSTER, k.job, k.num);
        break;
    case KEEL_KEY_JOB_PROGRESS:
        check_id(k.job, "job", key);
        keel_key_job_progress(&b, CLUSTER, k.job, k.num);
        break;
    case KEEL_KEY_JOB_EVAL:
        check_id(k.job, "job", key);
        check_id(k.id, "worker", key);
        keel_key_job_eval(&b, CLUSTER, k.job, k.num, k.id);
        break;
    case KEEL_KEY_JOB_OTHER:
        check_id(k.job, "job", key);
        rebuilt = 0;
        break;
    case KEEL_KEY_CANDIDATE:
        if (k.lease <= 0) {
            fprintf(stderr, "key '%s' parsed with lease %lld\n", key, (long long)k.lease);
            abort();
        }
        rebuilt = 0;
        break;
    default:
        rebuilt = 0;
        break;
    }
    if (rebuilt && strcmp(keel_key_str(&b), key) != 0) {
        fprintf(stderr, "key '%s' rebuilt as '%s'\n", key, keel_key_str(&b));
        abort();
    }
    keel_buf_release(&b);
    free(key);
    return 0;
}
