#!/usr/bin/env bash
# test_checkpoint.sh BINDIR SRCDIR - `keelctl checkpoint` on real LMDB stores
# filled by keel-test-store: list/show/verify/diff/export/prune/audit, JSON
# output, tampering found and named, a full store failing clearly with the
# previous checkpoint intact.
set -u
bindir=$1
. "$2/tests/lib/assert.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ctl=$bindir/keelctl
kts=$bindir/keel-test-store
store=$tmp/node
key=$tmp/cluster.key

# --- a key, a filled store ---------------------------------------------------
run "$ctl" checkpoint keygen --out "$key"
expect_status 0 "keygen"
run "$ctl" checkpoint keygen --out "$key"
expect_status 1 "keygen refuses to overwrite"
expect_err "cluster.key': File exists" "keygen refuses to overwrite"

run "$kts" fill --store "$store" --key "$key" --ranges 4 --rows 3000 --checkpoints 3
expect_status 0 "fill"

run "$ctl" checkpoint --help
expect_status 0 "checkpoint --help"
expect_out "verify ID" "checkpoint --help"

run "$ctl" checkpoint list --store "$store"
expect_status 0 "list"
expect_out "^ID +JOB +CLOCK +CREATED +RANGES +ROWS" "list header"
expect_out "^3 +test-job +30 .* 4 +15004$" "list row"

run "$ctl" checkpoint list --store "$store" --json
expect_status 0 "list --json"
if printf '%s' "$run_out" | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); assert [c["id"] for c in d]==[1,2,3], d'; then ok; else fail "list --json parses" "$run_out"; fi

run "$ctl" checkpoint show 2 --store "$store"
expect_status 0 "show"
expect_out "^RANGE +LSN +ROWS +TABLES +BLOCKS +SHA256" "show ranges header"
expect_out "^3 +204 +3751 +2 +2 +[0-9a-f]{64}$" "show range 3"
expect_out "^3 +204 +w[0-3]" "show shard progress"

run "$ctl" checkpoint show 2 --store "$store" --json
expect_status 0 "show --json"
if printf '%s' "$run_out" | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["id"]==2 and len(d["ranges"])==4 and d["shards"][0]["seq"]==204, d'; then ok; else fail "show --json parses" "$run_out"; fi

for id in 1 2 3; do
    run "$ctl" checkpoint verify "$id" --store "$store" --key "$key"
    expect_status 0 "verify $id"
    expect_out "checkpoint $id: ok" "verify $id"
done
run "$ctl" checkpoint verify 3 --store "$store"
expect_status 64 "verify without --key"
expect_err "--key FILE is required" "verify without --key"
run "$ctl" checkpoint verify 9 --store "$store" --key "$key"
expect_status 1 "verify a missing checkpoint"
expect_err "has no checkpoint 9" "verify a missing checkpoint"

run "$ctl" checkpoint diff 1 3 --store "$store"
expect_status 0 "diff"
expect_out "^TABLE +ROWS_A +ROWS_B +CHANGED +L2" "diff header"
expect_out "^1 +12000 +12000 +12000 " "diff table 1"
run "$ctl" checkpoint diff 2 2 --store "$store" --json
if printf '%s' "$run_out" | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); assert all(t["changed"]==0 and t["l2"]==0 for t in d), d'; then ok; else fail "diff of a checkpoint with itself is empty" "$run_out"; fi

# --- export, read back with numpy --------------------------------------------
run "$ctl" checkpoint export 3 --out "$tmp/export" --store "$store"
expect_status 64 "export without --key"
expect_err "--key FILE is required" "export without --key"
run "$ctl" checkpoint export 3 --out "$tmp/export" --store "$store" --key "$key"
expect_status 0 "export"
check_npy() {
    /usr/bin/python3 - "$tmp/export" <<'PY'
import sys, numpy as np
d = sys.argv[1]
rows = np.load(d + "/table_1.npy"); keys = np.load(d + "/table_1.keys.npy")
state = np.load(d + "/table_1.state.npy"); t2 = np.load(d + "/table_2.npy")
assert rows.dtype == np.float32 and rows.shape == (12000, 16), rows.shape
assert keys.dtype == np.uint64 and keys.shape == (12000,)
assert (np.diff(keys.astype(np.float64)) > 0).all(), "keys sorted"
assert (keys >> np.uint64(48) == 1).all()
assert state.shape == (12000, 2) and t2.shape == (3004, 4)
# keel-test-store puts range*100000 + lsn in every value of range = key % 256
r = (keys & np.uint64(255)).astype(np.float64)
assert np.allclose(rows[:, 0], r * 100000 + 304), rows[:5, 0]
assert np.allclose(state, -rows[:, :2])
print("numpy ok")
PY
}
run check_npy
expect_status 0 "numpy reads the export"
expect_out "numpy ok" "numpy reads the export"

# --- prune, audit --------------------------------------------------------------
run "$ctl" checkpoint prune --keep 0 --store "$store"
expect_status 64 "prune --keep 0"
run "$ctl" checkpoint prune --keep 2 --store "$store"
expect_status 0 "prune"
expect_out "pruned 1 checkpoint" "prune"
run "$ctl" checkpoint list --store "$store"
if printf '%s\n' "$run_out" | grep -q '^1 '; then fail "checkpoint 1 pruned" "$run_out"; else ok; fi
run "$ctl" checkpoint verify 2 --store "$store" --key "$key"
expect_status 0 "oldest kept verifies after prune"

