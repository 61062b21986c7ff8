#!/usr/bin/env python3
"""final_accuracy.py JOB.json [PASSES] - a job's final test accuracy, as
chaos.sh and the tests compare it: the median over its last PASSES passes
(default 8) of `keelctl job show NAME --json`'s accuracy_curve, which holds
one point per pass (the mean of the workers' evaluations of that pass).
Under SGD with a fixed step one pass in four or so dips by about a point and
the next recovers (seen in fault-free runs of the chaos test's job: passes
at 0.842-0.844 with one at 0.832); the median of the last eight is the level
the job converged to, which a single pass or a mean of a few is not.

Prints "ACCURACY FIRST LAST" (accuracy to 4 decimals, the passes taken),
or nothing when the job reported no evaluation; exit status 1 when the file
is unreadable, 64 on bad usage.
"""
import json
import sys


def main():
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and not sys.argv[2].isdigit()):
        print("usage: final_accuracy.py JOB.json [PASSES]", file=sys.stderr)
        return 64
    passes = int(sys.argv[2]) if len(sys.argv) == 3 else 8
    try:
        with open(sys.argv[1]) as f:
            curve = json.load(f).get("accuracy_curve") or []
    except (OSError, ValueError) as e:
        print("final_accuracy.py: %s: %s" % (sys.argv[1], e), file=sys.stderr)
        return 1
    curve = sorted(curve, key=lambda e: e["pass"])[-max(passes, 1):]
    if not curve:
        return 0
    accs = sorted(e["accuracy"] for e in curve)
    mid = len(accs) // 2
    median = accs[mid] if len(accs) % 2 else (accs[mid - 1] + accs[mid]) / 2
    print("%.4f %d %d" % (median, curve[0]["pass"], curve[-1]["pass"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
