#!/usr/bin/env bash
# test_train.sh BINDIR SRCDIR - the whole stack trains, each push is applied
# exactly once, and no worker runs further ahead than the job's consistency
# allows.  Two runs of scripts/demo.sh, each a fresh local cluster (etcd, 2
# coordinators, 3 servers, 2 workers, Fashion-MNIST imported into every
# server), kept after the run (--dir) so that its logs and stores can be read:
#
#  1. the demo's job: one epoch of the MLP (examples/fashion-mnist-mlp.ini:
#     Adam, ssp:2, 4 shards), worker w1 killed with SIGKILL half way and
#     started again.  Checks that the job finishes with every shard done and a
#     test accuracy above 0.80.
#  2. a short BSP job: softmax regression, one epoch, 2 shards (one per
#     worker, so that every batch is in step), no fault, its rows on the wire
#     as bfloat16 (`compression = bf16`): every server logs that the pushes
#     it got and the pulls it answered carried bf16 rows, no push 32-bit ones
#     (the test evaluation's pulls are 32-bit), and the job reaches a test
#     accuracy above 0.75.
#
# After each run, with the cluster down:
#  - exactly once: every server's store is read back (keel-test-train dump:
#    snapshot + update-log replay, as a restarting server would).  Every range
#    holding rows must have applied exactly (tables it holds) x (batches of
#    the job) pushes (its LSN; batches from the records per shard, the batch
#    size and the epochs), and for each of those tables and each shard, an
#    exactly-once position at the shard's last batch naming the worker and
#    incarnation whose log says it finished that shard's last pass with that
#    seq.  A push of the killed worker applied twice, or one lost, would show.
#    The duplicates the servers acknowledged after the restart are counted
#    from the workers' logs.
#  - clock bound: each worker logs the largest lead of its pulls over the
#    slowest live worker (its clock minus the clock in the PULL_REPLY, see
#    docs/training.md).  Under ssp:2 it must be at most 2 and reach at least 1
#    (else the check says nothing); under BSP at most 0, and reach 0.
#  - no process of either cluster is left, and no sanitizer report is logged.
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"

helper=$bindir/keel-test-train
tmp=$(mktemp -d)
trap '[ -n "${KEEP_TMP:-}" ] && echo "kept $tmp" || rm -rf "$tmp"' EXIT

