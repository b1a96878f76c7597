"""Count oneDNN primitive-cache misses per 25 training steps, new shapes apart from re-creations of evicted ones:
python onednn_misses.py LOG, LOG the output of `ONEDNN_VERBOSE=profile_create python steps.py 5 300` (the step
hook prints `STEP n` before each training step; oneDNN prints one `create:cache_miss` line per primitive built)."""
import collections
import re
import sys

step = 0
seen: set[str] = set()
rows: dict[int, list[float]] = collections.defaultdict(lambda: [0, 0, 0.0, 0.0])
for line in open(sys.argv[1]):
    if "STEP" in line:
        step = int(re.search(r"STEP (\d+)", line).group(1))
    elif "cache_miss" in line:
        f = line.strip().split(",")
        key, ms, b = ",".join(f[4:-1]), float(f[-1]), step // 25 * 25
        i = 1 if key in seen else 0
        rows[b][i] += 1
        rows[b][2 + i] += ms
        seen.add(key)
for b in sorted(rows):
    n, r, tn, tr = rows[b]
    print(f"steps {b}-{b + 24}: new {n:.0f} ({tn:.0f} ms to create), re-created {r:.0f} ({tr:.0f} ms)")
print(f"distinct primitives: {len(seen)}")
