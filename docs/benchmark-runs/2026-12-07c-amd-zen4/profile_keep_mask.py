import sys, time
from lorafit import speedups as s
acc = {"t": 0.0, "n": 0, "rw": 0.0}
_km0 = s.keep_mask
def km(shape, p):
    t = time.perf_counter(); r = _km0(shape, p); acc["t"] += time.perf_counter() - t; acc["n"] += 1; return r
s.keep_mask = km
