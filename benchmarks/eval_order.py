"""Evaluation and prediction order: length-sorted batches within bounded chunks (restored to input order, what the
Predictor behind `lorafit evaluate / predict` does) against batches taken in input order.

The same Predictor, tokenizer, batch size and precision; the unsorted variant differs only in skipping the sort.
The roberta-base architecture with random weights and a 4-label head, real AG News rows in their file order.
Checks that both give the same predictions (argmax) in input order, and reports the largest |logit| difference
(padding changes float rounding only).

    python benchmarks/eval_order.py                  # 512 rows, batch 64, fp32 (~1 minute)
    python benchmarks/eval_order.py --smoke          # tiny model (smoke test)
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


def unsorted_predictor(base: Any) -> Any:
    """The same Predictor with its length sort switched off (batches in input order)."""
    from lorafit.inference import Predictor

    class InputOrder(Predictor):
        def _chunk_logits(self, texts: list[str], pairs: list[str] | None, batch_size: int) -> Any:
            import numpy as np

            real = np.argsort

            def identity(values: Any, kind: str | None = None) -> Any:
                return np.arange(len(values))

            np.argsort = identity  # the only change: the order the Predictor batches rows in
            try:
                return super()._chunk_logits(texts, pairs, batch_size)
            finally:
                np.argsort = real

    return InputOrder(base.model, base.tokenizer, base.bundle, base.precision)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lorafit.inference import Predictor

    torch.manual_seed(0)
    folder = Path(spec["model"])
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=4)
    bundle = {"labels": ["1", "2", "3", "4"], "max_length": spec["max_length"], "task": "classification"}
    sorted_pred = Predictor(model, AutoTokenizer.from_pretrained(folder), bundle, spec["precision"])
    texts, _ = h.read_rows(Path(spec["rows"]))
    out: dict[str, Any] = {}
    logits = {}
    for name, pred in (("sorted", sorted_pred), ("input order", unsorted_predictor(sorted_pred))):
        pred.logits(texts[: spec["batch"]], batch_size=spec["batch"])  # warm-up
        t0 = time.perf_counter()
        logits[name] = pred.logits(texts, batch_size=spec["batch"])
        secs = time.perf_counter() - t0
        enc = pred.tokenizer(texts, truncation=True, max_length=spec["max_length"])["input_ids"]
        lens = np.array([len(x) for x in enc])
        order = np.argsort(lens, kind="stable") if name == "sorted" else np.arange(len(lens))
        padded = sum(int(lens[order[b : b + spec["batch"]]].max()) * len(order[b : b + spec["batch"]])
                     for b in range(0, len(order), spec["batch"]))
        out[name] = {"seconds": secs, "samples_per_s": len(texts) / secs, "padded_share": 1 - lens.sum() / padded}
    a, b = logits["sorted"], logits["input order"]
    out["same_argmax"] = bool((a.argmax(1) == b.argmax(1)).all())
    out["max_abs_logit_delta"] = float(np.abs(a - b).max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64, help="lorafit's evaluate / predict default")
    ap.add_argument("--precision", default="fp32", help="fp32 (what `lorafit predict` uses) or bf16")
    ap.add_argument("--smoke", action="store_true", help="tiny model and sizes (seconds; for the smoke test)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.smoke:
        h.INLINE = True
        a.rows, a.batch = 64, 16
    h.header("Evaluation order: length-sorted chunks (restored to input order) vs input order", a.smoke)
    work = h.workdir("order")
    try:
        model = h.roberta_folder(work / "model", smoke=a.smoke)
        files = h.rows_files(work, 0, a.rows)
        r = h.spawn(worker, {"model": str(model), "rows": str(files["heldout"]), "batch": a.batch, "max_length": 128,
                             "precision": a.precision})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"model: roberta-base architecture{' (smoke: tiny)' if a.smoke else ''}, random weights; {a.rows} real AG "
          f"News rows in file order; batch {a.batch}; {a.precision}; max_length 128\n")
    base = r["input order"]["samples_per_s"]
    print(h.table(["batching", "samples/s", "seconds", "padded tokens", "vs input order"],
                  [[k, r[k]["samples_per_s"], r[k]["seconds"], f"{100 * r[k]['padded_share']:.1f}%",
                    f"{r[k]['samples_per_s'] / base:.2f}x"] for k in ("input order", "sorted")]))
    print(f"\nsorted / input order: {r['sorted']['samples_per_s'] / base:.2f}x; same predictions in input order: "
          f"{'yes' if r['same_argmax'] else 'NO'} (max |logit delta| {r['max_abs_logit_delta']:.2g})")
    if not r["same_argmax"]:
        raise SystemExit("the sorted and unsorted predictions differ")
    h.save_json(a.json, r)


if __name__ == "__main__":
    h.serve(worker) if h.is_worker() else main()
