#!/usr/bin/env bash
# test_coordinator.sh BINDIR SRCDIR - keel-coordinator processes against a
# real etcd: election, failover after SIGKILL within TTL + 2 s, a SIGSTOPped
# leader that changes nothing once resumed, an etcd restart in the middle, a
# clean SIGTERM, a duplicate id, and TLS to etcd.
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"
. "$srcdir/tests/lib/etcd.sh"
. "$srcdir/tests/lib/procs.sh"

coord=$bindir/keel-coordinator
ttl=2

# start ID [extra options...]: a coordinator logging to $tmp/ID.log.
start() {
    local id=$1
    shift
    "$coord" -o node.id="$id" -o cluster.name=t -o cluster.etcd="$ETCD_ENDPOINT" \
        -o etcd.lease_ttl=${ttl}s -o coordinator.heartbeat=300ms -o etcd.retry_timeout=3s \
        -o node.listen="127.0.0.1:70${id#c}0" "$@" >>"$tmp/$id.log" 2>&1 &
    pid[$id]=$!
}
leader_value() { etcdctl_ get --print-value-only /keel/t/leader; }
leader_is() { leader_value | grep -q "\"id\":\"$1\""; }
# The node id holding the election right now (the leader key's value).
elected() { etcdctl_ get --prefix --print-value-only /keel/t/election/coordinator --sort-by=CREATE | head -n 1; }
elected_is() { [ "$(elected)" = "$1" ]; }
logged() { grep -q "$2" "$tmp/$1.log" 2>/dev/null; }
alive() { kill -0 "${pid[$1]}" 2>/dev/null; }

# --- etcd unreachable at start: the coordinator waits, and still stops cleanly ---
ETCD_ENDPOINT=http://127.0.0.1:$(free_port)
start c9
if wait_for 10 logged c9 "cannot register, will keep trying"; then ok; else
    fail "no word of the unreachable etcd" "$(cat "$tmp/c9.log")"
fi
if alive c9; then ok; else fail "coordinator gave up while etcd was unreachable"; fi
t0=$(now_ms)
kill -TERM "${pid[c9]}"
wait "${pid[c9]}"
run echo "exit $? after $(($(now_ms) - t0)) ms"
expect_out '^exit 0 ' "SIGTERM while etcd is unreachable"
unset "pid[c9]"

etcd_start "$tmp/etcd" || exit 1

# --- one leader, one standby ------------------------------------------------
start c1
wait_for 10 logged c1 "became leader of cluster 't' with epoch"
start c2
wait_for 10 logged c2 "campaigning in election"
run etcdctl_ get --prefix --keys-only /keel/t/members/coordinator/
expect_out '^/keel/t/members/coordinator/c1$' "c1 registered"
expect_out '^/keel/t/members/coordinator/c2$' "c2 registered"
run etcdctl_ get --print-value-only /keel/t/members/coordinator/c2
expect_out '"address":"127.0.0.1:7020".*"incarnation":[0-9]+.*"start_time_ms":[0-9]+' \
    "member record has address, incarnation and start time"
if wait_for 5 leader_is c1; then ok; else fail "leader record is not c1's" "$(leader_value)"; fi
if elected_is c1; then ok; else fail "c1 does not hold the election" "$(elected)"; fi

# --- SIGKILL the leader: the standby leads within TTL + 2 s ------------------
kill -KILL "${pid[c1]}"
t0=$(now_ms)
wait "${pid[c1]}" 2>/dev/null
if wait_for 10 logged c2 "became leader"; then
    took=$(($(now_ms) - t0))
    echo "failover after SIGKILL: ${took} ms (lease TTL ${ttl} s)"
    if [ "$took" -le $(((ttl + 2) * 1000)) ]; then ok; else
        fail "failover took $took ms, more than TTL + 2 s"
    fi
else
    fail "c2 did not become leader after c1 was killed" "$(cat "$tmp/c2.log")"
fi
if wait_for 3 leader_is c2; then ok; else fail "leader record is not c2's" "$(leader_value)"; fi
epoch2=$(leader_value | sed -n 's/.*"epoch":\([0-9]*\).*/\1/p')

# c1 comes back with the same id: its old registration is gone by now.
start c1
wait_for 10 logged c1 "campaigning in election"
run grep -c "became leader" "$tmp/c1.log"
expect_out '^1$' "restarted c1 is a standby"

