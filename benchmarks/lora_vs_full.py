"""LoRA against full fine-tuning: training samples/s and peak RSS, same model, rows, batches and precision.

Both runs are the same Hugging Face Trainer set up as lorafit sets it up by default (dynamic padding, length-grouped
batches, bf16 autocast where the CPU has it, AdamW, lorafit's CPU speed-ups: cheaper dropout masks and, for the
frozen weights, bf16 storage), differing only in what trains: LoRA r8 alpha16 on
query,value (+ the head), or every weight. The roberta-base architecture with random weights, real AG News rows;
each run is its own process, its RSS (with children) sampled every 20 ms with psutil, and the kernel's own
high-water mark (ru_maxrss) taken when it exits; the RSS when training starts (model and data loaded) splits the
peak into what was there before the first step and what training added (activations, gradients, optimizer
state). Both see the same batches in the same order. lorafit's default batch (32), the seeds' batch (16) and a
small batch (8) where activations weigh less; at batch 32 also LoRA with gradient checkpointing (an option, not
a default: it recomputes each layer's forward pass in backward). Both runs use lorafit's default per-layer memory
release (glibc malloc_trim: off; on in fp32 until 2026-12-07); ``--flip-release`` adds, at the first
batch, LoRA and full fine-tuning with it switched the other way: its effect on peak RSS and speed.

    python benchmarks/lora_vs_full.py                # batches 32, 16, 8; 2 + 10 steps per run (~5 minutes)
    python benchmarks/lora_vs_full.py --smoke        # tiny model (smoke test)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

GOAL = 0.65
CHECKPOINTED = "LoRA + gradient checkpointing"
LORA, FULL = "LoRA r8 query,value", "full fine-tuning"
BATCH = 32


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    steps, warm = spec["steps"], spec["warmup"]
    rec = h.hf_train(Path(spec["model"]), Path(spec["train"]), Path(spec["out"]), steps=warm + steps,
                     batch=spec["batch"], pad_to=None, group_by_length=True, bf16=spec["bf16"], lora=spec["lora"],
                     speedups=True, gradient_checkpointing=spec.get("checkpointing", False),
                     release_memory=spec.get("release"))
    return {"window": rec.window(warm + 1, warm + steps), **rec.summary(), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run")
    ap.add_argument("--batches", type=int, nargs="+", default=[BATCH, 16, 8], help="batch sizes (the first: the goal)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-checkpointing", action="store_true", help="skip the LoRA + gradient checkpointing runs")
    ap.add_argument("--flip-release", action="store_true",
                    help="also run LoRA and full fine-tuning at the first batch with lorafit's per-layer memory "
                         "release switched the other way from its default")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto: bf16 autocast where the CPU has bf16, as lorafit's default (else fp32)")
    ap.add_argument("--smoke", action="store_true", help="tiny model and sizes (seconds; for the smoke test)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.smoke:
        a.steps, a.warmup, a.batches = 2, 1, [BATCH]
    h.header("LoRA vs full fine-tuning: samples/s and peak RSS", a.smoke)
    bf16 = h.bf16_supported() if a.precision == "auto" else a.precision == "bf16"
    work = h.workdir("lora-full")
    try:
        model = h.roberta_folder(work / "model", smoke=a.smoke)
        files = h.rows_files(work, (a.steps + a.warmup) * max(a.batches), 0)
        print(f"model: roberta-base architecture{' (smoke: 2 layers, 64 wide)' if a.smoke else ''}, random weights; "
              f"{(a.steps + a.warmup) * max(a.batches)} real AG News rows; {'bf16' if bf16 else 'fp32'}; "
              f"{a.warmup} warm-up + {a.steps} timed steps\n", flush=True)
        from lorafit.training import resolve_release_memory

        default = resolve_release_memory(None)
        flipped = f", memory release {'off' if default else 'on'}"
        runs: dict[int, dict[str, Any]] = {}
        pair = [(LORA, True, False, None), (FULL, False, False, None)]
        first = pair[:1] + ([] if a.no_checkpointing else [(CHECKPOINTED, True, True, None)]) + pair[1:] + \
            ([(LORA + flipped, True, False, not default), (FULL + flipped, False, False, not default)]
             if a.flip_release else [])
        for batch in a.batches:
            for name, lora, ckpt, release in first if batch == a.batches[0] else pair:
                runs.setdefault(batch, {})[name] = h.spawn(worker, {
                    "model": str(model), "train": str(files["train"]), "bf16": bf16, "lora": lora, "batch": batch,
                    "steps": a.steps, "warmup": a.warmup, "checkpointing": ckpt, "release": release,
                    "out": str(work / f"{'lora' if lora else 'full'}{int(ckpt)}{release}-{batch}")}, rss=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows, ratios = [], {}
    for batch, pair in runs.items():
        full = pair[FULL]
        for name, r in pair.items():
            start = r["rss_mib_at_train_begin"]
            rows.append([name, batch, r["window"]["samples_per_s"], r["peak_rss_mib"], start, r["peak_rss_mib"] - start,
                         f"{r['window']['samples_per_s'] / full['window']['samples_per_s']:.2f}x",
                         f"{r['peak_rss_mib'] / full['peak_rss_mib']:.2f}x"])
        ratios[batch] = pair[LORA]["peak_rss_mib"] / full["peak_rss_mib"]
    print(h.table(["training", "batch", "samples/s", "peak RSS MiB", "RSS at first step MiB", "added by training MiB",
                   "speed vs full", "peak RSS vs full"], rows))
    first = a.batches[0]
    print(f"\ngoal LoRA peak RSS <= {GOAL}x full fine-tuning at lorafit's batch {first}: {ratios[first]:.2f}x, "
          f"{h.verdict(ratios[first] <= GOAL)}")
    for batch in a.batches[1:]:
        print(f"at batch {batch}: {ratios[batch]:.2f}x, {h.verdict(ratios[batch] <= GOAL)}")
    ck = runs[first].get(CHECKPOINTED)
    if ck:
        full = runs[first][FULL]
        ratios["checkpointed"] = ck["peak_rss_mib"] / full["peak_rss_mib"]
        print(f"{CHECKPOINTED} (an option: --set training.gradient_checkpointing=true) at batch {first}: "
              f"{ratios['checkpointed']:.2f}x the peak RSS at "
              f"{ck['window']['samples_per_s'] / full['window']['samples_per_s']:.2f}x the speed of full fine-tuning")
    other = runs[first].get(LORA + flipped), runs[first].get(FULL + flipped)
    if all(other):
        mine = runs[first][LORA], runs[first][FULL]
        on, off = (mine, other) if default else (other, mine)
        ratios["flipped_release"] = other[0]["peak_rss_mib"] / other[1]["peak_rss_mib"]
        print(f"with the per-layer memory release {'off' if default else 'on'} (--set release_memory="
              f"{str(not default).lower()}) at batch {first}: {ratios['flipped_release']:.2f}x; the release lowers "
              f"LoRA's peak {on[0]['peak_rss_mib'] / off[0]['peak_rss_mib']:.2f}x and full fine-tuning's "
              f"{on[1]['peak_rss_mib'] / off[1]['peak_rss_mib']:.2f}x, at "
              f"{on[0]['window']['samples_per_s'] / off[0]['window']['samples_per_s']:.2f}x / "
              f"{on[1]['window']['samples_per_s'] / off[1]['window']['samples_per_s']:.2f}x their speed")
    h.save_json(a.json, {"runs": runs, "rss_ratio": ratios})


if __name__ == "__main__":
    h.serve(worker) if h.is_worker() else main()
