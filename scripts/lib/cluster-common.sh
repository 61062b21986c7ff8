# shellcheck shell=bash
# cluster-common.sh - what scripts/cluster.sh and scripts/demo.sh share about
# a local cluster directory.  Source it; it defines functions and variables
# prefixed cl_ / CL_ and changes no shell options.
#
# A cluster directory DIR holds (see docs/cluster.md):
#   cluster.env          KEY=VALUE lines (shell-quoted) written by `up`
#   nodes                one "ROLE ID PORT" line per node, in start order
#   certs/               the cluster CA, one pair per node, admin and etcd
#   conf/ROLE-ID.ini     each node's configuration
#   data/ROLE-ID/        each node's data directory
#   etcd/data/           etcd's data
#   logs/ROLE-ID.log     each node's log (logs/etcd.log for etcd)
#   pids/ROLE-ID.pid     the PID of each running process (pids/etcd.pid)
#   keelctl.ini          a keelctl configuration for the admin
#
# A recorded PID is only ever signalled after checking, in /proc, that the
# process is alive (not a zombie) and that its command line names this
# directory's file for it (its configuration, or etcd's data directory), so a
# stale PID file never leads to signalling somebody else's process.

# shellcheck disable=SC2034 # used by cluster.sh
CL_ETCD_BIN=${ETCD_BIN:-/usr/bin/etcd}
CL_ETCDCTL_BIN=${ETCDCTL_BIN:-/usr/bin/etcdctl}
CL_DIR=

cl_say() { printf '%s: %s\n' "${CL_PROG:-cluster.sh}" "$*" >&2; }
cl_die() {
    cl_say "$*"
    exit 1
}

# A loopback TCP port nobody listens on (scripts/lib/free_port.py).
cl_free_port() { python3 "$(dirname "${BASH_SOURCE[0]}")/free_port.py"; }

# cl_load DIR: check that DIR is a cluster directory and read its cluster.env.
cl_load() {
    local d=$1
    [ -d "$d" ] || cl_die "'$d' does not exist"
    CL_DIR=$(cd "$d" && pwd -P)
    [ -f "$CL_DIR/cluster.env" ] ||
        cl_die "'$d' is not a cluster directory (no cluster.env; make one with 'cluster.sh up --dir $d')"
    # shellcheck disable=SC1091
    . "$CL_DIR/cluster.env"
}

# cl_mark NAME: what the command line of process NAME ("etcd" or ROLE-ID)
# must contain for its recorded PID to be trusted.
cl_mark() {
    if [ "$1" = etcd ]; then
        printf '%s\n' "$CL_DIR/etcd/data"
    else
        printf '%s\n' "$CL_DIR/conf/$1.ini"
    fi
}

# cl_pid NAME: the PID recorded for NAME, or nothing.
cl_pid() {
    local f=$CL_DIR/pids/$1.pid p
    [ -f "$f" ] || return 0
    read -r p <"$f" || true
    case $p in '' | *[!0-9]*) return 0 ;; esac
    printf '%s\n' "$p"
}

# cl_pid_is_ours PID NAME: PID runs (not a zombie) and is NAME of this cluster.
cl_pid_is_ours() {
    local pid=$1 mark state cmd
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ] || return 1
    mark=$(cl_mark "$2")
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    case $cmd in *"$mark"*) return 0 ;; esac
    return 1
}

# cl_alive NAME: the recorded process of NAME is running.
cl_alive() { cl_pid_is_ours "$(cl_pid "$1")" "$1"; }

# cl_nodes: the "ROLE ID PORT" lines of the cluster's nodes.
cl_nodes() { cat "$CL_DIR/nodes"; }

# cl_etcdctl ARGS...: etcdctl v3 against the cluster's etcd, as the admin.
cl_etcdctl() {
    ETCDCTL_API=3 "$CL_ETCDCTL_BIN" --endpoints "$KEEL_ETCD_ENDPOINT" \
        --cacert "$CL_DIR/certs/ca.crt" --cert "$CL_DIR/certs/admin-admin.crt" \
        --key "$CL_DIR/certs/admin-admin.key" --dial-timeout 2s --command-timeout 5s "$@"
}

# cl_members: the member keys under /keel/<cluster>/members/, one a line,
# relative to it ("server/s1").  Empty when etcd does not answer.
cl_members() {
    cl_etcdctl get --prefix "/keel/$KEEL_CLUSTER_NAME/members/" --keys-only 2>/dev/null |
        sed -n "s|^/keel/$KEEL_CLUSTER_NAME/members/||p"
}