# --- SIGSTOP the leader past its lease; resumed, it changes nothing ------------
kill -STOP "${pid[c2]}"
t0=$(now_ms)
if wait_for 10 elected_is c1 && wait_for 5 leader_is c1; then ok; else
    fail "c1 did not take over from the stopped c2" "$(tail -n 5 "$tmp/c1.log")"
fi
echo "takeover from a stopped leader: $(($(now_ms) - t0)) ms"
epoch1=$(leader_value | sed -n 's/.*"epoch":\([0-9]*\).*/\1/p')
if [ -n "$epoch1" ] && [ -n "$epoch2" ] && [ "$epoch1" -gt "$epoch2" ]; then ok; else
    fail "new epoch $epoch1 is not above the stopped leader's $epoch2"
fi
before=$(etcdctl_ get / -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
kill -CONT "${pid[c2]}"
wait_for 10 logged c2 "stepped down as leader (epoch $epoch2)"
if logged c2 "stepped down as leader (epoch $epoch2)"; then ok; else
    fail "resumed c2 did not step down" "$(tail -n 8 "$tmp/c2.log")"
fi
wait_for 10 logged c2 "registered as member.*incarnation" # re-registration
sleep 1
# Every change since the resume, from etcd's history: none may come from c2 as leader.
timeout 3 env ETCDCTL_API=3 "$ETCDCTL_BIN" --endpoints "$ETCD_ENDPOINT" watch --prefix /keel/t/ \
    --rev $((before + 1)) -w json >"$tmp/history.json" 2>/dev/null
python3 - "$tmp/history.json" "$epoch2" >"$tmp/history.txt" <<'EOF'
import base64, json, sys
text = open(sys.argv[1]).read()
dec = json.JSONDecoder()
pos, out = 0, []
while pos < len(text):
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos >= len(text):
        break
    obj, pos = dec.raw_decode(text, pos)
    for ev in obj.get("Events") or []:
        kv = ev["kv"]
        key = base64.b64decode(kv["key"]).decode()
        val = base64.b64decode(kv.get("value", "")).decode()
        out.append("%s %s %s" % (ev.get("type", "PUT"), key, val))
print("\n".join(out))
EOF
if grep -q '^PUT /keel/t/leader .*"id":"c2"' "$tmp/history.txt"; then
    fail "the deposed leader wrote its leader record after resuming" "$(cat "$tmp/history.txt")"
else ok; fi
if grep -q "\"epoch\":$epoch2[,}]" "$tmp/history.txt"; then
    fail "a write with the old epoch $epoch2 reached etcd" "$(cat "$tmp/history.txt")"
else ok; fi
if elected_is c1 && leader_is c1; then ok; else fail "c1 lost the lead to the resumed c2"; fi
run etcdctl_ get --print-value-only /keel/t/members/coordinator/c2
expect_out '"incarnation"' "resumed c2 registered again"

# --- etcd restarted in the middle: both carry on --------------------------------
# First a quick restart (the client's retries bridge it), then an outage longer
# than the lease TTL (every lease is lost: leaders step down, everyone registers
# again once etcd is back, and one of them leads again).
hb_after() { leader_value | sed -n 's/.*"heartbeat_ms":\([0-9]*\).*/\1/p'; }
fresh_heartbeat() { local h; h=$(hb_after); [ -n "$h" ] && [ "$h" -gt "$restarted" ]; }
members_back() { [ "$(etcdctl_ get --prefix --keys-only /keel/t/members/coordinator/ | grep -c .)" = 2 ]; }
for outage in 0 $((ttl + 2)); do
    etcd_stop
    sleep "$outage"
    etcd_restart || exit 1
    restarted=$(now_ms)
    if wait_for 20 fresh_heartbeat; then ok; else
        fail "no leader heartbeat after an etcd outage of ${outage} s" \
            "$(tail -n 10 "$tmp/c1.log" "$tmp/c2.log")"
    fi
    echo "etcd outage of ${outage} s: leader heartbeat again $(($(now_ms) - restarted)) ms after etcd came back"
    if alive c1 && alive c2; then ok; else fail "a coordinator died during an etcd outage"; fi
    if wait_for 15 members_back; then ok; else
        fail "members not both registered after an etcd outage of ${outage} s"
    fi
done
run grep -h "lease lost" "$tmp/c1.log" "$tmp/c2.log"
expect_status 0 "an outage longer than the TTL is seen as lease loss"
lead_now=$(leader_value | sed -n 's/.*"id":"\(c[12]\)".*/\1/p')
other=c1
[ "$lead_now" = c1 ] && other=c2
if [ -n "$lead_now" ] && elected_is "$lead_now"; then ok; else
    fail "election and leader record disagree after the restart ($lead_now vs $(elected))"
fi

# --- SIGTERM: resign and revoke at once; the standby takes over quickly ----------
kill -TERM "${pid[$lead_now]}"
t0=$(now_ms)
wait "${pid[$lead_now]}"
run echo "exit $?"
expect_out '^exit 0$' "SIGTERM exits 0"
unset "pid[$lead_now]"
run etcdctl_ get --keys-only /keel/t/members/coordinator/$lead_now
expect_out '^$' "member key gone after SIGTERM"
if wait_for 5 logged "$other" "became leader.*epoch"; then ok; else fail "$other did not take over"; fi
if wait_for 5 leader_is "$other"; then
    took=$(($(now_ms) - t0))
    echo "takeover after SIGTERM: $took ms"
    if [ "$took" -lt $((ttl * 1000)) ]; then ok; else
        fail "takeover after a resignation took $took ms, as long as a lease expiry"
    fi
else fail "leader record not $other's after SIGTERM"; fi
run grep -E "resigned as leader|left as member" "$tmp/$lead_now.log"
expect_status 0 "the leaving coordinator logs its resignation"

# --- the leader's lease revoked under it: it steps down at once, then leads anew ---
lease_dec=$(etcdctl_ get /keel/t/members/coordinator/$other -w json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["kvs"][0]["lease"])')
downs_before=$(grep -c "stepped down as leader" "$tmp/$other.log")
t0=$(now_ms)
etcdctl_ lease revoke "$(printf '%x' "$lease_dec")" >/dev/null
stepped() { [ "$(grep -c "stepped down as leader" "$tmp/$other.log")" -gt "$downs_before" ]; }
if wait_for 5 stepped; then
    took=$(($(now_ms) - t0))
    echo "leader stepped down $took ms after its lease was revoked"
    if [ "$took" -le $((ttl * 1000)) ]; then ok; else fail "stepping down took $took ms"; fi
else
    fail "$other did not step down when its lease was revoked" "$(tail -n 5 "$tmp/$other.log")"
fi
leads_again() { [ "$(grep -c "became leader" "$tmp/$other.log")" -ge 2 ]; }
if wait_for 10 leads_again; then ok; else fail "$other did not lead again after re-registering"; fi

# --- a second node with a running node's id is refused ---------------------------
run "$coord" -o node.id="$other" -o cluster.name=t -o cluster.etcd="$ETCD_ENDPOINT" \
    -o etcd.lease_ttl=${ttl}s
expect_status 1 "duplicate coordinator id"
expect_err "member 'coordinator/$other' is already registered" "duplicate coordinator id"

kill -TERM "${pid[$other]}"
wait "${pid[$other]}"
unset "pid[$other]"
etcd_stop

# --- TLS to etcd with client certificates ---------------------------------------
certs=$tmp/certs
etcd_make_certs "$certs" || exit 1
etcd_start "$tmp/etcd-tls" --tls "$certs" || exit 1
start c5 -o tls.ca="$certs/ca.crt" -o tls.cert="$certs/client.crt" -o tls.key="$certs/client.key"
if wait_for 10 logged c5 "became leader"; then ok; else
    fail "coordinator over TLS did not lead" "$(cat "$tmp/c5.log")"
fi
run "$coord" -o node.id=c6 -o cluster.name=t -o cluster.etcd="$ETCD_ENDPOINT" \
    -o etcd.ca="$certs/ca.crt" -o etcd.cert="$certs/other.crt" -o etcd.key="$certs/other.key"
expect_status 1 "coordinator with a certificate etcd does not trust"
expect_err "TLS|alert|certificate" "coordinator with a certificate etcd does not trust"
kill -TERM "${pid[c5]}"
wait "${pid[c5]}"
run echo "exit $?"
expect_out '^exit 0$' "TLS coordinator exits 0 on SIGTERM"
unset "pid[c5]"

finish
