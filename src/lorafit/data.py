"""Reading data (Hub names and local files), choosing columns, encoding labels, splitting and statistics.

Everything a user can get wrong here is caught with a catalogued error that names the file, row and column.
The result is a ``datasets.DatasetDict`` with the columns ``text`` (+ ``text_pair``), ``label`` (int) and
``row_id`` (the row's position in its source, so outputs can be written in the source's own order).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafit.config import DataConfig
from lorafit.errors import LorafitError, warn
from lorafit.labels import LabelSpace

if TYPE_CHECKING:
    import pandas as pd
    from datasets import DatasetDict

TABLE_EXTS = {".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pkl", ".pickle"}


# ---- reading files ---------------------------------------------------------------------------------
def check_file(path: str | Path, exts: set[str] | None = TABLE_EXTS) -> Path:
    """The file exists, is a file, is not empty and (unless ``exts`` is None) has one of ``exts``."""
    p = Path(path)
    if not p.exists():
        raise LorafitError("E101", path=p)
    if p.is_dir():
        raise LorafitError("E102", path=p)
    ext = p.suffix.lower()
    if exts is not None and ext not in exts:
        raise LorafitError("E103", path=p, ext=ext or "(none)")
    if p.stat().st_size == 0:
        raise LorafitError("E104", path=p)
    return p


def read_table(path: str | Path, *, allow_pickle: bool = False) -> pd.DataFrame:
    """Read a CSV / TSV / JSONL / JSON / Parquet file (a pickle only with ``allow_pickle``)."""
    import pandas as pd

    p = check_file(path)
    ext = p.suffix.lower()
    if ext in (".pkl", ".pickle"):
        if not allow_pickle:
            raise LorafitError("E116", path=p)
        obj = pd.read_pickle(p)  # the user opted in with --allow-pickle
        df = obj if isinstance(obj, pd.DataFrame) else pd.DataFrame(obj)
    elif ext == ".parquet":
        try:
            df = pd.read_parquet(p)
        except Exception as err:  # pyarrow raises many types
            raise LorafitError("E111", path=p, reason=_first_line(err)) from None
    else:
        _check_utf8(p)
        try:
            if ext in (".csv", ".tsv"):
                df = pd.read_csv(p, sep="\t" if ext == ".tsv" else ",", keep_default_na=False, na_values=[""],
                                 dtype=object, encoding="utf-8")
            else:
                df = pd.read_json(p, lines=ext == ".jsonl" or _looks_like_jsonl(p), dtype=False)
        except pd.errors.EmptyDataError:
            raise LorafitError("E104", path=p) from None
        except (ValueError, pd.errors.ParserError) as err:
            raise LorafitError("E111", path=p, reason=_first_line(err)) from None
    if len(df.columns) == 0:
        raise LorafitError("E104", path=p)
    if len(df) == 0:
        raise LorafitError("E105", path=p)
    df.attrs["source"] = str(p)
    return df


def iter_table(path: str | Path, chunk_rows: int = 4096, *, allow_pickle: bool = False) -> Any:
    """Yield a table in DataFrames of at most ``chunk_rows`` rows, so a large file never sits in memory whole.

    The first chunk goes through ``read_table``'s checks (missing, empty, header only, not UTF-8, pickles);
    pickles and JSON arrays cannot be streamed and are read whole.
    """
    import pandas as pd

    p = Path(path)
    ext = p.suffix.lower()
    if ext in (".pkl", ".pickle", ".json"):
        yield read_table(p, allow_pickle=allow_pickle)
        return
    read_table_head(p)  # the file checks, on the first rows only
    if ext == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(p).iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
        return
    try:
        if ext in (".csv", ".tsv"):
            reader = pd.read_csv(p, sep="\t" if ext == ".tsv" else ",", keep_default_na=False, na_values=[""],
                                 dtype=object, encoding="utf-8", chunksize=chunk_rows)
        else:
            reader = pd.read_json(p, lines=True, dtype=False, chunksize=chunk_rows)
        with reader:
            yield from reader
    except (ValueError, pd.errors.ParserError) as err:
        raise LorafitError("E111", path=p, reason=_first_line(err)) from None


def read_table_head(path: str | Path, rows: int = 5) -> pd.DataFrame:
    """The file checks of ``read_table`` on the first rows only (cheap on a large file)."""
    import pandas as pd

    p = check_file(path)
    ext = p.suffix.lower()
    if ext == ".parquet":
        return pd.DataFrame()
    _check_utf8(p)
    try:
        if ext in (".csv", ".tsv"):
            df = pd.read_csv(p, sep="\t" if ext == ".tsv" else ",", nrows=rows, dtype=object, encoding="utf-8")
        else:
            df = pd.read_json(p, lines=True, nrows=rows, dtype=False)
    except pd.errors.EmptyDataError:
        raise LorafitError("E104", path=p) from None
    except (ValueError, pd.errors.ParserError) as err:
        raise LorafitError("E111", path=p, reason=_first_line(err)) from None
    if len(df) == 0:
        raise LorafitError("E105", path=p)
    return df


def _check_utf8(p: Path) -> None:
    with p.open("rb") as fh:
        offset = 0
        import codecs

        dec = codecs.getincrementaldecoder("utf-8")()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            try:
                dec.decode(chunk)
            except UnicodeDecodeError as err:
                raise LorafitError("E106", path=p, offset=offset + err.start) from None
            offset += len(chunk)


def _looks_like_jsonl(p: Path) -> bool:
    with p.open("r", encoding="utf-8") as fh:
        first = fh.readline().strip()
    return first.startswith("{")


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# ---- columns and rows ------------------------------------------------------------------------------
def choose_text_columns(columns: list[str], wanted: list[str] | None, where: str) -> list[str]:
    if wanted:
        for col in wanted:
            if col not in columns:
                raise LorafitError("E107", column=col, where=where, available=", ".join(columns), hint="")
        return list(wanted)
    for candidate in (["text"], ["sentence"], ["title", "description"], ["content"]):
        if all(c in columns for c in candidate):
            return candidate
    raise LorafitError(
        "E107", column="text", where=where, available=", ".join(columns),
        hint=" Name the text column(s) with --text-column.",
    )


def frame_texts(df: pd.DataFrame, cols: list[str], where: str, offset: int = 0) -> list[str]:
    """Join the text columns with a space; empty or NaN text is an error naming the row."""
    out = []
    values = [df[c].tolist() for c in cols]
    for i, parts in enumerate(zip(*values, strict=True)):
        pieces = []
        for v in parts:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                v = ""
            pieces.append(str(v).strip())
        text = " ".join(p for p in pieces if p)
        if not text:
            raise LorafitError("E108", where=where, row=offset + i + 1, column="+".join(cols))
        out.append(text)
    return out


def frame_labels(df: pd.DataFrame, col: str, where: str) -> list[Any]:
    if col not in df.columns:
        raise LorafitError("E107", column=col, where=where, available=", ".join(map(str, df.columns)),
                           hint=" Name the label column with --label-column.")
    values = df[col].tolist()
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
            raise LorafitError("E110", where=where, row=i + 1, column=col)
    return values


@dataclass
class ClassificationData:
    splits: DatasetDict
    labels: LabelSpace
    text_columns: list[str]
    sources: dict[str, str]
    filtered: int = 0


def load_classification(cfg: DataConfig) -> ClassificationData:
    """Load, validate and split classification data from the Hub or local files."""
    from datasets import Dataset, DatasetDict

    frames, sources, hub_names = _load_frames(cfg)
    train_where = sources["train"]
    cols = choose_text_columns(list(map(str, frames["train"].columns)), cfg.text_columns, train_where)
    if cfg.text_pair_column and cfg.text_pair_column not in frames["train"].columns:
        raise LorafitError("E107", column=cfg.text_pair_column, where=train_where,
                           available=", ".join(map(str, frames["train"].columns)), hint="")
    raw_train = frame_labels(frames["train"], cfg.label_column, train_where)
    labels = LabelSpace.infer(raw_train, cfg.labels or hub_names)
    if len(labels) < 2:
        raise LorafitError("E112", label=labels.names[0])
    columns: dict[str, dict[str, list[Any]]] = {}
    for split, df in frames.items():
        where = sources[split]
        for col in cols + ([cfg.text_pair_column] if cfg.text_pair_column else []):
            if col not in df.columns:
                raise LorafitError("E107", column=col, where=where, available=", ".join(map(str, df.columns)),
                                   hint="")
        texts = frame_texts(df, cols, where)
        raw = raw_train if split == "train" else frame_labels(df, cfg.label_column, where)
        ids = [labels.encode(v, where, i + 1) for i, v in enumerate(raw)]
        data: dict[str, list[Any]] = {"text": texts, "label": ids, "row_id": list(range(len(df)))}
        if cfg.text_pair_column:
            data["text_pair"] = frame_texts(df, [cfg.text_pair_column], where)
        columns[split] = data
    splits = DatasetDict({k: Dataset.from_dict(v) for k, v in columns.items()})
    if "validation" not in splits:
        train, val = stratified_split(splits["train"], cfg.validation_size, cfg.seed)
        splits["train"], splits["validation"] = train, val
        sources["validation"] = f"{sources['train']} (stratified {_size_text(cfg.validation_size)} split)"
    for split, limit in (("train", cfg.max_train_samples), ("validation", cfg.max_eval_samples),
                         ("test", cfg.max_test_samples)):
        if limit and split in splits and len(splits[split]) > limit:
            splits[split] = stratified_sample(splits[split], limit, cfg.seed)
    return ClassificationData(splits=splits, labels=labels, text_columns=cols, sources=sources)


def _size_text(size: float) -> str:
    return f"{size:g}" if size < 1 else f"{int(size)}-row"


def _load_frames(cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], dict[str, str], list[str] | None]:
    if cfg.train_file:
        frames = {"train": read_table(cfg.train_file)}
        sources = {"train": f"'{cfg.train_file}'"}
        for split, path in (("validation", cfg.validation_file), ("test", cfg.test_file)):
            if path:
                frames[split] = read_table(path)
                sources[split] = f"'{path}'"
        return frames, sources, None
    if cfg.dataset:
        return _load_hub(cfg)
    raise LorafitError("E009")


def _load_hub(cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], dict[str, str], list[str] | None]:
    import datasets

    name = cfg.dataset
    if not os.environ.get("HF_DATASETS_OFFLINE") and not hub_reachable():
        os.environ["HF_DATASETS_OFFLINE"] = "1"  # try the local cache at once instead of hanging on retries
    try:
        dd = datasets.load_dataset(name, cfg.dataset_config)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError)
        raise LorafitError("E113", name=name, reason=_first_line(err)) from None
    frames: dict[str, Any] = {}
    sources: dict[str, str] = {}
    names = None
    for split, alias in (("train", "train"), ("validation", "validation"), ("validation", "dev"), ("test", "test")):
        if alias in dd and split not in frames:
            frames[split] = dd[alias].to_pandas()
            sources[split] = f"Hub dataset '{name}' split '{alias}'"
            feat = dd[alias].features.get(cfg.label_column)
            if names is None and feat is not None and hasattr(feat, "names"):
                names = list(feat.names)
    if "train" not in frames:
        raise LorafitError("E113", name=name, reason=f"it has no 'train' split (splits: {', '.join(dd)})")
    return frames, sources, names


def hub_reachable(timeout: float = 3.0) -> bool:
    """A fast check so that a machine without network fails in seconds, not after minutes of retries."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((endpoint, 443), timeout=timeout):
            return True
    except OSError:
        return False


