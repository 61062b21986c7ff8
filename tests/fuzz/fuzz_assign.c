/*
 * fuzz_assign.c - libFuzzer target for the assignment table's JSON decoder
 * and, through it, the rebalancer.
 *
 * Any input must decode or be refused with a message, never read out of
 * bounds.  A table that decodes must encode to canonical JSON that decodes
 * to the same table and encodes to the same bytes again.  Then the table,
 * however unbalanced, is rebalanced over its own servers, and the result must
 * have min(r, N) distinct replicas per range, every load within floor/ceil
 * of the mean and every replica in sync.  A copy goes through a failover in
 * which its first server died, and must still be a table that decodes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/assign.h"

/* In-sync counts and terms as every table has them; `all` when every replica must be in sync. */
static void check_insync(const keel_assign *a, int all)
{
    for (unsigned rg = 0; rg < KEEL_PROTO_NRANGES; rg++) {
        size_t c = keel_assign_replicas(a, rg, NULL, 0);
        unsigned in = keel_assign_insync(a, rg);
        uint64_t t = keel_assign_term(a, rg);

        if (c == 0 ? in != 0 || t != 0
                   : in < 1 || in > c || t > keel_assign_version(a) || (all && in != c)) {
            fprintf(stderr, "range %u: %u of %zu in sync, term %llu\n", rg, in, c,
                    (unsigned long long)t);
            abort();
        }
    }
}

/* keel_assign_failover() with the first server dead must leave a table that decodes. */
static void check_failover(keel_assign *a, const char **ids, size_t n)
{
    struct keel_buf out = KEEL_BUF_INIT;
    struct keel_error err;
    keel_assign *d = NULL;

    keel_error_init(&err);
    if (keel_assign_failover(a, keel_assign_replication(a), ids + (n > 0), n - (n > 0), NULL, 0,
                             NULL, &err) != 0) {
        fprintf(stderr, "failover of a decoded table failed: %s\n", err.msg);
        abort();
    }
    check_insync(a, 0);
    keel_assign_encode(a, &out);
    if (keel_assign_decode(out.buf, out.len, &d, &err) != 0) {
        fprintf(stderr, "a failover's table does not decode: %s\n", err.msg);
        abort();
    }
    keel_assign_free(d);
    keel_buf_release(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_balanced(const keel_assign *a)
{
    size_t n = keel_assign_server_count(a);
    unsigned r = keel_assign_replication(a), reff = r < n ? r : (unsigned)n;
    unsigned total = KEEL_PROTO_NRANGES * reff;

    for (unsigned rg = 0; rg < KEEL_PROTO_NRANGES; rg++) {
        const char *ids[KEEL_ASSIGN_MAX_REPLICATION];
        size_t c = keel_assign_replicas(a, rg, ids, KEEL_ASSIGN_MAX_REPLICATION);

        if (c != reff) {
            fprintf(stderr, "range %u has %zu replicas, want %u\n", rg, c, reff);
            abort();
        }
        for (size_t i = 0; i < c; i++)
            for (size_t j = 0; j < i; j++)
                if (strcmp(ids[i], ids[j]) == 0) {
                    fprintf(stderr, "range %u lists %s twice\n", rg, ids[i]);
                    abort();
                }
    }
    for (size_t i = 0; i < n; i++) {
        unsigned load;

        keel_assign_load(a, keel_assign_server(a, i), &load, NULL);
        if (load < total / n || load > (total + n - 1) / n) {
            fprintf(stderr, "server %s holds %u of %u (N=%zu)\n", keel_assign_server(a, i), load,
                    total, n);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_buf once = KEEL_BUF_INIT, twice = KEEL_BUF_INIT;
    struct keel_error err;
    keel_assign *a = NULL, *b = NULL;
    const char **ids;
    size_t n;

    keel_error_init(&err);
    if (keel_assign_decode(data, size, &a, &err) != 0) {
        if (a != NULL || err.msg[0] == '\0') {
            fprintf(stderr, "refused without a message or with a table\n");
            abort();
        }
        return 0;
    }
    keel_assign_encode(a, &once);
    if (keel_assign_decode(once.buf, once.len, &b, &err) != 0) {
        fprintf(stderr, "canonical form does not decode: %s\n", err.msg);
        abort();
    }
    keel_assign_encode(b, &twice);
    if (!keel_assign_equal(a, b) || once.len != twice.len ||
        memcmp(once.buf, twice.buf, once.len) != 0) {
        fprintf(stderr, "round trip changed the table\n");
        abort();
    }

    n = keel_assign_server_count(a);
    ids = calloc(n ? n : 1, sizeof(*ids));
    for (size_t i = 0; i < n; i++)
        ids[i] = keel_assign_server(b, i);
    if (keel_assign_update(a, ids, n, NULL, &err) != 0) {
        fprintf(stderr, "rebalancing a decoded table failed: %s\n", err.msg);
        abort();
    }
    check_balanced(a);
    check_insync(a, 1);
    check_failover(b, ids, n);
    free(ids);
    keel_assign_free(a);
    keel_assign_free(b);
    keel_buf_release(&once);
    keel_buf_release(&twice);
    return 0;
}
