"""Precision: fp32 against bf16 autocast, for training and for inference, with the accuracy of each.

Real weights: the MiniLM demo encoder (all-MiniLM-L6-v2) trained with `lorafit train --precision fp32` and with
`--precision bf16` on the same real AG News rows (lorafit's defaults otherwise: 2 epochs, batch 32, length
grouping; no per-epoch evaluation inside the timed loop). Each run is then scored on the same held-out rows with
the Predictor behind `lorafit evaluate`, in fp32 and in bf16 autocast. The accuracy difference comes with a 95%
paired-bootstrap interval (same rows, resampled together), so a gap can be told from the noise of the held-out set.

    python benchmarks/precision.py                    # 2,000 train / 2,000 held-out rows (~3 minutes)
    python benchmarks/precision.py --smoke            # tiny sizes, 1 epoch (smoke test)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

GOAL_POINTS = 0.3


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    out = Path(spec["out"])
    files = {k: Path(v) for k, v in spec["files"].items()}
    if spec["kind"] == "train":
        rec = h.lorafit_train(h.lorafit_args(h.minilm(), files, out, "--precision", spec["precision"],
                                             "--epochs", spec["epochs"], *spec["extra"]))
        s = rec.summary()
        return {**s, "window": rec.window(2, s["steps"])}
    from lorafit.inference import Predictor

    texts, gold = h.read_rows(files["heldout"])
    result = {}
    for precision in ("fp32", "bf16"):
        pred = Predictor.load(out, precision=precision)
        pred.evaluate(texts[:64], gold[:64], batch_size=64)  # warm-up
        t0 = time.perf_counter()
        m, probs = pred.evaluate(texts, gold, batch_size=64)
        secs = time.perf_counter() - t0
        result[precision] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "seconds": secs,
                             "samples_per_s": len(texts) / secs, "pred": probs.argmax(axis=1).tolist()}
    result["gold"] = gold
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds; for the smoke test)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.smoke:
        h.INLINE = True
        a.train, a.test, a.epochs = 32, 32, 1
    h.header("Precision: fp32 vs bf16 autocast (MiniLM, real AG News rows)", a.smoke)
    if not h.bf16_supported() and not a.smoke:
        # lorafit trains and predicts in fp32 here (--precision bf16 falls back to fp32 with warning W001), so a
        # "bf16" run would be a second fp32 run; bf16 inference alone is emulated (0.16x fp32, benchmarks.md)
        print("this CPU lacks AVX512-BF16 / AMX: lorafit trains and predicts in fp32 on it, so there is no bf16 to "
              "compare; run this on a CPU with bf16 (or a GPU)")
        h.save_json(a.json, {"skipped": "no bf16 on this CPU"})
        return
    work = h.workdir("precision")
    try:
        files = {k: str(v) for k, v in h.rows_files(work, a.train, a.test).items()}
        print(f"model: all-MiniLM-L6-v2 (real weights); {a.train} train / {a.test} held-out real AG News rows; "
              f"{a.epochs:g} epochs\n", flush=True)
        trained, scored = {}, {}
        for p in ("fp32", "bf16"):
            spec = {"files": files, "out": str(work / f"run-{p}"), "precision": p, "epochs": a.epochs,
                    "extra": ["--max-length", "32", "--batch-size", "8"] if a.smoke else []}
            trained[p] = h.spawn(worker, {**spec, "kind": "train"})
            scored[p] = h.spawn(worker, {**spec, "kind": "evaluate"})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(trained, scored, a)


def report(trained: dict[str, Any], scored: dict[str, Any], a: argparse.Namespace) -> None:
    t32 = trained["fp32"]["window"]["samples_per_s"]
    print("training (`lorafit train`, steps 2..end of the run)")
    print(h.table(["precision", "samples/s", "real tokens/s", "training loop s", "command wall s", "vs fp32"],
                  [[p, t["window"]["samples_per_s"], t["window"]["real_tokens_per_s"], t["loop_seconds"],
                    t["wall_seconds"], f"{t['window']['samples_per_s'] / t32:.2f}x"] for p, t in trained.items()]))
    i32 = scored["fp32"]["fp32"]["samples_per_s"]
    rows = []
    for tp, s in scored.items():
        for ip in ("fp32", "bf16"):
            r = s[ip]
            rows.append([tp, ip, f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}", r["samples_per_s"],
                         f"{r['samples_per_s'] / i32:.2f}x"])
    print(f"\nheld-out scoring ({a.test} rows, Predictor as in `lorafit evaluate`, batch 64)")
    print(h.table(["trained in", "inference in", "accuracy", "macro-F1", "inference samples/s",
                   "vs fp32/fp32"], rows))
    gold = scored["fp32"]["gold"]
    ref, new = scored["fp32"]["fp32"], scored["bf16"]["bf16"]
    delta = 100 * (new["accuracy"] - ref["accuracy"])
    lo, hi = h.paired_interval(gold, ref["pred"], new["pred"])
    t_ratio = trained["bf16"]["window"]["samples_per_s"] / t32
    i_ratio = scored["bf16"]["bf16"]["samples_per_s"] / scored["fp32"]["fp32"]["samples_per_s"]
    print(f"\nbf16 training {t_ratio:.2f}x fp32; bf16 inference {i_ratio:.2f}x fp32 (each model in its own precision)")
    print(f"accuracy bf16-trained + bf16 inference minus fp32 + fp32: {delta:+.2f} points "
          f"(95% paired bootstrap {lo:+.2f} .. {hi:+.2f}); goal |delta| <= {GOAL_POINTS}: "
          f"{h.verdict(abs(delta) <= GOAL_POINTS)}")
    d_inf = 100 * (scored["fp32"]["bf16"]["accuracy"] - ref["accuracy"])
    print(f"bf16 inference alone (fp32-trained model): {d_inf:+.2f} points")
    slim = {k: {p: {x: y for x, y in s[p].items() if x != "pred"} for p in ("fp32", "bf16")}
            for k, s in scored.items()}
    h.save_json(a.json, {"training": trained, "scoring": slim, "delta_points": delta, "interval": [lo, hi]})


if __name__ == "__main__":
    h.serve(worker) if h.is_worker() else main()
