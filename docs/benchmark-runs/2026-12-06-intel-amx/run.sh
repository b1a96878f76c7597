#!/usr/bin/env bash
# One run of every benchmark script, one after the other, nothing else running (Intel AMX VM, 2026-12-06).
cd "$(dirname "$0")/../../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
D=docs/benchmark-runs/2026-12-06-intel-amx
git rev-parse HEAD > $D/commit.txt
run() { name=$1; shift; echo "== $name start $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/times.log
  .venv/bin/python "$@" --json $D/$name.json > $D/$name.log 2>&1
  echo "== $name end $(date +%T) rc $?" >> $D/times.log; }
run train_throughput_1thread benchmarks/train_throughput.py --threads 1 --baseline-steps 10 --rounds 3 --fp32-without-release
run train_throughput benchmarks/train_throughput.py --rounds 3
run lora_vs_full benchmarks/lora_vs_full.py --flip-release
run lora_vs_full_fp32 benchmarks/lora_vs_full.py --precision fp32 --batches 32 --no-checkpointing --flip-release
run hardware_limit benchmarks/hardware_limit.py
run inference benchmarks/inference.py
run precision benchmarks/precision.py
run int8_limit benchmarks/int8_limit.py
run cost_growth benchmarks/cost_growth.py
run eval_order benchmarks/eval_order.py
echo ALLDONE >> $D/times.log
