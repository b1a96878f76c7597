"""Paired speed: per-tensor vs per-channel int8 (same trained MiniLM, same rows, alternating order), batch 32 and 1."""
import os, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import harness as h
import onnx, torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from lorafit.export import OnnxLogitsModel, load_export
from lorafit.artifacts import read_manifest
from lorafit.inference import Predictor
torch.set_num_threads(2)
work = Path(os.environ.get("INT8_WORK", "/tmp/int8/work")); exp = work / "exp0"
texts, _ = h.read_rows(work / "heldout.csv"); texts = texts[:1000]
files = {}
for name, pc in (("per_tensor", False), ("per_channel", True)):
    files[name] = work / f"speed_{name}.onnx"
    quantize_dynamic(str(exp / "model.onnx"), str(files[name]), weight_type=QuantType.QInt8, per_channel=pc,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
pred = load_export(Predictor, exp, read_manifest(exp), check_files=False, variant="fp32", threads=2)
models = {k: OnnxLogitsModel(v, 2) for k, v in files.items()}
res = {k: {"b32": [], "b1": []} for k in files}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 4):
    order = list(files) if r % 2 == 0 else list(files)[::-1]
    for k in order:
        pred.model = models[k]
        pred.logits(texts[:64], batch_size=32)
        t0 = time.perf_counter(); pred.logits(texts, batch_size=32); res[k]["b32"].append(len(texts) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for t in texts[:100]:
            pred.logits([t], batch_size=1)
        res[k]["b1"].append(100 / (time.perf_counter() - t0))
    print(r, {k: (round(v["b32"][-1]), round(v["b1"][-1])) for k, v in res.items()}, flush=True)
for b in ("b32", "b1"):
    ratios = [c / t for c, t in zip(res["per_channel"][b], res["per_tensor"][b])]
    print(b, "per_channel / per_tensor rows/s per round:", " ".join(f"{x:.3f}" for x in ratios),
          "median", f"{np.median(ratios):.3f}")
