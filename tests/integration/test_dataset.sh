#!/usr/bin/env bash
# test_dataset.sh BINDIR SRCDIR - keelctl dataset on the real Fashion-MNIST
# files and a real LMDB store: import train and test, info, list, verify;
# malformed files refused with the file and line or offset named; a name
# imported once; a flipped byte in the store named by verify.
set -u
bindir=$1
. "$2/tests/lib/assert.sh"

keelctl=$bindir/keelctl
fm=/usr/share/datasets/fashion-mnist
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
store=$tmp/node

# --- help and usage ---------------------------------------------------------
run "$keelctl" dataset --help
expect_status 0 "dataset --help"
expect_out "import +parse IDX, LIBSVM or CSV" "dataset --help lists import"
for sub in import info list verify; do
    run "$keelctl" dataset "$sub" --help
    expect_status 0 "dataset $sub --help"
    expect_out "usage: keelctl dataset $sub" "dataset $sub --help"
done
run "$keelctl" dataset import --store "$store" --name x "$fm/t10k-labels-idx1-ubyte.gz"
expect_status 64 "import without --format"
expect_err "--format is required" "import without --format"
run "$keelctl" dataset import --store "$store" --name x --format idx "$fm/t10k-labels-idx1-ubyte.gz"
expect_status 64 "idx import of one file"
expect_err "two files, the images then the labels; got 1" "idx import of one file"
run "$keelctl" dataset import --store "$store" --name x --format idx --shards 0 a b
expect_status 64 "--shards 0"
expect_err "--shards: must be 1-4096, got '0'" "--shards 0"
run "$keelctl" dataset import --store "$store" --name 'bad name' --format csv a
expect_status 64 "bad name"
expect_err "may only hold letters, digits" "bad name"
run "$keelctl" dataset bogus
expect_status 64 "unknown subcommand"
expect_err "unknown subcommand 'bogus'" "unknown subcommand"

# --- Fashion-MNIST: train and test as two datasets ---------------------------
start=$(date +%s%N)
run "$keelctl" dataset import --store "$store" --name fashion-mnist --format idx --shards 4 \
    --split train "$fm/train-images-idx3-ubyte.gz" "$fm/train-labels-idx1-ubyte.gz"
end=$(date +%s%N)
expect_status 0 "import fashion-mnist"
expect_out "imported 'fashion-mnist': 60000 records, 784 features, 10 classes, 4 shards" \
    "import fashion-mnist"
expect_err "'fashion-mnist': 60000 records, [0-9.]+ MiB written" "import shows progress"
train_digest=$(printf '%s\n' "$run_out" | sed -n 's/^digest sha256://p')
ms=$(((end - start) / 1000000))
printf 'import of 60000 Fashion-MNIST training records: %d.%03d s\n' $((ms / 1000)) $((ms % 1000))

run "$keelctl" dataset import --store "$store" --name fashion-mnist-test --format idx --shards 4 \
    --split test "$fm/t10k-images-idx3-ubyte.gz" "$fm/t10k-labels-idx1-ubyte.gz"
expect_status 0 "import fashion-mnist-test"
expect_out "imported 'fashion-mnist-test': 10000 records, 784 features, 10 classes" \
    "import fashion-mnist-test"

run "$keelctl" dataset info --store "$store" --name fashion-mnist
expect_status 0 "info"
expect_out "^records +60000$" "info records"
expect_out "^features +784$" "info features"
expect_out "^classes +10$" "info classes"
expect_out "^shards +4 \(round-robin\)$" "info shards"
expect_out "^split +train$" "info split"
expect_out "^ +3 +15000 +11940000 +[0-9a-f]{64}$" "info shard table"
expect_out "^digest +sha256:$train_digest$" "info digest is the import's"

run "$keelctl" dataset info --store "$store" --name fashion-mnist-test --json
expect_status 0 "info --json"
if printf '%s' "$run_out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["records"] == 10000 and d["features"] == 784 and d["classes"] == 10, d
assert d["split"] == "test" and d["complete"] and len(d["shard_list"]) == 4, d
assert sum(s["records"] for s in d["shard_list"]) == 10000
'; then ok; else fail "info --json is not the expected JSON" "$run_out"; fi

