"""NER data: CoNLL, JSONL, table and Hub readers, format sniffing, tag-scheme checks and conversion, splits.

Every sentence keeps the line (or row) it starts on, so each problem is reported as a one-line catalogued
error naming the file and line. A split's result is word-level: ``tokens`` and ``tags`` per sentence, in the
source's order. Raw text is split into words by :func:`pretokenize`, the one offset-preserving pre-tokenizer
that training records in the bundle and that predict and the server use.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafit.config import DataConfig
from lorafit.errors import LorafitError
from lorafit.ner_metrics import convert, label_set, scheme_of, split_tag, tag_kind, to_io

# Words and single punctuation marks, keeping numbers like 3.5 / 1,000 and clitics like 's whole, the way
# Few-NERD (and the Penn Treebank) write "1997 's" and "Records .".
PRETOKEN_PATTERN = r"\d+(?:[.,]\d+)+|'(?:[sSdDmM]|re|ve|ll|RE|VE|LL)\b|\w+|[^\w\s]"
PRETOKENIZER = {"name": "lorafit-regex", "pattern": PRETOKEN_PATTERN, "function": "lorafit.ner.pretokenize"}
_WORD = re.compile(PRETOKEN_PATTERN)
CONLL_EXTS = {".conll", ".conllx", ".bio", ".iob", ".iob2", ".iobes", ".bioes", ".ner"}
TABLE_EXTS = {".csv", ".parquet"}
TOKEN_KEYS = ("tokens", "words")
TAG_KEYS = ("tags", "ner_tags", "labels")


def pretokenize(text: str) -> list[tuple[str, int, int]]:
    """Split raw text into (word, start, end) with character offsets into ``text`` (text[start:end] == word)."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


@dataclass
class NerSplit:
    """Word-level sentences of one split, with where each came from (``lines``: 1-based line or row)."""

    tokens: list[list[str]]
    tags: list[list[str]]
    lines: list[int]
    where: str
    unit: str = "line"
    row_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.row_ids:
            self.row_ids = list(range(len(self.tokens)))

    def __len__(self) -> int:
        return len(self.tokens)

    def select(self, idx: list[int]) -> NerSplit:
        return NerSplit([self.tokens[i] for i in idx], [self.tags[i] for i in idx], [self.lines[i] for i in idx],
                        self.where, self.unit, [self.row_ids[i] for i in idx])


@dataclass
class NerData:
    splits: dict[str, NerSplit]
    labels: list[str]
    scheme: str
    source_scheme: str
    sources: dict[str, str]
    tag_column: str | None = None
    repaired: dict[str, int] = field(default_factory=dict)


# ---- format ----------------------------------------------------------------------------------------------------
def sniff_format(path: str | Path) -> str:
    """'conll', 'jsonl', 'csv' (a table) or 'text' (raw lines), from the extension or, failing that, the content."""
    p = _existing(path)
    ext = p.suffix.lower()
    if ext in CONLL_EXTS:
        return "conll"
    if ext in (".jsonl", ".json"):
        return "jsonl"
    if ext in TABLE_EXTS:
        return "csv"
    with p.open("r", encoding="utf-8", errors="replace") as fh:
        head = fh.read(1 << 16)
    lines = [ln for ln in head.splitlines() if ln.strip() and not ln.startswith("-DOCSTART-")][:200]
    if not lines:
        return "text"
    if lines[0].lstrip().startswith(("{", "[")):
        return "jsonl"
    tabbed = [ln for ln in lines if "\t" in ln]
    if len(tabbed) >= 0.8 * len(lines):
        firsts = [ln.split("\t")[0] for ln in tabbed]
        if sum(1 for f in firsts if f and not any(c.isspace() for c in f)) >= 0.9 * len(firsts):
            return "conll"
    counts = {len(ln.split()) for ln in lines}
    if len(counts) == 1 and 2 <= min(counts) <= 10 and any(ln.split()[-1] == "O" for ln in lines):
        return "conll"
    if ext == ".tsv" or ("," in lines[0] and len(lines[0].split(",")) >= 2 and " " not in lines[0].split(",")[0]):
        return "csv"
    return "text"


def _existing(path: str | Path) -> Path:
    from lorafit.data import check_file

    return check_file(path, exts=None)  # NER files often have no telling extension: they are sniffed

