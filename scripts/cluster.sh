#!/usr/bin/env bash
# cluster.sh - a local Keel cluster on loopback: etcd, coordinators, servers
# and workers, with fresh certificates, in one directory.
#
#   cluster.sh up     --dir DIR [options]   make and start a cluster
#   cluster.sh down   --dir DIR [--remove]  stop everything it started
#   cluster.sh status --dir DIR             each process, its PID, port, member key
#   cluster.sh kill   --dir DIR ROLE [ID]   SIGKILL one process (fault drills)
#   cluster.sh start  --dir DIR [ROLE [ID]] start it again (same config and data)
#   cluster.sh etcdctl --dir DIR ARGS...    etcdctl against the cluster's etcd
#
# Builds nothing: it runs the binaries in build/bin (or --bin DIR).  Every
# process it starts gets its PID recorded in DIR/pids; it signals only those,
# after checking in /proc that they are still what it started.  See
# docs/cluster.md.
set -u
set -o pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CL_PROG=cluster.sh
# shellcheck source=scripts/lib/cluster-common.sh
. "$top/scripts/lib/cluster-common.sh"

usage() {
    cat <<'EOF'
usage: cluster.sh COMMAND --dir DIR [OPTIONS]
A local Keel cluster on 127.0.0.1: its own etcd (mutual TLS), coordinators,
servers and workers, certificates, configurations, data and logs in DIR.

commands:
  up       make DIR, certificates and configurations; import the dataset;
           start etcd and every node; print the path of a keelctl config
  down     stop every process the cluster runs (SIGTERM, then SIGKILL)
  status   each process: role, id, PID, alive or not, port, member key
  kill     SIGKILL one process by its recorded PID (fault drills)
  start    start one stopped process again, or every stopped one
  etcdctl  run etcdctl against the cluster's etcd with the admin's certificate

Run 'cluster.sh COMMAND --help' for a command's options.
Exit status: 0 ok, 1 failure, 3 (status) something is not running,
64 usage error, 69 (start worker ID) keel-worker has nothing to run yet.
EOF
}

usage_up() {
    cat <<'EOF'
usage: cluster.sh up --dir DIR [OPTIONS]
Make DIR (new or empty), a cluster CA and one certificate per node, start a
private etcd and the nodes on free loopback ports, wait until every node is
registered in etcd and a coordinator leads, and print the path of a keelctl
configuration (DIR/keelctl.ini) on stdout.  Progress goes to stderr.

  -d, --dir DIR            the cluster directory (required)
      --coordinators N     coordinators c1..cN (default 2)
      --servers N          servers s1..sN (default 3)
      --workers N          workers w1..wN (default 2)
      --replication R      replicas of each key range that jobs should ask
                           for, 1-5 (default 1; recorded in DIR/cluster.env)
      --dataset NAME       fashion-mnist (default): import Fashion-MNIST's train
                           and test sets into every server as 'fashion-mnist'
                           and 'fashion-mnist-test'; none: import nothing
      --shards S           shards of the imported datasets (default: 2 per
                           worker, 4 without workers)
      --name NAME          the cluster's name (default local)
      --lease-ttl T        etcd lease TTL of every node (default 3s: a killed
                           node's member key goes within T)
      --log-level L        error, warn, info (default), debug or trace
      --bin DIR            where the binaries are (default: build/bin)
      --timeout S          seconds to wait for each step (default 60)
  -h, --help               show this help

Without a runnable keel-worker (it exits 69, "nothing to run yet"), up says
so, starts no workers and still succeeds.  On any other failure up stops
what it started, keeps DIR for its logs, and exits 1.
EOF
}

usage_down() {
    cat <<'EOF'
usage: cluster.sh down --dir DIR [--timeout S] [--remove]
Stop every process of the cluster in DIR: the nodes first (SIGTERM, SIGKILL
after S seconds, default 20), then etcd.  Processes already dead are skipped,
so down also cleans up a half-dead cluster.  DIR is kept (logs, data,
certificates), and 'cluster.sh start --dir DIR' starts the cluster again.

  -d, --dir DIR     the cluster directory
      --timeout S   seconds between SIGTERM and SIGKILL (default 20)
      --remove      remove DIR once everything has stopped
  -h, --help        show this help
EOF
}

usage_status() {
    cat <<'EOF'
usage: cluster.sh status --dir DIR
Print each process of the cluster in DIR (role, id, PID, whether it runs,
its port, whether its member key is in etcd), the member keys in etcd and
the leading coordinator.  Exit status 0 when every process runs and every
node is registered, 3 otherwise, 1 when DIR is not a cluster directory.

  -d, --dir DIR   the cluster directory
  -h, --help      show this help
EOF
}

usage_kill() {
    cat <<'EOF'
usage: cluster.sh kill --dir DIR ROLE ID
       cluster.sh kill --dir DIR etcd
SIGKILL one process of the cluster (coordinator, server or worker ID, or
etcd) by its recorded PID, and wait until it is gone.  Its member key stays in
etcd until its lease expires (the lease TTL, 3 s by default).

  -d, --dir DIR   the cluster directory
  -h, --help      show this help
EOF
}

usage_start() {
    cat <<'EOF'
usage: cluster.sh start --dir DIR ROLE ID
       cluster.sh start --dir DIR etcd
       cluster.sh start --dir DIR
Start a stopped process again with the same configuration, data directory,
certificates and port, and wait until it is registered (etcd: healthy).
Without ROLE, start everything that is not running, etcd first: after
'down' this restarts the whole cluster from its data.

  -d, --dir DIR     the cluster directory
      --timeout S   seconds to wait for registration (default 60)
  -h, --help        show this help
EOF
}

usage_etcdctl() {
    cat <<'EOF'
usage: cluster.sh etcdctl --dir DIR ARGS...
Run etcdctl (API v3) against the cluster's etcd with the admin certificate,
e.g. 'cluster.sh etcdctl --dir DIR get --prefix /keel/local/ --keys-only'.
EOF
}

usage_error() {
    cl_say "$1"
    echo "Run 'cluster.sh ${2:-}${2:+ }--help' for usage." >&2
    exit 64
}

# number NAME VALUE MIN MAX
number() {
    case $2 in '' | *[!0-9]*) usage_error "$1: expected a number, got '$2'" "$cmd" ;; esac
    if [ "$2" -lt "$3" ] || [ "$2" -gt "$4" ]; then
        usage_error "$1: must be between $3 and $4, got '$2'" "$cmd"
    fi
}

