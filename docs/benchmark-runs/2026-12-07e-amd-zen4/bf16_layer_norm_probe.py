import time, torch, statistics
from torch import nn
from transformers import RobertaConfig
from transformers.models.roberta.modeling_roberta import RobertaLayer
torch.set_num_threads(2); torch.manual_seed(0)
cfg = RobertaConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
cfg._attn_implementation = "sdpa"
layers = nn.ModuleList([RobertaLayer(cfg) for _ in range(4)]).train()
for m in layers.modules():
    if isinstance(m, nn.Linear): m.weight.data = m.weight.data.bfloat16(); m.bias.data = m.bias.data.bfloat16()
for p in layers.parameters(): p.requires_grad_(False)
class LN(nn.Module):
    def __init__(s, ln): super().__init__(); s.w = ln.weight.data.bfloat16(); s.b = ln.bias.data.bfloat16(); s.eps = ln.eps; s.n = ln.normalized_shape
    def forward(s, x):
        with torch.autocast("cpu", enabled=False):
            return nn.functional.layer_norm(x.to(torch.bfloat16), s.n, s.w, s.b, s.eps)
orig = {n: m for n, m in layers.named_modules() if isinstance(m, nn.LayerNorm)}
def set_ln(bf):
    for n, m in orig.items():
        parent = layers.get_submodule(n.rsplit(".", 1)[0]); setattr(parent, "LayerNorm", LN(m) if bf else m)
def step(x0):
    x = x0.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = x
        for l in layers:
            o = l(h); h = o[0] if isinstance(o, tuple) else o
    h.float().sum().backward()
def run(bf, n=15):
    set_ln(bf); x0 = torch.randn(32, 52, 768) if not bf else torch.randn(32, 52, 768).bfloat16()
    ts = []
    for i in range(n + 3):
        t = time.perf_counter(); step(x0); ts.append(time.perf_counter() - t)
    return statistics.median(ts[3:])
for r in range(6):
    a = run(False); b = run(True); print(f"fp32 LN {a*1e3:.1f} ms  bf16 LN {b*1e3:.1f} ms  ratio {a/b:.3f}", flush=True)
