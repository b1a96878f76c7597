"""Side experiment: does a second pass over the same batch widths get faster (oneDNN/ideep kernel caches)?

    python kernel_cache_experiment.py                          # 2026-12-06: batch 8, three cycles
    python kernel_cache_experiment.py --batch 4 --cycles 2 --rss  # 2026-12-07: RSS after every 25 widths
"""
import argparse, os, sys, time, statistics
ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--cycles", type=int, default=3)
ap.add_argument("--rss", action="store_true", help="print RSS and peak RSS after every 25 widths")
a = ap.parse_args()
sys.path.insert(0, "/work/main/benchmarks")
from pathlib import Path
import torch
from transformers import AutoModelForSequenceClassification
from peft import LoraConfig, get_peft_model
import harness
from lorafit import speedups
torch.manual_seed(0)
folder = harness.roberta_folder(Path("/tmp/prof/work/model"))
m = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=4)
m = get_peft_model(m, LoraConfig(r=8, target_modules=["query", "value"], task_type="SEQ_CLS")).train()
speedups.frozen_linears_to_bf16(m)
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
widths = list(range(24, 124))  # 100 distinct widths, as with max_length 120
B = a.batch
def step(w):
    ids = torch.randint(5, 1000, (B, w)); lab = torch.randint(0, 4, (B,))
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(input_ids=ids, labels=lab).loss
    loss.backward(); opt.step(); opt.zero_grad()
    return time.perf_counter() - t
with speedups.training_speedups(m), speedups.first_token_only(m):
    for w in (40, 41): step(w)
    res = []
    for cycle in range(a.cycles):
        times = []
        for i, w in enumerate(widths):
            times.append(step(w))
            if a.rss and i % 25 == 24:
                import psutil, resource
                print(f"  cycle {cycle} width {w}: rss {psutil.Process().memory_info().rss/2**20:.0f} MiB, maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f}", flush=True)
        res.append(sum(times))
        print(f"cycle {cycle}: {sum(times):.2f} s for {len(widths)} steps", flush=True)
print("env LRU_CACHE_CAPACITY", os.environ.get("LRU_CACHE_CAPACITY"), "ONEDNN", os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"),
      ", ".join(f"cycle {k + 1} / cycle 1: {r / res[0]:.3f}" for k, r in enumerate(res) if k))