# ---- processes ------------------------------------------------------------------

# launch NAME CMD...: start CMD in its own session (so a terminal's Ctrl-C or
# hang-up does not reach it), stdin from /dev/null, output appended to
# DIR/logs/NAME.log, its PID in DIR/pids/NAME.pid.  setsid execs CMD in the
# same process (a background job is no process-group leader), so $! is CMD.
launch() {
    local name=$1 log
    shift
    log=$CL_DIR/logs/$name.log
    printf -- '---- cluster.sh: %s starting %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$log"
    rm -f "$CL_DIR/pids/$name.exit"
    setsid "$@" </dev/null >>"$log" 2>&1 &
    local pid=$!
    echo "$pid" >"$CL_DIR/pids/$name.pid"
    # Until the child has exec'd, its command line is this script's and
    # cl_alive would call it dead: wait for the exec (or its exit), up to 5 s.
    local i
    for ((i = 0; i < 50; i++)); do
        cl_pid_is_ours "$pid" "$name" && return 0
        [ -e "/proc/$pid" ] || return 0
        sleep 0.1
    done
}

# The last lines of NAME's log, indented, for error messages.
log_tail() { tail -n "${2:-15}" "$CL_DIR/logs/$1.log" 2>/dev/null | sed 's/^/    /' >&2; }

start_etcd() {
    local url=https://127.0.0.1:$KEEL_ETCD_CLIENT_PORT peer=http://127.0.0.1:$KEEL_ETCD_PEER_PORT
    launch etcd "$CL_ETCD_BIN" --name "keel-$KEEL_CLUSTER_NAME" --data-dir "$CL_DIR/etcd/data" \
        --listen-client-urls "$url" --advertise-client-urls "$url" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "keel-$KEEL_CLUSTER_NAME=$peer" \
        --cert-file "$CL_DIR/certs/etcd.crt" --key-file "$CL_DIR/certs/etcd.key" \
        --trusted-ca-file "$CL_DIR/certs/ca.crt" --client-cert-auth \
        --heartbeat-interval 100 --election-timeout 1000
}

# Wait until etcd answers a health check; 1 if it died or the time ran out.
wait_etcd() {
    local deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if ! cl_alive etcd; then
            cl_say "etcd exited during start-up; the end of logs/etcd.log:"
            log_tail etcd
            return 1
        fi
        cl_etcdctl endpoint health >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    cl_say "etcd not healthy after $timeout s; the end of logs/etcd.log:"
    log_tail etcd
    return 1
}

# member_rev NAME: the mod revision of node NAME's member key, or nothing.
member_rev() {
    cl_etcdctl get "/keel/$KEEL_CLUSTER_NAME/members/${1%%-*}/${1#*-}" -w json 2>/dev/null |
        sed -n 's/.*"mod_revision":\([0-9]*\).*/\1/p'
}

# start_node ROLE ID.  A key left by the node's previous run (its lease has not
# expired yet) is remembered, so that wait_registered waits for a new one.
declare -A old_rev=()
start_node() {
    old_rev[$1-$2]=$(member_rev "$1-$2")
    launch "$1-$2" "$KEEL_BIN_DIR/keel-$1" --config "$CL_DIR/conf/$1-$2.ini"
}

