"""Cost growth: `lorafit train` time against the number of rows and against max_length, with log-log exponents.

MiniLM demo encoder (real weights), lorafit's defaults (bf16 autocast where the CPU has it, batch 32, length
grouping), one epoch, no per-epoch evaluation or checkpoint. Rows: real AG News rows (1k, 2k, 4k, 8k) at the
default max_length. max_length: real AG News rows joined into long texts (each > 256 tokens) so that every row is
truncated to exactly max_length (64, 128, 256), at a fixed row count. Each run is its own process; the training
loop time (Trainer begin to end) and the whole command's wall time are both reported and fitted.

    python benchmarks/cost_growth.py                  # ~5 minutes
    python benchmarks/cost_growth.py --smoke          # tiny sizes (smoke test)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    files = {k: Path(v) for k, v in spec["files"].items()}
    rec = h.lorafit_train(h.lorafit_args(h.minilm(), files, Path(spec["out"]), "--epochs", "1", *spec["extra"]))
    return rec.summary()


def long_rows(n: int, seed: int = 1) -> list[dict[str, str]]:
    """n texts of > 256 tokens each: consecutive real AG News rows joined (label of the first)."""
    base, _ = h.ag_news_split(8 * n, 0, seed)
    return [{"text": " ".join(r["text"] for r in base[8 * i : 8 * i + 8]), "label": base[8 * i]["label"]}
            for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--length-rows", type=int, default=512, help="rows of the max_length series")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds; for the smoke test)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.smoke:
        h.INLINE = True
        a.rows, a.lengths, a.length_rows = [32, 64], [16, 32], 32
    h.header("Cost growth: training time vs rows and vs max_length (MiniLM, `lorafit train`, 1 epoch)", a.smoke)
    work = h.workdir("growth")
    by_rows, by_len = {}, {}
    try:
        for n in a.rows:
            files = h.rows_files(work / f"rows{n}", n, 0)
            by_rows[n] = h.spawn(worker, {"files": {k: str(v) for k, v in files.items()}, "extra": [],
                                          "out": str(work / f"run-rows{n}")})
            print(f"  rows {n}: {by_rows[n]['loop_seconds']:.1f} s", flush=True)
        long = h.write_rows(work / "long" / "train.csv", long_rows(a.length_rows))
        val = h.write_rows(work / "long" / "val.csv", long_rows(32, seed=2))
        for length in a.lengths:
            by_len[length] = h.spawn(worker, {"files": {"train": str(long), "val": str(val)},
                                              "extra": ["--max-length", str(length)],
                                              "out": str(work / f"run-len{length}")})
            print(f"  max_length {length}: {by_len[length]['loop_seconds']:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    fits = {}
    for title, series, unit in (("rows", by_rows, "rows"), ("max_length", by_len, "tokens")):
        xs = list(series)
        loop = [series[x]["loop_seconds"] for x in xs]
        wall = [series[x]["wall_seconds"] for x in xs]
        first = xs[0]
        print(h.table([title, "training loop s", "samples/s", "command wall s", f"loop time vs {first} {unit}"],
                      [[x, series[x]["loop_seconds"], series[x]["rows"] / series[x]["loop_seconds"],
                        series[x]["wall_seconds"], f"{series[x]['loop_seconds'] / series[first]['loop_seconds']:.2f}x"]
                       for x in xs]))
        fits[title] = {"loop": h.loglog_slope(xs, loop), "wall": h.loglog_slope(xs, wall)}
        print(f"fitted exponent (time ~ {title}^k): training loop k = {fits[title]['loop']:.2f}, whole command "
              f"k = {fits[title]['wall']:.2f}\n")
    ok = 0.85 <= fits["rows"]["loop"] <= 1.15
    print(f"rows exponent of the training loop {fits['rows']['loop']:.2f} (expected about 1): "
          f"{'linear' if ok else 'NOT linear'}")
    h.save_json(a.json, {"rows": by_rows, "max_length": by_len, "exponents": fits})


if __name__ == "__main__":
    h.serve(worker) if h.is_worker() else main()
