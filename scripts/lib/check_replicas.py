#!/usr/bin/env python3
"""check_replicas.py - exactly-once and identical replicas, read from the stores.

    check_replicas.py --helper keel-test-train --data DIR --assignment FILE
                      --spec JOB.ini --pushes N --seq-end Q[,Q...] [--rows R]

Run with the cluster down (the stores are read as a restarting server reads
them).  FILE is the key-range assignment as it was when the job became done
(etcd's /keel/<cluster>/assignment at the revision of the job's state key).
For every server the assignment names, `keel-test-train dump --store
DIR/server-ID --spec JOB.ini` restores every range from the server's store
(snapshot + update-log replay) and prints its LSN (pushes applied), rows,
the tables it holds rows of, its exactly-once positions and a digest of its
rows and optimizer state.  Then, for every range holding rows of the model:

  - every in-sync replica of the range (in the final assignment) holds it;
  - each copy applied exactly (tables it holds) x N pushes: a range applies
    one push per table, shard and batch, so a push applied twice or lost
    shows as a different LSN;
  - for each of those tables and each shard i, the copy records the
    exactly-once position of shard i at Q_i (keel_shard_seq(last pass, last
    batch) = pass << 32 | batches): the shard's last batch was applied;
  - every copy has the same digest as the first one (identical rows and
    optimizer state);
and the in-sync replicas hold R rows of the model in all (the model once).

N is the job's batches over every pass of every shard; with one Q given, it
stands for every shard.  Prints one summary line, then one line per problem.
Exit status 0 when every check passed, 1 when one failed, 2 on a usage or
read error.  Used by tests/lib/cluster_job.sh (check_replicas) and
scripts/chaos.sh.
"""
import argparse
import json
import os
import subprocess
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--helper", required=True, help="keel-test-train")
    p.add_argument("--data", required=True, help="the cluster's data directory (DIR/data)")
    p.add_argument("--assignment", required=True, help="the final assignment (JSON)")
    p.add_argument("--spec", required=True, help="the job's spec file (.ini)")
    p.add_argument("--pushes", required=True, type=int, help="batches of the job, every shard and pass")
    p.add_argument("--seq-end", required=True, help="each shard's last seq, comma-separated")
    p.add_argument("--rows", type=int, default=10, help="rows of the model (default 10)")
    a = p.parse_args()

    seq_end = [int(x) for x in a.seq_end.split(",") if x]
    try:
        with open(a.assignment) as f:
            asg = json.load(f)
    except (OSError, ValueError) as e:
        print("cannot read the assignment %s: %s" % (a.assignment, e))
        return 2

    # server -> range -> (lsn, rows, tables, positions {id: seq}, digest)
    held = {}
    for s in asg["servers"]:
        store = os.path.join(a.data, "server-" + s)
        if not os.path.isdir(store):
            continue
        r = subprocess.run([a.helper, "dump", "--store", store, "--spec", a.spec],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print("cannot dump the ranges of %s: %s" % (s, r.stderr.strip()))
            return 2
        ranges = held.setdefault(s, {})
        for line in r.stdout.splitlines():
            w = line.split()
            if len(w) < 8 or w[0] != "range":
                continue
            rng, lsn, nrows = int(w[1]), int(w[3]), int(w[5])
            if nrows == 0:
                continue
            tables = [int(t.split(":")[0]) for t in w[7].split(",") if t]
            pos = {}
            i = 8
            while i + 7 < len(w) and w[i] == "shard":
                pos[int(w[i + 1])] = int(w[i + 3])
                i += 8
            ranges[rng] = (lsn, nrows, tables, pos, w[-1])

    nshards = len(seq_end)
    bad, rows, checked, nranges = [], 0, 0, 0
    for r, (reps, insync) in enumerate(zip(asg["ranges"], asg["insync"])):
        ids = [asg["servers"][i] for i in reps[:insync]]
        copies = [(s, held.get(s, {}).get(r)) for s in ids]
        found = [(s, c) for s, c in copies if c is not None]
        if not found:
            continue  # a range without rows of the model: no push touched it
        nranges += 1
        rows += found[0][1][1]
        first_s, first = found[0]
        for s, c in copies:
            checked += 1
            if c is None:
                bad.append("range %d: in-sync replica %s holds none of its rows" % (r, s))
                continue
            lsn, _, tables, pos, digest = c
            want = len(tables) * a.pushes
            if lsn != want:
                bad.append("range %d on %s: %d pushes applied, expected %d (%d table(s) x %d batches):"
                           " a push applied twice or lost" % (r, s, lsn, want, len(tables), a.pushes))
            for t in tables:
                for shard in range(nshards):
                    got = pos.get(shard + ((t - 1) << 16))
                    if got != seq_end[shard]:
                        bad.append("range %d on %s: table %d shard %d at seq %s, not at its last batch %d"
                                   % (r, s, t, shard, got, seq_end[shard]))
            if digest != first[4]:
                bad.append("range %d: %s's copy differs from %s's" % (r, s, first_s))
    print("%d in-sync copies of %d ranges holding rows checked, %d rows" % (checked, nranges, rows))
    if rows != a.rows:
        bad.append("the in-sync replicas hold %d rows of the model, expected %d" % (rows, a.rows))
    for b in bad:
        print(b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
