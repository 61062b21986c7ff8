#!/usr/bin/env bash
# test_store_crash.sh BINDIR SRCDIR - SIGKILL a process writing log records,
# range snapshots and checkpoints into a real LMDB store at 50 random
# moments; after each kill the store must open, every snapshot and
# checkpoint must verify, and no partial snapshot or log record may be
# visible.  The seed is printed; set KEEL_CRASH_SEED to replay a run.
set -u
bindir=$1
. "$2/tests/lib/assert.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

seed=${KEEL_CRASH_SEED:-$(( ($(date +%s) ^ $$) % 1000000 + 1 ))}
echo "crash test seed: $seed (rerun with KEEL_CRASH_SEED=$seed)"
"$bindir/keelctl" checkpoint keygen --out "$tmp/cluster.key" >/dev/null

run "$bindir/keel-test-store" crash --store "$tmp/node" --key "$tmp/cluster.key" --kills 50 \
    --seed "$seed"
printf '%s\n' "$run_out"
expect_status 0 "crash loop (seed $seed)"
expect_out "crash test: seed $seed, 50 kills" "seed printed"
expect_out "crash test: 50 kills, every store consistent" "all kills checked"

# The store left behind is usable by the operator tool too.
run "$bindir/keelctl" checkpoint audit --store "$tmp/node"
expect_status 0 "audit chain after the kills"

finish
