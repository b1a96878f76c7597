import time, torch, sys
torch.set_num_threads(2)
bf = torch.bfloat16
def bench(f, k=30):
    for _ in range(3): f()
    t = time.perf_counter()
    for _ in range(k): f()
    return (time.perf_counter() - t) / k
W1 = torch.randn(768, 768, dtype=bf); b1 = torch.randn(768, dtype=bf)
W2 = torch.randn(3072, 768, dtype=bf); b2 = torch.randn(3072, dtype=bf)
W3 = torch.randn(768, 3072, dtype=bf)
Wc = torch.randn(2304, 768, dtype=bf); bc = torch.randn(2304, dtype=bf)
for M in range(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])):
    x = torch.randn(M, 768, dtype=bf); h = torch.randn(M, 3072, dtype=bf)
    r = []
    for name, f, fl in [("qkv1", lambda: torch.addmm(b1, x, W1.t()), 768*768),
                        ("fused", lambda: torch.addmm(bc, x, Wc.t()), 3*768*768),
                        ("ffn1", lambda: torch.addmm(b2, x, W2.t()), 768*3072),
                        ("ffn2", lambda: torch.addmm(b1, h, W3.t()), 768*3072),
                        ("dX1", lambda: x.mm(W1), 768*768),
                        ("dXffn2", lambda: x.mm(W3), 768*3072),
                        ("dXffn1", lambda: h.mm(W2), 768*3072)]:
        r.append(f"{name} {2*M*fl/bench(f)/1e9:4.0f}")
    print(M, M/32, " ".join(r), flush=True)
