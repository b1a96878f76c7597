"""One predictor for every consumer: evaluate, predict, merge proofs (and later the server and export checks).

It loads a bundle folder (adapter/ of a run, or a merged model), checks the bundle's manifest and the base
model's fingerprint, and predicts in bounded chunks: rows are sorted by length inside a chunk so batches
carry little padding, then put back in input order, so outputs always follow the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from lorafit.artifacts import MANIFEST, read_manifest
from lorafit.errors import LorafitError
from lorafit.metrics import classification_metrics, softmax


def bundle_dir(path: str | Path) -> Path:
    """A run folder resolves to its adapter/; a bundle folder is itself."""
    p = Path(path)
    if (p / "adapter" / MANIFEST).is_file():
        return p / "adapter"
    return p


def cpu_has_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 matmuls natively (AMX or AVX512-BF16), and why."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False, "cannot read CPU flags"
    for flag in ("amx_bf16", "avx512_bf16"):
        if f" {flag}" in flags:
            return True, f"CPU has {flag}"
    return False, "CPU lacks AVX512-BF16 and AMX"


def inference_precision(requested: str) -> str:
    """auto: bf16 autocast where the hardware has bf16 (1.8-2.8x faster batched on the benchmark CPU, accuracy
    within 0.1 point; docs/benchmarks.md), else fp32. bf16 / fp32: as asked."""
    if requested in ("fp32", "bf16"):
        return requested
    if requested != "auto":
        raise LorafitError("E402", value=requested, reason="inference precision is auto, bf16 or fp32")
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16()[0] else "fp32"


class Predictor:
    """Tokenise, batch by length, run the model, restore input order, map ids to label names."""

    def __init__(self, model: Any, tokenizer: Any, bundle: dict[str, Any], precision: str = "fp32") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.bundle = bundle
        self.labels: list[str] = list(bundle["labels"])
        self.max_length: int = int(bundle["max_length"])
        self.task: str = bundle["task"]
        self.precision = inference_precision(precision)
        # BERT-family classifiers run their last layer for the first token only (lorafit.speedups; same logits to
        # float rounding); the merge proof turns this off to compare the plain forward passes
        self.first_token_only = True

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, base_model: str | None = None, precision: str = "fp32",
             task: str | None = None, check_files: bool = True) -> Predictor:
        folder = bundle_dir(path)
        bundle = read_manifest(folder)
        if bundle["kind"] == "export":  # the ONNX backend behind this same class (lorafit.export)
            from lorafit.export import load_export

            return load_export(cls, folder, bundle, task=task, check_files=check_files)
        if bundle["kind"] not in ("adapter", "merged"):
            raise LorafitError("E302", path=folder, reason=f"a '{bundle['kind']}' bundle cannot be loaded by PyTorch")
        if task is not None and bundle["task"] != task:
            raise LorafitError("E206", path=folder, got=bundle["task"], expected=task)
        if check_files:
            _check_bundle_files(folder, bundle)
        else:
            weights = "adapter_model.safetensors" if bundle["kind"] == "adapter" else "model.safetensors"
            if not (folder / weights).is_file():
                raise LorafitError("E303", path=folder, expected=weights)
        model = load_bundle_model(folder, bundle, base_model)
        tokenizer = _load_bundle_tokenizer(folder, bundle)
        return cls(model, tokenizer, bundle, precision)

    # ---- prediction ----------------------------------------------------------------------------------
    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 64,
               chunk_size: int = 4096) -> np.ndarray:
        """Logits in input order; rows are length-sorted within bounded chunks for speed."""
        out = []
        for start in range(0, len(texts), chunk_size):
            chunk = list(texts[start : start + chunk_size])
            pair = list(pairs[start : start + chunk_size]) if pairs is not None else None
            out.append(self._chunk_logits(chunk, pair, batch_size))
        if not out:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.concatenate(out, axis=0)

    def _chunk_logits(self, texts: list[str], pairs: list[str] | None, batch_size: int) -> np.ndarray:
        import torch

        from lorafit.speedups import first_token_only

        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        ids = enc["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")
        result = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        device = next(self.model.parameters()).device
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext())
        with torch.inference_mode(), autocast, first_token_only(self.model, self.first_token_only):
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                feats = [{k: enc[k][i] for k in keys} for i in idx]
                batch = self.tokenizer.pad(feats, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                logits = self.model(**batch).logits.float().cpu().numpy()
                result[idx] = logits
        return result

    def predict_proba(self, texts: Sequence[str], pairs: Sequence[str] | None = None, **kw: Any) -> np.ndarray:
        return softmax(self.logits(texts, pairs, **kw))

    def predict(self, texts: str | Sequence[str], pairs: Sequence[str] | None = None, **kw: Any) -> Any:
        """Label, score and all class probabilities per text (a single dict for a single string)."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        probs = self.predict_proba(items, pairs, **kw)
        out = [
            {"label": self.labels[int(p.argmax())], "label_id": int(p.argmax()), "score": float(p.max()),
             "scores": {n: float(v) for n, v in zip(self.labels, p, strict=True)}}
            for p in probs
        ]
        return out[0] if single else out

    def evaluate(self, texts: Sequence[str], gold: Sequence[int], pairs: Sequence[str] | None = None,
                 **kw: Any) -> tuple[dict[str, Any], np.ndarray]:
        probs = self.predict_proba(texts, pairs, **kw)
        return classification_metrics(gold, probs, self.labels), probs


