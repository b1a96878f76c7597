#!/usr/bin/env bash
# every script once, one after the other, on one quiet machine (code of 17fccf1: per-channel int8)
cd /work/main
D=docs/benchmark-runs/2026-12-07f-amd-zen4
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
run() { name=$1; shift; echo "== $name start $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/times.log
  .venv/bin/python "$@" --json $D/$name.json > $D/$name.log 2>&1; rc=$?
  echo "== $name end $(date +%T) rc $rc" >> $D/times.log; }
run train_throughput_lockstep_3rounds benchmarks/train_throughput.py --lockstep --rounds 3 --baseline-steps 30 --threads 2
run lora_vs_full benchmarks/lora_vs_full.py
run inference benchmarks/inference.py
run hardware_limit benchmarks/hardware_limit.py
run precision benchmarks/precision.py
run int8_limit benchmarks/int8_limit.py
run cost_growth benchmarks/cost_growth.py
run eval_order benchmarks/eval_order.py
echo ALLDONE >> $D/times.log
