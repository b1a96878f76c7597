"""Shared helpers for the benchmark scripts: real AG News rows from ../shared/data, machine facts."""

from __future__ import annotations

import csv
import os
import platform
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AG_NEWS = ROOT.parent / "shared" / "data" / "ag_news" / "train_union.csv"
NAMES = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}


def ag_news_split(n_train: int, n_test: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Disjoint, shuffled train / held-out rows of the real AG News file (text column, labels 1-4)."""
    if not AG_NEWS.is_file():
        raise SystemExit(f"benchmark data not found: {AG_NEWS} (the shared data folder)")
    with AG_NEWS.open(newline="", encoding="utf-8") as fh:
        rows = [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(fh) if r["text"].strip()]
    random.Random(seed).shuffle(rows)
    return rows[:n_train], rows[n_train : n_train + n_test]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