run "$keelctl" dataset list --store "$store"
expect_status 0 "list"
expect_out "^fashion-mnist +complete +idx +60000 +784 +10 +4 +train$" "list train"
expect_out "^fashion-mnist-test +complete +idx +10000 +784 +10 +4 +test$" "list test"

for name in fashion-mnist fashion-mnist-test; do
    run "$keelctl" dataset verify --store "$store" --name "$name"
    expect_status 0 "verify $name"
    expect_out "dataset '$name' ok" "verify $name"
done

# Datasets are immutable: a second import of a name is refused, the first stands.
run "$keelctl" dataset import --store "$store" --name fashion-mnist --format idx \
    "$fm/t10k-images-idx3-ubyte.gz" "$fm/t10k-labels-idx1-ubyte.gz"
expect_status 1 "second import of a name"
expect_err "dataset 'fashion-mnist' already exists" "second import of a name"
run "$keelctl" dataset info --store "$store" --name fashion-mnist
expect_out "^records +60000$" "the first import stands"

# Plain (uncompressed) files give the same content digest, whatever the shard count.
gunzip -c "$fm/t10k-images-idx3-ubyte.gz" >"$tmp/t10k-images"
gunzip -c "$fm/t10k-labels-idx1-ubyte.gz" >"$tmp/t10k-labels"
run "$keelctl" dataset import --store "$store" --name plain-test --format idx --shards 3 -q \
    "$tmp/t10k-images" "$tmp/t10k-labels"
expect_status 0 "import plain IDX files"
run "$keelctl" dataset info --store "$store" --name fashion-mnist-test --json
test_digest=$(printf '%s' "$run_out" | sed -n 's/.*"digest": "\([0-9a-f]*\)".*/\1/p')
run "$keelctl" dataset info --store "$store" --name plain-test --json
expect_out "\"digest\": \"$test_digest\"" "plain files and 3 shards give the same digest"

# --- malformed files refused, naming the file and line or offset -------------
refused() { # NAME PATTERN DESCRIPTION: the last run failed with PATTERN and left nothing
    expect_status 1 "$3"
    expect_err "$2" "$3"
    local out=$run_out err=$run_err status=$run_status
    run "$keelctl" dataset info --store "$store" --name "$1"
    expect_err "no dataset '$1'" "$3 leaves no dataset"
    run_out=$out run_err=$err run_status=$status
}

head -c 100000 "$fm/t10k-images-idx3-ubyte.gz" >"$tmp/cut.gz"
run "$keelctl" dataset import --store "$store" --name bad1 --format idx -q \
    "$tmp/cut.gz" "$fm/t10k-labels-idx1-ubyte.gz"
refused bad1 "cut.gz': byte [0-9]+: truncated gzip stream" "truncated gzip file"

head -c 7000 "$tmp/t10k-images" >"$tmp/short-images"
run "$keelctl" dataset import --store "$store" --name bad2 --format idx -q \
    "$tmp/short-images" "$tmp/t10k-labels"
refused bad2 "short-images': byte 7000: truncated data: the header claims 10000 records of 784" \
    "truncated IDX data"

printf '\x00\x00\x08' >"$tmp/tiny"
run "$keelctl" dataset import --store "$store" --name bad3 --format idx -q "$tmp/tiny" \
    "$tmp/t10k-labels"
refused bad3 "tiny': byte 0: truncated header: 3 bytes" "truncated IDX header"

{ printf '\x1f\x00\x08\x01'; tail -c +5 "$tmp/t10k-labels"; } >"$tmp/badmagic"
run "$keelctl" dataset import --store "$store" --name bad4 --format idx -q \
    "$tmp/t10k-images" "$tmp/badmagic"
refused bad4 "badmagic': byte 0: wrong magic 1f 00 08 01" "wrong IDX magic"

