"""Tag schemes (IO, BIO, BIOES) and word-level entity metrics for NER.

A tag is always read through the scheme of its label set, never by its look alone: in IO data such as
Few-NERD, ``person-politician`` is the type, not prefix ``p`` + type ``erson-politician`` (seqeval's reading of
a raw IO tag). Scores are computed on words, never on sub-tokens:

* strict: entity-level micro P/R/F1 with seqeval's strict mode (IOB2, or IOBES for BIOES data). IO tags are first
  converted to BIO with each maximal run of same-type words as one entity, so for IO data strict equals the
  IO-collapsed score.
* IO-collapsed (Few-NERD's convention): prefixes dropped, each maximal run of same-type words is one entity.
* per-type strict P/R/F1, word (token) accuracy, and coarse scores by mapping ``coarse-fine`` types to ``coarse``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

SCHEMES = ("IO", "BIO", "BIOES")
PREFIXED = re.compile(r"^([BIESLU])-(.+)$")
_PREFIX_NORM = {"L": "E", "U": "S"}  # BILOU is BIOES with other letters


# ---- tags --------------------------------------------------------------------------------------------------
def tag_kind(tag: str) -> str:
    """'O', 'prefixed' (B-/I-/E-/S-/L-/U- + type) or 'plain' (an IO type such as person-politician)."""
    if tag == "O":
        return "O"
    return "prefixed" if PREFIXED.match(tag) else "plain"


def scheme_of(tags: Sequence[str]) -> str | None:
    """IO, BIO or BIOES for a set of tags; None when every tag is O. Mixed kinds raise ValueError."""
    kinds = {tag_kind(t) for t in tags} - {"O"}
    if not kinds:
        return None
    if len(kinds) > 1:
        raise ValueError("mixed prefixed and plain tags")
    if kinds == {"plain"}:
        return "IO"
    prefixes = {PREFIXED.match(t).group(1) for t in tags if t != "O"}  # type: ignore[union-attr]
    return "BIOES" if prefixes & {"E", "S", "L", "U"} else "BIO"


def split_tag(tag: str, scheme: str) -> tuple[str, str | None]:
    """(prefix, type) of a tag read in ``scheme``: ('O', None) for O; IO tags are all inside ('I', tag)."""
    if tag == "O":
        return "O", None
    if scheme == "IO":
        return "I", tag
    m = PREFIXED.match(tag)
    if m is None:
        raise ValueError(f"tag {tag!r} has no B-/I-/E-/S- prefix")
    return _PREFIX_NORM.get(m.group(1), m.group(1)), m.group(2)


def label_set(types: Sequence[str], scheme: str) -> list[str]:
    """O, then every type with every prefix of the scheme (types in the given order)."""
    prefixes = {"IO": [""], "BIO": ["B-", "I-"], "BIOES": ["B-", "I-", "E-", "S-"]}[scheme]
    return ["O"] + [p + t for t in types for p in prefixes]


# ---- entities and conversion -----------------------------------------------------------------------------------
def entities(tags: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """(type, start, end) word spans, end exclusive, decoded leniently (as a predictor must):

    IO: maximal runs of one type. BIO: B- starts an entity, I- continues one of its type and otherwise starts
    one. BIOES: as BIO, and E- closes, S- is a one-word entity.
    """
    out: list[tuple[str, int, int]] = []
    cur: list[Any] | None = None  # [type, start]
    for i, tag in enumerate(tags):
        prefix, typ = split_tag(tag, scheme)
        if prefix == "O":
            if cur:
                out.append((cur[0], cur[1], i))
            cur = None
            continue
        starts = prefix in ("B", "S") or cur is None or cur[0] != typ
        if starts:
            if cur:
                out.append((cur[0], cur[1], i))
            cur = [typ, i]
        if prefix in ("E", "S"):
            out.append((cur[0], cur[1], i + 1))  # type: ignore[index]
            cur = None
    if cur:
        out.append((cur[0], cur[1], len(tags)))
    return out


def from_entities(spans: Sequence[tuple[str, int, int]], n: int, scheme: str) -> list[str]:
    tags = ["O"] * n
    for typ, s, e in spans:
        for i in range(s, e):
            if scheme == "IO":
                tags[i] = typ
            elif scheme == "BIO":
                tags[i] = ("B-" if i == s else "I-") + typ
            else:
                tags[i] = ("S-" if e - s == 1 else "B-" if i == s else "E-" if i == e - 1 else "I-") + typ
    return tags


def convert(tags: Sequence[str], source: str, target: str) -> list[str]:
    """Convert one sentence's tags between schemes (IO -> BIO makes each same-type run one entity)."""
    if source == target and source == "IO":
        return list(tags)
    return from_entities(entities(tags, source), len(tags), target)


