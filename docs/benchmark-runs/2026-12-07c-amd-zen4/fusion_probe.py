"""How much would fusing element-wise chains save? Eager vs torch.compile (inductor, CPU) on one layer's chains,
forward + backward, at a training shape (16 x 74 tokens, bf16 where autocast would have it)."""
import time, torch, torch.nn.functional as F
torch.set_num_threads(2)
B, L, H, I = 16, 74, 768, 3072
def bench(f, *a, k=30):
    for _ in range(3): f(*a)
    t = time.perf_counter()
    for _ in range(k): f(*a)
    return (time.perf_counter() - t) / k * 1e3
ln_w, ln_b = torch.ones(H), torch.zeros(H)
def out_chain(dense, keep, resid):  # dropout(dense) + resid -> LayerNorm (fp32) -> bf16 for the next matmul
    y = dense.mul(1 / 0.9).mul_(keep.view(torch.uint8))
    h = F.layer_norm(y + resid, (H,), ln_w, ln_b, 1e-5)
    return h, h.to(torch.bfloat16)
def gelu_chain(x):
    return F.gelu(x)
def step(fn, make):
    fixed = make()
    def run():
        args = fixed
        outs = fn(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward([o.float().sum() for o in outs if o.requires_grad] if False else [outs[0]], [torch.ones_like(outs[0])])
    return run
def make_out():
    return (torch.randn(B, L, H, dtype=torch.bfloat16, requires_grad=True), torch.rand(B, L, H) > 0.1,
            torch.randn(B, L, H, requires_grad=True))
def make_gelu():
    return (torch.randn(B, L, I, dtype=torch.bfloat16, requires_grad=True),)
for name, fn, make in [("dropout+residual+LayerNorm+cast", out_chain, make_out), ("GELU", gelu_chain, make_gelu)]:
    e = bench(step(fn, make))
    t0 = time.perf_counter()
    c = torch.compile(fn, dynamic=False)
    step(c, make)()
    comp_s = time.perf_counter() - t0
    cc = bench(step(c, make))
    base = 0.0
    print(f"{name}: eager {e - base:.2f} ms, compiled {cc - base:.2f} ms (fwd+bwd); compile {comp_s:.1f} s")
