#!/usr/bin/env bash
# failover-cluster.sh - primaries SIGKILLed during training on a real local
# Keel cluster, for keel-bench-failover (bench/bench_failover.c), which runs
# it and reports the recovery times.
#
#   bench/failover-cluster.sh --bin DIR --job FILE [OPTIONS]
#
# Starts a cluster with scripts/cluster.sh in a temporary directory (etcd, 1
# coordinator, S servers, W workers, lease TTL T), submits the job with the
# replication asked for and an epoch count it will not reach, and once every
# range has an in-sync backup and the job moves, repeats K times:
#
#   1. wait until every range is in sync (while a job runs, neither replicas
#      nor primaries move for balance);
#   2. SIGKILL the server that leads the most ranges holding rows of the model
#      (`cluster.sh kill`), noting the wall-clock time just before;
#   3. wait for a survivor to log the first push it acknowledged in a range it
#      was promoted to lead ("range R: first push acknowledged as primary N ms
#      after promotion, at T ms since the epoch"), after the kill;
#   4. start the killed server again (same data directory).
#
# Then it stops the cluster and prints one JSON object on stdout:
#
#   {"servers": S, "workers": W, "replication": R, "ttl_ms": T, "startup_s": U,
#    "kills": [{"victim": "s2", "led": L, "kill_ms": K, "kill_cmd_ms": C,
#               "promoted_ms": P, "first_ack_ms": A, "resynced_ms": Y}, ...]}
#
# K is the wall-clock time (Unix ms) just before `cluster.sh kill` ran (C ms,
# which include its checks before the signal: K is early by at most that);
# P the earliest promotion at or after K among the survivors' logged first
# acknowledgements (their time minus the delay they log), A the earliest of those
# acknowledgements (0 when none came within the wait), and Y when every range
# was in sync again after the restart (0 when
# that did not happen within the wait).  Progress goes to stderr.
set -u
set -o pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CL_PROG=failover-cluster.sh
# shellcheck source=scripts/lib/cluster-common.sh
. "$top/scripts/lib/cluster-common.sh"

usage() {
    cat <<'EOF'
usage: bench/failover-cluster.sh --bin DIR --job FILE [OPTIONS]
SIGKILL the busiest primary of a training job K times on a fresh local
cluster, restarting it after each recovery, and print the times of each
kill, promotion and first acknowledged push as one JSON object on stdout.
Used by keel-bench-failover; see bench/README.md.

  --bin DIR          the Keel binaries (keel-server, keel-worker, ...)
  --job FILE         the job spec (its model must be softmax: or mlp:)
  --kills K          SIGKILLs, 1-100 (default 10)
  --servers S        servers, 2-8 (default 3)
  --workers W        workers, 1-8 (default 2)
  --replication R    the job's replication, 2-5 (default 2)
  --lease-ttl SEC    every node's lease TTL in seconds (default 3)
  --wait SEC         the longest wait for each step (default 90)
  -h, --help         show this help

Exit status: 0 (also when a kill saw no recovery: its times are 0), 1 when
the cluster or the job failed (the cluster's files are then kept), 64 usage.
EOF
}

bin='' job_file='' kills=10 servers=3 workers=2 replication=2 ttl=3 wait_s=90
while [ $# -gt 0 ]; do
    case $1 in
    --bin) bin=${2:-} && shift ;;
    --job) job_file=${2:-} && shift ;;
    --kills) kills=${2:-} && shift ;;
    --servers) servers=${2:-} && shift ;;
    --workers) workers=${2:-} && shift ;;
    --replication) replication=${2:-} && shift ;;
    --lease-ttl) ttl=${2:-} && shift ;;
    --wait) wait_s=${2:-} && shift ;;
    -h | --help) usage && exit 0 ;;
    *) cl_say "unknown argument '$1'; see --help" && exit 64 ;;
    esac
    shift
done
if [ -z "$bin" ] || [ ! -x "$bin/keel-server" ]; then
    cl_say "--bin: no keel-server in '$bin'"
    exit 64
fi
[ -f "$job_file" ] || { cl_say "--job: no file '$job_file'"; exit 64; }
[[ $kills =~ ^[1-9][0-9]?$|^100$ ]] || { cl_say "--kills: expected 1-100, got '$kills'"; exit 64; }
[[ $servers =~ ^[2-8]$ ]] || { cl_say "--servers: expected 2-8, got '$servers'"; exit 64; }
[[ $workers =~ ^[1-8]$ ]] || { cl_say "--workers: expected 1-8, got '$workers'"; exit 64; }
if ! [[ $replication =~ ^[2-5]$ ]] || ((replication > servers)); then
    cl_say "--replication: expected 2-$servers, got '$replication'"
    exit 64
fi
[[ $ttl =~ ^[1-9][0-9]?$ ]] || { cl_say "--lease-ttl: expected 1-99 seconds, got '$ttl'"; exit 64; }
[[ $wait_s =~ ^[1-9][0-9]{0,3}$ ]] || { cl_say "--wait: expected seconds, got '$wait_s'"; exit 64; }
bin=$(cd "$bin" && pwd -P)