def to_io(tags: Sequence[str], scheme: str) -> list[str]:
    return [t if t == "O" else split_tag(t, scheme)[1] or "O" for t in tags]  # type: ignore[misc]


def coarse_tag(tag: str, scheme: str) -> str:
    """person-politician -> person (B-person-politician -> B-person); types without '-' stay."""
    prefix, typ = split_tag(tag, scheme)
    if typ is None:
        return "O"
    coarse = typ.split("-", 1)[0] or typ
    return coarse if scheme == "IO" else f"{prefix}-{coarse}"


def has_coarse(types: Sequence[str]) -> bool:
    """Whether types are of the form coarse-fine (Few-NERD: person-politician), so coarse scores exist."""
    return any("-" in t and not t.startswith("-") for t in types)


def inside_map(labels: list[str], scheme: str) -> dict[int, int]:
    """B-X -> I-X (and S-X -> I-X) ids, for labelling continuation sub-tokens with ``label_all_subtokens``."""
    index = {n: i for i, n in enumerate(labels)}
    out = {}
    for i, n in enumerate(labels):
        if scheme != "IO" and n[:2] in ("B-", "S-") and f"I-{n[2:]}" in index:
            out[i] = index[f"I-{n[2:]}"]
    return out


def pipeline_id2label(labels: list[str], scheme: str | None) -> dict[int, str]:
    """id2label for a merged model's config.json, so that transformers' token-classification pipeline names and
    groups entities right: it reads B-/I- prefixes and takes the type after the first '-', which turns an IO type
    like person-politician into 'politician'. IO types are written as I-type (IO is BIO without B-), BIOES's
    S-/E- as B-/I-. lorafit itself reads the real names from the bundle's lorafit.json."""
    out = {}
    for i, name in enumerate(labels):
        prefix, typ = split_tag(name, scheme or "IO")
        out[i] = "O" if typ is None else f"{'B' if prefix in ('B', 'S') else 'I'}-{typ}"
    return out


