import time, torch
torch.set_num_threads(2)
bf = torch.bfloat16
def bench(f, k=100):
    for _ in range(5): f()
    t = time.perf_counter()
    for _ in range(k): f()
    return (time.perf_counter() - t) / k * 1e3
for M in (1184, 1536, 2048):
    x = torch.randn(M, 768, dtype=bf)
    W = [torch.randn(768, 768, dtype=bf) for _ in range(3)]; b = [torch.randn(768, dtype=bf) for _ in range(3)]
    Wc = torch.cat(W); bc = torch.cat(b)
    g = [torch.randn(M, 768, dtype=bf) for _ in range(3)]
    sep_f = bench(lambda: [torch.addmm(b[i], x, W[i].t()) for i in range(3)])
    fus_f = bench(lambda: torch.addmm(bc, x, Wc.t()).split(768, -1))
    def sep_b():
        r = g[0].mm(W[0]); r = r + g[1].mm(W[1]); return r + g[2].mm(W[2])
    def fus_b():
        return torch.cat(g, -1).mm(Wc)
    sb, fb = bench(sep_b), bench(fus_b)
    fl = 2 * M * 768 * 768 * 3 / 1e9
    print(f"M={M}: fwd sep {sep_f:.2f} ms ({fl/sep_f*1e3:.0f} GF/s) fused {fus_f:.2f} ({fl/fus_f*1e3:.0f}); bwd sep {sb:.2f} fused(cat+mm) {fb:.2f}")
