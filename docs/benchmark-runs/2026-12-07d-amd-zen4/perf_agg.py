"""Per-thread leaf-symbol shares of a `perf record -g` profile: perf script -i perf.data -F tid,ip,sym,dso > ps.txt;
python perf_agg.py ps.txt [N]. The [JIT] perf-PID.map rows are oneDNN's generated matmul kernels; libgomp rows are
OpenMP threads waiting (spinning) for work or at a barrier."""
import collections, re, sys
path = sys.argv[1]
blocks = open(path).read().split("\n\n")
by = collections.defaultdict(collections.Counter); tot = collections.Counter()
def parse(l):
    l = l.strip()
    m = re.match(r"[0-9a-f]+\s+(.*)\((.*)\)\s*$", l)
    if not m: return ("?", l)
    sym = re.sub(r"\+0x[0-9a-f]+$", "", m.group(1).strip())
    return (m.group(2).split("/")[-1], sym)
samples = []
for b in blocks:
    lines = [l for l in b.split("\n") if l.strip()]
    if len(lines) < 2: continue
    tid = lines[0].split()[0]
    chain = [parse(l) for l in lines[1:]]
    samples.append((tid, chain))
    by[tid][chain[0]] += 1; tot[tid] += 1
N = sum(tot.values())
for tid, n in tot.most_common():
    print(f"== tid {tid}: {n} samples {100*n/N:.1f}%")
    d = collections.Counter()
    for (dso, sym), c in by[tid].items(): d[dso] += c
    print("   dso:", ", ".join(f"{k} {100*v/n:.1f}" for k, v in d.most_common(8)))
    for (dso, sym), c in by[tid].most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 25):
        print(f"   {100*c/n:5.2f}  {dso[:20]:20s} {sym[:150]}")