# ---- metrics ------------------------------------------------------------------------------------------------
NOTE_IO = ("IO tags: converted to BIO with each maximal run of same-type words as one entity, then scored by "
           "seqeval in IOB2 strict mode; for IO data strict therefore equals the IO-collapsed score")


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def _strict(gold: list[list[str]], pred: list[list[str]], scheme: str) -> dict[str, Any]:
    """seqeval strict mode on BIO (IOB2) or BIOES (IOBES) tags; IO is converted to BIO first."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2, IOBES

    if scheme == "IO":
        gold = [convert(s, "IO", "BIO") for s in gold]
        pred = [convert(s, "IO", "BIO") for s in pred]
        scheme = "BIO"
    elif scheme == "BIOES":  # seqeval reads E-/S-; BILOU letters become E-/S- first
        gold = [[_bioes_letters(t) for t in s] for s in gold]
        pred = [[_bioes_letters(t) for t in s] for s in pred]
    rep = classification_report(gold, pred, mode="strict", scheme=IOB2 if scheme == "BIO" else IOBES,
                                output_dict=True, zero_division=0)
    per_type = {}
    for typ, s in rep.items():
        if typ.endswith(" avg"):
            continue
        per_type[typ] = {"precision": float(s["precision"]), "recall": float(s["recall"]),
                         "f1": float(s["f1-score"]), "support": int(s["support"])}
    micro = rep.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    pred_count = Counter(t for sent in pred for t, _, _ in _valid_entities(sent, scheme))
    for typ, s in per_type.items():
        s["predicted"] = int(pred_count.get(typ, 0))
    return {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]), "per_type": dict(sorted(per_type.items()))}


def _bioes_letters(tag: str) -> str:
    m = PREFIXED.match(tag)
    return f"{_PREFIX_NORM[m.group(1)]}-{m.group(2)}" if m and m.group(1) in _PREFIX_NORM else tag


def _valid_entities(tags: list[str], scheme: str) -> list[tuple[str, int, int]]:
    """Entities as strict mode sees them (used only to count predictions per type)."""
    out = []
    for typ, s, e in entities(tags, scheme):
        first = split_tag(tags[s], scheme)[0]
        last = split_tag(tags[e - 1], scheme)[0]
        if scheme == "BIO" and first == "B":
            out.append((typ, s, e))
        elif scheme == "BIOES" and ((first == "B" and last == "E") or (first == "S" and e - s == 1)):
            out.append((typ, s, e))
    return out


def _io_collapsed(gold: list[list[str]], pred: list[list[str]], scheme: str) -> dict[str, Any]:
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        ge = set(entities(to_io(g, scheme), "IO"))
        pe = set(entities(to_io(p, scheme), "IO"))
        tp += len(ge & pe)
        n_gold += len(ge)
        n_pred += len(pe)
    return {**_prf(tp, n_pred, n_gold), "gold_entities": n_gold, "predicted_entities": n_pred}


def ner_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], scheme: str,
                coarse: bool = True) -> dict[str, Any]:
    """Word-level NER metrics: strict and IO-collapsed entity P/R/F1, per type, token accuracy, coarse."""
    gold_l = [list(s) for s in gold]
    pred_l = [list(s) for s in pred]
    if len(gold_l) != len(pred_l) or any(len(a) != len(b) for a, b in zip(gold_l, pred_l, strict=True)):
        raise ValueError("gold and predicted tags must have the same sentences and words")
    words = sum(len(s) for s in gold_l)
    correct = sum(a == b for g, p in zip(gold_l, pred_l, strict=True) for a, b in zip(g, p, strict=True))
    strict = _strict(gold_l, pred_l, scheme)
    io = _io_collapsed(gold_l, pred_l, scheme)
    out: dict[str, Any] = {
        "sentences": len(gold_l), "words": words, "scheme": scheme,
        "precision": strict["precision"], "recall": strict["recall"], "f1": strict["f1"],
        "io_precision": io["precision"], "io_recall": io["recall"], "io_f1": io["f1"],
        "gold_entities": sum(s["support"] for s in strict["per_type"].values()),
        "token_accuracy": correct / words if words else 0.0,
        "strict_mode": f"seqeval mode=strict scheme={'IOBES' if scheme == 'BIOES' else 'IOB2'}",
        "per_type": strict["per_type"],
    }
    if scheme == "IO":
        out["note"] = NOTE_IO
    types = sorted({t for sent in gold_l + pred_l for t in to_io(sent, scheme) if t != "O"})
    if coarse and has_coarse(types):
        cg = [[coarse_tag(t, scheme) for t in s] for s in gold_l]
        cp = [[coarse_tag(t, scheme) for t in s] for s in pred_l]
        c = ner_metrics(cg, cp, scheme, coarse=False)
        out["coarse"] = {k: c[k] for k in ("precision", "recall", "f1", "io_precision", "io_recall", "io_f1",
                                           "token_accuracy", "per_type")}
    return out


def format_ner_metrics(metrics: dict[str, Any], top: int = 20) -> str:
    """A readable summary: strict and IO-collapsed scores, token accuracy, coarse scores, per-type table."""
    m = metrics
    lines = [f"NER, word level, {m['sentences']:,} sentences, {m['words']:,} words, {m.get('gold_entities', 0):,} "
             f"gold entities, scheme {m['scheme']}" + (f" ({m['data']})" if m.get("data") else "")]
    lines.append(f"  strict        P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}   "
                 f"({m['strict_mode']})")
    lines.append(f"  IO-collapsed  P {m['io_precision']:.4f}  R {m['io_recall']:.4f}  F1 {m['io_f1']:.4f}   "
                 "(prefixes dropped, each run of same-type words = one entity: Few-NERD's convention)")
    if m.get("note"):
        lines.append(f"  note: {m['note']}")
    lines.append(f"  token accuracy {m['token_accuracy']:.4f} (words)")
    if m.get("windowed_sentences") is not None:
        lines.append(f"  windowed sentences {m['windowed_sentences']} (longer than max_length; every word scored)")
    c = m.get("coarse")
    if c:
        lines.append(f"  coarse ({len(c['per_type'])} types, coarse-fine -> coarse): strict P {c['precision']:.4f}  "
                     f"R {c['recall']:.4f}  F1 {c['f1']:.4f}  IO-collapsed F1 {c['io_f1']:.4f}")
    per = sorted(m.get("per_type", {}).items(), key=lambda kv: -kv[1]["support"])
    if per:
        lines.append(f"  per type (strict; {min(top, len(per))} of {len(per)} by support):")
        for name, s in per[:top]:
            lines.append(f"    {name:<40} P {s['precision']:.3f}  R {s['recall']:.3f}  F1 {s['f1']:.3f}  "
                         f"n={s['support']}")
    return "\n".join(lines)
