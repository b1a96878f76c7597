"""Whole batch on 2 OMP threads vs two halves on two Python threads with 1 OMP thread each (fwd+bwd).

The probe behind speed-up 14 (parallel parts). python parallel_halves_probe.py WIDTH (tokens a row; 32 rows).
Reads the roberta-base architecture folder that benchmarks/harness.py builds (/tmp/lorafit-bench-roberta: run any
benchmark once first). LoRA r8 query,value, bf16 autocast, lorafit's training speed-ups; gradients by
torch.autograd.grad, the halves' added; the two ways alternate step by step, 22 steps each after 2.
Not the product's code: the halves share lorafit's caches and draw from torch's default generator here."""
import sys, time, statistics, threading, torch
from concurrent.futures import ThreadPoolExecutor
from transformers import RobertaForSequenceClassification
from peft import LoraConfig, get_peft_model
from lorafit import speedups
torch.set_num_threads(2); torch.manual_seed(0)
m = RobertaForSequenceClassification.from_pretrained("/tmp/lorafit-bench-roberta", num_labels=4)
m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"], task_type="SEQ_CLS"))
speedups.frozen_linears_to_bf16(m)
m.train()
params = [p for p in m.parameters() if p.requires_grad]
B, T = 32, int(sys.argv[1]) if len(sys.argv) > 1 else 52
ids = torch.randint(5, 50000, (B, T)); att = torch.ones(B, T, dtype=torch.long); labels = torch.randint(0, 4, (B,))
def loss_of(sl):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(input_ids=ids[sl], attention_mask=att[sl])
    return torch.nn.functional.cross_entropy(out.logits.float(), labels[sl], reduction="sum") / B
def whole():
    loss = loss_of(slice(0, B)); return torch.autograd.grad(loss, params)
def half(sl):
    torch.set_num_threads(1)
    return torch.autograd.grad(loss_of(sl), params)
pool = ThreadPoolExecutor(1)
def halves():
    f = pool.submit(half, slice(B // 2, B))
    ga = half(slice(0, B // 2))
    torch.set_num_threads(2)
    gb = f.result()
    return [a + b for a, b in zip(ga, gb)]
with speedups.training_speedups(m), speedups.first_token_only(m, True):
    tw, th = [], []
    for i in range(24):
        for name, f, acc in ([("w", whole, tw), ("h", halves, th)] if i % 2 else [("h", halves, th), ("w", whole, tw)]):
            torch.set_num_threads(2)
            t = time.perf_counter(); f(); acc.append(time.perf_counter() - t)
    tw, th = tw[2:], th[2:]
    print(f"T={T}: whole {statistics.median(tw)*1e3:.0f} ms, halves {statistics.median(th)*1e3:.0f} ms, speed-up {statistics.median(tw)/statistics.median(th):.3f}; paired ratios median {statistics.median([a/b for a,b in zip(tw,th)]):.3f}", flush=True)