# cl_leader: the id of the coordinator the leader record names, or nothing.
cl_leader() {
    cl_etcdctl get --print-value-only "/keel/$KEEL_CLUSTER_NAME/leader" 2>/dev/null |
        sed -n 's/.*"id":"\([^"]*\)".*/\1/p' | head -n 1
}

# cl_stop SECONDS NAME...: SIGTERM the recorded process of every NAME that
# runs, wait up to SECONDS for all of them to exit, then SIGKILL what is left.
# Removes their PID files.  Prints one "NAME PID HOW" line per NAME, HOW being
# "stopped" (exited after SIGTERM), "killed" (needed SIGKILL) or
# "not-running".  Returns 1 if a process outlived SIGKILL (it cannot, short
# of a stuck kernel call), else 0.
cl_stop() {
    local limit=$1 name pid i left rc=0
    local -A pids=()
    shift
    for name in "$@"; do
        pid=$(cl_pid "$name")
        if cl_pid_is_ours "$pid" "$name"; then
            pids[$name]=$pid
            kill -TERM "$pid" 2>/dev/null
        else
            rm -f "$CL_DIR/pids/$name.pid"
            printf '%s - not-running\n' "$name"
        fi
    done
    for ((i = 0; i <= limit * 10; i++)); do
        left=0
        for name in "${!pids[@]}"; do
            cl_pid_is_ours "${pids[$name]}" "$name" && left=1
        done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    for name in "$@"; do
        [ -n "${pids[$name]:-}" ] || continue
        pid=${pids[$name]}
        if cl_pid_is_ours "$pid" "$name"; then
            kill -KILL "$pid" 2>/dev/null
            for ((i = 0; i < 50; i++)); do
                cl_pid_is_ours "$pid" "$name" || break
                sleep 0.1
            done
            if cl_pid_is_ours "$pid" "$name"; then
                printf '%s %s survived-sigkill\n' "$name" "$pid"
                rc=1
                continue
            fi
            printf '%s %s killed\n' "$name" "$pid"
        else
            printf '%s %s stopped\n' "$name" "$pid"
        fi
        rm -f "$CL_DIR/pids/$name.pid"
    done
    return $rc
}

# cl_job_progress KEELCTL CONFIG JOB EPOCHS BATCH_SIZE RECORDS_PER_SHARD,...
# A job's progress as KEY=VALUE lines, from `keelctl job show --json` (which
# reads and decodes the job's keys in etcd):
#   state=running            the job's state ("unreadable" when it does not decode)
#   reason=...               its reason
#   examples=N               training examples applied so far, over all shards
#   total=N                  examples of the whole job (epochs x dataset records)
#   shard.<n>=OWNER PASS BATCH   each shard's furthest known position (the
#                            furthest of the leader's record and the worker's
#                            report); OWNER reported it ("-" when none)
#   eval.pass=P              the newest pass with a test evaluation (-1: none)
#   eval.accuracy=A          mean test accuracy of that pass's evaluations,
#   eval.loss=L              and mean test loss, weighted by their examples
#   eval.workers=N           how many workers evaluated that pass
#   eval.examples=N          the most test records one of them measured
#   bad=KEY: WHY             a value that could not be read (one line each)
# Fails when keelctl does (etcd unreachable, no such job).
cl_job_progress() {
    local json
    json=$("$1" --config "$2" job show --json "$3" 2>/dev/null) || return 1
    python3 -c '
import json, sys

epochs, batch = int(sys.argv[1]), int(sys.argv[2])
records = [int(r) for r in sys.argv[3].split(",")]
j = json.loads(sys.stdin.read())
pos = {p["shard"]: p for p in j.get("positions") or []}
examples = 0
for n, r in enumerate(records):
    p = pos.get(n, {"pass": 0, "batch": 0})
    examples += epochs * r if p["pass"] >= epochs else p["pass"] * r + min(p["batch"] * batch, r)
print("state=%s" % j.get("state", ""))
print("reason=%s" % str(j.get("reason", "")).replace("\n", " "))
print("examples=%d" % examples)
print("total=%d" % (epochs * sum(records)))
for n in range(len(records)):
    p = pos.get(n, {"pass": 0, "batch": 0})
    print("shard.%d=%s %d %d" % (n, p.get("worker") or "-", p["pass"], p["batch"]))
e = j.get("latest_eval")
if e:
    print("eval.pass=%d" % e["pass"])
    print("eval.accuracy=%.4f" % e["accuracy"])
    print("eval.loss=%.4f" % e["loss"])
    print("eval.workers=%d" % e["workers"])
    print("eval.examples=%d" % e["examples"])
else:
    print("eval.pass=-1")
for b in j.get("problems") or []:
    print("bad=%s: %s" % (b["key"], b["error"]))
' "$4" "$5" "$6" <<<"$json"
}
