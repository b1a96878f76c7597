"""Inference through the `lorafit predict` code path: PyTorch fp32 eager (the reference), PyTorch bf16 autocast,
ONNX Runtime fp32 and ONNX Runtime int8 (dynamic quantisation), all behind the one Predictor.

For each backend: samples/s at batch 1 and at batch 32 through ``lorafit.predicting.predict_file`` (the function
behind `lorafit predict`: read the file, tokenise, length-sorted batches, restore the order, write the file),
p50 / p95 latency of single texts (``Predictor.predict``, tokenisation included), and the accuracy of the written
predictions on the same labelled rows (3,000 by default), with the share of rows that get fp32's label and a 95%
paired-bootstrap interval of each accuracy change (a few flipped rows move the accuracy of a small set by more than
the 0.5 points allowed). Each backend runs in a process of its own; the four processes take turns pass by pass
(``--rounds``, 3 by default), so that a machine whose speed drifts over the minutes moves them alike, and every ratio
is the median of the rounds' own ratios. The ONNX graphs come from ``lorafit.export.export`` (`lorafit export RUN
--format onnx --quantize int8`), which also checks the fp32 graph against the adapter model.

Two models, each named beside its numbers:
- minilm: the MiniLM demo encoder (real weights) trained with `lorafit train` on real AG News rows: speed AND accuracy;
- roberta: the roberta-base architecture with random weights (a 2-step run, so it has an adapter): speed only
  (its accuracy is chance by construction).

    python benchmarks/inference.py                      # both models (~10.5 minutes)
    python benchmarks/inference.py --models minilm      # one of them
    python benchmarks/inference.py --smoke              # tiny sizes (smoke test)
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

BACKENDS = ["pytorch_fp32", "pytorch_bf16", "onnx_fp32", "onnx_int8"]
GOAL_SPEED, GOAL_POINTS = 3.0, 0.5


def load_backend(name: str, run: Path, export_dir: Path) -> Any:
    import inspect

    import torch

    from lorafit.inference import Predictor

    if name.startswith("pytorch"):
        return Predictor.load(run, precision=name.split("_")[1])
    from lorafit import export as ex
    from lorafit.artifacts import read_manifest

    variant = name.split("_")[1]
    if "threads" in inspect.signature(ex.load_export).parameters:  # same threads as PyTorch
        return ex.load_export(Predictor, export_dir, read_manifest(export_dir), variant=variant,
                              threads=torch.get_num_threads())
    return ex.load(export_dir, variant=variant)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One backend's numbers. In lockstep (``h.BATON`` set) every round's passes run in this worker's turn, so the
    backends take turns pass by pass and a VM that speeds up or slows down over the minutes moves them alike."""
    from lorafit.predicting import predict_file

    run, export_dir, work = Path(spec["run"]), Path(spec["export"]), Path(spec["work"])
    pred = load_backend(spec["backend"], run, export_dir)
    texts, _ = h.read_rows(Path(spec["rows"]))
    pred.predict(texts[:8], batch_size=8)  # warm-up
    out: dict[str, Any] = {"backend": getattr(pred, "backend", spec["backend"]), "b1_samples_per_s": [],
                           "b32_samples_per_s": []}
    times = []
    for i in range(spec["latency_runs"]):
        t0 = time.perf_counter()
        pred.predict(texts[i % len(texts)])
        times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    out["p50_ms"] = statistics.median(times)
    out["p95_ms"] = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    for r in range(spec["rounds"]):
        if h.BATON is not None and r:
            h.BATON.acquire()  # round 0 runs in the turn the worker loaded in
        for batch, rows_file in ((1, spec["rows_b1"]), (32, spec["rows"])):
            dst = work / f"pred-{spec['backend']}-b{batch}.csv"
            t0 = time.perf_counter()
            n = predict_file(run, rows_file, dst, batch_size=batch, predictor=pred, overwrite=True)
            out[f"b{batch}_samples_per_s"].append(n / (time.perf_counter() - t0))
        if h.BATON is not None:
            h.BATON.release()
    with dst.open(newline="", encoding="utf-8") as fh:
        out["predicted"] = [r["label"] for r in csv.DictReader(fh)]
    return out


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["kind"] == "train":
        rec = h.lorafit_train(spec["args"])
        return rec.summary()
    if spec["kind"] == "export":
        from lorafit.export import export

        rep = export(spec["run"], spec["export"], quantize="int8", bench=False, overwrite=True)
        return {"max_abs_logit_delta": {k: v.get("max_abs_logit_delta") for k, v in rep["variants"].items()},
                "size_bytes": {k: v.get("size_bytes") for k, v in rep["variants"].items()}}
    return measure(spec)


