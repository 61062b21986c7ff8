# cluster_job.sh - what the tests that train job r1 on a local cluster share.
#
# Source it after assert.sh with `bindir` and `srcdir` set.  It sources
# procs.sh, skips the test (exit 0) when Fashion-MNIST is not installed, and
# sets an EXIT trap that takes the cluster down.  It sets
#   cluster, helper, dir   scripts/cluster.sh, keel-test-train, the cluster's directory
# and gives
#   cl ARGS...             scripts/cluster.sh
#   up_cluster SERVERS REPLICATION
#                          the cluster alone, as up_and_submit starts it
#   job_ini NAME EPOCHS REPLICATION LINE FILE
#                          the job spec up_and_submit submits, named NAME, into FILE
#                          (LINE may be empty)
#   up_and_submit SERVERS EPOCHS REPLICATION [LINE]
#                          a cluster "t" of SERVERS servers, 2 coordinators, 2 workers,
#                          lease TTL 3 s, Fashion-MNIST in 4 shards; job r1 (the softmax
#                          example: BSP, SGD, batch 100) with EPOCHS epochs and
#                          REPLICATION (and LINE added to its [job] section) submitted,
#                          with `durability = $durability` (default disk: the pace
#                          these tests' faults were timed for); sets cfg and writes
#                          $tmp/job.ini
#   assignment_py EXPR     EXPR over the assignment `a` in etcd (JSON), printed
#   all_in_sync            every range has two replicas, both in sync
#   reimport SERVER        the dataset imported into SERVER's (emptied) data directory
#   kc ARGS...             keelctl with the cluster's configuration ($cfg, set by the test)
#   job_field FIELD        a field of `keelctl job show r1 --json`
#   done_batches           batches r1's shards' recorded positions are past, over
#                          every pass (150 batches a pass: softmax, batch 100, 4 shards)
#   check_stores PUSHES PASS [SERVERS ROWS]
#                          with the cluster down, read the stores of SERVERS (default
#                          "s1 s2") as a server restores them: every range holding rows
#                          applied exactly PUSHES pushes and records every shard at the
#                          end of pass PASS, and together they hold ROWS rows (default
#                          10: the model once); then every range held by more than one
#                          of them has the same digest (rows and optimizer state) on each
#   save_final_assignment  with the cluster up and r1 done: the assignment as it was when
#                          r1's state became done (etcd's history at that revision),
#                          into $tmp/final-assignment.json (scripts/lib/final-assignment.sh)
#   lose_disk SERVER       SIGKILL SERVER, remove its data directory, import the dataset
#                          into a new one (reimport) and start SERVER again on it
#   done_then_check PUSHES PASS
#                          r1 done within 400 s, save_final_assignment, the cluster down,
#                          then check_replicas PUSHES PASS
#   check_replicas PUSHES PASS
#                          with the cluster down, after save_final_assignment: every
#                          in-sync replica of every range holding rows, in that
#                          assignment, read from its server's store as a server restores
#                          it (scripts/lib/check_replicas.py), applied exactly PUSHES
#                          pushes, records every shard at the end of pass PASS, and has
#                          the same digest as the range's other replicas; and the
#                          model's 10 rows are all held

cluster=$srcdir/scripts/cluster.sh
helper=$bindir/keel-test-train
data=/usr/share/datasets/fashion-mnist
. "$srcdir/tests/lib/procs.sh"
dir=$tmp/c
cleanup() {
    [ -f "$dir/cluster.env" ] && bash "$cluster" down --dir "$dir" --timeout 5 >/dev/null 2>&1
    procs_cleanup
}
trap cleanup EXIT

if [ ! -r "$data/train-images-idx3-ubyte.gz" ]; then
    echo "SKIP: Fashion-MNIST is not installed in $data"
    exit 0
fi

