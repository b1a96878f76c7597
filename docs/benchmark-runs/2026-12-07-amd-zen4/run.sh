#!/usr/bin/env bash
# the rest of the scripts, one after the other, once train_throughput.py (5 lockstep rounds) is done
cd /work/main
D=docs/benchmark-runs/2026-12-07-amd-zen4
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
run() { name=$1; shift; echo "== $name start $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/times.log
  .venv/bin/python "$@" --json $D/$name.json > $D/$name.log 2>&1
  echo "== $name end $(date +%T) rc $?" >> $D/times.log; }
run lora_vs_full benchmarks/lora_vs_full.py --flip-release
run inference benchmarks/inference.py
run hardware_limit benchmarks/hardware_limit.py
run precision benchmarks/precision.py
run int8_limit benchmarks/int8_limit.py
run cost_growth benchmarks/cost_growth.py
run eval_order benchmarks/eval_order.py
echo ALLDONE >> $D/times.log
