"""File-level evaluate and predict over the one Predictor: the functions behind `lorafit evaluate / predict`."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from lorafit.artifacts import read_json, write_json
from lorafit.data import choose_text_columns, frame_labels, frame_texts, iter_table, read_table
from lorafit.errors import LorafitError
from lorafit.inference import Predictor, bundle_dir
from lorafit.labels import LabelSpace


def _run_text_columns(run: Path, columns: list[str]) -> list[str] | None:
    """The text columns the run was trained on, when the input file has them all."""
    cols = _run_data_config(run).get("text_columns")
    return list(cols) if cols and all(c in columns for c in cols) else None

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
    texts, pairs, gold = labelled_rows(predictor, run, data_file, text_columns=text_columns,
                                       label_column=label_column, text_pair_column=text_pair_column,
                                       allow_pickle=allow_pickle)
    metrics, _ = predictor.evaluate(texts, gold, pairs, batch_size=batch_size)
    metrics.update(data=str(data_file), inference_precision=predictor.precision)
    if output:
        write_json(output, metrics)
    return metrics


def labelled_rows(predictor: Predictor, run: Path | None, data_file: str | Path, *,
                  text_columns: list[str] | None = None, label_column: str = "label",
                  text_pair_column: str | None = None, allow_pickle: bool = False
                  ) -> tuple[list[str], list[str] | None, list[int]]:
    """Texts, pairs and gold label ids of a labelled file, in the model's label ids (E308 for foreign labels).

    Text columns default to the ones the run trained on; the pair column too when the model takes pairs.
    """
    df = read_table(data_file, allow_pickle=allow_pickle)
    where = f"'{data_file}'"
    columns = list(map(str, df.columns))
    trained = _run_data_config(run) if run is not None else {}
    wanted = text_columns or [c for c in trained.get("text_columns") or [] if c in columns] or None
    cols = choose_text_columns(columns, wanted, where)
    texts = frame_texts(df, cols, where)
    pair_col = text_pair_column or (trained.get("text_pair_column") if predictor.bundle.get("text_pair") else None)
    pairs = frame_texts(df, [pair_col], where) if pair_col else None
    raw = frame_labels(df, label_column, where)
    space = model_label_space(predictor)
    unknown = sorted({str(v) for v in raw if _safe_encode(space, v) is None})
    if unknown:
        raise LorafitError("E308", labels=unknown[:10], known=predictor.labels)
    return texts, pairs, [space.encode(v, where, i + 1) for i, v in enumerate(raw)]


def _run_data_config(run: Path) -> dict[str, Any]:
    cfg = Path(run) / "config.yaml"
    if not cfg.is_file():
        return {}
    import yaml

    return (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("data") or {}


def model_label_space(predictor: Predictor) -> LabelSpace:
    """The model's labels, also matching integer values in a file against integer-named labels (AG News 1-4)."""
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
                 overwrite: bool = False, chunk_rows: int = 4096, predictor: Predictor | None = None) -> int:
    """Predict every row of a file and write one output row per input row, in input order.

    The file is read, predicted and written in chunks of ``chunk_rows`` rows (length-sorted inside each chunk,
    then restored to input order), so memory stays flat on large files; the output appears atomically at the end.
    """
    run = Path(run)
    out = Path(output)
    if out.exists() and not overwrite:
        raise LorafitError("E301", path=out)
    predictor = predictor or Predictor.load(run, base_model=base_model, precision=precision)
    if predictor.task == "ner":
        from lorafit.ner import predict_ner_file

        return predict_ner_file(predictor, input_file, out, batch_size=batch_size)
    where = f"'{input_file}'"
    names = predictor.labels
    header = ["ID", "Label"] if kaggle else [id_column or "row", "label", "label_id", "score",
                                              *[f"p_{n}" for n in names]]
    seen: dict[Any, int] = {}
    offset = 0
    cols: list[str] | None = None
    with ChunkWriter(out, header) as writer:
        try:
            chunks = iter_table(input_file, chunk_rows, allow_pickle=allow_pickle)
            for df in chunks:
                columns = list(map(str, df.columns))
                if cols is None:
                    cols = choose_text_columns(columns, text_columns or _run_text_columns(run, columns), where)
                texts = frame_texts(df, cols, where, offset)
                pairs = frame_texts(df, [text_pair_column], where, offset) if text_pair_column else None
                ids = _chunk_ids(df, id_column, where, offset, seen)
                probs = predictor.predict_proba(texts, pairs, batch_size=batch_size)
                pred = probs.argmax(axis=1)
                if kaggle:
                    rows = [[i, names[k]] for i, k in zip(ids, pred, strict=True)]
                else:
                    rows = [[i, names[k], int(k), round(float(p[k]), 6), *[round(float(x), 6) for x in p]]
                            for i, k, p in zip(ids, pred, probs, strict=True)]
                writer.write(rows)
                offset += len(df)
        except LorafitError as err:
            if err.code in ("E111", "E104", "E105", "E106"):
                raise LorafitError("E306", path=input_file, reason=err.message) from None
            raise
    return offset


def _chunk_ids(df: Any, id_column: str | None, where: str, offset: int, seen: dict[Any, int]) -> list[Any]:
    if not id_column:
        return list(range(offset, offset + len(df)))
    if id_column not in df.columns:
        raise LorafitError("E107", column=id_column, where=where, available=", ".join(map(str, df.columns)), hint="")
    ids = df[id_column].tolist()
    for i, v in enumerate(ids):
        if v in seen:
            raise LorafitError("E115", value=v, where=where, column=id_column, first=seen[v] + 1, row=offset + i + 1)
        seen[v] = offset + i
    return ids


class ChunkWriter:
    """Writes CSV / JSONL / Parquet rows chunk by chunk to a temporary file, renamed into place on success."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header = path, header
        self.ext = path.suffix.lower()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._fh: Any = None
        self._pq: Any = None

    def __enter__(self) -> ChunkWriter:
        if self.ext != ".parquet":
            self._fh = self.tmp.open("w", newline="", encoding="utf-8")
            if self.ext != ".jsonl":
                self._csv = csv.writer(self._fh, lineterminator="\n")
                self._csv.writerow(self.header)
        return self

    def write(self, rows: list[list[Any]]) -> None:
        if self.ext == ".jsonl":
            self._fh.write("".join(json.dumps(dict(zip(self.header, r, strict=True)), default=str) + "\n"
                                   for r in rows))
        elif self.ext == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist([dict(zip(self.header, r, strict=True)) for r in rows])
            if self._pq is None:
                self._pq = pq.ParquetWriter(self.tmp, table.schema)
            self._pq.write_table(table)
        else:
            self._csv.writerows(rows)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._pq is not None:
            self._pq.close()
        if exc_type is None:
            if not self.tmp.exists():  # no rows at all (parquet)
                self.tmp.write_bytes(b"")
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


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
