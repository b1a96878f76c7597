#!/usr/bin/env bash
# fp32 reruns after the every-third-layer memory release (Intel AMX VM, 2026-12-05 afternoon)
cd /work/main
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
D=docs/benchmark-runs/2026-12-05-intel-amx-fp32
run() { name=$1; shift; echo "== $name start $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/times.log
  .venv/bin/python "$@" --json $D/$name.json > $D/$name.log 2>&1
  echo "== $name end $(date +%T) rc $?" >> $D/times.log; }
run train_throughput_1thread benchmarks/train_throughput.py --threads 1 --steps 25 --baseline-steps 10 --rounds 2 --fp32-without-release
run lora_vs_full_fp32 benchmarks/lora_vs_full.py --precision fp32 --batches 32 --no-checkpointing --flip-release
run train_throughput benchmarks/train_throughput.py --rounds 1 --fp32-without-release
echo ALLDONE >> $D/times.log
