#!/usr/bin/env bash
# test.sh - Keel's whole test suite, from a fresh Debian 12 machine.
#
# Installs the Debian packages it needs, then:
#   1. the normal build (gcc, -Werror), all tests (ctest labels unit, integration);
#   2. the sanitizer build (ASan + UBSan), all tests again;
#   3. the fuzz build (clang + libFuzzer), each fuzz target for a bounded time;
#   4. formatting (clang-format) and static analysis (cppcheck).
#
# Environment:
#   KEEL_FUZZ_SECONDS   seconds per fuzz target (default 20)
#   KEEL_TEST_JOBS      ctest parallelism (default: number of cores)
#   KEEL_SKIP           space-separated steps to skip: asan fuzz lint
#   KEEL_ASAN_EXCLUDE   ctest -E regex of tests the sanitizer build leaves out
#                       (default: the five longest cluster runs, each 5-11
#                       minutes there; the faults they drill run under the
#                       sanitizers in shorter tests; "" runs all)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

fuzz_seconds=${KEEL_FUZZ_SECONDS:-20}
jobs=${KEEL_TEST_JOBS:-$(nproc)}
skip=" ${KEEL_SKIP:-} "
asan_exclude=${KEEL_ASAN_EXCLUDE-'^integration\.(chaos|etcd_outage|failover|replica_loss_replicas|stale_store)$'}
exclude=
started=$(date +%s)

step() { printf '\n=== %s ===\n' "$*"; }
skipped() { [[ "$skip" == *" $1 "* ]]; }

step "dependencies"
"$top/scripts/install-deps"
echo "all Debian packages present"

build_and_test() {
    local dir=$1
    shift
    cmake -S "$top" -B "$top/$dir" -DKEEL_WERROR=ON "$@" >/dev/null
    cmake --build "$top/$dir" -j "$(nproc)" >"$top/$dir/build-output.log" 2>&1 || {
        cat "$top/$dir/build-output.log"
        echo "test.sh: build in $dir failed" >&2
        return 1
    }
    (cd "$top/$dir" && ctest --output-on-failure -j "$jobs" ${exclude:+-E "$exclude"})
}

step "normal build and tests (build/)"
build_and_test build -DCMAKE_BUILD_TYPE=RelWithDebInfo

if ! skipped asan; then
    step "ASan + UBSan build and tests (build-asan/)${asan_exclude:+, leaving out $asan_exclude}"
    exclude=$asan_exclude ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        build_and_test build-asan -DCMAKE_BUILD_TYPE=Debug -DKEEL_SANITIZE=ON -DKEEL_BENCH=OFF
fi

if ! skipped fuzz; then
    step "fuzz targets, ${fuzz_seconds}s each (build-fuzz/)"
    CC=clang cmake -S "$top" -B "$top/build-fuzz" -DKEEL_FUZZ=ON -DKEEL_WERROR=ON \
        -DKEEL_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$top/build-fuzz" -j "$(nproc)" >"$top/build-fuzz/build-output.log" 2>&1 || {
        cat "$top/build-fuzz/build-output.log"
        exit 1
    }
    # One fuzzer per core at a time, each for the full time; findings go to the
    # build tree, never into the sources.
    fuzz_one() {
        local target=$1 name seeds corpus rc=0
        name=$(basename "$target")
        seeds="$top/tests/fixtures/${name#fuzz_}-corpus"
        corpus=$(mktemp -d)
        [ -d "$seeds" ] && cp "$seeds"/* "$corpus"/
        (cd "$top/build-fuzz" && "$target" -max_total_time="$fuzz_seconds" \
            -print_final_stats=1 "$corpus" >"$top/build-fuzz/$name.log" 2>&1) || rc=$?
        rm -rf "$corpus"
        if [ "$rc" -ne 0 ]; then
            tail -n 40 "$top/build-fuzz/$name.log"
            echo "test.sh: $name found a failure (reproducer in build-fuzz/)" >&2
            return 1
        fi
        echo "--- $name: $(grep -oE 'Done [0-9]+ runs in [0-9]+ second' \
            "$top/build-fuzz/$name.log" | tail -n 1)s (seeds: ${seeds#"$top"/})"
    }
    export -f fuzz_one
    export top fuzz_seconds
    printf '%s\n' "$top"/build-fuzz/fuzz/fuzz_* |
        xargs -P "$(nproc)" -I{} bash -c 'fuzz_one "$1"' _ {}
fi

if ! skipped lint; then
    step "formatting and static analysis"
    mapfile -t sources < <(git ls-files -- '*.c' '*.h' 2>/dev/null ||
        find include base wire net storage ml cluster coordinator server worker keelctl tests \
            bench -name '*.[ch]')
    clang-format --dry-run --Werror "${sources[@]}"
    echo "clang-format: ${#sources[@]} files clean"
    layers=(base wire net storage ml cluster coordinator server worker keelctl)
    cppcheck --quiet --error-exitcode=1 --enable=warning,portability --inline-suppr \
        --std=c11 -D__GNUC__ -D__BYTE_ORDER__=1234 -D__ORDER_LITTLE_ENDIAN__=1234 -I include \
        -I build/include "${layers[@]/#/-I}" include "${layers[@]}"
    echo "cppcheck: clean"
fi

printf '\ntest.sh: all steps passed in %ss\n' "$(($(date +%s) - started))"