# registered_anew NAME MEMBERS: NAME's key is among MEMBERS and is not the
# one its previous run left.
registered_anew() {
    grep -qx "${1%%-*}/${1#*-}" <<<"$2" || return 1
    [ -z "${old_rev[$1]:-}" ] || [ "$(member_rev "$1")" != "${old_rev[$1]}" ]
}

# wait_registered NAME...: wait until every node NAME (ROLE-ID) has its member
# key in etcd.  A node that exits instead is reported with its exit status and
# log; a worker exiting 69 is only noted (no_workers=1).  Returns 1 if any
# node failed or the time ran out.
no_workers=0
wait_registered() {
    local deadline=$((SECONDS + timeout)) members name pid status rc=0
    local -a pending=("$@") next
    while ((${#pending[@]})); do
        members=$(cl_members)
        next=()
        for name in "${pending[@]}"; do
            if registered_anew "$name" "$members"; then
                cl_say "${name%%-*} ${name#*-} registered (pid $(cl_pid "$name"), port $(node_port "$name"))"
                continue
            fi
            pid=$(cl_pid "$name")
            if ! cl_pid_is_ours "$pid" "$name"; then
                wait "$pid" 2>/dev/null
                status=$?
                rm -f "$CL_DIR/pids/$name.pid"
                echo "$status" >"$CL_DIR/pids/$name.exit"
                if [ "${name%%-*}" = worker ] && [ "$status" = 69 ]; then
                    no_workers=1
                    cl_say "worker ${name#*-}: keel-worker cannot run yet (it exits 69: nothing to run)"
                else
                    cl_say "${name%%-*} ${name#*-} exited with status $status before registering; the end of logs/$name.log:"
                    log_tail "$name"
                    rc=1
                fi
                continue
            fi
            next+=("$name")
        done
        pending=("${next[@]}")
        ((${#pending[@]})) || break
        if ((SECONDS >= deadline)); then
            for name in "${pending[@]}"; do
                cl_say "${name%%-*} ${name#*-} did not register within $timeout s; the end of logs/$name.log:"
                log_tail "$name"
            done
            return 1
        fi
        sleep 0.3
    done
    return $rc
}

wait_leader() {
    local deadline=$((SECONDS + timeout)) leader
    while ((SECONDS < deadline)); do
        leader=$(cl_leader)
        if [ -n "$leader" ]; then
            cl_say "coordinator $leader leads"
            return 0
        fi
        sleep 0.3
    done
    cl_say "no coordinator leads after $timeout s; the end of the coordinators' logs:"
    local role id port
    while read -r role id port; do
        [ "$role" = coordinator ] && log_tail "$role-$id" 5
    done < <(cl_nodes)
    return 1
}

node_port() { # NAME -> its port from DIR/nodes
    local role id port
    while read -r role id port; do
        [ "$role-$id" = "$1" ] && { echo "$port"; return; }
    done < <(cl_nodes)
}

node_known() { # ROLE ID
    local role id port
    while read -r role id port; do
        [ "$role" = "$1" ] && [ "$id" = "$2" ] && return 0
    done < <(cl_nodes)
    return 1
}

# Every process name of the cluster: nodes in start order, then etcd.
all_names() {
    local role id port
    while read -r role id port; do echo "$role-$id"; done < <(cl_nodes)
    echo etcd
}

# stop_all SECONDS: the nodes (workers first), then etcd.  Prints what happened.
stop_all() {
    local limit=$1 role id port rc=0 out name pid how
    local -a wk=() others=()
    while read -r role id port; do
        if [ "$role" = worker ]; then wk+=("$role-$id"); else others+=("$role-$id"); fi
    done < <(cl_nodes)
    # Workers first, so that they do not fail over to servers that are leaving;
    # etcd last, so that the nodes can revoke their leases on the way out.
    if ((${#wk[@]})); then out=$(cl_stop "$limit" "${wk[@]}") || rc=1; else out=; fi
    if ((${#others[@]})); then out+=$'\n'$(cl_stop "$limit" "${others[@]}") || rc=1; fi
    out+=$'\n'$(cl_stop 10 etcd) || rc=1
    while read -r name pid how; do
        case $how in
        stopped) cl_say "$name (pid $pid) stopped" ;;
        killed) cl_say "$name (pid $pid) did not stop within $limit s of SIGTERM: killed" ;;
        survived-sigkill) cl_say "$name (pid $pid) survived SIGKILL" ;;
        esac
    done <<<"$out"
    return $rc
}

# ---- up ----------------------------------------------------------------------------

write_env() {
    {
        printf '# written by cluster.sh up; read by cluster.sh and demo.sh\n'
        for v in KEEL_CLUSTER_NAME KEEL_BIN_DIR KEEL_ETCD_ENDPOINT KEEL_ETCD_CLIENT_PORT \
            KEEL_ETCD_PEER_PORT KEEL_LEASE_TTL KEEL_LOG_LEVEL KEEL_REPLICATION KEEL_DATASET \
            KEEL_TEST_DATASET KEEL_SHARDS KEEL_COORDINATORS KEEL_SERVERS KEEL_WORKERS; do
            printf '%s=%q\n' "$v" "${!v}"
        done
    } >"$CL_DIR/cluster.env"
}

write_node_config() { # ROLE ID PORT
    local role=$1 id=$2 port=$3 f=$CL_DIR/conf/$1-$2.ini
    {
        printf '; keel-%s %s of the local cluster %s (written by cluster.sh up)\n' \
            "$role" "$id" "$KEEL_CLUSTER_NAME"
        printf '[cluster]\nname = %s\netcd = %s\n\n' "$KEEL_CLUSTER_NAME" "$KEEL_ETCD_ENDPOINT"
        printf '[node]\nid = %s\ndata_dir = %s\nlisten = 127.0.0.1:%s\n\n' \
            "$id" "$CL_DIR/data/$role-$id" "$port"
        printf '[tls]\nca = %s\ncert = %s\nkey = %s\n\n' "$CL_DIR/certs/ca.crt" \
            "$CL_DIR/certs/$role-$id.crt" "$CL_DIR/certs/$role-$id.key"
        printf '[log]\nlevel = %s\n\n' "$KEEL_LOG_LEVEL"
        printf '[etcd]\n; short, so that a killed node leaves quickly\nlease_ttl = %s\n' \
            "$KEEL_LEASE_TTL"
        if [ "$role" = server ]; then
            printf '\n[server]\n; signs the checkpoints this server takes (every checkpoint_interval clocks)\n'
            printf 'checkpoint_key = %s\n' "$CL_DIR/certs/cluster.key"
        fi
        if [ "$role" = coordinator ]; then
            printf '\n[coordinator]\n; the leader reacts to joins, leaves and progress at this pace\n'
            printf 'heartbeat = 1s\n'
            printf '; a range whose in-sync replicas all died is restored from another store after\n'
            printf 'restore_wait = 15s\n'
        fi
    } >"$f"
    "$KEEL_BIN_DIR/keel-$role" --config "$f" --check-config >/dev/null 2>"$CL_DIR/logs/check.err" || {
        cl_say "keel-$role refuses the configuration written to conf/$role-$id.ini:"
        sed 's/^/    /' "$CL_DIR/logs/check.err" >&2
        return 1
    }
    rm -f "$CL_DIR/logs/check.err"
}

write_keelctl_config() {
    local f=$CL_DIR/keelctl.ini
    {
        printf '; keelctl --config %s ...: the admin of the local cluster %s\n' "$f" "$KEEL_CLUSTER_NAME"
        printf '[cluster]\nname = %s\netcd = %s\n\n' "$KEEL_CLUSTER_NAME" "$KEEL_ETCD_ENDPOINT"
        printf '[tls]\nca = %s\ncert = %s\nkey = %s\n\n' "$CL_DIR/certs/ca.crt" \
            "$CL_DIR/certs/admin-admin.crt" "$CL_DIR/certs/admin-admin.key"
        printf '[log]\nlevel = warn\n'
    } >"$f"
    "$KEEL_BIN_DIR/keelctl" --config "$f" --check-config >/dev/null 2>&1 || {
        cl_say "keelctl refuses the configuration written to keelctl.ini"
        return 1
    }
}

# The cluster CA and every certificate: keelctl for the nodes and the admin;
# openssl for etcd's own (a server certificate of the same CA, not a Keel
# identity: no node may pose as etcd or etcd as a node).
make_certs() {
    local role id port keelctl=$KEEL_BIN_DIR/keelctl d=$CL_DIR/certs out=$CL_DIR/logs/certs.log
    "$keelctl" -o cluster.name="$KEEL_CLUSTER_NAME" certs init --dir "$d" >>"$out" 2>&1 || {
        cl_say "keelctl certs init failed:"
        sed 's/^/    /' "$out" >&2
        return 1
    }
    while read -r role id port; do
        "$keelctl" -o cluster.name="$KEEL_CLUSTER_NAME" certs issue --dir "$d" --role "$role" \
            --id "$id" --days 30 >>"$out" 2>&1 || {
            cl_say "keelctl certs issue --role $role --id $id failed:"
            tail -n 5 "$out" | sed 's/^/    /' >&2
            return 1
        }
    done < <(cl_nodes; echo admin admin -)
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' >"$d/etcd.ext"
    (
        umask 077
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/etcd.key" \
            -out "$d/etcd.csr" -subj "/CN=etcd of keel cluster $KEEL_CLUSTER_NAME" &&
            openssl x509 -req -in "$d/etcd.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
                -CAcreateserial -days 30 -extfile "$d/etcd.ext" -out "$d/etcd.crt"
    ) >>"$out" 2>&1 || {
        cl_say "openssl could not make etcd's certificate:"
        tail -n 5 "$out" | sed 's/^/    /' >&2
        return 1
    }
    rm -f "$d/etcd.csr" "$d/etcd.ext"
    # The cluster key that signs the servers' checkpoints (keelctl checkpoint verify --key).
    "$keelctl" checkpoint keygen --out "$d/cluster.key" >>"$out" 2>&1 || {
        cl_say "keelctl checkpoint keygen failed:"
        tail -n 5 "$out" | sed 's/^/    /' >&2
        return 1
    }
}

import_datasets() { # into every server's data directory
    local role id port src=${KEEL_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist} f
    [ "$KEEL_DATASET" = none ] && return 0
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
        t10k-labels-idx1-ubyte; do
        [ -f "$src/$f.gz" ] || [ -f "$src/$f" ] || {
            cl_say "no Fashion-MNIST file '$src/$f.gz' (install the dataset-fashion-mnist package: scripts/install-deps)"
            return 1
        }
    done
    gz() { if [ -f "$src/$1.gz" ]; then echo "$src/$1.gz"; else echo "$src/$1"; fi; }
    while read -r role id port; do
        [ "$role" = server ] || continue
        local store=$CL_DIR/data/$role-$id
        if ! "$KEEL_BIN_DIR/keelctl" dataset import -q --store "$store" --name "$KEEL_DATASET" \
            --format idx --shards "$KEEL_SHARDS" --split train \
            "$(gz train-images-idx3-ubyte)" "$(gz train-labels-idx1-ubyte)" \
            >>"$CL_DIR/logs/import.log" 2>&1 ||
            ! "$KEEL_BIN_DIR/keelctl" dataset import -q --store "$store" --name "$KEEL_TEST_DATASET" \
                --format idx --shards "$KEEL_SHARDS" --split test \
                "$(gz t10k-images-idx3-ubyte)" "$(gz t10k-labels-idx1-ubyte)" \
                >>"$CL_DIR/logs/import.log" 2>&1; then
            cl_say "importing Fashion-MNIST into server $id's store failed; the end of logs/import.log:"
            tail -n 5 "$CL_DIR/logs/import.log" | sed 's/^/    /' >&2
            return 1
        fi
    done < <(cl_nodes)
    cl_say "imported '$KEEL_DATASET' (60000 records) and '$KEEL_TEST_DATASET' (10000) in $KEEL_SHARDS shards into every server's store"
}

cmd_up() {
    local dir='' coordinators=2 servers=3 workers=2 replication=1 dataset=fashion-mnist
    local shards='' name=local ttl=3s level=info bin=$top/build/bin i port b role id n
    timeout=60
    while [ $# -gt 0 ]; do
        case $1 in
        -d | --dir) dir=${2:-} && shift ;;
        --coordinators) number "$1" "${2:-}" 1 9 && coordinators=$2 && shift ;;
        --servers) number "$1" "${2:-}" 1 16 && servers=$2 && shift ;;
        --workers) number "$1" "${2:-}" 0 16 && workers=$2 && shift ;;
        --replication) number "$1" "${2:-}" 1 5 && replication=$2 && shift ;;
        --shards) number "$1" "${2:-}" 1 4096 && shards=$2 && shift ;;
        --dataset)
            case ${2:-} in fashion-mnist | none) dataset=$2 ;;
            *) usage_error "--dataset: expected fashion-mnist or none, got '${2:-}'" up ;;
            esac
            shift
            ;;
        --name)
            [[ ${2:-} =~ ^[A-Za-z0-9_-]{1,64}$ ]] ||
                usage_error "--name: 1-64 of A-Z a-z 0-9 - _, got '${2:-}'" up
            name=$2 && shift
            ;;
        --lease-ttl)
            [[ ${2:-} =~ ^[1-9][0-9]*s$ ]] || usage_error "--lease-ttl: whole seconds like 3s, got '${2:-}'" up
            ttl=$2 && shift
            ;;
        --log-level)
            case ${2:-} in error | warn | info | debug | trace) level=$2 ;;
            *) usage_error "--log-level: expected error, warn, info, debug or trace, got '${2:-}'" up ;;
            esac
            shift
            ;;
        --bin) bin=${2:-} && shift ;;
        --timeout) number "$1" "${2:-}" 1 3600 && timeout=$2 && shift ;;
        -h | --help) usage_up && exit 0 ;;
        *) usage_error "up: unknown argument '$1'" up ;;
        esac
        shift
    done
    [ -n "$dir" ] || usage_error "up: --dir DIR is required" up
    [ -n "$shards" ] || shards=$((workers > 0 ? 2 * workers : 4))

    [ -d "$bin" ] || cl_die "no binaries: '$bin' does not exist (build first: cmake -S . -B build && cmake --build build; or pass --bin DIR)"
    bin=$(cd "$bin" && pwd -P)
    for b in keelctl keel-coordinator keel-server $( ((workers)) && echo keel-worker); do
        [ -x "$bin/$b" ] || cl_die "no $b in '$bin' (build first, or pass --bin DIR)"
    done
    command -v openssl >/dev/null || cl_die "openssl not found (scripts/install-deps)"
    [ -x "$CL_ETCD_BIN" ] || cl_die "no etcd at $CL_ETCD_BIN (scripts/install-deps)"

    if [ -f "$dir/cluster.env" ]; then
        CL_DIR=$(cd "$dir" && pwd -P)
        local running=()
        for n in $(all_names); do
            cl_alive "$n" && running+=("$n (pid $(cl_pid "$n"))")
        done
        if ((${#running[@]})); then
            cl_die "a cluster is already up in '$dir': ${running[*]}; stop it first with 'cluster.sh down --dir $dir'"
        fi
        cl_die "'$dir' holds a stopped cluster: 'cluster.sh start --dir $dir' starts it again; or remove '$dir' for a new one"
    fi
    if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
        cl_die "'$dir' exists and is not empty: give a new or empty directory"
    fi
    mkdir -p "$dir" || cl_die "cannot make '$dir'"
    CL_DIR=$(cd "$dir" && pwd -P)
    mkdir -p "$CL_DIR"/{certs,conf,data,logs,pids,etcd} || cl_die "cannot make directories in '$dir'"

    # shellcheck disable=SC2034 # written to cluster.env by write_env
    KEEL_CLUSTER_NAME=$name KEEL_BIN_DIR=$bin KEEL_LEASE_TTL=$ttl KEEL_LOG_LEVEL=$level
    # shellcheck disable=SC2034
    KEEL_REPLICATION=$replication KEEL_SHARDS=$shards KEEL_COORDINATORS=$coordinators
    # shellcheck disable=SC2034
    KEEL_SERVERS=$servers KEEL_WORKERS=$workers KEEL_DATASET=$dataset KEEL_TEST_DATASET=
    [ "$dataset" = fashion-mnist ] && KEEL_TEST_DATASET=fashion-mnist-test

    # Distinct free ports: etcd's two, then one per node.
    local -A taken=()
    pick_port() {
        local p
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            p=$(cl_free_port) || break
            [ -z "${taken[$p]:-}" ] && { taken[$p]=1; echo "$p"; return 0; }
        done
        cl_die "cannot find a free loopback port (is python3 installed?)"
    }
    KEEL_ETCD_CLIENT_PORT=$(pick_port) || exit 1
    taken[$KEEL_ETCD_CLIENT_PORT]=1
    KEEL_ETCD_PEER_PORT=$(pick_port) || exit 1
    taken[$KEEL_ETCD_PEER_PORT]=1
    KEEL_ETCD_ENDPOINT=https://127.0.0.1:$KEEL_ETCD_CLIENT_PORT
    : >"$CL_DIR/nodes"
    for role in coordinator server worker; do
        local n=$coordinators letter=c
        [ $role = server ] && n=$servers letter=s
        [ $role = worker ] && n=$workers letter=w
        for ((i = 1; i <= n; i++)); do
            port=$(pick_port) || exit 1
            taken[$port]=1
            echo "$role $letter$i $port" >>"$CL_DIR/nodes"
        done
    done
    write_env

    # From here on a failure stops what was started and keeps DIR for its logs.
    up_failed() {
        trap - INT TERM
        cl_say "$1: stopping what was started (logs stay in $CL_DIR/logs)"
        stop_all 5 >/dev/null 2>&1
        exit 1
    }
    trap 'up_failed "interrupted"' INT TERM

    make_certs || up_failed "cannot make the certificates"
    cl_say "certificates: a cluster CA and one pair per node in $CL_DIR/certs"
    while read -r role id port; do
        mkdir -p "$CL_DIR/data/$role-$id"
        write_node_config "$role" "$id" "$port" || up_failed "bad configuration"
    done < <(cl_nodes)
    write_keelctl_config || up_failed "bad configuration"
    import_datasets || up_failed "cannot import the dataset"

    start_etcd
    wait_etcd || up_failed "etcd did not start"
    cl_say "etcd up at $KEEL_ETCD_ENDPOINT (pid $(cl_pid etcd), mutual TLS, data in etcd/data)"

    local -a names=() wnames=()
    while read -r role id port; do
        if [ "$role" = worker ]; then wnames+=("$role-$id"); else
            start_node "$role" "$id"
            names+=("$role-$id")
        fi
    done < <(cl_nodes)
    wait_registered "${names[@]}" || up_failed "a node did not start"
    wait_leader || up_failed "no coordinator leads"

    if ((${#wnames[@]})); then
        for n in "${wnames[@]}"; do start_node worker "${n#worker-}"; done
        wait_registered "${wnames[@]}" || up_failed "a worker did not start"
        if [ "$no_workers" = 1 ]; then
            cl_say "continuing without workers: keel-worker cannot run yet (exit 69)"
            for n in "${wnames[@]}"; do rm -f "$CL_DIR/pids/$n.pid"; done
        fi
    fi
    trap - INT TERM
    cl_say "cluster '$KEEL_CLUSTER_NAME' is up in $CL_DIR: $coordinators coordinator(s), $servers server(s), $(
        if [ "$no_workers" = 1 ]; then echo "no workers (keel-worker cannot run yet)"; else echo "$workers worker(s)"; fi
    ); lease TTL $KEEL_LEASE_TTL"
    cl_say "keelctl --config $CL_DIR/keelctl.ini ...; logs in $CL_DIR/logs; stop with: cluster.sh down --dir $CL_DIR"
    echo "$CL_DIR/keelctl.ini"
}

# ---- down, status, kill, start ------------------------------------------------------

cmd_down() {
    local dir='' remove=0 limit=20 name
    while [ $# -gt 0 ]; do
        case $1 in
        -d | --dir) dir=${2:-} && shift ;;
        --timeout) number "$1" "${2:-}" 1 3600 && limit=$2 && shift ;;
        --remove) remove=1 ;;
        -h | --help) usage_down && exit 0 ;;
        *) usage_error "down: unknown argument '$1'" down ;;
        esac
        shift
    done
    [ -n "$dir" ] || usage_error "down: --dir DIR is required" down
    cl_load "$dir"
    local any=0
    for name in $(all_names); do cl_alive "$name" && any=1; done
    [ "$any" = 1 ] || cl_say "nothing of the cluster in $CL_DIR was running"
    stop_all "$limit" || cl_die "some process outlived SIGKILL; DIR kept"
    for name in $(all_names); do
        cl_alive "$name" && cl_die "$name is still running; DIR kept"
    done
    if [ "$remove" = 1 ]; then
        rm -rf -- "$CL_DIR"
        cl_say "removed $CL_DIR"
    else
        cl_say "cluster '$KEEL_CLUSTER_NAME' is down; its files stay in $CL_DIR"
    fi
}

