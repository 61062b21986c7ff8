"""job_progress.py - a job's progress, from what etcd holds under its prefix.

Reads the output of `etcdctl get --prefix /keel/<cluster>/jobs/<job>/ -w json`
on stdin and prints KEY=VALUE lines that scripts/demo.sh reads:

  state=running            jobs/<job>/state "state" ("" when there is no key)
  reason=...               its "reason"
  examples=N               training examples applied so far, over all shards
  total=N                  examples of the whole job (epochs x dataset records)
  shard.<n>=OWNER PASS BATCH   each shard's furthest known position; OWNER is
                           the worker that reported it ("-" when none)
  eval.pass=P              the newest pass with a test evaluation (-1: none)
  eval.accuracy=A          mean test accuracy of that pass's evaluations,
  eval.loss=L              and mean test loss, weighted by their examples
  eval.workers=N           how many workers evaluated that pass
  eval.examples=N          the most test records one of them measured
  bad=KEY: WHY             a value that could not be read (one line each)

A shard's position (pass, batch) means every batch before it is applied.  It
is the furthest of jobs/<job>/shards/<n> (the leader's record) and
jobs/<job>/progress/<n> (the worker's report): both only grow.  Evaluations
are jobs/<job>/eval/<pass>/<worker>: {"accuracy","examples","loss","pass",
"time_ms","worker"}.

Usage: python3 job_progress.py PREFIX EPOCHS BATCH_SIZE RECORDS_PER_SHARD,...
where PREFIX is /keel/<cluster>/jobs/<job>/.
"""
import base64
import json
import sys


def main():
    if len(sys.argv) != 5:
        sys.stderr.write(__doc__)
        return 64
    prefix, epochs, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    records = [int(r) for r in sys.argv[4].split(",")]
    reply = json.load(sys.stdin)
    state, reason, bad = "", "", []
    pos = {}  # shard -> (pass, batch, owner)
    evals = {}  # pass -> list of eval objects

    def further(shard, p, b, owner):
        old = pos.get(shard)
        if old is None or (p, b) > old[:2]:
            pos[shard] = (p, b, owner or (old[2] if old else "-"))
        elif (p, b) == old[:2] and owner and old[2] == "-":
            pos[shard] = (p, b, owner)

    for kv in reply.get("kvs") or []:
        key = base64.b64decode(kv["key"]).decode("utf-8", "replace")
        raw = base64.b64decode(kv.get("value", ""))
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix):]
        parts = rel.split("/")
        if parts[0] not in ("state", "shards", "progress", "eval"):
            continue
        try:
            v = json.loads(raw)
            if parts == ["state"]:
                state, reason = str(v["state"]), str(v.get("reason", ""))
            elif parts[0] == "shards" and len(parts) == 2:
                further(int(parts[1]), int(v["pass"]), int(v["batch"]), v.get("owner") or "")
            elif parts[0] == "progress" and len(parts) == 2:
                further(int(parts[1]), int(v["pass"]), int(v["batch"]), str(v["worker"]))
            elif parts[0] == "eval" and len(parts) == 3:
                e = {k: v[k] for k in ("accuracy", "examples", "loss")}
                evals.setdefault(int(parts[1]), []).append(e)
        except (ValueError, KeyError, TypeError) as exc:
            bad.append("%s: %s" % (rel, exc))

    examples = 0
    for n, r in enumerate(records):
        p, b, _ = pos.get(n, (0, 0, "-"))
        if p >= epochs:
            examples += epochs * r
        else:
            examples += p * r + min(b * batch_size, r)
    print("state=%s" % state)
    print("reason=%s" % reason.replace("\n", " "))
    print("examples=%d" % examples)
    print("total=%d" % (epochs * sum(records)))
    for n in range(len(records)):
        p, b, owner = pos.get(n, (0, 0, "-"))
        print("shard.%d=%s %d %d" % (n, owner or "-", p, b))
    if evals:
        last = max(evals)
        es = evals[last]
        n = sum(max(int(e["examples"]), 1) for e in es)
        acc = sum(float(e["accuracy"]) * max(int(e["examples"]), 1) for e in es) / n
        loss = sum(float(e["loss"]) * max(int(e["examples"]), 1) for e in es) / n
        print("eval.pass=%d" % last)
        print("eval.accuracy=%.4f" % acc)
        print("eval.loss=%.4f" % loss)
        print("eval.workers=%d" % len(es))
        print("eval.examples=%d" % max(int(e["examples"]) for e in es))
    else:
        print("eval.pass=-1")
    for b in bad:
        print("bad=%s" % b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
