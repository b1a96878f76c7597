"""`lorafit export`: a run merged and exported to ONNX (optionally int8), with a measured bill.

The merged PyTorch model is exported with torch's dynamo exporter (dynamic batch and sequence axes), then
quantised with ONNX Runtime's dynamic int8 quantisation. The fp32 graph is checked against the adapter model
(max |Δlogit|, which covers merge and export together) and the command fails above a tolerance. With
labelled data, PyTorch fp32, ONNX fp32 and ONNX int8 are scored on the same rows; size on disk, batch-1
latency and batch-32 throughput are measured for each. Everything lands in export_report.json.

The ONNX backend plugs into the one ``Predictor``: ``OnnxLogitsModel`` has the model's call interface
(``model(**batch).logits``), so tokenisation, length-sorted batching, order restoring and label mapping are
the same code for PyTorch and ONNX.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorafit.artifacts import MANIFEST, read_manifest, temp_dir_beside, write_json, write_manifest
from lorafit.errors import LorafitError
from lorafit.inference import Predictor, bundle_dir

FORMATS = ("onnx",)
EXPORTERS = ("torchscript", "dynamo")
QUANTIZATIONS = ("int8",)
OPSET = 18
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
DEFAULT_TOLERANCE = 1e-3
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeLinear", "ConvInteger", "QLinearMatMul", "DequantizeLinear",
                 "QAttention", "DynamicQuantizeMatMul")


# ---- the ONNX backend ---------------------------------------------------------------------------------------
class OnnxLogitsModel(torch.nn.Module):
    """An ONNX Runtime session behind the call interface the Predictor uses: ``model(**batch).logits``."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise LorafitError("E607", what="The ONNX backend", package="onnxruntime", extra="export") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        # the Predictor reads the device from the parameters; this empty one says "CPU" and holds no weights
        self.device_anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, **batch: Any) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        ids = batch["input_ids"]
        feeds = {}
        for name in self.input_names:
            value = batch.get(name)
            feeds[name] = (value.detach().cpu().numpy() if value is not None else np.zeros(tuple(ids.shape))).astype(
                np.int64)
        (logits,) = self.session.run(["logits"], feeds)
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))


def load_export(cls: type[Predictor], folder: Path, bundle: dict[str, Any], *, task: str | None = None,
                check_files: bool = True, variant: str | None = None, threads: int | None = None) -> Predictor:
    """A Predictor on an export folder's ONNX graph (``variant`` fp32 / int8; default: what export chose)."""
    from lorafit.inference import _load_bundle_tokenizer
    from lorafit.modeling import sha256_file

    if task is not None and bundle["task"] != task:
        raise LorafitError("E206", path=folder, got=bundle["task"], expected=task)
    onnx_info = bundle.get("onnx") or {}
    variants = {k: v for k, v in onnx_info.items() if k in FILES and v}
    variant = variant or onnx_info.get("default") or "fp32"
    if variant not in variants:
        raise LorafitError("E609", value=variant, path=folder, known=", ".join(variants) or "no ONNX model")
    path = folder / variants[variant]
    if not path.is_file():
        raise LorafitError("E303", path=folder, expected=variants[variant])
    if check_files:
        for rel, digest in bundle.get("files", {}).items():
            f = folder / rel
            if not f.is_file():
                raise LorafitError("E303", path=folder, expected=rel)
            if rel.endswith((".onnx", ".json")) and sha256_file(f) != digest:
                raise LorafitError("E304", path=f, reason="its sha256 differs from the one recorded in lorafit.json")
    predictor = cls(OnnxLogitsModel(path, threads), _load_bundle_tokenizer(folder, bundle), bundle, "fp32")
    predictor.backend = f"onnx-{variant}"  # type: ignore[attr-defined]
    return predictor