cmd_status() {
    local dir='' role id port pid state reg members leader rc=0
    while [ $# -gt 0 ]; do
        case $1 in
        -d | --dir) dir=${2:-} && shift ;;
        -h | --help) usage_status && exit 0 ;;
        *) usage_error "status: unknown argument '$1'" status ;;
        esac
        shift
    done
    [ -n "$dir" ] || usage_error "status: --dir DIR is required" status
    cl_load "$dir"
    members=
    cl_alive etcd && members=$(cl_members)
    leader=$(cl_alive etcd && cl_leader)
    echo "cluster '$KEEL_CLUSTER_NAME' in $CL_DIR"
    printf '%-12s %-4s %-8s %-8s %-6s %s\n' ROLE ID PID STATE PORT REGISTERED
    pid=$(cl_pid etcd)
    if cl_alive etcd; then state=running; else state=stopped rc=3; fi
    printf '%-12s %-4s %-8s %-8s %-6s %s\n' etcd - "${pid:--}" "$state" "$KEEL_ETCD_CLIENT_PORT" \
        "$KEEL_ETCD_ENDPOINT"
    while read -r role id port; do
        pid=$(cl_pid "$role-$id")
        if cl_alive "$role-$id"; then state=running; else
            state=stopped pid='' rc=3
            # The exit status up or start saw when the node died while starting.
            [ -f "$CL_DIR/pids/$role-$id.exit" ] && state="exit $(cat "$CL_DIR/pids/$role-$id.exit")"
        fi
        if grep -qx "$role/$id" <<<"$members"; then reg=yes; else reg=no rc=3; fi
        [ "$role" = coordinator ] && [ "$id" = "$leader" ] && reg="$reg (leader)"
        printf '%-12s %-4s %-8s %-8s %-6s %s\n' "$role" "$id" "${pid:--}" "$state" "$port" "$reg"
    done < <(cl_nodes)
    if cl_alive etcd; then
        echo "member keys in etcd (/keel/$KEEL_CLUSTER_NAME/members/):"
        if [ -n "$members" ]; then echo "  ${members//$'\n'/$'\n'  }"; else echo "  (none)"; fi
        echo "leader: ${leader:-(none)}"
    else
        echo "etcd is not running: no member keys to show"
    fi
    return $rc
}

