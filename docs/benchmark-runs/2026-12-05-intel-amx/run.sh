#!/usr/bin/env bash
cd /work/main
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
run() { name=$1; shift; echo "== $name start $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> /tmp/final/times.log
  .venv/bin/python "$@" --json /tmp/final/$name.json > /tmp/final/$name.log 2>&1
  echo "== $name end $(date +%T) rc $?" >> /tmp/final/times.log; }
run train_throughput benchmarks/train_throughput.py --rounds 3
run lora_vs_full benchmarks/lora_vs_full.py --flip-release
run inference benchmarks/inference.py
run hardware_limit benchmarks/hardware_limit.py
run precision benchmarks/precision.py
run int8_limit benchmarks/int8_limit.py
run cost_growth benchmarks/cost_growth.py
run eval_order benchmarks/eval_order.py
run train_throughput_1thread benchmarks/train_throughput.py --threads 1 --steps 25 --baseline-steps 10
echo ALLDONE >> /tmp/final/times.log
