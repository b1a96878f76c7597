"""Hardware limit: lorafit's achieved training FLOP/s as a share of the matmul peak measured on the same machine,
in the same command, in the same precision.

Peak: the best of several large square matmuls (torch.mm, 2048 and 4096) per precision, same threads.
Achieved: `lorafit train` (defaults: length-grouped, dynamically padded batches of 32) on the roberta-base
architecture (random weights, real tokenizer, 6,400 real AG News rows), timed over --steps steps after --warmup
steps, in bf16 autocast (where the CPU has it) and in fp32; the FLOPs are counted on exactly the timed batches.
Useful FLOPs count real (unpadded) tokens only:

    per real token:   4 N                      N = encoder matmul weights (12 layers x (4 d^2 + 2 d d_ff) = 84.9M)
                                               forward 2N + backward through activations 2N (frozen weights get
                                               no weight gradient)
                    + 6 r (d_in + d_out) A     LoRA: forward, input gradient and weight gradient of A adapters
    per sequence:   + 12 layers d L^2          attention scores and weighted sum: 4 L^2 d forward, 8 L^2 d backward
                    + 6 (d^2 + d C)            the trained head on the first token (forward + both gradients)

In the last layer only keys and values are computed for every token (lorafit.speedups.first_token_only): the other
tokens' query, output projection, feed-forward, query adapter and attention rows are subtracted. Embeddings,
LayerNorm, softmax, GELU, dropout and the optimizer are not counted (they are memory-bound, and small in FLOPs).
"Executed" FLOPs apply the same formula to the padded batches (what the hardware actually multiplied).

    python benchmarks/hardware_limit.py               # ~3 minutes
    python benchmarks/hardware_limit.py --smoke       # tiny model (smoke test)
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

BATCH = 32


def matmul_peak(sizes: list[int], repeats: int, precisions: list[str]) -> dict[str, Any]:
    """Best torch.mm FLOP/s per precision; bf16 only where the CPU has it (emulated, a 4096 matmul takes minutes)."""
    import torch

    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    for name in precisions:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        best = {}
        for n in sizes:
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            with torch.inference_mode():
                torch.mm(a, b)  # warm-up (oneDNN primitive creation)
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    torch.mm(a, b)
                    times.append(time.perf_counter() - t0)
            best[n] = 2 * n**3 / min(times)
        out[name] = {"flops": max(best.values()), "by_size": best}
    return out


def flops(cfg: dict[str, Any], w: dict[str, Any], rank: int = 8, adapters_per_layer: int = 2,
          labels: int = 4, first_token_only: bool = True) -> dict[str, float]:
    """Useful (real tokens) and executed (padded) training FLOPs of a measured window (see the module docstring),
    less what the last layer skips for every token but the first (lorafit.speedups.first_token_only; the plain
    Trainer baseline runs the whole last layer: ``first_token_only=False``)."""
    d, layers, dff = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    n = layers * (4 * d * d + 2 * d * dff)
    per_token = 4 * n + 6 * rank * (2 * d) * adapters_per_layer * layers
    head = 6 * (d * d + d * labels) * w["rows"]
    skipped = 4 * (2 * d * d + 2 * d * dff) + 6 * rank * 2 * d  # query, output, feed-forward, query adapter
    rows = w["rows"]

    def count(tokens: int, squares: int) -> float:
        full = per_token * tokens + 12 * layers * d * squares + head
        if not first_token_only:
            return full
        return full - skipped * (tokens - rows) - 12 * d * (squares - tokens)  # last layer: one query a sequence

    return {"N": n, "per_token_linear": per_token, "useful": count(w["real_tokens"], w["real_sq"]),
            "executed": count(w["padded_tokens"], w["padded_sq"])}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["kind"] == "peak":
        return matmul_peak(spec["sizes"], spec["repeats"], spec["precisions"])
    warm, steps = spec["warmup"], spec["steps"]
    files = {k: Path(v) for k, v in spec["files"].items()}
    rec = h.lorafit_train(h.lorafit_args(Path(spec["model"]), files, Path(spec["out"]), "--max-steps", warm + steps,
                                         "--precision", spec["precision"]))
    return {"window": rec.window(warm + 1, warm + steps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=25, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=5, help="training steps before timing starts")
    ap.add_argument("--rows", type=int, default=6400, help="real AG News training rows")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny model and sizes (seconds; for the smoke test)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.smoke:
        h.INLINE = True
        a.steps, a.warmup, a.rows, a.sizes, a.repeats = 2, 1, 96, [256], 2
    h.header("Hardware limit: training FLOP/s as a share of the measured matmul peak", a.smoke)
    cfg = h.roberta_config(a.smoke)
    work = h.workdir("hwlimit")
    try:
        precisions = ["bf16", "fp32"] if h.bf16_supported() else ["fp32"]
        peak = h.spawn(worker, {"kind": "peak", "sizes": a.sizes, "repeats": a.repeats, "precisions": precisions})
        model = h.roberta_folder(work / "model", smoke=a.smoke)
        files = {k: str(v) for k, v in h.rows_files(work, a.rows, 0).items()}
        runs = {p: h.spawn(worker, {"kind": "train", "model": str(model), "files": files, "steps": a.steps,
                                    "warmup": a.warmup, "precision": p, "out": str(work / f"run-{p}")})
                for p in precisions}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("matmul peak (torch.mm, best of sizes " + ", ".join(map(str, a.sizes)) + f", {peak['threads']} threads):")
    print(h.table(["precision", *[f"{n}x{n} GFLOP/s" for n in a.sizes], "peak GFLOP/s"],
                  [[p, *[peak[p]["by_size"][str(n)] / 1e9 for n in a.sizes], peak[p]["flops"] / 1e9]
                   for p in ("fp32", "bf16") if p in peak]))
    rows, shares = [], {}
    for p, r in runs.items():
        w = r["window"]
        f = flops(cfg, w)
        useful, executed = f["useful"] / w["seconds"], f["executed"] / w["seconds"]
        shares[p] = useful / peak[p]["flops"]
        rows.append([p, w["samples_per_s"], w["real_tokens_per_s"], f"{100 * w['padded_share']:.1f}%",
                     useful / 1e9, executed / 1e9, peak[p]["flops"] / 1e9, f"{100 * shares[p]:.1f}%",
                     f"{100 * executed / peak[p]['flops']:.1f}%"])
    f = flops(cfg, runs[next(iter(runs))]["window"])
    tiny = " (smoke: tiny)" if a.smoke else ""
    print(f"\n`lorafit train` (defaults, batch {BATCH}), roberta-base architecture{tiny}:"
          f" N = {f['N'] / 1e6:.1f}M matmul weights, {f['per_token_linear'] / 1e6:.1f} MFLOP per real token"
          f" + attention + head; {a.steps} steps timed after {a.warmup}")
    print(h.table(["precision", "samples/s", "real tokens/s", "padded tokens", "useful GFLOP/s", "executed GFLOP/s",
                   "matmul peak GFLOP/s", "useful % of peak", "executed % of peak"], rows))
    print("\n" + "; ".join(f"{p}: {100 * s:.1f}% of the {p} matmul peak" for p, s in shares.items()))
    h.save_json(a.json, {"peak": peak, "runs": runs, "share_of_peak": shares})


if __name__ == "__main__":
    h.serve(worker) if h.is_worker() else main()