def _read_lines(p: Path) -> list[str]:
    from lorafit.data import _check_utf8

    _check_utf8(p)
    return p.read_text(encoding="utf-8").splitlines()


# ---- readers ---------------------------------------------------------------------------------------------------
def read_ner_file(path: str | Path, fmt: str | None = None, *, tag_column: str | None = None,
                  names: list[str] | None = None, labelled: bool = True) -> NerSplit:
    """Read a CoNLL, JSONL or table file of tokens (and tags, when ``labelled``)."""
    p = _existing(path)
    fmt = fmt or sniff_format(p)
    if fmt == "conll":
        return read_conll(p, labelled=labelled)
    if fmt == "jsonl":
        return read_jsonl(p, tag_column=tag_column, names=names, labelled=labelled)
    if fmt == "csv":
        return read_table_ner(p, tag_column=tag_column, names=names, labelled=labelled)
    raise LorafitError("E509", path=p, reason="it looks like plain text, not CoNLL (token<TAB>tag lines), JSONL "
                       "with tokens and tags, or a table")


def read_conll(path: str | Path, *, labelled: bool = True) -> NerSplit:
    """CoNLL: ``token<TAB>tag`` or whitespace-separated columns with the tag LAST; blank lines between sentences;
    ``-DOCSTART-`` lines skipped. Unlabelled files (for predict) may have the token column only."""
    p = Path(path)
    where = f"'{p}'"
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    lines: list[int] = []
    cur_t: list[str] = []
    cur_g: list[str] = []
    start = 0
    sep: str | None = None  # "\t" or None (any whitespace), fixed by the first token line
    ncols = 0
    for no, raw in enumerate(_read_lines(p), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.split()[0] == "-DOCSTART-":
            if cur_t:
                tokens.append(cur_t)
                tags.append(cur_g)
                lines.append(start)
            cur_t, cur_g = [], []
            continue
        if sep is None and ncols == 0:
            sep = "\t" if "\t" in line else None
            ncols = len(line.split(sep))
            if labelled and ncols < 2:
                raise LorafitError("E501", path=p, line=no, reason=f"{line.strip()!r} has no tag")
        fields = line.split(sep)
        if sep == "\t":
            fields = [f.strip() for f in fields]
        if len(fields) != ncols:
            if len(fields) < ncols or (len(fields) == 1 and ncols > 1):
                reason = f"{line.strip()!r} has no tag" if len(fields) == 1 else \
                    f"{len(fields)} columns, expected {ncols} like the first line"
            elif sep == "\t":
                reason = (f"{len(fields)} tab-separated fields, expected {ncols} like the first line (a tab inside "
                          "a token?)")
            else:
                reason = f"{len(fields)} columns, expected {ncols} like the first line"
            raise LorafitError("E501", path=p, line=no, reason=reason)
        token = fields[0]
        if not token:
            raise LorafitError("E501", path=p, line=no, reason="empty token")
        if any(c.isspace() for c in token):
            raise LorafitError("E501", path=p, line=no, reason=f"token {token!r} contains whitespace")
        if labelled:
            tag = fields[-1]
            if not tag:
                raise LorafitError("E501", path=p, line=no, reason=f"{token!r} has an empty tag")
            cur_g.append(tag)
        if not cur_t:
            start = no
        cur_t.append(token)
    if cur_t:
        tokens.append(cur_t)
        tags.append(cur_g)
        lines.append(start)
    if not tokens:
        raise LorafitError("E104", path=p)
    return NerSplit(tokens, tags if labelled else [[] for _ in tokens], lines, where)


def read_jsonl(path: str | Path, *, tag_column: str | None = None, names: list[str] | None = None,
               labelled: bool = True) -> NerSplit:
    """JSON lines (or one JSON array) of objects with ``tokens`` and ``tags`` (strings, or ids into ``names``)."""
    p = Path(path)
    where = f"'{p}'"
    text_lines = _read_lines(p)
    first = next((ln for ln in text_lines if ln.strip()), "")
    if first.lstrip().startswith("["):
        try:
            rows = list(enumerate(json.loads("\n".join(text_lines)), start=1))
        except json.JSONDecodeError as err:
            raise LorafitError("E111", path=p, reason=str(err)) from None
        unit = "item"
    else:
        rows = []
        for no, ln in enumerate(text_lines, start=1):
            if not ln.strip():
                continue
            try:
                rows.append((no, json.loads(ln)))
            except json.JSONDecodeError as err:
                raise LorafitError("E510", where=where, unit="line", line=no,
                                   reason=f"not valid JSON ({err.msg})") from None
        unit = "line"
    if not rows:
        raise LorafitError("E104", path=p)
    tokens, tags, lines = [], [], []
    for no, obj in rows:
        toks, tgs = _row_tokens_tags(obj, where, unit, no, tag_column, names, labelled)
        tokens.append(toks)
        tags.append(tgs)
        lines.append(no)
    return NerSplit(tokens, tags, lines, where, unit)


def read_table_ner(path: str | Path, *, tag_column: str | None = None, names: list[str] | None = None,
                   labelled: bool = True) -> NerSplit:
    """A CSV / TSV / Parquet table with a tokens column and a tags column (lists, JSON lists or space-separated)."""
    from lorafit.data import read_table

    p = Path(path)
    df = read_table(p)
    where = f"'{p}'"
    tokens, tags, lines = [], [], []
    header = 2 if p.suffix.lower() in (".csv", ".tsv") else 1  # row numbers as a spreadsheet shows them
    for i, obj in enumerate(df.to_dict("records")):
        toks, tgs = _row_tokens_tags(obj, where, "row", i + header, tag_column, names, labelled)
        tokens.append(toks)
        tags.append(tgs)
        lines.append(i + header)
    return NerSplit(tokens, tags, lines, where, "row")


def _as_list(value: Any) -> Any:
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                return json.loads(s)
            except json.JSONDecodeError:
                return None
        return s.split()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _row_tokens_tags(obj: Any, where: str, unit: str, no: int, tag_column: str | None, names: list[str] | None,
                     labelled: bool) -> tuple[list[str], list[str]]:
    if not isinstance(obj, dict):
        raise LorafitError("E510", where=where, unit=unit, line=no, reason="expected an object with tokens and tags")
    tkey = next((k for k in TOKEN_KEYS if k in obj), None)
    if tkey is None:
        raise LorafitError("E510", where=where, unit=unit, line=no,
                           reason=f"no 'tokens' field (fields: {', '.join(map(str, obj))})")
    toks = _as_list(obj[tkey])
    if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
        raise LorafitError("E510", where=where, unit=unit, line=no, reason="'tokens' must be a list of strings")
    if not toks:
        raise LorafitError("E504", where=where, unit=unit, line=no)
    for t in toks:
        if not t or any(c.isspace() for c in t):
            raise LorafitError("E510", where=where, unit=unit, line=no,
                               reason=f"token {t!r} is empty or contains whitespace")
    if not labelled:
        return toks, []
    gkey = tag_column or next((k for k in TAG_KEYS if k in obj), None)
    if gkey is None or gkey not in obj:
        raise LorafitError("E510", where=where, unit=unit, line=no,
                           reason=f"no '{tag_column or 'tags'}' field (fields: {', '.join(map(str, obj))})")
    tgs = _as_list(obj[gkey])
    if not isinstance(tgs, list):
        raise LorafitError("E510", where=where, unit=unit, line=no, reason=f"'{gkey}' must be a list")
    if len(tgs) != len(toks):
        raise LorafitError("E508", where=where, unit=unit, line=no, tokens=len(toks), tags=len(tgs))
    out = []
    for t in tgs:
        if isinstance(t, bool) or not isinstance(t, (str, int)) or (isinstance(t, float) and math.isnan(t)):
            raise LorafitError("E510", where=where, unit=unit, line=no, reason=f"tag {t!r} is not a string or an id")
        if isinstance(t, int):
            if not names:
                raise LorafitError("E510", where=where, unit=unit, line=no,
                                   reason=f"integer tag {t} needs the tag names: set data.labels in id order")
            if not 0 <= t < len(names):
                raise LorafitError("E502", tag=t, where=where, unit=unit, line=no, known=_short_list(names))
            t = names[t]
        if not t.strip():
            raise LorafitError("E510", where=where, unit=unit, line=no, reason="empty tag")
        out.append(t.strip())
    return toks, out


def _short_list(names: list[str], n: int = 12) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


# ---- scheme checks -----------------------------------------------------------------------------------------------
def check_scheme(split: NerSplit) -> str | None:
    """The split's scheme (IO / BIO / BIOES; None when it has no entities). Mixed schemes are an error that
    names the first line of each kind."""
    first: dict[str, tuple[str, int]] = {}
    distinct: set[str] = set()
    for tags, line in zip(split.tags, split.lines, strict=True):
        for k, tag in enumerate(tags):
            if tag in distinct:
                continue
            distinct.add(tag)
            kind = tag_kind(tag)
            if kind == "O" or kind in first:
                continue
            at = line + k if split.unit == "line" else line
            first[kind] = (tag, at)
            other = "plain" if kind == "prefixed" else "prefixed"
            if other in first:
                t0, l0 = first[other]
                raise LorafitError("E503", where=split.where, unit=split.unit, line=at, tag=tag,
                                   kind=_kind_text(kind), first_line=l0, first=t0, first_kind=_kind_text(other))
    return scheme_of(sorted(distinct))


def _kind_text(kind: str) -> str:
    return "B-/I-/E-/S- prefixed" if kind == "prefixed" else "no prefix, IO"


def tag_line(split: NerSplit, tag_pred: Any) -> tuple[str, int] | None:
    """The first tag matching ``tag_pred`` and its line (for errors)."""
    for tags, line in zip(split.tags, split.lines, strict=True):
        for k, tag in enumerate(tags):
            if tag_pred(tag):
                return tag, line + k if split.unit == "line" else line
    return None


def require_entities(split: NerSplit) -> None:
    if all(t == "O" for s in split.tags for t in s):
        raise LorafitError("E506", where=split.where, sentences=len(split))


def convert_split(split: NerSplit, source: str, target: str) -> int:
    """Convert tags in place; returns how many words changed (for BIO -> BIO: I- tags repaired to B-)."""
    changed = 0
    for i, tags in enumerate(split.tags):
        new = convert(tags, source, target)
        changed += sum(a != b for a, b in zip(tags, new, strict=True))
        split.tags[i] = new
    return changed


def types_of(split: NerSplit, scheme: str) -> set[str]:
    return {t for s in split.tags for t in to_io(s, scheme) if t != "O"}


# ---- the Hub ------------------------------------------------------------------------------------------------------
def _sequence_classlabel(feature: Any) -> list[str] | None:
    inner = getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    return list(names) if names else None


def _hub_tag_column(features: Any, wanted: str | None, where: str) -> tuple[str, list[str] | None]:
    cols = list(features)
    if wanted:
        if wanted not in features:
            raise LorafitError("E107", column=wanted, where=where, available=", ".join(cols), hint="")
        return wanted, _sequence_classlabel(features[wanted])
    labelled = [c for c in cols if _sequence_classlabel(features[c])]
    for c in ("ner_tags", "tags", *labelled):
        if c in features:
            return c, _sequence_classlabel(features[c])
    raise LorafitError("E107", column="ner_tags", where=where, available=", ".join(cols),
                       hint=" Name the tag column with --tag-column (Few-NERD: ner_tags or fine_ner_tags).")


def load_hub_ner(cfg: DataConfig) -> tuple[dict[str, NerSplit], list[str] | None, str]:
    import datasets

    from lorafit.data import _first_line, hub_reachable

    if not os.environ.get("HF_DATASETS_OFFLINE") and not hub_reachable():
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        dd = datasets.load_dataset(cfg.dataset, cfg.dataset_config)
    except Exception as err:  # datasets raises many types
        raise LorafitError("E113", name=cfg.dataset, reason=_first_line(err)) from None
    out: dict[str, NerSplit] = {}
    names: list[str] | None = None
    tag_col = ""
    for split, alias in (("train", "train"), ("validation", "validation"), ("validation", "dev"), ("test", "test")):
        if alias not in dd or split in out:
            continue
        ds = dd[alias]
        where = f"Hub dataset '{cfg.dataset}' split '{alias}'"
        tok_col = (cfg.text_columns or ["tokens"])[0]
        if tok_col not in ds.column_names:
            raise LorafitError("E107", column=tok_col, where=where, available=", ".join(ds.column_names),
                               hint=" Name the token column with --text-column.")
        tag_col, col_names = _hub_tag_column(ds.features, cfg.tag_column, where)
        names = names or col_names or cfg.labels
        tokens, tags, lines = [], [], []
        for i, (toks, tgs) in enumerate(zip(ds[tok_col], ds[tag_col], strict=True)):
            t, g = _row_tokens_tags({"tokens": list(toks), "tags": list(tgs)}, where, "row", i + 1, "tags",
                                    col_names or cfg.labels, True)
            tokens.append(t)
            tags.append(g)
            lines.append(i + 1)
        out[split] = NerSplit(tokens, tags, lines, where, "row")
    if "train" not in out:
        raise LorafitError("E113", name=cfg.dataset, reason=f"it has no 'train' split (splits: {', '.join(dd)})")
    return out, names, tag_col


# ---- loading ------------------------------------------------------------------------------------------------------
def load_ner(cfg: DataConfig) -> NerData:
    """Read, check, convert and split NER data; every problem is a catalogued error naming file and line."""
    names = list(cfg.labels) if cfg.labels else None
    hub_names: list[str] | None = None
    tag_col: str | None = cfg.tag_column
    if cfg.train_file:
        splits = {"train": read_ner_file(cfg.train_file, cfg.format, tag_column=cfg.tag_column, names=names)}
        for split, path in (("validation", cfg.validation_file), ("test", cfg.test_file)):
            if path:
                splits[split] = read_ner_file(path, cfg.format, tag_column=cfg.tag_column, names=names)
    elif cfg.dataset:
        splits, hub_names, tag_col = load_hub_ner(cfg)
    else:
        raise LorafitError("E009")
    sources = {s: d.where for s, d in splits.items()}
    train = splits["train"]
    require_entities(train)
    source = check_scheme(train)
    assert source is not None
    for split, d in splits.items():
        if split == "train":
            continue
        require_entities(d)
        other = check_scheme(d)
        if other != source:
            tag, line = tag_line(d, lambda t: t != "O")  # type: ignore[misc]
            raise LorafitError("E505", split=split, where=d.where, what=f"uses the {other} scheme",
                               unit=d.unit, line=line, tag=tag, known=f"the {source} scheme")
    train_types = types_of(train, source)
    for split, d in splits.items():
        extra = types_of(d, source) - train_types
        if extra and names is None and hub_names is None:
            hit = tag_line(d, lambda t, extra=extra: t != "O" and split_tag(t, source)[1] in extra)
            assert hit is not None
            raise LorafitError("E505", split=split, where=d.where, what=f"has types {sorted(extra)[:8]}",
                               unit=d.unit, line=hit[1], tag=hit[0], known=_short_list(sorted(train_types)))
    target = (cfg.scheme or source).upper()
    repaired = {}
    for split, d in splits.items():
        if target != "IO" or source != "IO":
            changed = convert_split(d, source, target)
            if changed:
                repaired[split] = changed
    if names is not None:  # given labels are in the target scheme (a resolved config.yaml writes them so)
        known = set(names)
        for d in splits.values():
            hit = tag_line(d, lambda t, known=known: t not in known)
            if hit:
                raise LorafitError("E502", tag=hit[0], where=d.where, unit=d.unit, line=hit[1],
                                   known=_short_list(names))
    labels = _labels(cfg.labels, hub_names, splits, source, target)
    _sample(splits, sources, cfg)
    splits = {s: splits[s] for s in ("train", "validation", "test") if s in splits}
    return NerData(splits, labels, target, source, sources, tag_col, repaired)


def _labels(given: list[str] | None, hub_names: list[str] | None, splits: dict[str, NerSplit], source: str,
            target: str) -> list[str]:
    """The label list in id order: as given; the Hub's ClassLabel order when unconverted; else O + sorted types
    with every prefix of the scheme (so the model can emit B- and I- of every type)."""
    if given:
        return list(given)
    if hub_names and source == target:
        return list(hub_names)
    pool = list(given or hub_names or [])
    types = sorted({t for d in splits.values() for t in types_of(d, target)} |
                   {split_tag(t, source)[1] for t in pool if t != "O"} - {None})  # type: ignore[operator]
    return label_set(types, target)


def _sample(splits: dict[str, NerSplit], sources: dict[str, str], cfg: DataConfig) -> None:
    """Carve validation from train when absent; cap split sizes with a seeded sample kept in source order."""
    rng = random.Random(cfg.seed)
    if "validation" not in splits:
        n = len(splits["train"])
        k = int(round(cfg.validation_size * n)) if cfg.validation_size < 1 else int(cfg.validation_size)
        if k < 1 or k >= n:
            raise LorafitError("E114", value=cfg.validation_size, rows=n, classes="(NER)")
        val = set(rng.sample(range(n), k))
        splits["validation"] = splits["train"].select(sorted(val))
        splits["train"] = splits["train"].select([i for i in range(n) if i not in val])
        sources["validation"] = f"{sources['train']} (random {cfg.validation_size:g} split)"
    for split, limit in (("train", cfg.max_train_samples), ("validation", cfg.max_eval_samples),
                         ("test", cfg.max_test_samples)):
        if limit and split in splits and len(splits[split]) > limit:
            splits[split] = splits[split].select(sorted(rng.sample(range(len(splits[split])), limit)))


# ---- task detection and unlabelled input --------------------------------------------------------------------------
def detect_ner(cfg: DataConfig) -> bool:
    """NER for CoNLL files, JSONL/tables with tokens + tags, or a Hub dataset with a sequence-of-ClassLabel column."""
    if cfg.format == "conll" or cfg.tag_column:
        return True
    if cfg.train_file:
        p = Path(cfg.train_file)
        if not p.is_file() or p.stat().st_size == 0:
            return False  # the loader reports the missing file
        fmt = cfg.format or sniff_format(p)
        if fmt == "conll":
            return True
        if fmt == "jsonl":
            try:
                with p.open(encoding="utf-8") as fh:
                    first = next((ln for ln in fh if ln.strip()), "")
                obj = json.loads(first) if first.lstrip().startswith("{") else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                return False
            return isinstance(obj, dict) and any(k in obj for k in TOKEN_KEYS) and any(k in obj for k in TAG_KEYS)
        if fmt == "csv" and p.suffix.lower() in (".csv", ".tsv"):
            with p.open(encoding="utf-8", errors="replace") as fh:
                header = fh.readline().replace("\t", ",").strip().split(",")
            return any(k in header for k in TOKEN_KEYS) and any(k in header for k in TAG_KEYS)
        return False
    if cfg.dataset:
        return hub_is_ner(cfg.dataset, cfg.dataset_config)
    return False


def hub_is_ner(name: str, config: str | None) -> bool:
    """Whether the Hub dataset has a column that is a sequence of ClassLabel (read from its metadata)."""
    try:
        import datasets

        features = datasets.load_dataset_builder(name, config).info.features
    except Exception:  # offline or unknown: classification's loader then reports the problem
        return False
    return bool(features) and any(_sequence_classlabel(f) for f in features.values())


def read_unlabelled(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """Input for predict: ('text', [{text}]) for raw text lines, or (fmt, [{tokens} | {text}]) for CoNLL /
    JSONL (objects with 'text' or 'tokens'). One item per input line / sentence / row, in input order."""
    p = _existing(path)
    fmt = sniff_format(p)
    where = f"'{p}'"
    if fmt == "text":
        return "text", [{"text": ln, "line": i} for i, ln in enumerate(_read_lines(p), start=1)]
    if fmt == "conll":
        split = read_conll(p, labelled=False)
        return "conll", [{"tokens": t, "line": ln} for t, ln in zip(split.tokens, split.lines, strict=True)]
    if fmt == "jsonl":
        items = []
        for no, ln in enumerate(_read_lines(p), start=1):
            if not ln.strip():
                continue
            try:
                obj = json.loads(ln)
            except json.JSONDecodeError as err:
                raise LorafitError("E510", where=where, unit="line", line=no,
                                   reason=f"not valid JSON ({err.msg})") from None
            if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                items.append({"text": obj["text"], "line": no, "id": obj.get("id")})
            else:
                toks, _ = _row_tokens_tags(obj, where, "line", no, None, None, labelled=False)
                items.append({"tokens": toks, "line": no, "id": obj.get("id")})
        return "jsonl", items
    split = read_table_ner(p, labelled=False)
    return "csv", [{"tokens": t, "line": ln} for t, ln in zip(split.tokens, split.lines, strict=True)]
