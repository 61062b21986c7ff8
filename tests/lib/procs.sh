# procs.sh - what the integration tests that start processes share.
#
# Source it after assert.sh (and after etcd.sh when the test runs etcd).  It sets
#   tmp                      a new temporary directory for the test's files
#   pid                      an associative array, name -> PID, of the processes the
#                            test started; unset an entry once the test has reaped it
# and an EXIT trap, procs_cleanup, that SIGKILLs every PID in pid (only those),
# stops the test's etcd when etcd.sh is sourced, and removes $tmp (kept, and its
# path printed, when KEEP_TMP is set).  A test with
# more to undo sets its own EXIT trap and calls procs_cleanup from it.  And:
#   wait_for SECONDS CMD...  run CMD every 0.1 s until it succeeds (status 0), for
#                            at most SECONDS (status 1)
#   now_ms                   the Unix time in milliseconds

tmp=$(mktemp -d)
declare -A pid=()

procs_cleanup() {
    local p
    for p in "${pid[@]}"; do kill -KILL "$p" 2>/dev/null; done
    if declare -F etcd_stop >/dev/null; then etcd_stop; fi
    if [ -n "${KEEP_TMP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap procs_cleanup EXIT

wait_for() {
    local limit=$1 i
    shift
    for i in $(seq 1 $((limit * 10))); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

now_ms() { date +%s%3N; }
