#!/bin/sh
# Full megabatch cycle, 1 thread, fp32 with and without the memory release, on a quiet VM (nothing else running).
# From the project root: sh docs/benchmark-runs/2026-12-06-intel-amx-fullcycle/run.sh
D=docs/benchmark-runs/2026-12-06-intel-amx-fullcycle
date -u +"start %FT%TZ" > $D/times.log
.venv/bin/python benchmarks/train_throughput.py --threads 1 --baseline-steps 10 --rounds 3 --fp32-without-release \
  --json $D/train_throughput_1thread.json > $D/train_throughput_1thread.log 2>&1
echo "exit $?" >> $D/times.log
date -u +"end %FT%TZ" >> $D/times.log
