"""int8 variants on several trained MiniLM models: accuracy vs ONNX fp32 on 3000 held-out rows, logit error, speed."""
import json, os, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import harness as h
import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from lorafit.export import OnnxLogitsModel, load_export
from lorafit.artifacts import read_manifest
from lorafit.inference import Predictor
torch.set_num_threads(2)
work = Path(os.environ.get("INT8_WORK", "/tmp/int8/work"))
texts, gold = h.read_rows(work / "heldout.csv")
gold = np.array(gold)
seeds = [int(s) for s in sys.argv[2:]] or [0, 1, 2, 3]
only = sys.argv[1].split(",") if len(sys.argv) > 1 and sys.argv[1] != "all" else None

def names(path, pred):
    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if pred(n)]

def variants(fp32):
    ffn_out = names(fp32, lambda n: n.op_type == "MatMul" and "output/dense" in n.name and "attention" not in n.name)
    last = names(fp32, lambda n: n.op_type == "MatMul" and "layer.5" in n.name)
    first = names(fp32, lambda n: n.op_type == "MatMul" and "layer.0/" in n.name)
    v = {
        "default": {},
        "matmul_only": dict(op_types_to_quantize=["MatMul"]),
        "per_channel": dict(per_channel=True),
        "reduce_range": dict(reduce_range=True),
        "u8w": dict(weight_type=QuantType.QUInt8),
        "mm_perch": dict(op_types_to_quantize=["MatMul"], per_channel=True),
        "mm_perch_rr": dict(op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True),
        "mm_ffnout_fp32": dict(op_types_to_quantize=["MatMul"], nodes_to_exclude=ffn_out),
        "mm_last_fp32": dict(op_types_to_quantize=["MatMul"], nodes_to_exclude=last),
        "perch_head_fp32": dict(per_channel=True, nodes_to_exclude=names(fp32, lambda n: n.op_type == "Gemm")),
        "mm_first_fp32": dict(op_types_to_quantize=["MatMul"], nodes_to_exclude=first),
    }
    return {k: x for k, x in v.items() if only is None or k in only}

def run(pred, path):
    pred.model = OnnxLogitsModel(path, 2)
    t0 = time.perf_counter()
    logits = pred.logits(texts, None, batch_size=32)
    return np.asarray(logits), time.perf_counter() - t0

out = {}
for s in seeds:
    exp = work / f"exp{s}"
    pred = load_export(Predictor, exp, read_manifest(exp), check_files=False, variant="fp32", threads=2)
    ref, t_ref = run(pred, exp / "model.onnx")
    acc_ref = float((ref.argmax(1) == gold).mean())
    print(f"seed {s}: onnx fp32 acc {acc_ref:.4f} ({len(gold)} rows, {len(gold)/t_ref:.0f} rows/s)", flush=True)
    out[s] = {"fp32": {"acc": acc_ref, "rows_s": len(gold) / t_ref}}
    for name, opts in variants(exp / "model.onnx").items():
        dst = work / f"q{s}_{name}.onnx"
        opts = dict(opts)
        wt = opts.pop("weight_type", QuantType.QInt8)
        quantize_dynamic(str(exp / "model.onnx"), str(dst), weight_type=wt,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **opts)
        lg, t = run(pred, dst)
        acc = float((lg.argmax(1) == gold).mean())
        r = {"acc": acc, "delta_pts": 100 * (acc - acc_ref), "agree": float((lg.argmax(1) == ref.argmax(1)).mean()),
             "mean_abs_dlogit": float(np.abs(lg - ref).mean()), "max_abs_dlogit": float(np.abs(lg - ref).max()),
             "rows_s": len(gold) / t, "speed_vs_onnx_fp32": t_ref / t, "MB": dst.stat().st_size / 1e6}
        out[s][name] = r
        print(f"  {name:16s} acc {acc:.4f} ({r['delta_pts']:+.2f}) agree {r['agree']:.4f} "
              f"mean|dl| {r['mean_abs_dlogit']:.3f} max {r['max_abs_dlogit']:.2f} {r['rows_s']:.0f} rows/s "
              f"({r['speed_vs_onnx_fp32']:.2f}x onnx fp32) {r['MB']:.0f} MB", flush=True)
        dst.unlink()
json.dump(out, open(f"{work}/study_{'_'.join(map(str, seeds))}.json", "w"), indent=1)