# parse_target ARGS...: sets dir, t_role, t_id (etcd: t_id empty).
parse_target() {
    local sub=$1
    shift
    dir='' t_role='' t_id=''
    while [ $# -gt 0 ]; do
        case $1 in
        -d | --dir) dir=${2:-} && shift ;;
        --timeout) number "$1" "${2:-}" 1 3600 && timeout=$2 && shift ;;
        -h | --help) "usage_$sub" && exit 0 ;;
        -*) usage_error "$sub: unknown option '$1'" "$sub" ;;
        *)
            if [ -z "$t_role" ]; then t_role=$1
            elif [ -z "$t_id" ]; then t_id=$1
            else usage_error "$sub: unexpected argument '$1'" "$sub"; fi
            ;;
        esac
        shift
    done
    [ -n "$dir" ] || usage_error "$sub: --dir DIR is required" "$sub"
    case $t_role in
    '' | etcd)
        [ -z "$t_id" ] || usage_error "$sub: etcd takes no ID" "$sub"
        ;;
    coordinator | server | worker)
        [ -n "$t_id" ] || usage_error "$sub: $t_role needs an ID" "$sub"
        ;;
    *) usage_error "$sub: ROLE must be coordinator, server, worker or etcd, got '$t_role'" "$sub" ;;
    esac
}