run "$keelctl" dataset import --store "$store" --name bad5 --format idx -q \
    "$fm/t10k-images-idx3-ubyte.gz" "$fm/train-labels-idx1-ubyte.gz"
refused bad5 "train-labels-idx1-ubyte.gz': byte 4: 60000 labels, but '.*t10k-images-idx3-ubyte.gz' has 10000" \
    "IDX count mismatch"

# A header claiming 2^32-1 records of 2^32-1 x 2 values: refused, nothing allocated.
printf '\x00\x00\x08\x03\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x02' >"$tmp/huge"
run "$keelctl" dataset import --store "$store" --name bad6 --format idx -q "$tmp/huge" \
    "$tmp/t10k-labels"
refused bad6 "huge': byte 12: dimensions claim more than 4294967295 values per record" \
    "huge IDX dimensions"

printf '1,0.5,2\n0,1,2\n2,abc,3\n' >"$tmp/bad.csv"
run "$keelctl" dataset import --store "$store" --name bad7 --format csv -q "$tmp/bad.csv"
refused bad7 "bad.csv': line 3: field 2: 'abc' is not a number" "non-numeric CSV field"

printf '1,0.5,2\n0,1,2,7\n' >"$tmp/wide.csv"
run "$keelctl" dataset import --store "$store" --name bad8 --format csv -q "$tmp/wide.csv"
refused bad8 "wide.csv': line 2: too many fields: more than the 3 of line 1" "too many CSV columns"

printf '1 1:0.5 5:1\n0 2:1 5:1 3:2\n' >"$tmp/bad.svm"
run "$keelctl" dataset import --store "$store" --name bad9 --format libsvm -q "$tmp/bad.svm"
refused bad9 "bad.svm': line 2: pair 3: index 3 is not above 5: indices must be ascending" \
    "LIBSVM indices not ascending"

: >"$tmp/empty.svm"
run "$keelctl" dataset import --store "$store" --name bad10 --format libsvm -q "$tmp/empty.svm"
refused bad10 "empty.svm': empty file" "empty file"

run "$keelctl" dataset import --store "$store" --name bad11 --format csv -q "$tmp/missing.csv"
refused bad11 "cannot open '.*missing.csv': No such file or directory" "missing file"

# --- LIBSVM and CSV that are right --------------------------------------------
printf '# sparse\n1 1:0.5 5:1\n0 2:1\n2 3:-1.5e2 4:1 # note\n' >"$tmp/good.svm"
run "$keelctl" dataset import --store "$store" --name svm --format libsvm --shards 2 -q \
    "$tmp/good.svm"
expect_status 0 "import LIBSVM"
expect_out "3 records, 5 features, 3 classes, 2 shards, sparse-f32" "import LIBSVM"
printf 'a,b,label\n0.5,1,1\n2,3,0\n' >"$tmp/good.csv"
run "$keelctl" dataset import --store "$store" --name csv --format csv --header \
    --label-column last -q "$tmp/good.csv" "$tmp/good.csv"
expect_status 0 "import CSV with a header, label last, two files"
expect_out "4 records, 2 features, 2 classes, 1 shard, dense-f32" "import CSV"
for name in svm csv; do
    run "$keelctl" dataset verify --store "$store" --name "$name"
    expect_status 0 "verify $name"
done

# --- a flipped byte in the store is named by verify --------------------------
# Record 4097 of the training set is shard 1 (4097 mod 4), index 1024 (4097 div 4).
run "$bindir/keel-test-dataset-corrupt" "$store" fashion-mnist 1 1024
expect_status 0 "corrupt a record"
run "$keelctl" dataset verify --store "$store" --name fashion-mnist
expect_status 1 "verify after a flipped byte"
expect_err "'fashion-mnist': record 4097 \(shard 1, index 1024\): checksum mismatch" \
    "verify names the damaged record"
expect_err "2 problems, the first: record 4097 \(shard 1, index 1024\)" "verify's summary"
run "$keelctl" dataset verify --store "$store" --name fashion-mnist-test
expect_status 0 "the other dataset still verifies"

finish
