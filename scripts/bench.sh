#!/usr/bin/env bash
# bench.sh - build the benchmarks in Release mode and run one of them.
#
#   ./scripts/bench.sh NAME [--json] [--quick]   run build-bench/bin/keel-bench-NAME
#   ./scripts/bench.sh --list                    list the benchmarks
#
# The Release build lives in build-bench/ next to the normal build; it is
# configured the first time and brought up to date (quietly) on every run.
# Benchmarks are named after their sources, bench/bench_NAME.c.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build-bench"

usage() {
    cat <<USAGE
usage: $(basename "$0") NAME [--json] [--quick]
       $(basename "$0") --list
Builds a Release build in build-bench/ when needed and runs keel-bench-NAME
with the remaining arguments (see bench/README.md).
USAGE
}

# The benchmark names, one a line, from bench/bench_NAME.c.
list_benches() {
    local src name
    for src in "$root"/bench/bench_*.c; do
        [[ -e "$src" ]] || continue
        name="${src##*/bench_}"
        echo "${name%.c}"
    done
}

if [[ $# -eq 0 ]]; then
    usage >&2
    exit 2
fi
case "$1" in
-h | --help)
    usage
    exit 0
    ;;
--list)
    list_benches
    exit 0
    ;;
esac

name="$1"
shift
# grep reads the whole list (no -q): an early exit would fail the pipe (pipefail).
if ! list_benches | grep -xF -- "$name" >/dev/null; then
    echo "bench.sh: unknown benchmark '$name'; available: $(list_benches | paste -sd ' ' -)" >&2
    exit 2
fi

# Configure (quick when nothing changed: it also picks up new bench_*.c),
# then build.  The output goes to a log that is shown only when something fails.
log="$build/bench-build.log"
mkdir -p "$build"
if ! cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF \
    -DKEEL_BENCH=ON >"$log" 2>&1; then
    cat "$log" >&2
    echo "bench.sh: configuring $build failed" >&2
    exit 1
fi
if ! cmake --build "$build" --target "keel-bench-$name" -j "$(nproc 2>/dev/null || echo 2)" \
    >"$log" 2>&1; then
    cat "$log" >&2
    echo "bench.sh: building keel-bench-$name failed" >&2
    exit 1
fi

exec "$build/bin/keel-bench-$name" "$@"