def run_model(name: str, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    folder = work / name
    folder.mkdir()
    if name == "minilm":
        files = h.rows_files(folder, a.train, a.rows)
        extra = ["--epochs", a.epochs]
        model = h.minilm()
    else:
        files = h.rows_files(folder, 64, a.roberta_rows)
        extra = ["--max-steps", 2]
        model = h.roberta_folder(folder / "model", smoke=a.smoke)
    run, export_dir = folder / "run", folder / "export"
    train = h.spawn(worker, {"kind": "train", "args": h.lorafit_args(model, files, run, *extra)})
    exp = h.spawn(worker, {"kind": "export", "run": str(run), "export": str(export_dir)})
    _, gold = h.read_rows(files["heldout"])
    b1 = h.write_rows(folder / "rows_b1.csv", list(_rows(files["heldout"]))[: a.rows_b1])
    specs = [{"kind": "measure", "backend": backend, "run": str(run), "export": str(export_dir), "work": str(folder),
              "rows": str(files["heldout"]), "rows_b1": str(b1), "latency_runs": a.latency_runs, "rounds": a.rounds}
             for backend in BACKENDS]
    got = [h.spawn(worker, spec) for spec in specs] if a.smoke else h.spawn_lockstep(worker, specs)
    res = dict(zip(BACKENDS, got, strict=True))
    ref = [int(p) - 1 for p in res["pytorch_fp32"]["predicted"]]  # AG News labels 1-4
    for backend in BACKENDS:
        pred = [int(p) - 1 for p in res[backend].pop("predicted")]
        res[backend]["accuracy"] = sum(p == g for p, g in zip(pred, gold, strict=True)) / len(gold)
        res[backend]["agreement"] = sum(p == r for p, r in zip(pred, ref, strict=True)) / len(gold)
        res[backend]["delta_interval"] = h.paired_interval(gold, ref, pred)
    return {"train": train, "export": exp, "backends": res}


def _rows(path: Path) -> Any:
    with path.open(newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "roberta"], choices=["minilm", "roberta"])
    ap.add_argument("--train", type=int, default=2000, help="MiniLM training rows")
    ap.add_argument("--epochs", type=float, default=2, help="MiniLM training epochs")
    ap.add_argument("--rows", type=int, default=3000, help="MiniLM labelled rows: batch-32 speed and accuracy")
    ap.add_argument("--roberta-rows", type=int, default=256, help="roberta rows at batch 32")
    ap.add_argument("--rows-b1", type=int, default=64, help="rows predicted one at a time (batch-1 samples/s)")
    ap.add_argument("--latency-runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3,
                    help="timed passes per backend; the backends take turns pass by pass (lockstep)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds; for the smoke test)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.smoke:
        h.INLINE = True
        a.models, a.train, a.epochs, a.rows, a.roberta_rows = ["roberta"], 32, 1, 32, 32
        a.rows_b1, a.latency_runs, a.rounds = 4, 4, 1
    h.header("Inference through `lorafit predict`: PyTorch fp32 / bf16, ONNX fp32 / int8", a.smoke)
    work = h.workdir("inference")
    results = {}
    try:
        for name in a.models:
            results[name] = run_model(name, work, a)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, a)


def ratio(x: dict[str, Any], ref: dict[str, Any], batch: str) -> float:
    """The median over rounds of a backend's samples/s over the reference's in the same round."""
    return statistics.median(a / b for a, b in zip(x[f"{batch}_samples_per_s"], ref[f"{batch}_samples_per_s"],
                                                   strict=True))


def report(results: dict[str, Any], a: argparse.Namespace) -> None:
    titles = {"minilm": f"MiniLM (all-MiniLM-L6-v2, real weights, trained on {a.train} AG News rows)",
              "roberta": f"roberta-base architecture, random weights{' (smoke: tiny)' if a.smoke else ''}"}
    verdicts = []
    for name, r in results.items():
        b = r["backends"]
        ref = b["pytorch_fp32"]
        n = a.rows if name == "minilm" else a.roberta_rows
        print(f"\n## {titles[name]}: {n} labelled rows at batch 32, {a.rows_b1} at batch 1")
        rows = []
        for backend in BACKENDS:
            x = b[backend]
            acc = (f"{x['accuracy']:.4f} ({100 * (x['accuracy'] - ref['accuracy']):+.2f}; "
                   f"{x['delta_interval'][0]:+.2f}..{x['delta_interval'][1]:+.2f})" if name == "minilm" else "-")
            rows.append([backend, statistics.median(x["b1_samples_per_s"]), statistics.median(x["b32_samples_per_s"]),
                         x["p50_ms"], x["p95_ms"], f"{ratio(x, ref, 'b32'):.2f}x", f"{ratio(x, ref, 'b1'):.2f}x",
                         f"{r['export']['size_bytes'].get(backend, float('nan')) / 1e6:.0f}"
                         if backend in r["export"]["size_bytes"] else "-", acc, f"{x['agreement']:.4f}"])
        print(h.table(["backend", "batch-1 samples/s", "batch-32 samples/s", "p50 ms", "p95 ms", "batch-32 vs fp32",
                       "batch-1 vs fp32", "size MB", "accuracy (points vs fp32; 95% paired bootstrap)",
                       "same label as fp32"], rows))
        rounds = " / ".join(f"{i / f:.2f}x" for i, f in zip(b["onnx_int8"]["b32_samples_per_s"],
                                                          ref["b32_samples_per_s"], strict=True))
        print(f"samples/s: the median of {a.rounds} round(s), the backends taking turns pass by pass; ratios: the "
              f"median of the rounds' own ratios (int8 vs fp32 at batch 32 by round: {rounds})")
        d = r["export"]["max_abs_logit_delta"]
        print(f"export parity (max |logit delta| vs the adapter model): ONNX fp32 {d.get('onnx_fp32', 0):.2g}, "
              f"int8 {d.get('onnx_int8', 0):.2g}")
        speed = ratio(b["onnx_int8"], ref, "b32")
        line = f"goal int8 >= {GOAL_SPEED}x PyTorch fp32 at batch 32 ({name}): {speed:.2f}x, {h.verdict(speed >= 3)}"
        if name == "minilm":
            loss = 100 * (ref["accuracy"] - b["onnx_int8"]["accuracy"])
            lo, hi = b["onnx_int8"]["delta_interval"]
            line += (f"; accuracy loss {loss:+.2f} points (95% paired bootstrap of the change {lo:+.2f}..{hi:+.2f}; "
                     f"goal <= {GOAL_POINTS}): {h.verdict(loss <= GOAL_POINTS)}")
        verdicts.append(line)
    print("\n" + "\n".join(verdicts))
    h.save_json(a.json, results)


if __name__ == "__main__":
    h.serve(worker) if h.is_worker() else main()