def load(path: str | Path, variant: str | None = None) -> Predictor:
    """``lorafit.export.load(EXPORT, variant="fp32")``: the Python face of `lorafit predict EXPORT`."""
    folder = bundle_dir(path)
    bundle = read_manifest(folder)
    if bundle["kind"] != "export":
        raise LorafitError("E605", backend="onnx", path=folder, holds=f"a '{bundle['kind']}' bundle",
                           hint="Export it first: lorafit export RUN --format onnx.")
    return load_export(Predictor, folder, bundle, variant=variant)


# ---- exporting ----------------------------------------------------------------------------------------------
class _Logits(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class _LogitsWithTypes(_Logits):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,  # type: ignore[override]
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def _encode(predictor: Predictor, texts: list[Any], pairs: list[str] | None) -> dict[str, torch.Tensor]:
    kw = {"is_split_into_words": True} if predictor.task == "ner" else {}
    return predictor.tokenizer(texts, pairs, truncation=True, max_length=predictor.max_length, padding=True,
                               return_tensors="pt", **kw)


def export_onnx(model: Any, predictor: Predictor, texts: list[Any], pairs: list[str] | None, path: Path,
                opset: int = OPSET, exporter: str = "torchscript") -> list[str]:
    """Write the model's logits graph to ``path`` with dynamic batch and sequence axes; returns input names.

    torchscript (default): torch's tracing exporter, with the model's eager attention; its graph lets ONNX Runtime
    fuse GELU and LayerNorm and quantises into a 1.3-1.5x faster int8 model on the benchmark CPU than the dynamo
    exporter's (docs/benchmarks.md), and a BERT-family classifier's last layer is traced for the first token only
    (lorafit.speedups.first_token_only). dynamo: torch.export-based; needs onnxscript."""
    from torch.export import Dim

    from lorafit.speedups import attention_implementation, first_token_only

    two = (lambda xs: (list(xs[:2]) * 2)[:2])  # noqa: E731 - a batch of 2, so the batch axis stays dynamic
    enc = _encode(predictor, two(texts), two(pairs) if pairs else None)
    names = [n for n in INPUT_NAMES if n in enc]
    wrapper = (_LogitsWithTypes if "token_type_ids" in names else _Logits)(model).eval()
    sink = io.StringIO()
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in quiet]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            for lg in quiet:
                lg.setLevel(logging.ERROR)  # exporter progress and "torchvision is not installed" notes
            if exporter == "dynamo":
                batch, seq = Dim("batch"), Dim("sequence")
                shapes = {n: {0: batch, 1: seq} for n in names}
                torch.onnx.export(wrapper, tuple(enc[n] for n in names), str(path), input_names=names,
                                  output_names=["logits"], opset_version=opset, dynamo=True, dynamic_shapes=shapes,
                                  external_data=False)
            else:
                axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "logits"]}
                if predictor.task != "ner":
                    axes["logits"] = {0: "batch"}
                with attention_implementation(model, "eager"), first_token_only(model):
                    torch.onnx.export(wrapper, tuple(enc[n] for n in names), str(path), input_names=names,
                                      output_names=["logits"], opset_version=opset, dynamo=False,
                                      dynamic_axes=axes)
    except ImportError as err:
        raise LorafitError("E607", what=f"ONNX export ({err.name or err})", package=err.name or "onnxscript",
                           extra="export") from err
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise LorafitError("E603", path=path.parent, reason=f"{type(err).__name__}: {first}") from err
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    return names


# int8 as ONNX Runtime's dynamic quantisation does it, with one scale per output column of each weight: one scale
# per tensor let a single large weight coarsen a whole matrix, and on four MiniLM AG News models it flipped 1.6-2.7%
# of predictions against fp32 (mean |dlogit| 0.046-0.057); per column flips 0.6-1.1% (0.021-0.023) at the same
# speed (docs/benchmarks.md, "int8 per channel")
INT8_SCHEME = {"method": "onnxruntime quantize_dynamic", "weights": "int8, symmetric, one scale per output column",
               "activations": "uint8, scale and zero point computed per tensor at run time",
               "ops": "MatMul with a constant weight; embedding lookups (Gather)"}


def quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic quantisation (``INT8_SCHEME``): int8 weights per channel, activations on the fly."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise LorafitError("E607", what="int8 quantisation", package="onnxruntime", extra="export") from None
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice goes to the root logger
    try:
        import onnx

        # DefaultTensorType: the traced graph leaves some MatMul outputs untyped for the quantiser's shape inference
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _max_delta(a: Predictor, b: Predictor, texts: list[Any], pairs: list[str] | None) -> float:
    """Max |Δlogit| over real tokens (NER) or inputs (classification), through each one's own Predictor path."""
    if a.task == "ner":
        from lorafit.ner import token_logits

        la, lb = token_logits(a, texts), token_logits(b, texts)
        return float(np.max(np.abs(la - lb))) if la.size else 0.0
    from lorafit.merging import max_logit_delta

    return max_logit_delta(a, b, texts, pairs)


def _state_bytes(model: Any) -> int:
    seen, total = set(), 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


# ---- data, scores and timings -------------------------------------------------------------------------------
def read_labelled(predictor: Predictor, run: Path | None, data_file: str | Path, text_columns: list[str] | None,
                  label_column: str) -> dict[str, Any]:
    """Texts and gold ids of a labelled file, its labels checked against the model's (E308) before any work."""
    if predictor.task == "ner":
        from lorafit.ner import align_to_model, read_ner_file

        info = predictor.bundle.get("ner") or {}
        split = read_ner_file(data_file, info.get("format"), tag_column=info.get("tag_column"), names=predictor.labels)
        align_to_model(split, predictor.labels, predictor.bundle.get("scheme") or "IO")
        return {"file": str(data_file), "ner": split, "texts": split.tokens, "pairs": None}
    from lorafit.predicting import labelled_rows

    texts, pairs, gold = labelled_rows(predictor, run, data_file, text_columns=text_columns,
                                       label_column=label_column)
    return {"file": str(data_file), "texts": texts, "pairs": pairs, "gold": gold}


