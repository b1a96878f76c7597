"""A/B: lorafit defaults with torch's default kernel caches vs 16384-entry caches, lockstep."""
import sys, json, statistics
sys.path.insert(0, "/work/main/benchmarks")
from pathlib import Path
import harness as h
import train_throughput as tt
BIG = {"LRU_CACHE_CAPACITY": "16384", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16384"}
def worker(spec):
    import resource, psutil
    r = tt.worker(spec)
    r["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r["rss_end_mib"] = psutil.Process().memory_info().rss / 2**20
    return r
def main():
    warm, steps, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    work = h.workdir("kc")
    model = h.roberta_folder(work / "model")
    files = h.rows_files(work, 6400, 0)
    common = {"model": str(model), "files": {k: str(v) for k, v in files.items()}, "steps": steps, "warmup": warm,
              "threads": 2, "kind": "lorafit", "precision": "auto"}
    for k in range(rounds):
        specs = [{**common, "out": str(work / "a"), "env": {}}, {**common, "out": str(work / "b"), "env": BIG}]
        if k % 2: specs = specs[::-1]
        res = h.spawn_lockstep(worker, specs)
        by = {("big" if s["env"] else "default"): r for s, r in zip(specs, res)}
        d, b = by["default"]["window"], by["big"]["window"]
        print(f"round {k+1} warm {warm} steps {steps}: default {d['samples_per_s']:.2f}/s, big {b['samples_per_s']:.2f}/s, "
              f"ratio {b['samples_per_s']/d['samples_per_s']:.3f}; maxrss default {by['default']['maxrss_mib']:.0f} big {by['big']['maxrss_mib']:.0f} MiB, end rss {by['default']['rss_end_mib']:.0f} / {by['big']['rss_end_mib']:.0f}; overlaps {h.overlaps(res)}", flush=True)
if __name__ == "__main__":
    h.serve(worker) if h.is_worker() else main()
