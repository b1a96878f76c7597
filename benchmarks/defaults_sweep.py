"""How lorafit's no-preset defaults were chosen: a small sweep on the MiniLM demo encoder with real AG News rows.

Each configuration trains through `lorafit train` (bf16 autocast where the CPU has it) on the same N training
rows and is scored on the same held-out rows of the file it never trained on. Usage:

    python benchmarks/defaults_sweep.py --train 4000 --test 2000           # the documented sweep
    python benchmarks/defaults_sweep.py --train 200 --test 100 --quick     # smoke size
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ag_news_split, machine, write_rows  # noqa: E402

GRID = [
    {"name": "defaults (r8 q,v lr1e-3 2ep bs32)", "args": []},
    {"name": "lr 5e-4", "args": ["--lr", "5e-4"]},
    {"name": "lr 2e-3", "args": ["--lr", "2e-3"]},
    {"name": "r16 all-linear lr5e-4", "args": ["--rank", "16", "--target-modules", "all-linear", "--lr", "5e-4"]},
    {"name": "3 epochs", "args": ["--epochs", "3"]},
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="only the defaults, 1 epoch (smoke test)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="write results JSON here")
    a = ap.parse_args()
    from lorafit.demo import minilm_path

    train, test = ag_news_split(a.train, a.test)
    work = Path(tempfile.mkdtemp(prefix="lorafit-sweep-"))
    train_f, test_f = write_rows(work / "train.csv", train), write_rows(work / "test.csv", test)
    grid = GRID[:1] if a.quick else GRID
    results = []
    print(f"machine: {machine()}\nrows: {a.train} train / {a.test} held-out (real AG News)\n")
    print(f"{'config':<40} {'test acc':>9} {'macro-F1':>9} {'seconds':>8}")
    for i, g in enumerate(grid):
        out = work / f"run{i}"
        extra = ["--epochs", "1"] if a.quick else []
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "lorafit", "train", "--model", str(minilm_path()),
                               "--train-file", str(train_f), "--test-file", str(test_f), "--output-dir", str(out),
                               "--precision", a.precision, *g["args"], *extra], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{g['name']} failed:\n{proc.stderr[-3000:]}")
        secs = time.time() - t0
        m = json.loads((out / "metrics.json").read_text())["test"]
        results.append({"config": g["name"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "seconds": secs})
        print(f"{g['name']:<40} {m['accuracy']:>9.4f} {m['macro_f1']:>9.4f} {secs:>8.1f}", flush=True)
    if a.out:
        a.out.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
