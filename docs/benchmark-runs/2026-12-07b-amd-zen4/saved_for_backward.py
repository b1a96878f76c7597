"""What autograd saves in one LoRA forward pass (roberta-base, batch 32 x 64 tokens), by op, deduped by storage."""
import sys, collections, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "benchmarks"))  # the project's benchmarks/
from pathlib import Path
import tempfile
import harness as h
from transformers import AutoModelForSequenceClassification
MODEL = h.roberta_folder(Path(tempfile.gettempdir()) / "lorafit-bench-roberta")  # roberta-base architecture, random weights
from peft import LoraConfig, get_peft_model
from lorafit import speedups
prec = sys.argv[1]
model = AutoModelForSequenceClassification.from_pretrained(str(MODEL), num_labels=4)
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"], task_type="SEQ_CLS"))
model.train()
if prec == "bf16":
    speedups.frozen_linears_to_bf16(model)
ids = torch.randint(5, 1000, (32, 64)); mask = torch.ones_like(ids)
seen = {}; by = collections.Counter()
def pack(t):
    key = (t.untyped_storage().data_ptr())
    if key not in seen:
        seen[key] = t.untyped_storage().nbytes()
        import traceback
        fr = [f for f in traceback.extract_stack()[:-1] if "torch/" not in f.filename or "functional" in f.filename]
        where = f"{Path(fr[-1].filename).name}:{fr[-1].lineno} {fr[-1].line[:60]}" if fr else "?"
        by[(where, str(t.dtype), tuple(t.shape)[-1] if t.dim() else 0)] += seen[key]
    return t
with speedups.training_speedups(model), speedups.first_token_only(model), \
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
    out = model(input_ids=ids, attention_mask=mask).logits
print(f"total saved {sum(seen.values())/2**20:.1f} MiB")
for k, v in by.most_common(25):
    print(f"{v/2**20:8.1f} MiB  {k}")
