import resource, torch, time, os
torch.set_num_threads(2)
bf = torch.bfloat16
W = torch.randn(768, 768, dtype=bf); W2 = torch.randn(3072, 768, dtype=bf)
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
r0 = rss(); t0 = time.time()
for M in range(64, 64 + 1000):
    x = torch.randn(M, 768, dtype=bf); x.mm(W); x.mm(W2.t())
print(os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"), "2000 primitives: rss +%.0f MiB, %.1f s" % (rss() - r0, time.time() - t0))
