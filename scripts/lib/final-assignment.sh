#!/usr/bin/env bash
# final-assignment.sh DIR JOB OUT - with the cluster in DIR up and JOB ended,
# write the key-range assignment as it was when JOB's state last changed (the
# mod revision of /keel/<cluster>/jobs/JOB/state, read from etcd's history)
# to OUT.  That is the assignment whose in-sync replicas check_replicas.py
# reads.  Exit status 0, or 1 (with a message on stderr) when it cannot.
# Used by tests/lib/cluster_job.sh (save_final_assignment) and scripts/chaos.sh.
set -u
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
dir=$1 job=$2 out=$3
name=$(. "$dir/cluster.env" && echo "$KEEL_CLUSTER_NAME")
rev=$(bash "$top/scripts/cluster.sh" etcdctl --dir "$dir" get "/keel/$name/jobs/$job/state" -w json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["kvs"][0]["mod_revision"])' 2>/dev/null)
if [ -z "$rev" ]; then
    echo "final-assignment.sh: cannot read the revision of job $job's state" >&2
    exit 1
fi
if bash "$top/scripts/cluster.sh" etcdctl --dir "$dir" get "/keel/$name/assignment" --rev="$rev" \
    --print-value-only >"$out" 2>/dev/null && [ -s "$out" ]; then
    exit 0
fi
echo "final-assignment.sh: cannot read the assignment at revision $rev" >&2
exit 1