def load(path: str | Path, base_model: str | None = None, precision: str = "fp32") -> Predictor:
    """``lorafit.load(RUN).predict(["text", ...])``: the Python face of `lorafit predict`."""
    return Predictor.load(path, base_model=base_model, precision=precision)


# ---- bundle loading ----------------------------------------------------------------------------------
def _check_bundle_files(folder: Path, bundle: dict[str, Any]) -> None:
    from lorafit.modeling import sha256_file

    weights = "adapter_model.safetensors" if bundle["kind"] == "adapter" else "model.safetensors"
    if not (folder / weights).is_file():
        raise LorafitError("E303", path=folder, expected=weights)
    for rel, digest in bundle.get("files", {}).items():
        f = folder / rel
        if not f.is_file():
            raise LorafitError("E303", path=folder, expected=rel)
        if rel.endswith((".safetensors", ".json")) and sha256_file(f) != digest:
            raise LorafitError("E304", path=f, reason="its sha256 differs from the one recorded in lorafit.json")


def _load_bundle_tokenizer(folder: Path, bundle: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    kwargs = {}
    if bundle.get("tokenizer", {}).get("add_prefix_space"):
        kwargs["add_prefix_space"] = True
    return AutoTokenizer.from_pretrained(folder, **kwargs)


def load_bundle_model(folder: Path, bundle: dict[str, Any], base_model: str | None = None) -> Any:
    """A merged folder loads as is; an adapter loads onto its base, checked against the recorded fingerprint."""
    import torch
    from transformers.utils import logging as hf_logging

    from lorafit.modeling import (
        auto_class,
        check_fingerprint,
        fingerprint,
        load_config,
        resolve_model,
        saved_modules,
    )

    cls = auto_class(bundle["task"])
    id2label = dict(enumerate(bundle["labels"]))
    if bundle["kind"] == "merged":
        hf_logging.disable_progress_bar()
        try:
            return cls.from_pretrained(folder, dtype=torch.float32)
        finally:
            hf_logging.enable_progress_bar()
    base_info = bundle["base_model"]
    name = base_model or base_info["name_or_path"]
    if base_model is None and name.startswith("/") and not Path(name).is_dir():
        raise LorafitError("E201", path=name, reason="the base model recorded by this adapter is not here; pass "
                           "--base-model PATH with a local copy of it")
    path = resolve_model(name, base_info.get("revision"))
    config = load_config(path)
    check_fingerprint(base_info.get("fingerprint", {}), fingerprint(config, path if Path(path).is_dir() else None))
    from peft import PeftModel

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = cls.from_pretrained(path, num_labels=len(id2label), id2label=id2label,
                                    label2id={v: k for k, v in id2label.items()}, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model = PeftModel.from_pretrained(model, folder)
    wrapped = set(saved_modules(model))
    for name in bundle.get("modules_to_save", []):
        if name not in wrapped:
            raise LorafitError("E303", path=folder, expected=f"trained weights for module '{name}'")
    return model
