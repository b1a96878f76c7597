"""Named-entity recognition: token classification with LoRA, scored and predicted at word level.

Words come from the data (or from :func:`pretokenize` for raw text). Each word's label sits on its first
sub-token (-100 on the rest, or on every sub-token with ``data.label_all_subtokens``). Sentences longer than
max_length are split at word boundaries into overlapping windows; each word takes its prediction from the window
in which it lies farthest from a cut edge, so no word is ever dropped. Training writes the same run folder as
classification (training.py) and prediction goes through the one :class:`lorafit.inference.Predictor`.
"""

from __future__ import annotations

import copy
import json
import time
import weakref
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lorafit.artifacts import atomic_write_text, read_json, write_csv, write_json, write_manifest
from lorafit.errors import LorafitError, logger, warn
from lorafit.ner_data import (
    PRETOKENIZER,
    NerSplit,
    check_scheme,
    convert_split,
    detect_ner,
    load_ner,
    pretokenize,
    read_ner_file,
    read_unlabelled,
    require_entities,
    tag_line,
)
from lorafit.ner_metrics import (
    entities,
    format_ner_metrics,
    has_coarse,
    inside_map,
    ner_metrics,
    pipeline_id2label,
    split_tag,
)

if TYPE_CHECKING:
    from lorafit.config import Config
    from lorafit.inference import Predictor
    from lorafit.training import Run

__all__ = ["PRETOKENIZER", "check_word_alignment", "detect_ner", "encode", "evaluate_ner_file", "format_ner_metrics",
           "inside_map", "pipeline_id2label", "predict_entities", "predict_ner_file", "predict_tags", "pretokenize",
           "token_logits", "train_ner", "word_logits"]

PROBE = ["Jesus", "Jones", "signed", "with", "Koch", "Records", "in", "1997", "'s", "U.S.", "tour", "."]
CONLL_OUT = {".conll", ".txt", ".tsv", ".bio", ".iob", ".iob2"}
_CHECKED: weakref.WeakSet[Any] = weakref.WeakSet()


