#!/usr/bin/env bash
# test_etcd.sh BINDIR SRCDIR - the etcd client against a real etcd on a free
# loopback port: round trips, leases, watch resume across an etcd restart,
# compaction, election, fencing, membership, unavailability, failover, TLS.
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"
. "$srcdir/tests/lib/etcd.sh"
. "$srcdir/tests/lib/procs.sh"

check=$bindir/../tests/keel-etcd-check
revision() { etcdctl_ get / -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])'; }

etcd_start "$tmp/plain" || exit 1
export ETCD_ENDPOINT

# --- scenarios written in C -------------------------------------------------
for scenario in "roundtrip /rt/" "election /el/one" "fence fc /fence/" "member-rejoin mr w7" \
    "hooks hk" "cview cv"; do
    # shellcheck disable=SC2086
    run "$check" $scenario
    expect_status 0 "scenario $scenario"
    expect_out " ok" "scenario $scenario"
done

# --- what the client writes, etcdctl reads, and the reverse -----------------
run "$check" put /x/from-keel 'hello "keel"'
expect_status 0 "put"
run etcdctl_ get --print-value-only /x/from-keel
expect_out '^hello "keel"$' "etcdctl reads the client's put"
etcdctl_ put /x/from-etcdctl 'value with spaces' >/dev/null
run "$check" get /x/from-etcdctl
expect_out '^value with spaces$' "the client reads etcdctl's put"
run "$check" get /x/absent
expect_status 3 "get of an absent key"
run "$check" range /x/
expect_out '^/x/from-etcdctl=value with spaces$' "range"
expect_out '^/x/from-keel=hello "keel"$' "range"

# --- failover: a dead endpoint first, then the live one ----------------------
dead=$(free_port)
run "$check" --endpoints "http://127.0.0.1:$dead,$ETCD_ENDPOINT" roundtrip /fo/
expect_status 0 "roundtrip with a dead first endpoint"

# --- lease keep-alive: the key outlives 3 TTLs; a revoke is seen as loss -----
"$check" lease-hold 2 /lh/k 30 >"$tmp/lease.out" 2>"$tmp/lease.err" &
lp=$!
pid[lease]="$lp"
wait_for 5 grep -q '^lease ' "$tmp/lease.out"
sleep 6
run etcdctl_ get --print-value-only /lh/k
expect_out '^held$' "leased key alive after 3 TTLs of keep-alive"
hexid=$(awk '/^lease /{print $3}' "$tmp/lease.out")
t0=$(now_ms)
etcdctl_ lease revoke "$hexid" >/dev/null
if wait_for 5 grep -q '^lost after' "$tmp/lease.out"; then
    ok
    echo "lease loss seen $(($(now_ms) - t0)) ms after the revoke (TTL 2 s, keep-alive every 667 ms)"
else
    fail "revoked lease not reported lost" "$(cat "$tmp/lease.out" "$tmp/lease.err")"
fi
wait "$lp"
run etcdctl_ get /lh/k
expect_out '^$' "revoked lease took its key"

# --- watch: resumes after an etcd restart without missing or repeating -------
rev=$(revision)
"$check" watch /w/ $((rev + 1)) 40 10 >"$tmp/watch.out" 2>"$tmp/watch.err" &
wp=$!
pid[watch]="$wp"
sleep 0.5
for i in 1 2 3; do etcdctl_ put /w/k$i v$i >/dev/null; done
wait_for 5 grep -q '^PUT /w/k3 ' "$tmp/watch.out"
# Freeze the watcher so that etcd's restart and the next writes all happen
# while it is not connected: it must fetch them from history on resuming.
kill -STOP "$wp"
etcd_restart || exit 1
for i in 4 5 6; do etcdctl_ put /w/k$i v$i >/dev/null; done
etcdctl_ del /w/k1 >/dev/null
kill -CONT "$wp"
for i in 7 8 9; do etcdctl_ put /w/k$i v$i >/dev/null; done
wait "$wp"
want="PUT /w/k1 v1 $((rev + 1))
PUT /w/k2 v2 $((rev + 2))
PUT /w/k3 v3 $((rev + 3))
PUT /w/k4 v4 $((rev + 4))
PUT /w/k5 v5 $((rev + 5))
PUT /w/k6 v6 $((rev + 6))
DELETE /w/k1 $((rev + 7))
PUT /w/k7 v7 $((rev + 8))
PUT /w/k8 v8 $((rev + 9))
PUT /w/k9 v9 $((rev + 10))"
got=$(grep -E '^(PUT|DELETE) ' "$tmp/watch.out")
if [ "$got" = "$want" ]; then ok; else
    fail "watch across an etcd restart" "$(diff <(echo "$want") <(echo "$got"))"
fi
run grep -E '^CONNECTS [2-9]' "$tmp/watch.out"
expect_status 0 "watch reconnected after the restart"