run "$ctl" checkpoint audit --store "$store"
expect_status 0 "audit"
expect_out "^SEQ +TIME +EVENT" "audit header"
expect_out "^1 .* taken +1 +test-job" "audit first record"
expect_out " exported +3 " "audit export record"
expect_out " pruned +1 " "audit prune record"
expect_out "audit chain: 9 record\(s\), intact" "audit count"
run "$ctl" checkpoint audit --store "$store" --json
if printf '%s' "$run_out" | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["ok"] and len(d["records"])==9, d'; then ok; else fail "audit --json" "$run_out"; fi

# --- tampering: found, and the place named --------------------------------------
run "$kts" tamper --store "$store" row 3 2
expect_status 0 "tamper a row"
run "$ctl" checkpoint verify 3 --store "$store" --key "$key"
expect_status 1 "verify a tampered row"
expect_err "checkpoint 3: range 2: block 0: block checksum mismatch" "tampered row named"
run "$ctl" checkpoint verify 2 --store "$store" --key "$key"
expect_status 0 "the other checkpoint still verifies"
# Export verifies first: a tampered checkpoint writes no file.
run "$ctl" checkpoint export 3 --out "$tmp/export-bad" --store "$store" --key "$key"
expect_status 1 "export a tampered checkpoint"
expect_err "nothing exported: .*checkpoint 3: range 2: block 0: block checksum mismatch" "export names the damage"
[ ! -e "$tmp/export-bad" ] && ok || fail "export of a tampered checkpoint wrote $(ls "$tmp/export-bad")"

run "$kts" tamper --store "$store" manifest 2
expect_status 0 "tamper a manifest"
run "$ctl" checkpoint verify 2 --store "$store" --key "$key"
expect_status 1 "verify a tampered manifest"
expect_err "checkpoint 2: manifest" "tampered manifest named"

run "$ctl" checkpoint audit --store "$store"
expect_status 0 "audit intact before tampering it"
run "$kts" tamper --store "$store" audit 4
run "$ctl" checkpoint audit --store "$store"
expect_status 1 "audit with a flipped byte"
expect_err "audit record 5: does not chain to record 4" "flipped audit record named"
run "$kts" tamper --store "$store" audit 4 # flip it back
run "$ctl" checkpoint audit --store "$store"
expect_status 0 "audit intact again"
run "$kts" tamper --store "$store" audit-remove 6
run "$ctl" checkpoint audit --store "$store"
expect_status 1 "audit with a removed record"
expect_err "audit record 6 is missing" "removed audit record named"

# --- bad input ---------------------------------------------------------------------
run "$ctl" checkpoint list --store "$tmp/nothing-here"
expect_status 1 "list on a missing store"
expect_err "no store in '.*nothing-here'" "missing store named"
[ ! -e "$tmp/nothing-here" ] && ok || fail "a missing store must not be created"
run "$ctl" checkpoint show abc --store "$store"
expect_status 64 "show with a bad id"
run "$ctl" checkpoint frobnicate --store "$store"
expect_status 64 "unknown subcommand"
printf 'short' >"$tmp/short.key"
chmod 644 "$tmp/short.key"
run "$ctl" checkpoint verify 3 --store "$store" --key "$tmp/short.key"
expect_status 1 "a key file others can read"
expect_err "short.key' is open to group or others \(mode 644\)" "a key file others can read is refused"
chmod 600 "$tmp/short.key"
run "$ctl" checkpoint verify 3 --store "$store" --key "$tmp/short.key"
expect_status 1 "short key file"
expect_err "short.key' holds 5 bytes" "short key file named"

# --- a full store: a small map limit -------------------------------------------------
run "$kts" full --store "$tmp/full" --key "$key" --map-max 8388608
expect_status 0 "full store reports ENOSPC"
expect_out "checkpoint 1 taken" "full store: first checkpoint"
expect_out "is full: the map size limit of 8 MiB is reached" "full store error is clear"
run "$ctl" checkpoint verify 1 --store "$tmp/full" --key "$key"
expect_status 0 "full store: previous checkpoint intact"

# --- a full disk: a file size limit (EFBIG instead of ENOSPC, same path) --------------
"$kts" fill --store "$tmp/fsize" --key "$key" --ranges 2 --rows 200 --checkpoints 1 >/dev/null
limit_kb=$(($(stat -c %s "$tmp/fsize/data.mdb") / 1024 + 512))
run bash -c "trap '' XFSZ; ulimit -f $limit_kb; exec '$kts' fill --store '$tmp/fsize' --key '$key' --ranges 2 --rows 20000 --checkpoints 3"
expect_status 1 "fill past the file size limit fails"
expect_err "cannot commit to store '.*fsize': .*file size limit $limit_kb KiB" \
    "file size error names the store and the limit"
run "$ctl" checkpoint verify 1 --store "$tmp/fsize" --key "$key"
expect_status 0 "file size limit: previous checkpoint intact"
run "$ctl" checkpoint audit --store "$tmp/fsize"
expect_status 0 "file size limit: audit chain intact"

finish
