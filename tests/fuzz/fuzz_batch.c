/*
 * fuzz_batch.c - libFuzzer target for keel_worker_batch(), which turns the
 * records of a SHARD_DATA frame (bytes from a server) into the model's input.
 *
 * Input: byte 0 is the number of records n (0..15), byte 1 picks `from` and
 * byte 2 the count asked for; then n + 1 little-endian u32 offsets, then the
 * record bytes.  Whatever the bytes, the call returns an error or fills
 * exactly the rows asked for with finite values in range.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "worker.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NF 5
#define NC 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t offsets[17], labels[16];
    float x[16 * NF];
    struct keel_record_run run;
    struct keel_error err;
    uint32_t n, from, count;
    size_t head;

    if (size < 3)
        return 0;
    n = data[0] % 16;
    from = data[1] % 17;
    count = data[2] % 17;
    head = 3 + 4 * (size_t)(n + 1);
    if (size < head)
        return 0;
    for (uint32_t i = 0; i <= n; i++)
        memcpy(&offsets[i], data + 3 + 4 * i, 4);
    offsets[0] = 0;
    run = (struct keel_record_run){n, offsets, data + head, size - head};
    keel_error_init(&err);
    if (keel_worker_batch(&run, from, count, NF, NC, x, labels, &err) == 0) {
        if (from + count > n)
            abort();
        for (uint32_t i = 0; i < count; i++) {
            if (labels[i] >= NC)
                abort();
            for (uint32_t j = 0; j < NF; j++)
                if (!isfinite(x[i * NF + j]))
                    abort();
        }
    } else if (err.msg[0] == '\0') {
        abort();
    }
    return 0;
}
