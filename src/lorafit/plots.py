"""Plots of a run, drawn from the run folder alone, each PNG written with the data it shows beside it.

Inputs are the files training leaves behind (metrics.json, history.csv, train_log.csv, data_stats.json,
predictions.csv), so plots can be rebuilt offline from a copied run. Each plot is a pair of functions: one
that extracts the data (a plain dict, saved as ``plots/NAME.json``) and one that draws it. matplotlib is
used through its object API with the Agg canvas: headless, and no global backend switch in the caller's
process.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorafit.artifacts import atomic_write_bytes, write_json
from lorafit.errors import LorafitError, warn

PLOTS_DIR = "plots"
RELIABILITY_BINS = 10
TYPE_KEYS = ("per_type", "per_entity", "per_entity_type")  # NER per-type scores in metrics.json
COARSE_KEYS = ("coarse", "coarse_per_type", "per_coarse_type")


# ---- reading the run folder --------------------------------------------------------------------------------
def _num(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class RunFiles:
    """The files of a run folder that plots and reports read (missing ones are empty)."""

    def __init__(self, run: str | Path) -> None:
        self.run = Path(run)
        self.metrics: dict[str, Any] = self._json("metrics.json")
        self.data_stats: dict[str, Any] = self._json("data_stats.json")
        self.history = read_csv_rows(self.run / "history.csv")
        self.train_log = read_csv_rows(self.run / "train_log.csv")
        self.predictions = read_csv_rows(self.run / "predictions.csv")

    def _json(self, name: str) -> dict[str, Any]:
        p = self.run / name
        if not p.is_file():
            return {}
        data = json.loads(p.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}

    @property
    def labels(self) -> list[str]:
        return list(self.metrics.get("labels") or self.data_stats.get("labels") or [])

    def eval_split(self) -> str | None:
        """The split the per-class plots show: test when the run has one, else validation."""
        for split in ("test", "validation"):
            if isinstance(self.metrics.get(split), dict):
                return split
        return None


# ---- data extraction (one function per plot) ---------------------------------------------------------------
def loss_data(rf: RunFiles) -> dict[str, Any] | None:
    train = [(int(float(r["step"])), _num(r.get("loss"))) for r in rf.train_log if _num(r.get("step")) is not None]
    val = [(int(float(r["step"])), _num(r.get("eval_loss"))) for r in rf.history if _num(r.get("step")) is not None]
    train = [(s, v) for s, v in train if v is not None]
    val = [(s, v) for s, v in val if v is not None]
    if not train and not val:
        return None
    return {"train": {"step": [s for s, _ in train], "loss": [v for _, v in train]},
            "validation": {"step": [s for s, _ in val], "loss": [v for _, v in val]}}


def validation_metrics_data(rf: RunFiles) -> dict[str, Any] | None:
    if not rf.history:
        return None
    skip = {"epoch", "step", "train_loss", "eval_loss"}
    names = [k for k in rf.history[0] if k not in skip]
    steps = [int(float(r["step"])) for r in rf.history]
    series = {n: [_num(r.get(n)) for r in rf.history] for n in names}
    series = {n: v for n, v in series.items() if any(x is not None for x in v)}
    if not series:
        return None
    return {"step": steps, "epoch": [_num(r.get("epoch")) for r in rf.history], "metrics": series}


def confusion_data(rf: RunFiles, normalized: bool) -> dict[str, Any] | None:
    split = rf.eval_split()
    cm = (rf.metrics.get(split) or {}).get("confusion_matrix") if split else None
    if not cm:
        return None
    matrix = [[int(x) for x in row] for row in cm["matrix"]]
    out: dict[str, Any] = {"split": split, "labels": list(cm["labels"]), "counts": matrix}
    if normalized:
        out["matrix"] = [[x / sum(row) if sum(row) else 0.0 for x in row] for row in matrix]
        out["normalization"] = "each row divided by its sum (the gold class's support)"
    else:
        out["matrix"] = matrix
    return out


def per_class_data(rf: RunFiles) -> dict[str, Any] | None:
    split = rf.eval_split()
    per = (rf.metrics.get(split) or {}).get("per_class") if split else None
    if not per:
        return None
    labels = list(per)
    return {"split": split, "labels": labels,
            "accuracy": [per[n]["recall"] for n in labels],  # per-class accuracy = recall: right / support
            "f1": [per[n]["f1"] for n in labels], "support": [per[n]["support"] for n in labels]}


def _prediction_arrays(rf: RunFiles) -> tuple[Any, Any, list[str]] | None:
    import numpy as np

    labels = rf.labels
    rows = rf.predictions
    if not rows or not labels or "gold_id" not in rows[0] or any(f"p_{n}" not in rows[0] for n in labels):
        return None
    gold = np.array([int(r["gold_id"]) for r in rows])
    probs = np.array([[float(r[f"p_{n}"]) for n in labels] for r in rows])
    return gold, probs, labels


def roc_data(rf: RunFiles) -> dict[str, Any] | None:
    from sklearn.metrics import auc, roc_curve

    arrays = _prediction_arrays(rf)
    if arrays is None:
        return None
    gold, probs, labels = arrays
    curves: dict[str, Any] = {}
    for k, name in enumerate(labels):
        positive = gold == k
        if positive.all() or not positive.any():  # AUC is undefined without both classes
            curves[name] = {"fpr": [], "tpr": [], "auc": None, "positives": int(positive.sum())}
            continue
        fpr, tpr, _ = roc_curve(positive.astype(int), probs[:, k])
        curves[name] = {"fpr": [round(float(x), 6) for x in fpr], "tpr": [round(float(x), 6) for x in tpr],
                        "auc": float(auc(fpr, tpr)), "positives": int(positive.sum())}
    aucs = [c["auc"] for c in curves.values() if c["auc"] is not None]
    return {"split": "test", "source": "predictions.csv", "labels": labels, "curves": curves,
            "macro_auc": float(sum(aucs) / len(aucs)) if aucs else None}


def reliability_data(rf: RunFiles, bins: int = RELIABILITY_BINS) -> dict[str, Any] | None:
    """Confidence (top probability) against accuracy in equal-width bins; ECE = sum of |acc - conf| * share."""

    arrays = _prediction_arrays(rf)
    if arrays is None:
        return None
    gold, probs, _ = arrays
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold
    n = len(gold)
    rows, ece = [], 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        count = int(inside.sum())
        acc = float(correct[inside].mean()) if count else None
        mean_conf = float(conf[inside].mean()) if count else None
        if count:
            ece += count / n * abs(acc - mean_conf)
        rows.append({"lo": lo, "hi": hi, "count": count, "accuracy": acc, "confidence": mean_conf})
    return {"split": "test", "source": "predictions.csv", "rows": n, "ece": ece, "bins": rows,
            "accuracy": float(correct.mean())}


def token_length_data(rf: RunFiles) -> dict[str, Any] | None:
    splits = {}
    for split, s in (rf.data_stats.get("splits") or {}).items():
        hist = (s.get("tokens") or {}).get("histogram")
        if hist:
            splits[split] = {"counts": list(hist["counts"]), "edges": list(hist["edges"])}
    if not splits:
        return None
    return {"max_length": rf.data_stats.get("max_length"), "model_limit": rf.data_stats.get("model_limit"),
            "splits": splits}


def _scores_by_type(block: Any) -> dict[str, float] | None:
    if not isinstance(block, dict) or not block:
        return None
    if all(isinstance(v, dict) and "f1" in v for v in block.values()):
        return {str(k): float(v["f1"]) for k, v in block.items()}
    return None


def ner_type_data(rf: RunFiles, coarse: bool) -> dict[str, Any] | None:
    """NER per-type F1 (fine, or coarse from the fine model) from metrics.json, when the run has them."""
    split = rf.eval_split()
    m = rf.metrics.get(split) if split else None
    if not isinstance(m, dict):
        return None
    scores, overall = None, None
    for key in COARSE_KEYS if coarse else TYPE_KEYS:
        block = m.get(key)
        if isinstance(block, dict) and coarse and not _scores_by_type(block):
            overall = block.get("f1")
            block = next((block[k] for k in TYPE_KEYS if k in block), None)
        scores = _scores_by_type(block)
        if scores:
            break
    if not scores:
        return None
    types = sorted(scores, key=lambda t: -scores[t])
    return {"split": split, "level": "coarse" if coarse else "fine", "types": types, "f1": [scores[t] for t in types],
            "overall_f1": overall}


# ---- drawing ------------------------------------------------------------------------------------------------
def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise LorafitError("E607", what="Plots", package="matplotlib", extra="report") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def draw_loss(fig: Any, d: dict[str, Any]) -> None:
    ax = fig.add_subplot()
    if d["train"]["step"]:
        ax.plot(d["train"]["step"], d["train"]["loss"], label="training loss (every logging step)", lw=1.2)
    if d["validation"]["step"]:
        ax.plot(d["validation"]["step"], d["validation"]["loss"], "o-", label="validation loss (each evaluation)")
    ax.set(xlabel="step", ylabel="loss", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()


def draw_validation_metrics(fig: Any, d: dict[str, Any]) -> None:
    ax = fig.add_subplot()
    for name, values in d["metrics"].items():
        pts = [(s, v) for s, v in zip(d["step"], values, strict=True) if v is not None]
        ax.plot([s for s, _ in pts], [v for _, v in pts], "o-", label=name)
    ax.set(xlabel="step", ylabel="score", title="Validation metrics per evaluation")
    ax.grid(alpha=0.3)
    ax.legend()


def draw_confusion(fig: Any, d: dict[str, Any]) -> None:
    labels, matrix = d["labels"], d["matrix"]
    k = len(labels)
    fig.set_size_inches(max(5.0, 0.45 * k + 3), max(4.0, 0.45 * k + 2.5))
    ax = fig.add_subplot()
    normalized = "normalization" in d
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalized else None)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(k), labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), labels)
    ax.set(xlabel="predicted", ylabel="gold",
           title=f"Confusion matrix ({d['split']}{', row-normalised' if normalized else ''})")
    if k <= 20:
        top = max((max(r) for r in matrix), default=0) or 1
        for i in range(k):
            for j in range(k):
                v = matrix[i][j]
                ax.text(j, i, f"{v:.2f}" if normalized else str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > 0.6 * top else "black")


def _bars(fig: Any, names: list[str], series: dict[str, list[float]], title: str) -> None:
    k = len(names)
    fig.set_size_inches(max(6.0, 0.35 * k * len(series) + 2), 4.5)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(k)], values, width, label=label)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(k)], names, rotation=45 if k > 4 else 0,
                  ha="right" if k > 4 else "center")
    ax.set(ylim=(0, 1.05), ylabel="score", title=title)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend()


def draw_per_class(fig: Any, d: dict[str, Any]) -> None:
    _bars(fig, d["labels"], {"accuracy (recall)": d["accuracy"], "F1": d["f1"]},
          f"Per-class accuracy and F1 ({d['split']})")


def draw_roc(fig: Any, d: dict[str, Any]) -> None:
    ax = fig.add_subplot()
    for name, c in d["curves"].items():
        if c["auc"] is not None:
            ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    macro = f", macro AUC {d['macro_auc']:.3f}" if d["macro_auc"] is not None else ""
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"One-vs-rest ROC ({d['split']}{macro})")
    ax.legend(fontsize=8)


def draw_token_lengths(fig: Any, d: dict[str, Any]) -> None:
    ax = fig.add_subplot()
    for split, h in d["splits"].items():
        edges = h["edges"]
        ax.stairs(h["counts"], edges, label=split, fill=split == "train", alpha=0.5 if split == "train" else 1)
    if d["max_length"]:
        ax.axvline(d["max_length"], color="red", ls="--", label=f"max_length {d['max_length']}")
    ax.set(xlabel="tokens per input", ylabel="rows", title="Token lengths")
    ax.legend()


def draw_reliability(fig: Any, d: dict[str, Any]) -> None:
    ax = fig.add_subplot()
    pts = [b for b in d["bins"] if b["count"]]
    ax.bar([(b["lo"] + b["hi"]) / 2 for b in pts], [b["accuracy"] for b in pts], width=1 / len(d["bins"]),
           edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.plot([b["confidence"] for b in pts], [b["confidence"] for b in pts], "o", color="orange",
            label="mean confidence in bin")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence (top probability)", ylabel="accuracy",
           title=f"Reliability ({d['split']}, ECE {d['ece']:.4f}, {d['rows']} rows)")
    ax.legend(loc="upper left")


def draw_ner_types(fig: Any, d: dict[str, Any]) -> None:
    extra = f", overall F1 {d['overall_f1']:.3f}" if isinstance(d.get("overall_f1"), (int, float)) else ""
    level = "coarse entity type (mapped from the fine model)" if d["level"] == "coarse" else "entity type"
    _bars(fig, d["types"], {"F1": d["f1"]}, f"F1 per {level} ({d['split']}{extra})")


PLOTS: list[tuple[str, Callable[[RunFiles], dict[str, Any] | None], Callable[[Any, dict[str, Any]], None], str]] = [
    ("loss", loss_data, draw_loss, "Training loss every logging step and validation loss per evaluation"),
    ("validation_metrics", validation_metrics_data, draw_validation_metrics, "Validation metrics per evaluation"),
    ("confusion_matrix", lambda rf: confusion_data(rf, False), draw_confusion, "Confusion matrix (counts)"),
    ("confusion_matrix_normalized", lambda rf: confusion_data(rf, True), draw_confusion,
     "Confusion matrix, each row divided by the gold class's support"),
    ("per_class", per_class_data, draw_per_class, "Per-class accuracy (recall) and F1"),
    ("roc", roc_data, draw_roc, "One-vs-rest ROC curves with AUC"),
    ("reliability", reliability_data, draw_reliability, "Reliability diagram with expected calibration error"),
    ("token_lengths", token_length_data, draw_token_lengths, "Token-length histogram with max_length marked"),
    ("ner_per_type", lambda rf: ner_type_data(rf, False), draw_ner_types, "F1 per entity type"),
    ("ner_coarse", lambda rf: ner_type_data(rf, True), draw_ner_types, "F1 per coarse entity type"),
]
CAPTIONS = {name: caption for name, _, _, caption in PLOTS}


def write_plots(run_dir: str | Path, *, strict: bool = False) -> list[Path]:
    """Write every plot the run folder supports to RUN/plots/NAME.png with NAME.json; returns the PNG paths.

    A plot whose input is absent (no predictions, no NER scores) is skipped; one that fails is reported with
    W601 and the others are still written (``strict`` raises instead).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise LorafitError("E302", path=run, reason="no such folder")
    _figure(1, 1)  # fail once, clearly, when matplotlib is missing
    rf = RunFiles(run)
    out = run / PLOTS_DIR
    written = []
    for name, extract, draw, _caption in PLOTS:
        try:
            data = extract(rf)
            if data is None:
                continue
            fig = _figure()
            draw(fig, data)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")
        except LorafitError:
            raise
        except Exception as err:  # one odd file must not cost the other plots
            if strict:
                raise
            warn("W601", reason=f"{name}: {type(err).__name__}: {err}")
            continue
        write_json(out / f"{name}.json", data)
        atomic_write_bytes(out / f"{name}.png", buf.getvalue())
        written.append(out / f"{name}.png")
    return written