def stratified_split(ds: Any, size: float, seed: int) -> tuple[Any, Any]:
    """Carve a validation split with the class balance of the training split (fixed seed)."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    n = len(ds)
    labels = np.asarray(ds["label"])
    n_classes = len(set(labels.tolist()))
    n_val = int(round(size * n)) if size < 1 else int(size)
    if n_val < 1 or n_val >= n:
        raise LorafitError("E114", value=size, rows=n, classes=n_classes)
    idx = np.arange(n)
    counts = np.bincount(labels)
    ok = counts[counts > 0].min() >= 2 and n_val >= n_classes and n - n_val >= n_classes
    strat = labels if ok else None  # stratify whenever every class can appear on both sides
    train_idx, val_idx = train_test_split(idx, test_size=n_val, random_state=seed, stratify=strat)
    return ds.select(sorted(train_idx)), ds.select(sorted(val_idx))


def stratified_sample(ds: Any, k: int, seed: int) -> Any:
    _, sample = stratified_split(ds, k, seed)
    return sample


# ---- statistics ------------------------------------------------------------------------------------
def token_lengths(texts: list[str], tokenizer: Any, pairs: list[str] | None = None) -> list[int]:
    out: list[int] = []
    for start in range(0, len(texts), 1000):
        chunk = texts[start : start + 1000]
        pair = pairs[start : start + 1000] if pairs else None
        enc = tokenizer(chunk, pair, truncation=False, add_special_tokens=True)
        out.extend(len(ids) for ids in enc["input_ids"])
    return out


def length_summary(lengths: list[int], bins: int = 30) -> dict[str, Any]:
    import numpy as np

    arr = np.asarray(lengths)
    counts, edges = np.histogram(arr, bins=bins)
    return {
        "min": int(arr.min()),
        "mean": round(float(arr.mean()), 2),
        "p50": int(np.percentile(arr, 50)),
        "p90": int(np.percentile(arr, 90)),
        "p95": int(np.percentile(arr, 95)),
        "p99": int(np.ceil(np.percentile(arr, 99))),
        "max": int(arr.max()),
        "histogram": {"counts": counts.tolist(), "edges": [round(float(e), 2) for e in edges]},
    }


def suggest_max_length(p99: int, limit: int) -> int:
    """p99 rounded up to a multiple of 8 (friendly to kernels), capped by the model's limit."""
    return int(min(limit, max(16, int(math.ceil(p99 / 8.0)) * 8)))


def apply_length_filter(ds: Any, lengths: list[int], min_tokens: int | None, max_tokens: int | None) -> tuple[Any, int]:
    lo = min_tokens or 0
    hi = max_tokens or 10**9
    keep = [i for i, n in enumerate(lengths) if lo <= n <= hi]
    removed = len(lengths) - len(keep)
    if not keep:
        raise LorafitError("E117", min=lo, max=max_tokens)
    if removed:
        warn("W004", removed=removed, rows=len(lengths), min=lo, max=max_tokens or "inf")
    return (ds.select(keep) if removed else ds), removed