if [ ! -r /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    echo "SKIP: Fashion-MNIST is not installed in /usr/share/datasets/fashion-mnist"
    exit 0
fi

ini() { sed -n "s/^$2 *= *//p" "$1" | head -n 1; } # FILE KEY: a key of the job spec

# stopped DIR: nothing of the cluster is left running (demo.sh stopped every PID it started).
stopped() {
    local pidfile pid
    for pidfile in "$1"/pids/*.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null && grep -q "$1" "/proc/$pid/cmdline" 2>/dev/null; then
            fail "process $pid ($(basename "$pidfile")) is still running"
        else
            ok
        fi
    done
    if grep -aq "runtime error:\|Sanitizer" "$1"/logs/*.log; then
        fail "sanitizer report in $1/logs" "$(grep -a -B2 -A8 "runtime error:\|Sanitizer" "$1"/logs/*.log | head -n 60)"
    else
        ok
    fi
}

# exactly_once DIR: the servers' stores against the job and the workers' logs.
exactly_once() {
    local dir=$1 spec=$1/job.ini epochs batch records r n=0 nb total=0 hits line f
    local -A seq_end=() fin=() fin_dup=() lives=()
    # Every life of every worker: "worker W incarnation K".
    while read -r line; do
        lives["worker ${line%%:*} incarnation ${line#*:}"]=1
    done < <(grep -ho "worker w[0-9]* registered[ again,]*(\?incarnation [0-9]*" "$dir"/logs/worker-*.log |
        sed 's/worker \(w[0-9]*\) .*incarnation \([0-9]*\)/\1:\2/')
    epochs=$(ini "$spec" epochs) batch=$(ini "$spec" batch_size)
    records=$("$bindir/keelctl" dataset info --store "$dir/data/server-s1" --name fashion-mnist --json |
        python3 -c 'import json,sys; print(" ".join(str(s["records"]) for s in json.load(sys.stdin)["shard_list"]))')
    [ -n "$records" ] || { fail "cannot read the shards of fashion-mnist from $dir/data/server-s1"; return; }
    # Per shard: its batches, the seq of its last batch, and who pushed that batch.
    for r in $records; do
        nb=$(((r + batch - 1) / batch))
        total=$((total + nb * epochs))
        seq_end[$n]=$("$helper" seq $((epochs - 1)) "$nb")
        hits=$(grep -H "job [^:]*: shard $n pass $((epochs - 1)) lease ended (pass done): " "$dir"/logs/worker-*.log)
        if [ "$(printf '%s\n' "$hits" | grep -c .)" != 1 ]; then
            fail "$(basename "$dir"): not one worker log says it finished the last pass of shard $n" "$hits"
        else
            line=${hits#*:} f=${hits%%:*}
            f=${f##*/worker-} f=${f%.log}
            if [[ $line =~ ,\ ([0-9]+)\ of\ [0-9]+\ ACKs\ as\ duplicates\;\ last\ seq\ ([0-9]+),\ incarnation\ ([0-9]+) ]] &&
                [ "${BASH_REMATCH[2]}" = "${seq_end[$n]}" ]; then
                ok
                fin[$n]="seq ${seq_end[$n]} worker $f incarnation ${BASH_REMATCH[3]}"
                # A finisher that was answered DUPLICATE may have replayed the last batch
                # itself: then an earlier life of a worker applied it.
                [ "${BASH_REMATCH[1]}" = 0 ] || fin_dup[$n]=1
            else
                fail "$(basename "$dir"): worker $f's last push of shard $n is not at seq ${seq_end[$n]}" "$line"
            fi
        fi
        n=$((n + 1))
    done
    echo "$(basename "$dir"): $n shards of $records records, batch $batch, $epochs epoch(s): $total batches to apply once per table"

    local s words i t tn pos range lsn nrows tables rows=0 want_rows ranges=0 copies
    local -A at=() held=() digest=()
    # Every range is held by `replication` servers (no server was lost: all 3 live).
    copies=$(ini "$spec" replication)
    want_rows=$(ini "$spec" model | python3 -c 'import sys; print(sum(int(x) for x in sys.stdin.read().split(":")[1].split("-")[1:]) * int(sys.argv[1]))' "${copies:-1}")
    for s in "$dir"/data/server-*; do
        run "$helper" dump --store "$s" --spec "$spec"
        expect_status 0 "dump the ranges of $(basename "$s")"
        while read -ra words; do
            [ "${#words[@]}" -ge 8 ] || continue
            range=${words[1]} lsn=${words[3]} nrows=${words[5]} tables=${words[7]}
            [ "$nrows" -gt 0 ] || continue
            ranges=$((ranges + 1)) rows=$((rows + nrows))
            held[$range]=$((${held[$range]:-0} + 1))
            [ "${held[$range]}" -le "${copies:-1}" ] || fail "range $range is in more than ${copies:-1} servers' stores"
            # Replicas hold the same rows and optimizer state.
            if [ -z "${digest[$range]:-}" ]; then
                digest[$range]=${words[-1]}
            elif [ "${digest[$range]}" = "${words[-1]}" ]; then ok; else
                fail "$(basename "$s") range $range: its rows differ from another replica's"
            fi
            # The exactly-once positions it records: "shard P seq Q worker W incarnation K".
            at=()
            for ((i = 8; i + 7 < ${#words[@]} - 2; i += 8)); do
                at[${words[i + 1]}]="seq ${words[i + 3]} worker ${words[i + 5]} incarnation ${words[i + 7]}"
            done
            tn=0
            for t in ${tables//,/ }; do
                t=${t%%:*} tn=$((tn + 1))
                for ((i = 0; i < n; i++)); do
                    pos=$((i + ((t - 1) << 16)))
                    if [ "${at[$pos]:-none}" = "${fin[$i]:-?}" ] ||
                        { [ -n "${fin_dup[$i]:-}" ] && [ "${at[$pos]%% worker *}" = "seq ${seq_end[$i]}" ] &&
                            [ -n "${lives[worker ${at[$pos]#* worker }]:-}" ]; }; then ok; else
                        fail "$(basename "$s") range $range, table $t, shard $i: position '${at[$pos]:-none}', expected '${fin[$i]:-?}' (the worker's last acknowledged push)"
                    fi
                    unset "at[$pos]"
                done
            done
            if [ "${#at[@]}" = 0 ]; then ok; else
                fail "$(basename "$s") range $range: positions of no table/shard of the job: ${!at[*]}"
            fi
            if [ "$lsn" = $((tn * total)) ]; then ok; else
                fail "$(basename "$s") range $range (tables $tables): $lsn pushes applied, expected $((tn * total)) ($tn table(s) x $total batches): a push was applied twice or lost"
            fi
        done <<<"$run_out"
    done
    if [ "$rows" = "$want_rows" ]; then ok; else
        fail "$(basename "$dir"): the servers hold $rows rows of the model, expected $want_rows"
    fi
    echo "$(basename "$dir"): $ranges ranges, $rows rows: every push applied once"
    local dups
    dups=$(grep -ho "[0-9]* of [0-9]* ACKs as duplicates" "$dir"/logs/worker-*.log | awk '{d += $1; a += $3} END {print d + 0 " of " a + 0}')
    echo "$(basename "$dir"): ACKs as duplicates in the leases the workers finished: $dups"
    grep -h "had been applied before" "$dir"/logs/worker-*.log | sed "s/^/$(basename "$dir"): /"
}

# leads DIR CONSISTENCY BOUND: the workers' clock leads are at most BOUND, and reach
# BOUND's floor (1 under SSP, 0 under BSP) so that the check is not vacuous.
leads() {
    local dir=$1 consistency=$2 bound=$3 want_max w lines max
    want_max=$((bound > 0 ? 1 : 0))
    # Every worker that finished a pass of a shard logged the leads of its pulls, with the job's bound.
    for w in w1 w2; do
        grep -q " lease ended (pass done): batches " "$dir/logs/worker-$w.log" || continue
        if grep -q "largest clock lead over the slowest live worker: -\?[0-9]* ($consistency allows $bound); in this lease of shard [0-9]*: -\?[0-9]* over [1-9][0-9]* pulls" \
            "$dir/logs/worker-$w.log"; then
            ok
        else
            fail "$(basename "$dir"): worker $w logs no clock lead for its leases under $consistency" "$(grep "clock lead" "$dir/logs/worker-$w.log" | tail -n 5)"
        fi
    done
    lines=$(grep -h "clock lead over the slowest live worker: " "$dir"/logs/worker-*.log)
    max=$(printf '%s\n' "$lines" | sed -n 's/.*clock lead over the slowest live worker: \(-\?[0-9]*\).*/\1/p' | sort -n | tail -n 1)
    echo "$(basename "$dir"): largest clock lead over the slowest live worker: ${max:-none} ($consistency allows $bound)"
    if [ -n "$max" ] && [ "$max" -le "$bound" ]; then ok; else
        fail "$(basename "$dir"): a worker ran ${max:-?} clocks ahead of the slowest live worker; $consistency allows $bound" \
            "$(printf '%s\n' "$lines" | grep -v "worker: -" | tail -n 20)"
    fi
    if [ -n "$max" ] && [ "$max" -ge "$want_max" ]; then ok; else
        fail "$(basename "$dir"): the largest clock lead is ${max:-none}: no pull led by $want_max, so the bound was never tested"
    fi
}

# ---- 1. the demo's job: ssp:2, a worker SIGKILLed half way ------------------------------
t0=$SECONDS
run "$srcdir/scripts/demo.sh" --bin "$bindir" --epochs 1 --timeout 8 --dir "$tmp/ssp" \
    --faults worker --min-accuracy 0.80
expect_status 0 "the demo's job finishes"
expect_out "the job finished: state 'done' in etcd" "the job is done"
expect_out "killed worker w1 .* with SIGKILL" "a worker was killed"
expect_out "worker w1 killed with SIGKILL at epoch [0-9.]+, holding shard [0-9]+" "it held a shard"
expect_out "progress +4/4 shards done" "every shard, the killed worker's too, was finished"
expect_out "checkpoints at the end: s1 #[0-9]+ \(clock [0-9]+\) verified, s2 #[0-9]+ \(clock [0-9]+\) verified, s3 #[0-9]+ \(clock [0-9]+\) verified" \
    "every server checkpointed its ranges at the end, and each checkpoint verifies"
acc=$(printf '%s\n' "$run_out" | sed -n 's/.*final test accuracy: \([0-9.]*\) after epoch.*/\1/p')
if [ -n "$acc" ] && python3 -c "import sys; sys.exit(0 if float('$acc') > 0.80 else 1)"; then
    ok
else
    fail "test accuracy '$acc' after one epoch is not above 0.80" "$(printf '%s\n' "$run_out" | tail -n 30)"
fi
echo "ssp: test accuracy $acc; demo run $((SECONDS - t0)) s"
stopped "$tmp/ssp"
exactly_once "$tmp/ssp"
leads "$tmp/ssp" ssp:2 2

# ---- 2. a short BSP job ------------------------------------------------------------------------
cat >"$tmp/bsp.ini" <<'EOF'
[job]
name = fmnist-bsp
model = softmax:784-10
dataset = fashion-mnist
test_dataset = fashion-mnist-test
batch_size = 100
epochs = 1
consistency = bsp
replication = 1
shards = 2
compression = bf16

[optimizer]
type = sgd
lr = 0.1

[init]
method = zeros
EOF
t0=$SECONDS
run "$srcdir/scripts/demo.sh" --bin "$bindir" --job "$tmp/bsp.ini" --shards 2 --no-fault \
    --min-accuracy 0.75 --timeout 5 --dir "$tmp/bsp"
expect_status 0 "the BSP job finishes"
expect_out "the job finished: state 'done' in etcd" "the BSP job is done"
expect_out "progress +2/2 shards done" "both shards were finished"
for s in s1 s2 s3; do
    log=$tmp/bsp/logs/server-$s.log
    for what in "push" "pull answered"; do
        grep -q "job fmnist-bsp: first $what with bf16 rows" "$log" && ok ||
            fail "server $s logged no $what with bf16 rows" "$(grep -i 'rows\|serving' "$log" | tail -n 5)"
    done
    # (The test evaluation pulls 32-bit rows: it measures the model the servers hold.)
    grep -q "job fmnist-bsp: first push with 32-bit rows" "$log" &&
        fail "server $s got a push of 32-bit rows in a bf16 job" || ok
done
echo "bsp: demo run $((SECONDS - t0)) s"
stopped "$tmp/bsp"
exactly_once "$tmp/bsp"
leads "$tmp/bsp" bsp 0

finish