def score(predictor: Predictor, data: dict[str, Any], batch_size: int = 32) -> tuple[dict[str, Any], Any]:
    """Accuracy / macro-F1 (classification) or entity F1 (NER) of one backend on the labelled rows."""
    if data.get("ner"):
        from lorafit.ner import evaluate_sentences

        m, tags, _ = evaluate_sentences(predictor, data["ner"].tokens, data["ner"].tags, batch_size)
        return ({"rows": m.get("sentences"), "f1": m.get("f1"), "io_f1": m.get("io_f1")},
                np.array([t for sent in tags for t in sent]))  # agreement is counted per word
    from lorafit.metrics import classification_metrics

    probs = predictor.predict_proba(data["texts"], data["pairs"], batch_size=batch_size)
    m = classification_metrics(data["gold"], probs, predictor.labels)
    return {"rows": m["rows"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}, probs.argmax(axis=1)


def benchmark(predictor: Predictor, texts: list[Any], pairs: list[str] | None, *, runs: int = 30,
              batch: int = 32) -> dict[str, Any]:
    """p50 / p95 latency of single inputs (tokenisation included) and rows/s at batch 32."""
    if predictor.task == "ner":
        from lorafit.ner import predict_entities

        strings = [" ".join(t) if isinstance(t, list) else t for t in texts]

        def run(ids: list[int], size: int) -> Any:
            return predict_entities(predictor, [strings[i] for i in ids])
    else:

        def run(ids: list[int], size: int) -> Any:
            return predictor.logits([texts[i] for i in ids], [pairs[i] for i in ids] if pairs else None,
                                    batch_size=size)

    n = len(texts)
    for i in range(3):
        run([i % n], 1)
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        run([i % n], 1)
        times.append(1000 * (time.perf_counter() - t0))
    out: dict[str, Any] = {"p50_ms": statistics.median(times), "p95_ms": float(np.percentile(times, 95)),
                           "latency_runs": runs}
    rows = [i % n for i in range(4 * batch)]
    run(rows[:batch], batch)
    t0 = time.perf_counter()
    run(rows, batch)
    out["throughput_rows_per_s"] = len(rows) / (time.perf_counter() - t0)
    out["throughput_batch"] = batch
    return out


# ---- the command --------------------------------------------------------------------------------------------
def _sample_inputs(folder: Path, bundle: dict[str, Any], n: int) -> tuple[list[Any], list[str] | None]:
    from lorafit.merging import proof_inputs
    from lorafit.reports import run_dir_of

    run = run_dir_of(folder)
    if run is None and bundle.get("merged_from"):
        run = run_dir_of(Path(bundle["merged_from"]))
    if run is None or not (run / "samples.json").is_file():
        raise LorafitError("E303", path=folder, expected="samples.json of its run (written by `lorafit train`)")
    return proof_inputs(run, n)


def export(run: str | Path, output: str | Path, *, fmt: str = "onnx", quantize: str | None = None,
           data: str | Path | None = None, text_columns: list[str] | None = None, label_column: str = "label",
           tolerance: float = DEFAULT_TOLERANCE, n: int = 64, base_model: str | None = None, bench: bool = True,
           overwrite: bool = False, opset: int = OPSET, threads: int | None = None,
           exporter: str = "torchscript") -> dict[str, Any]:
    """Export a run (or a merged folder) to ``output``; returns the report also saved as export_report.json.

    ``threads`` (default: torch's current setting) is used by PyTorch and ONNX Runtime alike while measuring,
    so the backends are compared at the same parallelism."""
    t0 = time.time()
    if threads is not None and threads < 1:
        raise LorafitError("E003", key="--threads", value=threads, expected="at least 1")
    threads = threads or torch.get_num_threads()
    if fmt not in FORMATS:
        raise LorafitError("E601", value=fmt, known=", ".join(FORMATS))
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise LorafitError("E602", value=quantize, known=", ".join(QUANTIZATIONS))
    if exporter not in EXPORTERS:
        raise LorafitError("E003", key="--exporter", value=exporter, expected=" or ".join(EXPORTERS))
    out = Path(output)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        if not overwrite:
            raise LorafitError("E301", path=out)
        if not (out / MANIFEST).is_file() or read_manifest(out).get("kind") != "export":
            raise LorafitError("E302", path=out, reason="--overwrite only replaces an earlier export folder, so it was "
                               "left untouched")
    folder = bundle_dir(run)
    kind = read_manifest(folder)["kind"]
    if kind not in ("adapter", "merged"):
        raise LorafitError("E302", path=folder, reason=f"it is a '{kind}' bundle; export a run or a merged folder")
    ref = Predictor.load(run, base_model=base_model)  # the adapter model: the reference for parity
    from lorafit.reports import run_dir_of

    run_dir = run_dir_of(folder) or (run_dir_of(Path(ref.bundle["merged_from"])) if ref.bundle.get("merged_from")
                                     else None)
    labelled = read_labelled(ref, run_dir, data, text_columns, label_column) if data else None
    texts, pairs = _sample_inputs(folder, ref.bundle, n)
    second = Predictor.load(run, base_model=base_model)
    merged = second.model.merge_and_unload() if kind == "adapter" else second.model
    torch_pred = Predictor(merged, second.tokenizer, ref.bundle)

    tmp = temp_dir_beside(out)
    try:
        names = export_onnx(merged, torch_pred, texts, pairs, tmp / FILES["fp32"], opset, exporter)
        second.tokenizer.save_pretrained(tmp)
        if quantize:
            quantize_int8(tmp / FILES["fp32"], tmp / FILES["int8"])
        meta = {k: v for k, v in ref.bundle.items() if k not in ("files", "lorafit_version")}
        meta.update(kind="export", format=fmt, exported_from=str(folder.resolve()),
                    onnx={"fp32": FILES["fp32"], "int8": FILES["int8"] if quantize else None,
                          "default": "int8" if quantize else "fp32", "opset": opset, "exporter": exporter,
                          "int8_scheme": INT8_SCHEME if quantize else None,
                          "inputs": names,
                          "outputs": ["logits"]})
        backends: dict[str, Predictor] = {"pytorch_fp32": torch_pred}
        for variant in ("fp32", "int8") if quantize else ("fp32",):
            backends[f"onnx_{variant}"] = load_export(Predictor, tmp, meta, check_files=False, variant=variant,
                                                      threads=threads)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            report = _measure(ref, backends, texts, pairs, labelled, tolerance, bench, tmp)
        finally:
            torch.set_num_threads(previous)
        report.update(format=fmt, opset=opset, exporter=exporter, source=str(folder.resolve()), task=ref.task,
                      labels=ref.labels, inputs=names, run_metrics=_run_metrics(run_dir),
                      seconds=round(time.time() - t0, 1), threads={"torch": threads, "onnxruntime": threads})
        if not report["variants"]["onnx_fp32"]["max_abs_logit_delta"] <= tolerance:  # also catches NaN
            raise LorafitError("E604", delta=report["variants"]["onnx_fp32"]["max_abs_logit_delta"],
                               tolerance=tolerance, path=out)
        write_json(tmp / "export_report.json", report)
        write_manifest(tmp, meta)
        from lorafit.reports import write_model_card

        write_model_card(tmp, run_dir, "export", location=out)
        write_manifest(tmp, meta)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _run_metrics(run_dir: Path | None) -> dict[str, Any]:
    from lorafit.reports import _json, scalar_metrics

    m = _json(run_dir / "metrics.json") if run_dir else {}
    return {s: scalar_metrics(m[s]) for s in ("validation", "test") if isinstance(m.get(s), dict)}


def _measure(ref: Predictor, backends: dict[str, Predictor], texts: list[Any], pairs: list[str] | None,
             labelled: dict[str, Any] | None, tolerance: float, bench: bool, folder: Path) -> dict[str, Any]:
    variants: dict[str, Any] = {}
    base_scores, base_pred = (score(backends["pytorch_fp32"], labelled) if labelled else (None, None))
    for name, pred in backends.items():
        v: dict[str, Any] = {}
        if name == "pytorch_fp32":
            v["size_bytes"] = _state_bytes(pred.model)
            v["size_note"] = "fp32 parameter bytes of the merged model (its safetensors file is this plus a header)"
            v["max_abs_logit_delta"] = _max_delta(ref, pred, texts, pairs)
        else:
            f = folder / FILES[name.removeprefix("onnx_")]
            v.update(file=f.name, size_bytes=f.stat().st_size, max_abs_logit_delta=_max_delta(ref, pred, texts, pairs))
            if name == "onnx_int8":
                v["size_ratio_to_fp32"] = v["size_bytes"] / (folder / FILES["fp32"]).stat().st_size
                v["quantized_ops"] = {k: c for k, c in op_counts(f).items() if k in QUANTIZED_OPS}
                v["scheme"] = INT8_SCHEME
        if labelled:
            s, pred_ids = (base_scores, base_pred) if name == "pytorch_fp32" else score(pred, labelled)
            for key in ("accuracy", "macro_f1", "f1", "io_f1"):
                if s.get(key) is not None and base_scores.get(key) is not None:
                    s[f"{key}_delta"] = s[key] - base_scores[key]
            if pred_ids is not None and base_pred is not None:
                s["argmax_agreement"] = float(np.mean(pred_ids == base_pred))
            v["eval"] = s
        if bench:
            pool = labelled["texts"] if labelled and labelled.get("texts") else texts
            v["latency"] = benchmark(pred, pool, pairs if pool is texts else labelled.get("pairs"))
        variants[name] = v
    return {"tolerance": tolerance, "parity_inputs": len(texts), "data": {k: labelled[k] for k in ("file",)}
            if labelled else None, "variants": variants}
