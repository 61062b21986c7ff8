#!/usr/bin/env bash
# leader-scale.sh [BINDIR] - how fast the coordinator's leader leases shards
# and takes progress reports, and how long keelctl status takes, with a job of
# SHARDS shards (default 4096) and 64 workers, against a private etcd.
#
#   ./scripts/leader-scale.sh build/bin
#   SHARDS=128 ROUNDS=20 ./scripts/leader-scale.sh build/bin
#
# Workers are member keys under one etcd lease (written in one transaction, so
# they appear at once); progress reports are written in one transaction per
# round, each holder reporting the end of its pass, so every round ends 64
# leases and hands out 64 others.  Times include this script's polling (10-20
# ms) and a python3 start per round (about 50 ms).  Not part of the test suite.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
bindir=${1:-$top/build/bin}
shards=${SHARDS:-4096}
rounds=${ROUNDS:-63}
. "$top/tests/lib/etcd.sh"

tmp=$(mktemp -d)
cpid=
cleanup() {
    [ -n "$cpid" ] && kill -KILL "$cpid" 2>/dev/null
    etcd_stop
    rm -rf "$tmp"
}
trap cleanup EXIT
ms() { date +%s%3N; }
kc() { "$bindir/keelctl" -o cluster.name=t -o cluster.etcd="$ETCD_ENDPOINT" "$@"; }
leases() { grep -c "leased to" "$tmp/c1.log"; }
wait_leases() { # N: up to 30 s for N leases in all
    local k
    for k in $(seq 1 1500); do
        [ "$(leases)" -ge "$1" ] && return 0
        sleep 0.02
    done
    echo "leader-scale.sh: only $(leases) of $1 leases after 30 s" >&2
    exit 1
}
# gateway.py OP ARGS: etcd's JSON gateway from python (one transaction per call).
cat >"$tmp/gateway.py" <<'EOF'
import base64, json, sys, urllib.request
ep, op = sys.argv[1], sys.argv[2]
b64 = lambda s: base64.b64encode(s.encode()).decode()
def post(path, body):
    req = urllib.request.Request(ep + path, data=json.dumps(body).encode(), method="POST")
    return json.load(urllib.request.urlopen(req, timeout=30))
if op == "workers":  # LEASE N: N worker member keys under LEASE
    lease, n = sys.argv[3], int(sys.argv[4])
    ops = [{"request_put": {"key": b64("/keel/t/members/worker/w%d" % i), "lease": lease,
            "value": b64(json.dumps({"role": "worker", "id": "w%d" % i, "address": "",
                                     "incarnation": 1000 + i, "start_time_ms": 1, "pid": 1}))}}
           for i in range(1, n + 1)]
else:  # "progress" JOB BATCH: every holder reports (pass, BATCH), or the end of its pass if BATCH < 0
    job, batch = sys.argv[3], int(sys.argv[4])
    pre = "/keel/t/jobs/%s/shards/" % job
    r = post("/v3/kv/range", {"key": b64(pre), "range_end": b64(pre[:-1] + "0")})
    ops = []
    for kv in r.get("kvs", []):
        n = base64.b64decode(kv["key"]).decode().rsplit("/", 1)[1]
        s = json.loads(base64.b64decode(kv["value"]))
        if s["owner"]:
            p, b = (s["pass"] + 1, 0) if batch < 0 else (s["pass"], batch)
            rep = {"worker": s["owner"], "incarnation": s["incarnation"], "lease": s.get("lease", 0),
                   "pass": p, "batch": b}
            ops.append({"request_put": {"key": b64("/keel/t/jobs/%s/progress/%s" % (job, n)),
                                        "value": b64(json.dumps(rep))}})
r = post("/v3/kv/txn", {"success": ops})
assert r.get("succeeded"), r
EOF

etcd_start "$tmp/etcd" >/dev/null || exit 1
printf '[job]\nname = big\nmodel = softmax:4-3\ndataset = d1\nepochs = 100\nshards = %s\n' \
    "$shards" >"$tmp/big.ini"
"$bindir/keel-coordinator" -o node.id=c1 -o cluster.name=t -o cluster.etcd="$ETCD_ENDPOINT" \
    -o etcd.lease_ttl=2s -o coordinator.heartbeat=1s >"$tmp/c1.log" 2>&1 &
cpid=$!
kc job submit "$tmp/big.ini" >/dev/null || exit 1
for k in $(seq 1 300); do
    grep -q "job 'big': started" "$tmp/c1.log" && break
    sleep 0.1
done
hexlease=$(etcdctl_ lease grant 600 | awk '{print $2}')

t0=$(ms)
python3 "$tmp/gateway.py" "$ETCD_ENDPOINT" workers $((16#$hexlease)) 64
wait_leases 64
echo "64 workers registered at once: 64 shards leased in $(($(ms) - t0)) ms"

t0=$(ms)
for round in $(seq 1 "$rounds"); do
    python3 "$tmp/gateway.py" "$ETCD_ENDPOINT" progress big -1
    wait_leases $((64 * (round + 1)))
done
t=$(($(ms) - t0))
echo "$rounds rounds of 64 pass ends: $((64 * rounds)) leases ended and handed out in $t ms" \
    "($((t / rounds)) ms a round)"
echo "shard keys in etcd: $(etcdctl_ get --prefix --keys-only /keel/t/jobs/big/shards/ | grep -c .)"

for i in 1 2 3; do
    t0=$(ms)
    kc status --json >/dev/null
    echo "keelctl status --json: $(($(ms) - t0)) ms"
done
t0=$(ms)
curl -s -X POST "$ETCD_ENDPOINT/v3/kv/range" \
    -d '{"key":"L2tlZWwvdC8=","range_end":"L2tlZWwvdDA="}' >/dev/null
echo "the same read with curl through etcd's gateway: $(($(ms) - t0)) ms"

t0=$(ms)
etcdctl_ lease revoke "$hexlease" >/dev/null
for k in $(seq 1 1500); do
    [ "$(grep -c "released by" "$tmp/c1.log")" -ge 64 ] && break
    sleep 0.02
done
echo "64 workers gone at once: 64 shards released in $(($(ms) - t0)) ms"
kill -TERM "$cpid"
wait "$cpid"
cpid=
