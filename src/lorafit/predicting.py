"""File-level evaluate and predict over the one Predictor: the functions behind `lorafit evaluate / predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorafit.artifacts import atomic_write_bytes, atomic_write_text, read_json, write_csv, write_json
from lorafit.data import choose_text_columns, frame_labels, frame_texts, read_table
from lorafit.errors import LorafitError
from lorafit.inference import Predictor, bundle_dir
from lorafit.labels import LabelSpace


def _run_text_columns(run: Path, columns: list[str]) -> list[str] | None:
    """The text columns the run was trained on, when the input file has them."""
    cfg = run / "config.yaml"
    if cfg.is_file():
        import yaml

        data = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
        cols = (data.get("data") or {}).get("text_columns")
        if cols and all(c in columns for c in cols):
            return list(cols)
    return None


def evaluate_file(run: str | Path, data_file: str | Path, *, text_columns: list[str] | None = None,
                  label_column: str = "label", text_pair_column: str | None = None, base_model: str | None = None,
                  batch_size: int = 64, output: str | Path | None = None, allow_pickle: bool = False,
                  precision: str = "fp32") -> dict[str, Any]:
    """Score a labelled file with a trained run; label values must be labels of the model."""
    run = Path(run)
    predictor = Predictor.load(run, base_model=base_model, precision=precision)
    if predictor.task == "ner":
        from lorafit.ner import evaluate_ner_file

        return evaluate_ner_file(predictor, data_file, output=output, batch_size=batch_size)
    df = read_table(data_file, allow_pickle=allow_pickle)
    where = f"'{data_file}'"
    cols = text_columns or _run_text_columns(run, list(df.columns))
    cols = choose_text_columns(list(map(str, df.columns)), cols, where)
    texts = frame_texts(df, cols, where)
    pairs = frame_texts(df, [text_pair_column], where) if text_pair_column else None
    raw = frame_labels(df, label_column, where)
    space = _model_label_space(predictor, run)
    unknown = sorted({str(v) for v in raw if _safe_encode(space, v) is None})
    if unknown:
        raise LorafitError("E308", labels=unknown[:10], known=predictor.labels)
    gold = [space.encode(v, where, i + 1) for i, v in enumerate(raw)]
    metrics, _ = predictor.evaluate(texts, gold, pairs, batch_size=batch_size)
    metrics["data"] = str(data_file)
    if output:
        write_json(output, metrics)
    return metrics


def _model_label_space(predictor: Predictor, run: Path) -> LabelSpace:
    names = predictor.labels
    mapping: dict[Any, int] = {n: i for i, n in enumerate(names)}
    for i, n in enumerate(names):  # integer-named labels (AG News 1-4) match integer values in files
        if n.lstrip("-").isdigit():
            mapping[int(n)] = i
    return LabelSpace(names, mapping)


def _safe_encode(space: LabelSpace, value: Any) -> int | None:
    try:
        return space.encode(value, "", 0)
    except LorafitError:
        return None


def predict_file(run: str | Path, input_file: str | Path, output: str | Path, *,
                 text_columns: list[str] | None = None, text_pair_column: str | None = None,
                 id_column: str | None = None, kaggle: bool = False, base_model: str | None = None,
                 batch_size: int = 64, allow_pickle: bool = False, precision: str = "fp32",
                 overwrite: bool = False) -> int:
    """Predict every row of a file and write one output row per input row, in input order."""
    run = Path(run)
    out = Path(output)
    if out.exists() and not overwrite:
        raise LorafitError("E301", path=out)
    predictor = Predictor.load(run, base_model=base_model, precision=precision)
    if predictor.task == "ner":
        from lorafit.ner import predict_ner_file

        return predict_ner_file(predictor, input_file, out, batch_size=batch_size)
    try:
        df = read_table(input_file, allow_pickle=allow_pickle)
    except LorafitError as err:
        if err.code in ("E111", "E104", "E105", "E106"):
            raise LorafitError("E306", path=input_file, reason=err.message) from None
        raise
    where = f"'{input_file}'"
    cols = text_columns or _run_text_columns(run, list(map(str, df.columns)))
    cols = choose_text_columns(list(map(str, df.columns)), cols, where)
    texts = frame_texts(df, cols, where)
    pairs = frame_texts(df, [text_pair_column], where) if text_pair_column else None
    if id_column:
        if id_column not in df.columns:
            raise LorafitError("E107", column=id_column, where=where, available=", ".join(map(str, df.columns)),
                               hint="")
        ids = df[id_column].tolist()
        seen: dict[Any, int] = {}
        for i, v in enumerate(ids):
            if v in seen:
                raise LorafitError("E115", value=v, where=where, column=id_column, first=seen[v] + 1, row=i + 1)
            seen[v] = i
    else:
        ids = list(range(len(texts)))
    probs = predictor.predict_proba(texts, pairs, batch_size=batch_size)
    names = predictor.labels
    pred = probs.argmax(axis=1)
    if kaggle:
        rows = [[i, names[k]] for i, k in zip(ids, pred, strict=True)]
        header = ["ID", "Label"]
    else:
        header = [id_column or "row", "label", "label_id", "score", *[f"p_{n}" for n in names]]
        rows = [[i, names[k], int(k), round(float(p[k]), 6), *[round(float(x), 6) for x in p]]
                for i, k, p in zip(ids, pred, probs, strict=True)]
    _write_table(out, header, rows)
    return len(rows)


def _write_table(out: Path, header: list[str], rows: list[list[Any]]) -> None:
    ext = out.suffix.lower()
    if ext == ".jsonl":
        text = "".join(json.dumps(dict(zip(header, r, strict=True)), default=str) + "\n" for r in rows)
        atomic_write_text(out, text)
    elif ext == ".parquet":
        import io

        import pandas as pd

        buf = io.BytesIO()
        pd.DataFrame(rows, columns=header).to_parquet(buf, index=False)
        atomic_write_bytes(out, buf.getvalue())
    else:
        write_csv(out, header, rows)


def check_run(run: str | Path) -> list[str]:
    """Manifest problems of a run folder and of every bundle inside it (empty when intact)."""
    from lorafit.artifacts import verify_manifest

    run = Path(run)
    problems = [f"{run}: {p}" for p in verify_manifest(run)]
    for sub in sorted(run.glob("*/lorafit.json")):
        problems += [f"{sub.parent}: {p}" for p in verify_manifest(sub.parent)]
    return problems


def describe_bundle(path: str | Path) -> dict[str, Any]:
    return read_json(bundle_dir(path) / "lorafit.json")
