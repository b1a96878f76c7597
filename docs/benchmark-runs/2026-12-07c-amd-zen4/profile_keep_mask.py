import sys, time
from lorafit import speedups as s
acc = {"t": 0.0, "n": 0, "rw": 0.0}
_km0, _rw0 = s.keep_mask, s.random_words
def km(shape, p):
    t = time.perf_counter(); r = _km0(shape, p); acc["t"] += time.perf_counter() - t; acc["n"] += 1; return r
def rw(w):
    t = time.perf_counter(); r = _rw0(w); acc["rw"] += time.perf_counter() - t; return r
s.keep_mask = km; s.random_words = rw
import atexit
atexit.register(lambda: print(f"keep_mask calls {acc['n']} total {acc['t']:.2f}s random_words {acc['rw']:.2f}s"))
