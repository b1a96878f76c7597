"""Peak memory against data size: `lorafit train` for a few steps on 10,000 and on 100,000 rows.

Real AG News texts (repeated with a row number to reach 100,000 distinct rows), the MiniLM demo encoder, a few
optimizer steps; the peak RSS of each training process is sampled with psutil. Goal: ratio <= 1.2.

    python benchmarks/memory_scaling.py                      # 10k vs 100k
    python benchmarks/memory_scaling.py --sizes 500 2000     # smoke size
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ag_news_split, machine, write_rows  # noqa: E402


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """Run cmd, sample its RSS (with children) every 50 ms; return (peak MiB, seconds)."""
    import psutil

    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stderr.read().decode()[-3000:]}")
    return peak / 2**20, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000])
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    from lorafit.demo import minilm_path

    base, _ = ag_news_split(20_000, 0)
    work = Path(tempfile.mkdtemp(prefix="lorafit-mem-"))
    print(f"machine: {machine()}")
    print(f"{'rows':>8} {'peak RSS MiB':>13} {'seconds':>8}")
    peaks = []
    for n in a.sizes:
        rows = [{"text": f"{base[i % len(base)]['text']} ({i})", "label": base[i % len(base)]["label"]}
                for i in range(n)]
        f = write_rows(work / f"train{n}.csv", rows)
        cmd = [sys.executable, "-m", "lorafit", "train", "--model", str(minilm_path()), "--train-file", str(f),
               "--output-dir", str(work / f"run{n}"), "--max-steps", str(a.steps), "--precision", "auto",
               "--set", "training.eval_strategy=no", "--set", "training.save_strategy=no",
               "--set", "data.validation_size=200"]
        mib, secs = peak_rss(cmd)
        peaks.append(mib)
        print(f"{n:>8} {mib:>13.0f} {secs:>8.1f}", flush=True)
    print(f"ratio peak({a.sizes[1]}) / peak({a.sizes[0]}) = {peaks[1] / peaks[0]:.3f}  (goal <= 1.2)")


if __name__ == "__main__":
    main()
