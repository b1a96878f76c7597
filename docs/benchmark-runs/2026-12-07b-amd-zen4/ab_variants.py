"""Paired A/B(/C) of lorafit train variants in lockstep: python ab.py ROUNDS WARM STEPS PREC name=JSON ..."""
import sys, json, statistics
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "benchmarks"))  # the project's benchmarks/
from pathlib import Path
import tempfile
import harness as h
import train_throughput as tt
def worker(spec):
    import resource, lorafit
    r = tt.worker(spec)
    r["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r["lorafit_file"] = lorafit.__file__
    return r
def main():
    rounds, warm, steps, prec = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    variants = {}
    for a in sys.argv[5:]:
        name, js = a.split("=", 1); variants[name] = json.loads(js)
    work = Path(tempfile.gettempdir()) / "lorafit-ab"; work.mkdir(exist_ok=True)
    model = h.roberta_folder(Path(tempfile.gettempdir()) / "lorafit-bench-roberta")
    files = h.rows_files(work, 6400, 0)
    common = {"model": str(model), "files": {k: str(v) for k, v in files.items()}, "steps": steps, "warmup": warm,
              "threads": 2, "kind": "lorafit", "precision": prec}
    names = list(variants); ratios = {n: [] for n in names[1:]}
    for k in range(rounds):
        order = names[k % len(names):] + names[:k % len(names)]
        specs = [{**common, "out": str(work / n), "env": variants[n].get("env", {}), "extra": variants[n].get("extra", [])} for n in order]
        res = dict(zip(order, h.spawn_lockstep(worker, specs)))
        base = res[names[0]]["window"]["samples_per_s"]
        line = [f"round {k+1}:"] + [f"{n} {res[n]['window']['samples_per_s']:.3f}/s (rss {res[n]['maxrss_mib']:.0f})" for n in names]
        for n in names[1:]:
            ratios[n].append(res[n]["window"]["samples_per_s"] / base)
        print(" ".join(line), "| ratios", {n: round(v[-1], 4) for n, v in ratios.items()}, "| overlaps", h.overlaps(list(res.values())), "|", {n: res[n]["lorafit_file"] for n in names} if k == 0 else "", flush=True)
    print("median ratios vs", names[0], {n: round(statistics.median(v), 4) for n, v in ratios.items()})
if __name__ == "__main__":
    h.serve(worker) if h.is_worker() else main()