cl() { bash "$cluster" "$@"; }
up_cluster() {
    run cl up --dir "$dir" --bin "$bindir" --servers "$1" --workers 2 --shards 4 --name t \
        --lease-ttl 3s --replication "$2"
    require_status 0 "cluster up"
    cfg=$run_out
}
job_ini() {
    sed -e "s/^name = .*/name = $1/" -e "s/^epochs = .*/epochs = $2/" \
        -e "s/^replication = .*/replication = $3\\ndurability = ${durability:-disk}${4:+\\n$4}/" \
        "$srcdir/examples/fashion-mnist-softmax.ini" >"$5"
    grep -q "^replication = $3\$" "$5" || fail "could not set the job's replication"
    sed -n '/^\[job\]/,$p' "$5" | grep -q '^batch_size = 100$' ||
        fail "the example's batch size is no longer 100: the counts assume it"
}
up_and_submit() {
    up_cluster "$1" "$3"
    job_ini r1 "$2" "$3" "${4:-}" "$tmp/job.ini"
    run kc job submit "$tmp/job.ini"
    expect_status 0 "submit r1"
}
assignment_py() {
    cl etcdctl --dir "$dir" get --print-value-only /keel/t/assignment 2>/dev/null |
        python3 -c 'import json,sys
a = json.load(sys.stdin)
print(eval(sys.argv[1]))' "$1" 2>/dev/null
}
all_in_sync() {
    [ "$(assignment_py 'all(len(r) == 2 and i == 2 for r, i in zip(a["ranges"], a["insync"]))')" = True ]
}
reimport() {
    local split name p
    # shellcheck disable=SC1091
    . "$dir/cluster.env"
    for split in train test; do
        [ "$split" = train ] && name=$KEEL_DATASET p=train || name=$KEEL_TEST_DATASET p=t10k
        run "$bindir/keelctl" dataset import -q --store "$dir/data/server-$1" --name "$name" \
            --format idx --shards "$KEEL_SHARDS" --split "$split" \
            "$data/$p-images-idx3-ubyte.gz" "$data/$p-labels-idx1-ubyte.gz"
        expect_status 0 "import the $split set into $1's new, empty store"
    done
}
kc() { "$bindir/keelctl" --config "$cfg" "$@"; }
job_field() {
    kc job show r1 --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" 2>/dev/null
}
done_batches() {
    kc job show r1 --json 2>/dev/null | python3 -c 'import json,sys
j = json.load(sys.stdin)
print(sum(s["pass"] * 150 + s["batch"] for s in j["shard_leases"]))' 2>/dev/null
}

check_stores() {
    local pushes=$1 seq_end rows=0 s range lsn nrows rest shard digest
    local servers=${3:-s1 s2} want_rows=${4:-10}
    declare -A digests=()
    seq_end=$("$helper" seq "$2" 150)
    for s in $servers; do
        run "$helper" dump --store "$dir/data/server-$s" --spec "$tmp/job.ini"
        expect_status 0 "dump the ranges of $s"
        while read -r _ range _ lsn _ nrows rest; do
            [ -n "${nrows:-}" ] && [ "$nrows" -gt 0 ] || continue
            rows=$((rows + nrows))
            if [ "$lsn" = "$pushes" ]; then ok; else
                fail "$s range $range: $lsn pushes applied, expected $pushes (one per batch)"
            fi
            for shard in 0 1 2 3; do
                if grep -q "shard $shard seq $seq_end " <<<"$rest "; then ok; else
                    fail "$s range $range: shard $shard is not at the end of pass $2" "$rest"
                fi
            done
            digest=${rest##* digest }
            if [ -z "${digests[$range]:-}" ]; then
                digests[$range]=$digest
            elif [ "${digests[$range]}" = "$digest" ]; then
                ok
            else
                fail "range $range: $s's copy differs from another replica's" \
                    "${digests[$range]} vs $digest"
            fi
        done <<<"$run_out"
    done
    [ "$rows" = "$want_rows" ] && ok ||
        fail "the servers hold $rows rows of the model, expected $want_rows"
}

lose_disk() {
    run cl kill --dir "$dir" server "$1"
    expect_status 0 "SIGKILL server $1"
    rm -rf "$dir/data/server-$1"
    reimport "$1"
    run cl start --dir "$dir" server "$1"
    expect_status 0 "start $1 again on an empty data directory"
}

done_then_check() {
    local state
    state_done() { state=$(job_field state) && [ "$state" = done ]; }
    if wait_for 400 state_done; then ok; else
        fail "r1 did not finish: it is '${state:-?}'" "$(kc job show r1 2>&1 | tail -n 15)"
    fi
    save_final_assignment
    run cl down --dir "$dir"
    expect_status 0 "cluster down"
    check_replicas "$1" "$2"
}

save_final_assignment() {
    run bash "$srcdir/scripts/lib/final-assignment.sh" "$dir" r1 "$tmp/final-assignment.json"
    expect_status 0 "read the assignment at the revision at which r1 was done"
}

check_replicas() {
    local seq_end
    seq_end=$(( ($2 << 32) | 150 ))
    run python3 "$srcdir/scripts/lib/check_replicas.py" --helper "$helper" --data "$dir/data" \
        --assignment "$tmp/final-assignment.json" --spec "$tmp/job.ini" --pushes "$1" \
        --seq-end "$seq_end,$seq_end,$seq_end,$seq_end" --rows 10
    expect_status 0 "every in-sync replica at the job's end holds every push once, identically"
    echo "${run_out%%$'\n'*}"
}
