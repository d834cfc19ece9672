#!/usr/bin/env bash
# A/B of the CPU stream-delivery fix: before = 695366a, after = HEAD; E0+E1+E2, alternating.
set -u
export PATH=/work/main/.venv/bin:$PATH
for rep in 1 2; do
  for side in before after; do
    cd /tmp/$side
    start=$(date -u +%FT%TZ)
    PYTHONPATH=/tmp/$side/src /work/main/.venv/bin/snakemake --cores 2 results/e0/summary.json results/e1/latency.csv \
      results/e2/concurrency.csv --forcerun e0 e1 e2 > /tmp/ab/$side-$rep.log 2>&1
    rc=$?
    mkdir -p /tmp/ab/$side-$rep
    for e in e0 e1 e2; do mkdir -p /tmp/ab/$side-$rep/$e; cp results/$e/*.csv results/$e/*.json results/$e/engine.log /tmp/ab/$side-$rep/$e/ 2>/dev/null; done
    echo "$side-$rep rc=$rc $start $(date -u +%FT%TZ) $(git -C /tmp/$side rev-parse --short HEAD)" >> /tmp/ab/index.txt
  done
done
echo done >> /tmp/ab/index.txt