say() { printf 'failover: %s\n' "$*" >&2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench-failover.XXXXXX") || { cl_say "cannot make a temporary directory"; exit 1; }
cdir=$tmp/cluster
up=0 failed=1

# shellcheck disable=SC2317 # trap handler
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$up" = 1 ]; then
        bash "$top/scripts/cluster.sh" down --dir "$cdir" --timeout 10 >/dev/null 2>&1 ||
            cl_say "stopping the cluster in $cdir failed"
    fi
    if [ "$failed" = 1 ] && [ "$status" != 130 ]; then
        cl_say "the cluster's files (logs in $cdir/logs) stay in $tmp"
    else
        rm -rf -- "$tmp"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'cl_say interrupted; exit 130' INT TERM

fail() {
    cl_say "$*"
    exit 1
}

ini() { sed -n "s/^$1 *= *//p" "$job_file" | head -n 1 | tr -d '\r'; }
now_ms() { date +%s%3N; }

job=$(ini name) shards=$(ini shards) model=$(ini model)
[ -n "$job" ] || fail "$job_file has no [job] name"
shards=${shards:-4}

# ---- the cluster and the job -------------------------------------------------------------

say "starting a cluster: 1 coordinator, $servers servers, $workers worker(s), lease TTL ${ttl} s"
t_up=$SECONDS
up=1
bash "$top/scripts/cluster.sh" up --dir "$cdir" --bin "$bin" --coordinators 1 \
    --servers "$servers" --workers "$workers" --shards "$shards" --replication "$replication" \
    --lease-ttl "${ttl}s" >/dev/null 2>"$tmp/up.log" || {
    cat "$tmp/up.log" >&2
    fail "the cluster did not start"
}
startup_s=$((SECONDS - t_up))
CL_DIR=$cdir
# shellcheck disable=SC1091
. "$cdir/cluster.env"
cl() { bash "$top/scripts/cluster.sh" "$@"; }

# The job runs until the cluster stops: more epochs than the kills can take.
spec=$tmp/job.ini
sed -e 's/^epochs *=.*/epochs = 1000/' -e "s/^replication *=.*/replication = $replication/" \
    "$job_file" >"$spec" || fail "cannot copy $job_file"
grep -q "^replication = $replication\$" "$spec" ||
    sed -i "s/^\[job\]\$/[job]\nreplication = $replication/" "$spec"
if ! grep -q "^replication = $replication\$" "$spec" || ! grep -q '^epochs = 1000$' "$spec"; then
    fail "cannot set the epochs and replication in $spec"
fi
"$bin/keelctl" --config "$cdir/keelctl.ini" job submit "$spec" >"$tmp/submit.log" 2>&1 || {
    cat "$tmp/submit.log" >&2
    fail "keelctl job submit failed"
}
say "submitted: $model, replication $replication"

# The ranges holding rows of the model: table t (from 1) of a softmax or MLP
# has as many rows as layer t has units, each row key (t << 48) | row.
row_ranges=$(python3 - "$model" <<'EOF'
import sys
kind, _, sizes = sys.argv[1].partition(":")
sizes = [int(x) for x in sizes.split("-")] if kind in ("softmax", "mlp") else []
M = (1 << 64) - 1
def range_of(key):
    z = (key + 0x9e3779b97f4a7c15) & M
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
    return (z ^ (z >> 31)) % 256
print(",".join(str(r) for r in sorted({range_of(t << 48 | row)
      for t in range(1, len(sizes)) for row in range(sizes[t])})))
EOF
) || fail "cannot work out the model's ranges"
[ -n "$row_ranges" ] || fail "model '$model': expected softmax:... or mlp:..."

# assignment_py EXPR: EXPR over the assignment `a` (and the row ranges `rr`), printed.
assignment_py() {
    cl_etcdctl get --print-value-only "/keel/$KEEL_CLUSTER_NAME/assignment" 2>/dev/null |
        python3 -c 'import json,sys
a = json.load(sys.stdin)
rr = [int(x) for x in sys.argv[2].split(",")]
print(eval(sys.argv[1]))' "$1" "$row_ranges" 2>/dev/null
}
# Every range with all its replicas, in sync, on servers that are members.
# (While a job runs neither replicas nor primaries move for balance: a
# restarted server is a backup until a kill makes it a primary again.)
settled() {
    local members
    members=$(cl_members | sed -n 's|^server/||p' | paste -sd, -)
    [ "$(assignment_py "all(len(r) == $replication and i == $replication and all(a['servers'][x] in '$members'.split(',') for x in r) for r, i in zip(a['ranges'], a['insync']))")" = True ]
}
# wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds.
wait_for() {
    local end=$(($(now_ms) + $1 * 1000))
    shift
    while ! "$@"; do
        (($(now_ms) < end)) || return 1
        sleep 0.2
    done
}
batches() {
    "$bin/keelctl" --config "$cdir/keelctl.ini" job show --json "$job" 2>/dev/null |
        python3 -c 'import json,sys
j = json.load(sys.stdin)
print(sum(p["pass"] * 1000000 + p["batch"] for p in j.get("positions") or []))' 2>/dev/null
}
moving_since() { local n; n=$(batches) && [ "${n:-0}" -gt "$1" ]; }

wait_for "$wait_s" settled || fail "the ranges did not all get in-sync replicas ($(assignment_py a | head -c 400))"
n0=$(batches)
wait_for "$wait_s" moving_since "$((${n0:-0} + 20))" || fail "the job does not move"

# The first acknowledgements logged by the servers in $@ for promotions at or
# after `since` (Unix ms), earliest first: "ACK_MS PROMOTED_MS SERVER RANGE".
# (A range promoted before the kill, by an earlier failover, and first pushed
# to after it is not this kill's doing.)
first_acks() {
    local since=$1 id
    shift
    for id in "$@"; do
        sed -n 's/.*range \([0-9]*\): first push acknowledged as primary \([0-9]*\) ms after promotion, at \([0-9]*\) ms since the epoch.*/\3 \2 \1/p' \
            "$cdir/logs/server-$id.log" 2>/dev/null |
            awk -v since="$since" -v id="$id" '$1 - $2 >= since { printf "%.0f %.0f %s %d\n", $1, $1 - $2, id, $3 }'
    done | sort -n
}

# ---- the kills ---------------------------------------------------------------------------

ids=()
for ((i = 1; i <= servers; i++)); do ids+=("s$i"); done
results=()
for ((k = 1; k <= kills; k++)); do
    wait_for "$wait_s" settled || say "kill $k: the ranges are not all in sync after $wait_s s; killing anyway"
    n0=$(batches)
    wait_for 30 moving_since "$((${n0:-0} + 5))" || say "kill $k: the job is not moving"
    victim=$(assignment_py 'max(a["servers"], key=lambda s: sum(a["servers"][a["ranges"][r][0]] == s for r in rr))')
    led=$(assignment_py "sum(a['servers'][a['ranges'][r][0]] == '$victim' for r in rr)")
    [ -n "$victim" ] || fail "kill $k: no primary to kill"
    survivors=()
    for id in "${ids[@]}"; do [ "$id" = "$victim" ] || survivors+=("$id"); done
    t_kill=$(now_ms)
    cl kill --dir "$cdir" server "$victim" >/dev/null 2>"$tmp/kill.log" ||
        { cat "$tmp/kill.log" >&2; fail "kill $k: cluster.sh kill server $victim failed"; }
    kill_cmd_ms=$(($(now_ms) - t_kill))
    ack_ms=0 prom_ms=0
    got_ack() { [ -n "$(first_acks "$t_kill" "${survivors[@]}" | head -n 1)" ]; }
    if wait_for "$wait_s" got_ack; then
        read -r ack_ms _ _ _ <<<"$(first_acks "$t_kill" "${survivors[@]}" | head -n 1)"
        prom_ms=$(first_acks "$t_kill" "${survivors[@]}" | awk 'NR == 1 || $2 < m { m = $2 } END { printf "%.0f\n", m }')
        say "kill $k of $kills: $victim (leading $led of the model's ranges); promoted after $((prom_ms - t_kill)) ms, first push acknowledged after $((ack_ms - t_kill)) ms"
    else
        say "kill $k of $kills: $victim: no push acknowledged by a promoted primary within $wait_s s"
    fi
    cl start --dir "$cdir" server "$victim" >/dev/null 2>"$tmp/start.log" ||
        { cat "$tmp/start.log" >&2; fail "kill $k: cluster.sh start server $victim failed"; }
    resynced_ms=0
    if wait_for "$wait_s" settled; then
        resynced_ms=$(now_ms)
        say "kill $k of $kills: $victim restarted, every range in sync again $(((resynced_ms - t_kill) / 1000)) s after the kill"
    fi
    results+=("{\"victim\": \"$victim\", \"led\": ${led:-0}, \"kill_ms\": $t_kill, \"kill_cmd_ms\": $kill_cmd_ms, \"promoted_ms\": ${prom_ms:-0}, \"first_ack_ms\": ${ack_ms:-0}, \"resynced_ms\": $resynced_ms}")
done

state=$("$bin/keelctl" --config "$cdir/keelctl.ini" job show --json "$job" 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null)
[ "$state" = running ] || fail "the job is '$state' after the kills, not running"

((${#results[@]} == kills)) || fail "${#results[@]} of $kills kills measured"
kills_json=$(IFS=,; printf '%s' "${results[*]}")
printf '{"servers": %d, "workers": %d, "replication": %d, "ttl_ms": %d, "startup_s": %d, "kills": [%s]}\n' \
    "$servers" "$workers" "$replication" "$((ttl * 1000))" "$startup_s" "$kills_json"
failed=0
say "stopping the cluster"