cmd_kill() {
    local dir t_role t_id name pid i
    parse_target kill "$@"
    [ -n "$t_role" ] || usage_error "kill: which process? ROLE ID or etcd" kill
    cl_load "$dir"
    if [ "$t_role" = etcd ]; then name=etcd; else
        node_known "$t_role" "$t_id" || cl_die "the cluster has no $t_role '$t_id' (see cluster.sh status --dir $dir)"
        name=$t_role-$t_id
    fi
    pid=$(cl_pid "$name")
    cl_pid_is_ours "$pid" "$name" || cl_die "$t_role${t_id:+ $t_id} is not running"
    kill -KILL "$pid" || cl_die "cannot signal pid $pid"
    for ((i = 0; i < 100; i++)); do
        cl_pid_is_ours "$pid" "$name" || break
        sleep 0.05
    done
    cl_pid_is_ours "$pid" "$name" && cl_die "$t_role${t_id:+ $t_id} (pid $pid) still runs after SIGKILL"
    rm -f "$CL_DIR/pids/$name.pid"
    if [ "$t_role" = etcd ]; then
        cl_say "killed etcd (pid $pid) with SIGKILL"
    else
        cl_say "killed $t_role $t_id (pid $pid) with SIGKILL; its member key goes when its lease expires (TTL $KEEL_LEASE_TTL)"
    fi
}

