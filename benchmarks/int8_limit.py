"""The int8 limit: how fast int8 inference can be against PyTorch fp32 on this CPU, from its matrix multiplications.

ONNX Runtime's dynamic int8 speeds up the linear layers only (every other op stays fp32). This script measures,
in one command with the same threads, each linear layer of the roberta-base architecture at the rows of one
batch (32 texts x 52 tokens, AG News's mean length):
- PyTorch fp32 ``F.linear`` (the reference backend's matmuls);
- ONNX Runtime int8 as ``lorafit export --quantize int8`` writes it (``lorafit.export.quantize_int8``: the input
  quantised on the fly, MatMulInteger with one weight scale per output column, rescale, bias), one single-layer
  graph per shape;
and the whole PyTorch fp32 forward pass of the model at that batch. The bound on int8's speed-up assumes that
every non-linear op, attention included, costs int8 nothing:

    bound = (PyTorch fp32 forward time) / (int8 time of the 12 layers' linear layers alone)

If the bound is below the 3x goal, no int8 graph can reach it on this CPU: a hardware limit (CPUs without
AVX512-VNNI / AMX multiply int8 about twice as fast as fp32, not four times).

    python benchmarks/int8_limit.py            # ~1 minute
    python benchmarks/int8_limit.py --smoke    # tiny sizes (smoke test)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

GOAL = 3.0


def best(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def int8_linear(k: int, n: int, folder: Path) -> Any:
    """An ONNX Runtime session of one linear layer (MatMul + Add), quantised as lorafit's export quantises."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from lorafit.export import quantize_int8

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((k, n)) * 0.05).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], [w, b])
    src, dst = folder / f"fp32_{k}_{n}.onnx", folder / f"int8_{k}_{n}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    quantize_int8(src, dst)
    return ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=52, help="tokens per text (AG News mean with roberta-base)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds; for the smoke test)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.smoke:
        a.batch, a.tokens, a.repeats = 4, 8, 2
    h.header("int8 limit: the linear layers in int8 against PyTorch fp32", a.smoke)
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    values = h.roberta_config(a.smoke)
    cfg = AutoConfig.for_model(values.pop("model_type"), **values, num_labels=4)
    d, dff, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    rows = a.batch * a.tokens
    shapes = {"query/key/value/output (x4)": (d, d, 4), "intermediate": (d, dff, 1), "output": (dff, d, 1)}
    table, fp32_layer, int8_layer = [], 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name, (k, n, count) in shapes.items():
            x = torch.randn(rows, k)
            w, b = torch.randn(n, k) * 0.05, torch.randn(n)
            t32 = best(lambda x=x, w=w, b=b: torch.nn.functional.linear(x, w, b), a.repeats)
            session, feed = int8_linear(k, n, Path(tmp)), {"x": x.numpy().astype(np.float32)}
            t8 = best(lambda s=session, f=feed: s.run(None, f), a.repeats)
            fp32_layer, int8_layer = fp32_layer + count * t32, int8_layer + count * t8
            gflop = 2 * rows * k * n / 1e9
            table.append([name, f"{k} -> {n}", gflop / t32, gflop / t8, f"{t32 / t8:.2f}x"])
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(cfg).eval()
        ids = torch.randint(5, cfg.vocab_size - 1, (a.batch, a.tokens))
        forward = best(lambda: model(input_ids=ids, attention_mask=torch.ones_like(ids)), a.repeats)
    print(f"rows per matmul: {a.batch} texts x {a.tokens} tokens = {rows}; {layers} layers\n")
    print(h.table(["linear layer", "shape", "PyTorch fp32 GFLOP/s", "ONNX Runtime int8 GOP/s", "int8 vs fp32"], table))
    linear_share = layers * fp32_layer / forward
    bound = forward / (layers * int8_layer)
    print(f"\nPyTorch fp32 forward pass: {1000 * forward:.0f} ms a batch ({a.batch / forward:.1f} samples/s), of which "
          f"the linear layers {100 * linear_share:.0f}%")
    print(f"int8 linear layers alone: {1000 * layers * int8_layer:.0f} ms a batch ({fp32_layer / int8_layer:.2f}x "
          f"the fp32 ones)")
    verdict = "reachable in principle" if bound >= GOAL else "a hardware limit: no int8 graph reaches it on this CPU"
    print(f"bound on int8 vs PyTorch fp32 (every other op free): {bound:.2f}x; goal {GOAL}x: {verdict}")
    h.save_json(a.json, {"shapes": table, "forward_s": forward, "linear_share": linear_share,
                         "int8_vs_fp32_linear": fp32_layer / int8_layer, "bound": bound})


if __name__ == "__main__":
    main()