# --- watch: history compacted while away -> listed again ---------------------
"$check" watch /w/ 0 40 2 >"$tmp/compact.out" 2>"$tmp/compact.err" &
wp=$!
pid[compact]="$wp"
wait_for 5 grep -q '^RESET ' "$tmp/compact.out"
kill -STOP "$wp"
etcd_restart || exit 1
etcdctl_ put /w/new 1 >/dev/null
etcdctl_ del /w/k2 >/dev/null
etcdctl_ compact "$(revision)" >/dev/null
kill -CONT "$wp"
wait_for 10 test "$(grep -c '^RESET ' "$tmp/compact.out")" -ge 2
etcdctl_ put /w/after 1 >/dev/null
etcdctl_ put /w/after2 1 >/dev/null
wait "$wp"
run grep -c '^RESET ' "$tmp/compact.out"
expect_out '^2$' "a second listing after compaction"
# The last listing is exactly what etcd holds at that revision.
state=$(awk '/^RESET /{s=""} /^STATE /{s=s $2 " " $3 "\n"} END{printf "%s", s}' "$tmp/compact.out")
held=$(etcdctl_ get --prefix /w/ | paste - - | grep -v '^/w/after' | tr '\t' ' ')
if [ "$state" = "$held"$'\n' ] || [ "$state" = "$held" ]; then ok; else
    fail "listing after compaction differs from etcd" "$(diff <(echo "$held") <(echo "$state"))"
fi
run grep -E '^PUT /w/after2 ' "$tmp/compact.out"
expect_status 0 "watch goes on after the listing"
run grep 'compacted' "$tmp/compact.err"
expect_status 0 "compaction is logged"

# --- membership: a duplicate id is refused, a crashed holder's id frees up -----
"$check" member-join dup worker w1 127.0.0.1:7001 2 0 60 >"$tmp/m1.out" 2>"$tmp/m1.err" &
mp=$!
pid[member]="$mp"
wait_for 5 grep -q '^joined ' "$tmp/m1.out"
run "$check" member-join dup worker w1 127.0.0.1:7002 2 0 1
expect_status 2 "duplicate member id"
expect_err "member 'worker/w1' is already registered by '127.0.0.1:7001'" "duplicate member id"
expect_err "another node running with id 'w1'" "duplicate member id"
run "$check" member-join dup worker w2 127.0.0.1:7002 2 0 0
expect_status 0 "another id joins"
# SIGKILL leaves the registration until its lease expires; a restart waits for it.
kill -KILL "$mp"
wait "$mp" 2>/dev/null
t0=$(now_ms)
run "$check" member-join dup worker w1 127.0.0.1:7003 2 5000 0
expect_status 0 "restarted member waits for its old registration to expire"
echo "re-registration after SIGKILL took $(($(now_ms) - t0)) ms (TTL 2 s)"
inc1=$(awk '/^joined /{print $4}' "$tmp/m1.out")
inc2=$(printf '%s\n' "$run_out" | awk '/^joined /{print $4}')
if [ -n "$inc1" ] && [ -n "$inc2" ] && [ "$inc2" -gt "$inc1" ]; then ok; else
    fail "incarnation did not grow across the restart ($inc1 -> $inc2)"
fi

# --- unavailability: bounded retries, then success once etcd is back ------------
etcd_stop
t0=$(now_ms)
run "$check" --retry-timeout 1500 put /u/k v
took=$(($(now_ms) - t0))
expect_status 2 "put while etcd is down"
expect_err "etcd unavailable" "put while etcd is down"
if [ "$took" -ge 1400 ] && [ "$took" -lt 6000 ]; then ok; else
    fail "put while etcd is down gave up after $took ms, expected about 1500"
fi
"$check" --retry-timeout 30000 put /u/k v >"$tmp/retry.out" 2>&1 &
rp=$!
pid[retry]="$rp"
sleep 1
etcd_restart || exit 1
wait "$rp"
run cat "$tmp/retry.out"
expect_out '^revision [0-9]+' "a put retried until etcd came back"
run etcdctl_ get --print-value-only /u/k
expect_out '^v$' "the retried put landed"
etcd_stop

# --- TLS with client certificates ------------------------------------------------
certs=$tmp/certs
if etcd_make_certs "$certs"; then ok; else fail "openssl could not make test certificates"; fi
etcd_start "$tmp/tls" --tls "$certs" || exit 1
export ETCD_ENDPOINT
run "$check" --ca "$certs/ca.crt" --cert "$certs/client.crt" --key "$certs/client.key" \
    roundtrip /tls/
expect_status 0 "roundtrip over TLS with a client certificate"
t0=$(now_ms)
run "$check" --ca "$certs/ca.crt" --cert "$certs/other.crt" --key "$certs/other.key" \
    --retry-timeout 3000 put /tls/x v
took=$(($(now_ms) - t0))
expect_status 2 "a client certificate from another CA"
# In TLS 1.3 etcd refuses the client's certificate after the client's side of
# the handshake is done: the client then sees the alert (KEEL_ETLS, not
# retried) or, depending on timing, only the connection being cut (retried as
# unavailable until the retry timeout).  Either way nothing gets through.
expect_err "KEEL_ETLS|KEEL_EUNAVAILABLE" "a client certificate from another CA is refused"
if [ "$took" -lt 8000 ]; then ok; else fail "TLS refusal took $took ms"; fi
run "$check" --ca "$certs/ca.crt" --retry-timeout 2000 put /tls/x v
expect_status 2 "no client certificate"
run "$check" --ca "$certs/other-ca.crt" --cert "$certs/client.crt" --key "$certs/client.key" \
    put /tls/x v
expect_status 2 "etcd's certificate checked against the wrong CA"
expect_err "KEEL_ETLS" "server verification failure is a TLS error"
run etcdctl_ get /tls/x
expect_out '^$' "nothing written by refused clients"

finish
