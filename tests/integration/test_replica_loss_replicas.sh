#!/usr/bin/env bash
# test_replica_loss_replicas.sh BINDIR SRCDIR - test_replica_loss.sh under
# `durability = replicas`: pushes are acknowledged once every in-sync replica
# applied them, the logs written behind, so the two servers killed together
# may come back with stores older than what they acknowledged.  Their
# restored ranges hold their pushes until the leader has rewound the shards,
# and the workers replay: every in-sync replica still applied exactly one push
# per batch.  60 epochs: at this durability's pace the job outlasts the faults.
DURABILITY=replicas EPOCHS=60 exec bash "$2/tests/integration/test_replica_loss.sh" "$@"