# ---- tokenizer check ----------------------------------------------------------------------------------------------
def check_word_alignment(tokenizer: Any, path: str | Path) -> None:
    """Pre-split words must tokenize exactly like the same words joined by spaces: the check that catches a
    RoBERTa tokenizer loaded without add_prefix_space=True (which otherwise gives no error, only bad labels)."""
    if not getattr(tokenizer, "is_fast", False):
        raise LorafitError("E511", path=path)
    split = tokenizer(PROBE, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    joined = tokenizer(" ".join(PROBE), add_special_tokens=False)["input_ids"]
    if split != joined:
        pos = next((i for i, (a, b) in enumerate(zip(split, joined, strict=False)) if a != b), min(len(split),
                                                                                                  len(joined)))
        detail = (f"{' '.join(PROBE[:4])!r}: ids {split[:6]} from the words vs {joined[:6]} from the sentence, "
                  f"first difference at sub-token {pos}")
        raise LorafitError("E507", path=path, detail=detail)


def _check_predictor(predictor: Predictor) -> None:
    if predictor not in _CHECKED:
        check_word_alignment(predictor.tokenizer, predictor.bundle.get("base_model", {}).get("name_or_path", "?"))
        _CHECKED.add(predictor)


# ---- alignment and windows ----------------------------------------------------------------------------------------
@dataclass
class Window:
    sentence: int
    input_ids: list[int]
    word_ids: list[int | None]  # absolute word index per position; None for special tokens
    labels: list[int] | None = None


@dataclass
class Encoding:
    windows: list[Window]
    choice: list[list[tuple[int, int]]]  # per sentence, per word: (window index, position of its first sub-token)
    windowed: int  # sentences longer than max_length, split into windows
    stride: int


def default_stride(max_length: int, n_special: int) -> int:
    return max(1, (max_length - n_special) // 4)


def plan_windows(counts: list[int], capacity: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [a, b) of at most ``capacity`` sub-tokens, consecutive ranges sharing up to ``stride`` sub-tokens
    (whole words). A single word longer than the capacity gets a window of its own (truncated)."""
    n = len(counts)
    spans: list[tuple[int, int]] = []
    a = 0
    while True:
        b, used = a, 0
        while b < n and (used + counts[b] <= capacity or b == a):
            used += counts[b]
            b += 1
        spans.append((a, b))
        if b >= n:
            return spans
        nxt, back = b, 0
        while nxt - 1 > a and back + counts[nxt - 1] <= stride:
            nxt -= 1
            back += counts[nxt]
        a = nxt


def _fill_empty_words(tokenizer: Any, words: list[str], wids: list[int | None]) -> list[str] | None:
    """Words that tokenize to nothing (e.g. a lone control character) are replaced by the unknown token so that
    every word keeps a first sub-token and a prediction."""
    seen = {w for w in wids if w is not None}
    if len(seen) == len(words):
        return None
    unk = tokenizer.unk_token or "?"
    return [w if i in seen else unk for i, w in enumerate(words)]


def encode(tokenizer: Any, sentences: list[list[str]], max_length: int, *, stride: int | None = None,
           tag_ids: list[list[int]] | None = None, label_all: bool = False,
           inside: dict[int, int] | None = None) -> Encoding:
    """Tokenize pre-split sentences into windows of at most ``max_length`` tokens, with word labels on the first
    sub-token of each word (-100 elsewhere, or the word's inside label on every sub-token with ``label_all``)."""
    n_special = tokenizer.num_special_tokens_to_add(pair=False)
    capacity = max_length - n_special
    stride = min(stride if stride is not None else default_stride(max_length, n_special), capacity // 2)
    windows: list[Window] = []
    choice: list[list[tuple[int, int]]] = []
    windowed = 0
    for c0 in range(0, len(sentences), 1000):
        chunk = [list(s) for s in sentences[c0 : c0 + 1000]]
        enc = tokenizer(chunk, is_split_into_words=True, truncation=False)
        for j, words in enumerate(chunk):
            s = c0 + j
            ids, wids = enc["input_ids"][j], enc.word_ids(j)
            fixed = _fill_empty_words(tokenizer, words, wids)
            if fixed is not None:
                words = fixed
                one = tokenizer([words], is_split_into_words=True, truncation=False)
                ids, wids = one["input_ids"][0], one.word_ids(0)
            if len(ids) <= max_length:
                parts = [(0, len(words), ids, list(wids))]
            else:
                windowed += 1
                counts = Counter(w for w in wids if w is not None)
                spans = plan_windows([counts[i] for i in range(len(words))], capacity, stride)
                sub = tokenizer([words[a:b] for a, b in spans], is_split_into_words=True, truncation=True,
                                max_length=max_length)
                parts = [(a, b, sub["input_ids"][k], [None if w is None else w + a for w in sub.word_ids(k)])
                         for k, (a, b) in enumerate(spans)]
            best: list[tuple[float, int, int]] = [(-1.0, -1, -1)] * len(words)
            for a, b, w_ids, w_wids in parts:
                k = len(windows)
                content = [p for p, w in enumerate(w_wids) if w is not None]
                c0_pos, c = (content[0], len(content)) if content else (0, 0)
                labels = [-100] * len(w_ids) if tag_ids is not None else None
                for p, w in enumerate(w_wids):
                    if w is None:
                        continue
                    first = p == 0 or w_wids[p - 1] != w
                    if labels is not None:
                        lab = tag_ids[s][w]  # type: ignore[index]
                        labels[p] = lab if first else (inside or {}).get(lab, lab) if label_all else -100
                    if first:
                        q = p - c0_pos
                        dist = min(q if a > 0 else float("inf"), c - 1 - q if b < len(words) else float("inf"))
                        if dist > best[w][0]:
                            best[w] = (dist, k, p)
                windows.append(Window(s, list(w_ids), w_wids, labels))
            choice.append([(k, p) for _, k, p in best])
    return Encoding(windows, choice, windowed, stride)


def _features(tokenizer: Any, w: Window) -> dict[str, Any]:
    f: dict[str, Any] = {"input_ids": w.input_ids, "attention_mask": [1] * len(w.input_ids)}
    if "token_type_ids" in tokenizer.model_input_names:
        f["token_type_ids"] = [0] * len(w.input_ids)
    return f


# ---- prediction through the Predictor -------------------------------------------------------------------------------
def _window_logits(predictor: Predictor, windows: list[Window], batch_size: int) -> list[np.ndarray]:
    """Logits [len, labels] per window; windows run length-sorted, results come back in window order."""
    import torch

    model, tok = predictor.model, predictor.tokenizer
    out: list[np.ndarray] = [np.zeros((0, len(predictor.labels)), np.float32)] * len(windows)
    order = np.argsort([len(w.input_ids) for w in windows], kind="stable")
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if predictor.precision == "bf16" else nullcontext()
    with torch.inference_mode(), autocast:
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            batch = tok.pad([_features(tok, windows[i]) for i in idx], return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
            for row, i in enumerate(idx):
                out[i] = logits[row, : len(windows[i].input_ids)]
    return out


def word_logits(predictor: Predictor, sentences: list[list[str]], batch_size: int = 64) -> tuple[list[np.ndarray], int]:
    """Per sentence, logits [words, labels] taken at each word's first sub-token in its best window; and the
    number of windowed sentences."""
    _check_predictor(predictor)
    stride = (predictor.bundle.get("ner") or {}).get("stride")
    result: list[np.ndarray] = []
    windowed = 0
    k = len(predictor.labels)
    for c0 in range(0, len(sentences), 2048):
        chunk = sentences[c0 : c0 + 2048]
        nonempty = [i for i, s in enumerate(chunk) if s]
        enc = encode(predictor.tokenizer, [chunk[i] for i in nonempty], predictor.max_length, stride=stride)
        logits = _window_logits(predictor, enc.windows, batch_size)
        windowed += enc.windowed
        per = [np.zeros((0, k), np.float32) for _ in chunk]
        for j, i in enumerate(nonempty):
            per[i] = np.stack([logits[w][p] for w, p in enc.choice[j]])
        result.extend(per)
    return result, windowed


def predict_tags(predictor: Predictor, sentences: list[list[str]], batch_size: int = 64
                 ) -> tuple[list[list[str]], list[list[float]], int]:
    """Word tags, the probability of each predicted tag, and the number of windowed sentences."""
    from lorafit.metrics import softmax

    logits, windowed = word_logits(predictor, sentences, batch_size)
    tags, scores = [], []
    for arr in logits:
        probs = softmax(arr) if len(arr) else arr
        ids = probs.argmax(-1) if len(arr) else np.zeros(0, int)
        tags.append([predictor.labels[int(i)] for i in ids])
        scores.append([float(probs[r, i]) for r, i in enumerate(ids)])
    return tags, scores, windowed


def token_logits(predictor: Predictor, sentences: list[list[str]], batch_size: int = 64) -> np.ndarray:
    """Every sub-token's logits over all windows of the sentences, concatenated: the merge proof compares these."""
    _check_predictor(predictor)
    stride = (predictor.bundle.get("ner") or {}).get("stride")
    enc = encode(predictor.tokenizer, [list(s) for s in sentences if s], predictor.max_length, stride=stride)
    out = _window_logits(predictor, enc.windows, batch_size)
    return np.concatenate(out, axis=0) if out else np.zeros((0, len(predictor.labels)), np.float32)


def _entities_out(tags: list[str], scores: list[float], words: list[tuple[str, int, int]], text: str,
                  scheme: str) -> list[dict[str, Any]]:
    out = []
    for typ, s, e in entities(tags, scheme):
        start, end = words[s][1], words[e - 1][2]
        out.append({"type": typ, "text": text[start:end], "start": start, "end": end, "word_start": s,
                    "word_end": e, "score": round(float(np.mean(scores[s:e])), 4)})
    return out


def _joined(tokens: list[str]) -> tuple[str, list[tuple[str, int, int]]]:
    """Pre-split tokens as one space-joined text with each token's offsets into it."""
    words, pos = [], 0
    for t in tokens:
        words.append((t, pos, pos + len(t)))
        pos += len(t) + 1
    return " ".join(tokens), words


def predict_entities(predictor: Predictor, texts: list[str], batch_size: int = 64) -> list[list[dict[str, Any]]]:
    """Entities in raw texts: type, text, character start/end into the original string, word span, score."""
    words = [pretokenize(t) for t in texts]
    tags, scores, _ = predict_tags(predictor, [[w for w, _, _ in ws] for ws in words], batch_size)
    scheme = predictor.bundle.get("scheme") or "IO"
    return [_entities_out(t, s, w, text, scheme) for t, s, w, text in zip(tags, scores, words, texts, strict=True)]


def predict_ner_file(predictor: Predictor, input_file: str | Path, out_path: str | Path, batch_size: int = 64) -> int:
    """Predict raw text lines (.txt), JSONL (text or tokens) or CoNLL; write JSONL (one row per input item),
    CoNLL (token<TAB>tag) or CSV (one row per entity) by the output's extension. Returns the rows written."""
    _, items = read_unlabelled(input_file)
    for it in items:
        if "text" in it:
            it["words"] = pretokenize(it["text"])
        else:
            it["text"], it["words"] = _joined(it["tokens"])
    tags, scores, _ = predict_tags(predictor, [[w for w, _, _ in it["words"]] for it in items], batch_size)
    scheme = predictor.bundle.get("scheme") or "IO"
    out = Path(out_path)
    ext = out.suffix.lower()
    rows: list[Any] = []
    for it, t, s in zip(items, tags, scores, strict=True):
        ents = _entities_out(t, s, it["words"], it["text"], scheme)
        row = {"line": it["line"], **({"id": it["id"]} if it.get("id") is not None else {}), "text": it["text"],
               "tokens": [w for w, _, _ in it["words"]], "tags": t, "entities": ents}
        rows.append(row)
    if ext == ".jsonl":
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return len(rows)
    if ext in CONLL_OUT:
        blocks = ["".join(f"{w}\t{g}\n" for w, g in zip(r["tokens"], r["tags"], strict=True)) for r in rows
                  if r["tokens"]]
        atomic_write_text(out, "\n".join(blocks))
        return len(blocks)
    table = [[r["line"], e["type"], e["text"], e["start"], e["end"], e["word_start"], e["word_end"], e["score"]]
             for r in rows for e in r["entities"]]
    write_csv(out, ["line", "type", "text", "start", "end", "word_start", "word_end", "score"], table)
    return len(table)


# ---- evaluation -------------------------------------------------------------------------------------------------
def align_to_model(split: NerSplit, labels: list[str], scheme: str) -> None:
    """Bring a labelled split into the model's scheme and check every tag is one of the model's labels."""
    require_entities(split)
    source = check_scheme(split)
    if source != scheme or scheme != "IO":
        convert_split(split, source or scheme, scheme)
    known = set(labels)
    hit = tag_line(split, lambda t: t not in known)
    if hit:
        shown = ", ".join(labels[:12]) + (f", ... ({len(labels)} in all)" if len(labels) > 12 else "")
        raise LorafitError("E502", tag=hit[0], where=split.where, unit=split.unit, line=hit[1], known=shown)


def evaluate_sentences(predictor: Predictor, tokens: list[list[str]], gold: list[list[str]], batch_size: int = 64
                       ) -> tuple[dict[str, Any], list[list[str]], list[list[float]]]:
    pred, scores, windowed = predict_tags(predictor, tokens, batch_size)
    m = ner_metrics(gold, pred, predictor.bundle.get("scheme") or "IO")
    m["windowed_sentences"] = windowed
    return m, pred, scores


def evaluate_ner_file(predictor: Predictor, data_file: str | Path, output: str | Path | None = None,
                      batch_size: int = 64) -> dict[str, Any]:
    """Word-level metrics of a labelled CoNLL / JSONL / table file (tags converted to the model's scheme)."""
    ner = predictor.bundle.get("ner") or {}
    split = read_ner_file(data_file, ner.get("format"), tag_column=ner.get("tag_column"), names=predictor.labels)
    align_to_model(split, predictor.labels, predictor.bundle.get("scheme") or "IO")
    metrics, _, _ = evaluate_sentences(predictor, split.tokens, split.tags, batch_size)
    metrics.update(data=str(data_file), inference_precision=predictor.precision)
    if output:
        write_json(output, metrics)
    return metrics


# ---- training -----------------------------------------------------------------------------------------------------
def subtoken_lengths(tokenizer: Any, sentences: list[list[str]]) -> list[int]:
    out: list[int] = []
    for c0 in range(0, len(sentences), 1000):
        enc = tokenizer(sentences[c0 : c0 + 1000], is_split_into_words=True, truncation=False)
        out.extend(len(x) for x in enc["input_ids"])
    return out


def _dataset(tokenizer: Any, enc: Encoding, order: list[int] | None = None) -> Any:
    from datasets import Dataset

    idx = order if order is not None else range(len(enc.windows))
    rows = [{**_features(tokenizer, enc.windows[k]), "labels": enc.windows[k].labels,
             "length": len(enc.windows[k].input_ids)} for k in idx]
    return Dataset.from_list(rows)


def _trainer_metrics(enc: Encoding, order: list[int], gold: list[list[str]], labels: list[str], scheme: str) -> Any:
    """compute_metrics for the Trainer: argmax ids arrive in dataset order (sequential eval sampler), so each word is
    read at its first sub-token in its best window, exactly as prediction does."""
    row_of = {k: r for r, k in enumerate(order)}

    def compute(eval_pred: Any) -> dict[str, float]:
        preds = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        pred = [[labels[int(preds[row_of[k], p])] for k, p in words] for words in enc.choice]
        m = ner_metrics(gold, pred, scheme, coarse=False)
        return {k: m[k] for k in ("precision", "recall", "f1", "io_f1", "token_accuracy")}

    return compute


def _stats(nd: Any, lengths: dict[str, list[int]], max_length: int, suggested: int, limit: int, stride: int,
           label_all: bool) -> dict[str, Any]:
    from lorafit.data import length_summary

    out: dict[str, Any] = {
        "max_length": max_length, "suggested_max_length": suggested, "model_limit": limit, "labels": nd.labels,
        "scheme": nd.scheme, "source_scheme": nd.source_scheme, "converted_tags": nd.repaired, "stride": stride,
        "label_all_subtokens": label_all, "tag_column": nd.tag_column, "pretokenizer": PRETOKENIZER, "splits": {},
    }
    for split, d in nd.splits.items():
        counts = Counter(t for sent in d.tags for t, _, _ in entities(sent, nd.scheme))
        over = sum(n > max_length for n in lengths[split])
        out["splits"][split] = {
            "rows": len(d), "words": sum(len(s) for s in d.tokens), "source": nd.sources.get(split, d.where),
            "entities": sum(counts.values()), "entity_counts": dict(counts.most_common()),
            "tokens": length_summary(lengths[split]), "windowed_sentences": over, "rows_over_max_length_approx": over,
        }
    return out


def train_ner(config: Config, *, resume: bool | str = False, quiet: bool = False, allow_pickle: bool = False) -> Run:
    """Train a LoRA token classifier and write the run folder (same layout and steps as classification)."""
    from lorafit import data as data_mod
    from lorafit import modeling, training
    from lorafit.artifacts import prepare_output_dir
    from lorafit.inference import Predictor
    from lorafit.trainer_utils import build_trainer, run_training

    t0 = time.time()
    cfg = copy.deepcopy(config)
    cfg.task = "ner"
    out = Path(cfg.output.dir or training.default_output_dir())
    if training.is_main_process() and not resume and out.is_dir() and any(out.iterdir()) and not cfg.output.overwrite:
        raise LorafitError("E301", path=out)  # fail before any slow work
    precision, precision_why = training.resolve_precision(cfg.precision)
    nd = load_ner(cfg.data)  # data problems are the common ones: report them before loading any model
    model_path = modeling.resolve_model(cfg.model.name_or_path, cfg.model.revision)
    base_config = modeling.load_config(model_path, cfg.model.revision)
    tokenizer = modeling.load_tokenizer(model_path, "ner", cfg.model.revision)
    check_word_alignment(tokenizer, model_path)
    limit = modeling.model_limit(base_config, tokenizer)
    lengths = {s: subtoken_lengths(tokenizer, d.tokens) for s, d in nd.splits.items()}
    if cfg.data.min_tokens or cfg.data.max_tokens:
        lo, hi = cfg.data.min_tokens or 0, cfg.data.max_tokens or 10**9
        keep = [i for i, n in enumerate(lengths["train"]) if lo <= n <= hi]
        if not keep:
            raise LorafitError("E117", min=lo, max=cfg.data.max_tokens)
        if len(keep) < len(lengths["train"]):
            warn("W004", removed=len(lengths["train"]) - len(keep), rows=len(lengths["train"]), min=lo,
                 max=cfg.data.max_tokens or "inf")
            nd.splits["train"] = nd.splits["train"].select(keep)
            lengths["train"] = [lengths["train"][i] for i in keep]
    suggested = data_mod.suggest_max_length(data_mod.length_summary(lengths["train"])["p99"], limit)
    max_length = cfg.data.max_length or suggested
    if max_length > limit:
        raise LorafitError("E205", value=max_length, limit=limit)
    n_special = tokenizer.num_special_tokens_to_add(pair=False)
    stride = min(cfg.data.stride or default_stride(max_length, n_special), (max_length - n_special) // 2)
    labels, scheme = nd.labels, nd.scheme
    label2id = {n: i for i, n in enumerate(labels)}
    tag_ids = {s: [[label2id[t] for t in sent] for sent in d.tags] for s, d in nd.splits.items()}
    class_weights = training._class_weights(cfg.data.class_weights, [i for s in tag_ids["train"] for i in s], labels)

    cfg.data.labels = list(labels)
    cfg.data.scheme = scheme.lower()  # type: ignore[assignment]
    cfg.data.max_length = max_length
    cfg.data.stride = stride
    cfg.data.tag_column = nd.tag_column
    training.resolve_run(cfg, precision, model_path)
    training.seed_everything(int(cfg.training.get("seed", cfg.data.seed)))  # the new head and LoRA init are random
    base, new_modules = modeling.load_base(model_path, "ner", dict(enumerate(labels)), cfg.model.revision)
    modeling.report_new_modules(new_modules)
    lcfg = modeling.lora_config(base, cfg.lora, "ner", new_modules)
    if cfg.lora.target_modules is None:
        cfg.lora.target_modules = sorted(lcfg.target_modules)
    targs = training._training_args(cfg, out, precision)

    main = training.is_main_process()  # under torchrun / accelerate only rank 0 writes
    if main:
        out = prepare_output_dir(out, cfg.output.overwrite) if not resume else out
        out.mkdir(parents=True, exist_ok=True)
    training.wait_for_everyone()
    model = modeling.wrap(base, lcfg)
    cfg.parallel_parts = training.resolve_parallel_parts(cfg.parallel_parts, model, targs, cfg.fast_dropout)
    counts = modeling.count_parameters(model)
    stats = _stats(nd, lengths, max_length, suggested, limit, stride, cfg.data.label_all_subtokens)
    cfg.resolved = training.run_facts(precision_why, suggested, limit, new_modules, lcfg, model, labels, nd.sources)
    cfg.resolved.update({
        "scheme": scheme, "source_scheme": nd.source_scheme, "pretokenizer": PRETOKENIZER,
        "windowed_sentences": {s: v["windowed_sentences"] for s, v in stats["splits"].items()},
    })
    params = training.params_record(counts)
    if main:
        atomic_write_text(out / "config.yaml", cfg.to_yaml())
        write_json(out / "data_stats.json", stats)
        write_json(out / "params.json", params)
        for split, s in stats["splits"].items():
            if n := s["windowed_sentences"]:
                warn("W501", count=n, rows=s["rows"], split=split, max_length=max_length, stride=stride)
        if not quiet:
            _print_summary(cfg, stats, params, precision, precision_why)

    inside = inside_map(labels, scheme)
    enc = {s: encode(tokenizer, nd.splits[s].tokens, max_length, stride=stride, tag_ids=tag_ids[s],
                     label_all=cfg.data.label_all_subtokens, inside=inside) for s in ("train", "validation")}
    val_order = sorted(range(len(enc["validation"].windows)), key=lambda k: len(enc["validation"].windows[k].input_ids))
    trainer = build_trainer(model, targs, tokenizer, _dataset(tokenizer, enc["train"]),
                            _dataset(tokenizer, enc["validation"], val_order), class_weights, cfg, out, ner=True,
                            compute_metrics=_trainer_metrics(enc["validation"], val_order,
                                                             nd.splits["validation"].tags, labels, scheme))
    _sequential_eval(trainer)
    score_precision = run_training(trainer, out, resume, cfg, allow_pickle=allow_pickle)
    if not main:  # the other ranks are done: rank 0 saves and scores once, on every sentence
        return training.Run(out, cfg, {}, params, time.time() - t0)

    adapter = out / "adapter"
    model.save_pretrained(adapter, safe_serialization=True)
    tokenizer.save_pretrained(adapter)
    _model_card(adapter, out)
    meta = training._bundle_meta("adapter", cfg, base_config, model_path, lcfg, tokenizer, counts,
                                 modeling.saved_modules(model))
    meta["scheme"] = scheme
    meta["pretokenizer"] = PRETOKENIZER
    meta["ner"] = {"stride": stride, "label_all_subtokens": cfg.data.label_all_subtokens,
                   "tag_column": nd.tag_column, "source_scheme": nd.source_scheme,
                   "coarse": has_coarse([split_tag(n, scheme)[1] or "" for n in labels if n != "O"])}
    write_manifest(adapter, meta)

    predictor = Predictor(model, tokenizer, read_json(adapter / "lorafit.json"), precision=score_precision)
    metrics: dict[str, Any] = {"task": "ner", "labels": list(labels), "scheme": scheme}
    eval_bs = int(targs.per_device_eval_batch_size)
    for split in ("validation", "test"):
        if split not in nd.splits:
            continue
        d = nd.splits[split]
        m, pred, scores = evaluate_sentences(predictor, d.tokens, d.tags, eval_bs)
        metrics[split] = m
        if split == "test" and cfg.output.save_predictions:
            lines = [json.dumps({"row_id": rid, "line": ln, "tokens": t, "gold": g, "predicted": p,
                                 "scores": [round(x, 4) for x in sc]}, ensure_ascii=False) + "\n"
                     for rid, ln, t, g, p, sc in zip(d.row_ids, d.lines, d.tokens, d.tags, pred, scores, strict=True)]
            atomic_write_text(out / "predictions.jsonl", "".join(lines))
    write_json(out / "samples.json", {"tokens": nd.splits["validation"].tokens[:64]})
    metrics["seconds"] = round(time.time() - t0, 1)
    write_json(out / "metrics.json", metrics)
    _model_card(adapter, out)  # now with the test metrics
    write_manifest(adapter, meta)
    _plots(out)
    write_manifest(out, {"kind": "run", "task": "ner", "preset": cfg.preset})
    if not quiet:
        _print_result(out, metrics)
    return training.Run(out, cfg, metrics, params, time.time() - t0)


def _sequential_eval(trainer: Any) -> None:
    """Keep only the argmax of the logits (the evaluation never needs the [windows, tokens, labels] array); the
    Trainer evaluates in dataset order (trainer_utils), which is what maps sub-token predictions back to words."""
    trainer.preprocess_logits_for_metrics = lambda logits, labels: (
        logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


def _model_card(adapter: Path, out: Path) -> None:
    try:
        from lorafit.reports import write_model_card
    except ImportError:  # reports arrive with their own issue
        return
    write_model_card(adapter, out)


def _plots(out: Path) -> None:
    try:  # plots are a convenience: a missing matplotlib or a plotting bug must not fail a finished run
        from lorafit.plots import write_plots

        write_plots(out)
    except Exception as err:
        warn("W601", reason=f"{type(err).__name__}: {err}")


def _print_summary(cfg: Config, stats: dict[str, Any], params: dict[str, Any], precision: str, why: str) -> None:
    import os

    say = logger.info if os.environ.get("LORAFIT_QUIET") else print
    say(f"lorafit: task ner, base {cfg.model.name_or_path}, {len(stats['labels'])} labels, scheme {stats['scheme']}"
        + (f" (converted from {stats['source_scheme']})" if stats["scheme"] != stats["source_scheme"] else ""))
    for split, s in stats["splits"].items():
        t = s["tokens"]
        say(f"  {split:<10} {s['rows']:>7} sentences | {s['entities']} entities of {len(s['entity_counts'])} types | "
            f"sub-tokens p50 {t['p50']} p99 {t['p99']} max {t['max']} | windowed {s['windowed_sentences']}")
    say(f"  max_length {stats['max_length']} (suggested p99: {stats['suggested_max_length']}, model limit "
        f"{stats['model_limit']}), window stride {stats['stride']}")
    say(f"  trainable {params['trainable']:,} of {params['total']:,} ({params['percent_trainable']:.3f}%)")
    say(f"  precision {precision} ({why})")


def _print_result(out: Path, metrics: dict[str, Any]) -> None:
    for split in ("validation", "test"):
        m = metrics.get(split)
        if m:
            coarse = f", coarse F1 {m['coarse']['f1']:.4f}" if m.get("coarse") else ""
            print(f"  {split}: strict P {m['precision']:.4f} R {m['recall']:.4f} F1 {m['f1']:.4f}, IO-collapsed F1 "
                  f"{m['io_f1']:.4f}, token accuracy {m['token_accuracy']:.4f}{coarse} ({m['sentences']} sentences, "
                  f"{m['windowed_sentences']} windowed)")
    print(f"  run folder: {out}  ({metrics['seconds']} s)")
