"""Merge a LoRA run into a plain Transformers model, with a proof that it computes the same logits.

PEFT's ``merge_and_unload`` changes the model in place, so logits taken from the same object afterwards prove
nothing. The proof here compares the adapter model's logits, from a load of its own made before merging,
with the logits of the merged model re-loaded from disk by ``AutoModelFor...from_pretrained``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lorafit.artifacts import read_json, read_manifest, temp_dir_beside, write_json, write_manifest
from lorafit.errors import LorafitError
from lorafit.inference import Predictor, bundle_dir
from lorafit.reports import write_model_card

DEFAULT_TOLERANCE = 1e-4


def proof_inputs(run: Path, n: int) -> tuple[list[Any], Any]:
    """The validation texts saved with the run (the samples the proof runs on)."""
    samples = run / "samples.json"
    if not samples.is_file():
        raise LorafitError("E303", path=run, expected="samples.json (written by `lorafit train`)")
    data = read_json(samples)
    texts = data.get("text") or data.get("tokens")
    pairs = data.get("text_pair")
    return texts[:n], (pairs[:n] if pairs else None)


def max_logit_delta(a: Predictor, b: Predictor, texts: list[Any], pairs: Any) -> float:
    """Max |logit difference| of two predictors' plain forward passes (no lorafit shortcut) on the same inputs."""
    import numpy as np

    a.first_token_only = b.first_token_only = False

    if a.task == "ner":  # token classification: every sub-token's logits on the pre-split sample sentences
        from lorafit.ner import token_logits

        la, lb = token_logits(a, texts), token_logits(b, texts)
    else:
        la = a.logits(texts, pairs)
        lb = b.logits(texts, pairs)
    return float(np.max(np.abs(la - lb))) if la.size else 0.0


def merge(run: str | Path, output: str | Path, *, n: int = 64, tolerance: float = DEFAULT_TOLERANCE,
          base_model: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write a merged model to ``output`` and return the proof (also saved as merge_report.json)."""
    import torch

    run = Path(run)
    out = Path(output)
    occupied = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if occupied and not overwrite:
        raise LorafitError("E301", path=out)
    kind = read_manifest(bundle_dir(run))["kind"]
    if kind != "adapter":
        raise LorafitError("E302", path=run, reason=f"it holds a '{kind}' bundle; merge takes a run or its adapter/")
    adapter_pred = Predictor.load(run, base_model=base_model)  # load 1: the adapter model, never merged
    texts, pairs = proof_inputs(run, n)
    second = Predictor.load(run, base_model=base_model)  # load 2: merged in place
    merged = second.model.merge_and_unload()
    bundle = dict(adapter_pred.bundle)
    dtype = getattr(torch, bundle["base_model"].get("dtype", "float32"), torch.float32)
    tmp = temp_dir_beside(out)
    try:
        if bundle["task"] == "ner":  # label names that transformers' token-classification pipeline groups right
            from lorafit.ner import pipeline_id2label

            merged.config.id2label = pipeline_id2label(bundle["labels"], bundle.get("scheme"))
        merged.to(dtype).save_pretrained(tmp, safe_serialization=True)
        second.tokenizer.save_pretrained(tmp)
        meta = {k: v for k, v in bundle.items() if k not in ("files", "lorafit_version")}
        meta["kind"] = "merged"
        meta["merged_from"] = str(bundle_dir(run).resolve())
        write_manifest(tmp, meta)
        report = prove(adapter_pred, tmp, texts, pairs, tolerance)
        report["dtype"] = str(dtype).replace("torch.", "")
        write_json(tmp / "merge_report.json", report)
        write_model_card(tmp, run, "merged", location=out)
        write_manifest(tmp, meta)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def prove(adapter_pred: Predictor, merged_dir: str | Path, texts: list[Any], pairs: Any,
          tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Load the merged folder from disk and compare its logits with the adapter model's."""
    merged_pred = Predictor.load(merged_dir, check_files=False)  # the logits are the test, not the hashes
    delta = max_logit_delta(adapter_pred, merged_pred, texts, pairs)
    if not delta <= tolerance:  # also catches NaN
        raise LorafitError("E305", delta=delta, tolerance=tolerance, path=merged_dir)
    return {"max_abs_logit_delta": delta, "tolerance": tolerance, "inputs": len(texts), "passed": True}


def verify(run: str | Path, merged_dir: str | Path, *, n: int = 64, tolerance: float = DEFAULT_TOLERANCE,
           base_model: str | None = None) -> dict[str, Any]:
    """Re-run the proof on an existing merged folder (e.g. after copying it somewhere)."""
    adapter_pred = Predictor.load(run, base_model=base_model)
    texts, pairs = proof_inputs(Path(run), n)
    return prove(adapter_pred, merged_dir, texts, pairs, tolerance)
