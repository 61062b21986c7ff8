/*
 * range.h - parameter keys and the key -> range map.
 *
 * A key names one row of one table: `table_id << 48 | row`, so a table has at
 * most 2^48 rows and there are at most 65,535 tables (id 0 is never used).
 * The key space is cut into KEEL_PROTO_NRANGES (256) ranges by a 64-bit mix of
 * the whole key, so consecutive rows of a table spread over every range.
 *
 * Invariants:
 *  - keel_range_of() is a pure function of the key and is part of Keel's
 *    persistent format: servers, workers, snapshots and checkpoints all place
 *    rows by it, so it never changes between versions.
 *  - Its result is always below KEEL_PROTO_NRANGES.
 * Everything here is inline and thread-safe.
 */
#ifndef KEEL_RANGE_H
#define KEEL_RANGE_H

#include <stdint.h>

#include "keel/proto.h"

#define KEEL_KEY_TABLE_SHIFT 48
#define KEEL_KEY_ROW_MASK    ((UINT64_C(1) << KEEL_KEY_TABLE_SHIFT) - 1)
#define KEEL_KEY_MAX_TABLE   UINT16_MAX

/* The key of row `row` (below 2^48) of table `table_id`. */
static inline uint64_t keel_key_make(uint16_t table_id, uint64_t row)
{
    return (uint64_t)table_id << KEEL_KEY_TABLE_SHIFT | (row & KEEL_KEY_ROW_MASK);
}

static inline uint16_t keel_key_table(uint64_t key)
{
    return (uint16_t)(key >> KEEL_KEY_TABLE_SHIFT);
}

static inline uint64_t keel_key_row(uint64_t key)
{
    return key & KEEL_KEY_ROW_MASK;
}

/*
 * The range of `key`: the splitmix64 finalizer (an add of the golden-ratio
 * constant, then two xor-shift-multiply rounds and a final xor-shift) taken
 * modulo 256.  Every input bit affects every output bit, so the rows of a
 * table, which differ only in their low bits, land evenly on all ranges.
 */
static inline unsigned keel_range_of(uint64_t key)
{
    uint64_t z = key + UINT64_C(0x9e3779b97f4a7c15);

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    z ^= z >> 31;
    return (unsigned)(z % KEEL_PROTO_NRANGES);
}

#endif
