#!/usr/bin/env bash
# A second 1-thread run of train_throughput.py (the fp32 ceiling, the release on and off), same commit.
cd "$(dirname "$0")/../../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
D=docs/benchmark-runs/2026-12-06-intel-amx
echo "== train_throughput_1thread_b start $(date +%T) load $(cut -d' ' -f1 /proc/loadavg) commit $(git rev-parse --short HEAD)" >> $D/times.log
.venv/bin/python benchmarks/train_throughput.py --threads 1 --baseline-steps 10 --rounds 2 --fp32-without-release \
  --json $D/train_throughput_1thread_b.json > $D/train_throughput_1thread_b.log 2>&1
echo "== train_throughput_1thread_b end $(date +%T) rc $?" >> $D/times.log