cmd_start() {
    local dir t_role t_id name role id port
    local -a names=() wnames=()
    timeout=60
    parse_target start "$@"
    cl_load "$dir"
    if [ -n "$t_role" ] && [ "$t_role" != etcd ]; then
        node_known "$t_role" "$t_id" || cl_die "the cluster has no $t_role '$t_id' (see cluster.sh status --dir $dir)"
        name=$t_role-$t_id
        cl_alive "$name" && cl_die "$t_role $t_id is already running (pid $(cl_pid "$name"))"
        cl_alive etcd || cl_die "etcd is not running: start it first (cluster.sh start --dir $dir etcd)"
        start_node "$t_role" "$t_id"
        cl_say "started $t_role $t_id (pid $(cl_pid "$name")); waiting for it to register"
        wait_registered "$name" || exit 1
        if [ "$no_workers" = 1 ]; then
            cl_say "keel-worker cannot run yet (exit 69)"
            exit 69
        fi
        return 0
    fi
    if cl_alive etcd; then
        [ "$t_role" = etcd ] && cl_die "etcd is already running (pid $(cl_pid etcd))"
    else
        start_etcd
        wait_etcd || exit 1
        cl_say "etcd up at $KEEL_ETCD_ENDPOINT (pid $(cl_pid etcd))"
        [ "$t_role" = etcd ] && return 0
    fi
    while read -r role id port; do
        cl_alive "$role-$id" && continue
        start_node "$role" "$id"
        if [ "$role" = worker ]; then wnames+=("$role-$id"); else names+=("$role-$id"); fi
    done < <(cl_nodes)
    if ((${#names[@]} + ${#wnames[@]} == 0)); then
        cl_say "every node is already running"
        return 0
    fi
    wait_registered "${names[@]}" "${wnames[@]}" || exit 1
    if [ "$KEEL_COORDINATORS" -gt 0 ]; then wait_leader || exit 1; fi
    if [ "$no_workers" = 1 ]; then
        cl_say "continuing without workers: keel-worker cannot run yet (exit 69)"
    fi
    return 0
}

cmd_etcdctl() {
    local dir=''
    case ${1:-} in -h | --help) usage_etcdctl && exit 0 ;; esac
    case ${1:-} in -d | --dir) dir=${2:-} && shift 2 ;; *) usage_error "etcdctl: --dir DIR must come first" etcdctl ;; esac
    cl_load "$dir"
    cl_etcdctl "$@"
}

timeout=60
cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
up | down | status | kill | start | etcdctl) "cmd_$cmd" "$@" ;;
-h | --help | help) usage ;;
'') usage >&2 && exit 64 ;;
*) usage_error "unknown command '$cmd'" ;;
esac
