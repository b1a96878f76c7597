"""`lorafit report`: report.md and a self-contained report.html for a run, and Hugging Face model cards.

Both report files are rendered from one list of blocks (headings, paragraphs, tables, images), so they
say the same thing; the HTML embeds every plot as base64 and references nothing outside itself. Model cards
(README.md with YAML front matter) are written into adapter/ at the end of training, into merged/ by
`lorafit merge` and into export folders by `lorafit export`; they read the run folder, so a card written
before metrics.json exists shows the last validation row of history.csv instead.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import yaml

from lorafit.artifacts import MANIFEST, atomic_write_text, read_json, write_json
from lorafit.errors import LorafitError

Block = tuple[Any, ...]  # ("h1"|"h2"|"p"|"code", text) | ("table", header, rows) | ("img", path, caption)
METRIC_ORDER = ("rows", "accuracy", "macro_f1", "weighted_f1", "f1", "precision", "recall", "f1_io", "io_f1",
                "token_accuracy", "loss")
PIPELINE = {"classification": "text-classification", "ner": "token-classification"}
AUTO_CLASS = {"classification": "AutoModelForSequenceClassification", "ner": "AutoModelForTokenClassification"}


# ---- reading a run ----------------------------------------------------------------------------------------
def run_dir_of(folder: Path) -> Path | None:
    """The run folder a bundle belongs to (the folder itself, or its parent for adapter/)."""
    for cand in (folder, folder.parent):
        if (cand / "config.yaml").is_file():
            return cand
    return None


def _json(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def scalar_metrics(m: Any) -> dict[str, float]:
    """The numbers of one split's metrics (no per-class tables), in a stable, readable order."""
    if not isinstance(m, dict):
        return {}
    nums = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ordered = [k for k in METRIC_ORDER if k in nums] + sorted(k for k in nums if k not in METRIC_ORDER)
    return {k: nums[k] for k in ordered}


def last_validation_row(run: Path) -> dict[str, float]:
    from lorafit.plots import read_csv_rows

    rows = read_csv_rows(run / "history.csv")
    if not rows:
        return {}
    out: dict[str, float] = {}
    for k, v in rows[-1].items():
        try:
            out["loss" if k == "eval_loss" else k] = float(v)
        except (TypeError, ValueError):
            continue
    return {k: v for k, v in out.items() if k not in ("train_loss",)}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


# ---- preset reference ---------------------------------------------------------------------------------------
_REF = re.compile(r"(?:(validation|evaluation|eval|test)\s+)?(accuracy|f1)\s*(>=|<=|>|<|~|≈)?\s*(\d+(?:\.\d+)?)",
                  re.IGNORECASE)


def parse_reference(text: str) -> list[dict[str, Any]]:
    """'validation accuracy ~0.89, test accuracy ~0.88' -> [{split, metric, op, value}, ...]."""
    out = []
    for split, metric, op, value in _REF.findall(text):
        x = float(value)
        out.append({"split": "test" if split.lower() == "test" else "validation", "metric": metric.lower(),
                    "op": op or "", "value": x / 100 if x > 1 else x})
    return out


def reference_rows(preset: str | None, metrics: dict[str, Any]) -> tuple[str, list[list[str]]] | None:
    """For a preset run, each reference number beside ours ("ours 0.891 vs reference 0.884")."""
    if not preset:
        return None
    from lorafit.presets import PRESETS

    p = PRESETS.get(preset)
    if p is None:
        return None
    rows = []
    for ref in parse_reference(p.reference):
        m = metrics.get(ref["split"]) or {}
        key = ref["metric"] if ref["metric"] == "accuracy" else ("f1" if "f1" in m else "macro_f1")
        ours = m.get(key)
        ours_text = f"{ours:.4f}" if isinstance(ours, (int, float)) else "not measured"
        rows.append([f"{ref['split']} {key}", ours_text, f"{ref['op']}{ref['value']:g}",
                     f"ours {ours_text} vs reference {ref['op']}{ref['value']:g}"])
    return p.reference, rows


# ---- the report ---------------------------------------------------------------------------------------------
def report_blocks(run: Path) -> list[Block]:
    from lorafit.plots import CAPTIONS, PLOTS

    cfg = _yaml(run / "config.yaml")
    metrics = _json(run / "metrics.json")
    params = _json(run / "params.json")
    stats = _json(run / "data_stats.json")
    task = metrics.get("task") or cfg.get("task") or "classification"
    model = (cfg.get("model") or {}).get("name_or_path", "?")
    labels = metrics.get("labels") or (cfg.get("data") or {}).get("labels") or []
    intro = f"Task {task}, base model `{model}`, {len(labels)} labels"
    intro += f", preset {cfg['preset']}" if cfg.get("preset") else ""
    intro += f", trained in {metrics['seconds']} s" if "seconds" in metrics else ""
    blocks: list[Block] = [("h1", f"lorafit report: {run.resolve().name}"), ("p", intro + ".")]
    splits = [s for s in ("validation", "test") if isinstance(metrics.get(s), dict)]
    if splits:
        keys = list(dict.fromkeys(k for s in splits for k in scalar_metrics(metrics[s])))
        blocks += [("h2", "Results"),
                   ("table", ["split", *keys], [[s, *[_fmt(metrics[s].get(k)) for k in keys]] for s in splits])]
    ref = reference_rows(cfg.get("preset"), metrics)
    if ref:
        text, rows = ref
        blocks += [("h2", f"Preset reference ({cfg['preset']})"), ("p", f"Reference result: {text}")]
        if rows:
            blocks.append(("table", ["metric", "ours", "reference", "comparison"], rows))
        else:
            blocks.append(("p", "The reference is not a number on this dataset, so it is shown for context only."))
    if params:
        blocks += [("h2", "Parameters (exact counts)"),
                   ("table", ["trainable", "total (PEFT's count)", "total deduplicated (deployed model)",
                              "% trainable"],
                    [[_fmt(params.get("trainable")), _fmt(params.get("total")),
                      _fmt(params.get("total_deduplicated")), f"{params.get('percent_trainable', 0):.4f}%"]]),
                   ("p", params.get("convention", ""))]
    if stats.get("splits"):
        rows = []
        for split, s in stats["splits"].items():
            t = s.get("tokens") or {}
            counts = s.get("class_counts") or s.get("entity_counts") or {}
            balance = ", ".join(f"{k} {v}" for k, v in list(counts.items())[:12])
            rows.append([split, _fmt(s.get("rows")), balance, *[_fmt(t.get(k)) for k in ("p50", "p95", "p99", "max")],
                         _fmt(s.get("rows_over_max_length_approx", "")), str(s.get("source", ""))])
        blocks += [("h2", "Data"),
                   ("p", f"max_length {stats.get('max_length')} (suggested from the training p99: "
                         f"{stats.get('suggested_max_length')}, model limit {stats.get('model_limit')})."),
                   ("table", ["split", "rows", "balance", "tokens p50", "p95", "p99", "max", "over max_length",
                              "source"], rows)]
    for split in splits:
        per = metrics[split].get("per_class") or next(
            (metrics[split][k] for k in ("per_type", "per_entity") if isinstance(metrics[split].get(k), dict)), None)
        if per:
            cols = [c for c in ("precision", "recall", "f1", "support") if any(c in v for v in per.values())]
            blocks += [("h2", f"Per-class metrics ({split})"),
                       ("table", ["label", *cols], [[n, *[_fmt(v.get(c)) for c in cols]] for n, v in per.items()])]
    from lorafit.plots import read_csv_rows

    history = read_csv_rows(run / "history.csv")
    if history:
        blocks += [("h2", "Training history (one row per evaluation)"),
                   ("table", list(history[0]), [[_fmt(_float(v)) for v in r.values()] for r in history])]
    if cfg:
        flat = _flatten({k: v for k, v in cfg.items() if k not in ("resolved",)})
        blocks += [("h2", "Configuration (config.yaml, every run-time choice resolved)"),
                   ("table", ["key", "value"], [[k, _fmt(v)] for k, v in flat.items()])]
    images = [(run / "plots" / f"{name}.png", CAPTIONS[name]) for name, *_ in PLOTS]
    images = [(p, c) for p, c in images if p.is_file()]
    if images:
        blocks.append(("h2", "Plots"))
        blocks += [("img", p, c) for p, c in images]
    return blocks


def _float(v: str) -> Any:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return int(x) if x.is_integer() else x


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def render_markdown(blocks: list[Block], base: Path) -> str:
    lines: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            lines += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            lines += [b[1], ""] if b[1] else []
        elif kind == "table":
            header, rows = b[1], b[2]
            cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines.append("| " + " | ".join(map(cell, header)) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
            lines.append("")
        elif kind == "img":
            rel = Path(b[1]).relative_to(base).as_posix()
            lines += [f"![{b[2]}]({rel})", "", f"*{b[2]}* (data: `{rel[:-4]}.json`)", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f3f3f3}figure{margin:1em 0 2em}img{max-width:100%;border:1px solid #eee}
code{background:#f3f3f3;padding:0 .2em}figcaption{color:#555;font-size:.9em}"""


def render_html(blocks: list[Block]) -> str:
    """One self-contained page: inline CSS, images as data: URIs, no scripts, no external references."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(next((b[1] for b in blocks if b[0] == 'h1'), 'lorafit report'))}</title>",
             f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{esc(b[1])}</{kind}>")
        elif kind == "p" and b[1]:
            parts.append("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(b[1])) + "</p>")
        elif kind == "table":
            head = "".join(f"<th>{esc(str(h))}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{esc(b[2])}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{esc(b[2])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dir: str | Path, *, plots: bool = True) -> dict[str, Any]:
    """Plots, report.md, report.html and a refreshed adapter model card; the manifests record the new files."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file() or not (run / "metrics.json").is_file():
        raise LorafitError("E302", path=run, reason="a run folder has config.yaml and metrics.json "
                           "(written when `lorafit train` finishes)")
    written: list[Path] = []
    if plots:
        from lorafit.plots import write_plots

        pngs = write_plots(run)
        written += [f for p in pngs for f in (p, p.with_suffix(".json"))]
    blocks = report_blocks(run)
    atomic_write_text(run / "report.md", render_markdown(blocks, run))
    atomic_write_text(run / "report.html", render_html(blocks))
    written += [run / "report.md", run / "report.html"]
    adapter = run / "adapter"
    if (adapter / MANIFEST).is_file():
        card = write_model_card(adapter, run)
        record_files(adapter, [card])
        written += [card, adapter / MANIFEST]
    record_files(run, written)
    return {"report_md": run / "report.md", "report_html": run / "report.html", "plots": written}


def record_files(folder: Path, files: list[Path]) -> None:
    """Add or refresh the sha256 of just these files in the folder's manifest (other entries stay as they were,
    so `lorafit check` still catches files changed by anything else)."""
    from lorafit.modeling import sha256_file

    manifest = folder / MANIFEST
    if not manifest.is_file():
        return
    data = read_json(manifest)
    entries = data.setdefault("files", {})
    for f in files:
        rel = Path(f).resolve().relative_to(folder.resolve()).as_posix()
        if rel != MANIFEST and Path(f).is_file():
            entries[rel] = sha256_file(f)
    data["files"] = dict(sorted(entries.items()))
    write_json(manifest, data)


# ---- model cards --------------------------------------------------------------------------------------------
def _card_facts(folder: Path, run: Path | None, kind: str | None) -> dict[str, Any]:
    bundle = _json(folder / MANIFEST)
    cfg = _yaml(run / "config.yaml") if run else {}
    kind = kind or bundle.get("kind") or ("adapter" if (folder / "adapter_config.json").is_file() else "merged")
    task = bundle.get("task") or cfg.get("task") or "classification"
    base = (bundle.get("base_model") or {}).get("name_or_path") or (cfg.get("model") or {}).get("name_or_path", "")
    labels = list(bundle.get("labels") or (cfg.get("data") or {}).get("labels") or [])
    metrics = _json(run / "metrics.json") if run else {}
    results = {s: scalar_metrics(metrics[s]) for s in ("validation", "test") if isinstance(metrics.get(s), dict)}
    if not results and run:
        last = last_validation_row(run)
        if last:
            results = {"validation (last evaluation during training)": last}
    return {"kind": kind, "task": task, "base": base, "labels": labels, "cfg": cfg, "results": results,
            "params": (_json(run / "params.json") if run else {}) or bundle.get("parameters") or {},
            "stats": _json(run / "data_stats.json") if run else {}, "bundle": bundle,
            "export": _json(folder / "export_report.json"), "merge": _json(folder / "merge_report.json")}


def card_metadata(f: dict[str, Any], name: str) -> dict[str, Any]:
    """The YAML front matter: base_model, library_name, pipeline_tag, datasets, metrics and model-index."""
    data = f["cfg"].get("data") or {}
    dataset = data.get("dataset")
    library = {"adapter": "peft", "merged": "transformers", "export": "onnx"}.get(f["kind"], "transformers")
    pipeline_tag = PIPELINE.get(f["task"], "text-classification")
    meta: dict[str, Any] = {"base_model": f["base"], "library_name": library, "pipeline_tag": pipeline_tag,
                            "tags": ["lorafit", "lora", pipeline_tag, *(["peft"] if library == "peft" else []),
                                     *(["onnx"] if library == "onnx" else [])]}
    if dataset:
        meta["datasets"] = [dataset]
    names = {"accuracy": ("accuracy", "Accuracy"), "macro_f1": ("f1", "Macro F1"), "f1": ("f1", "F1"),
             "weighted_f1": ("f1", "Weighted F1")}
    meta["metrics"] = sorted({names[k][0] for r in f["results"].values() for k in r if k in names})
    results = []
    for split, r in f["results"].items():
        ms = [{"type": names[k][0], "value": round(float(v), 4), "name": f"{split} {names[k][1]}"}
              for k, v in r.items() if k in names]
        if ms:
            ds_name = dataset or Path(str(data.get("test_file" if split == "test" else "train_file") or "local")).name
            results.append({"task": {"type": pipeline_tag, "name": pipeline_tag.replace("-", " ").title()},
                            "dataset": {"name": ds_name, "type": dataset or "local",
                                        "split": split.split(" ")[0]},
                            "metrics": ms})
    if results:
        meta["model-index"] = [{"name": name, "results": results}]
    return meta


def model_card(folder: str | Path, run_dir: str | Path | None = None, kind: str | None = None,
               location: str | Path | None = None) -> str:
    """The README.md text of a bundle folder (adapter / merged / export) in Hugging Face model-card format.
    ``location`` is the folder's final path when it is being written under a temporary name."""
    folder = Path(folder)
    run = Path(run_dir) if run_dir else run_dir_of(folder)
    f = _card_facts(folder, run, kind)
    cfg, lora, training = f["cfg"], f["cfg"].get("lora") or {}, f["cfg"].get("training") or {}
    name = (run.resolve().name if run else folder.resolve().name) + ("" if f["kind"] == "adapter" else f"-{f['kind']}")
    meta = card_metadata(f, name)
    what = {"adapter": "a LoRA adapter (with its classification head)", "merged": "a merged model (LoRA folded in)",
            "export": "an ONNX export (merged model)"}.get(f["kind"], f["kind"])
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {name}", "",
             f"{what[0].upper() + what[1:]} for **{f['task']}** on top of `{f['base']}`, trained with "
             f"lorafit. Labels ({len(f['labels'])}): {', '.join(map(str, f['labels'][:40]))}"
             f"{' ...' if len(f['labels']) > 40 else ''}.", "", "## How it was trained", ""]
    p = f["params"]
    facts = [("LoRA", f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
                      f"targets {_fmt(lora.get('target_modules'))}" if lora else None),
             ("trained in full", _fmt((cfg.get("resolved") or {}).get("modules_to_save"))),
             ("trainable parameters", f"{p['trainable']:,} of {p.get('total', 0):,} (PEFT's count; "
                                      f"{p.get('total_deduplicated', 0):,} in the deployed model)" if p else None),
             ("epochs / steps", f"{training.get('num_train_epochs')} / {training.get('max_steps') or 'by epochs'}"),
             ("learning rate", training.get("learning_rate")),
             ("batch size", training.get("per_device_train_batch_size")),
             ("precision", cfg.get("precision")), ("max_length", (cfg.get("data") or {}).get("max_length")),
             ("preset", cfg.get("preset"))]
    lines += [f"- **{k}**: {v}" for k, v in facts if v not in (None, "None", "")]
    for split, s in (f["stats"].get("splits") or {}).items():
        lines.append(f"- **{split} data**: {s.get('rows')} rows from {s.get('source', '?')}")
    lines += ["", "The full configuration is the run's `config.yaml`: `lorafit train --config config.yaml` "
              "reproduces the run.", "", "## Results", ""]
    if f["results"]:
        keys = list(dict.fromkeys(k for r in f["results"].values() for k in r))
        lines += ["| split | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {s} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for s, r in f["results"].items()]
    else:
        lines.append("No metrics were found beside this folder.")
    if f["merge"]:
        lines += ["", f"Merge proof: max |logit difference| {f['merge'].get('max_abs_logit_delta'):.3g} against the "
                      f"adapter model on {f['merge'].get('inputs')} inputs (tolerance {f['merge'].get('tolerance')})."]
    if f["export"]:
        lines += ["", "Export measurements (`export_report.json`):", "", *export_summary_lines(f["export"])]
    lines += ["", "## How to use it", "", *_usage(Path(location or folder), f), ""]
    return "\n".join(lines)


def export_summary_lines(rep: dict[str, Any]) -> list[str]:
    lines = []
    for variant, v in (rep.get("variants") or {}).items():
        bits = [f"{v['size_bytes'] / 1e6:.2f} MB" if v.get("size_bytes") else None]
        if v.get("max_abs_logit_delta") is not None:
            bits.append(f"max |Δlogit| {v['max_abs_logit_delta']:.3g}")
        ev = v.get("eval") or {}
        if ev.get("accuracy") is not None:
            bits.append(f"accuracy {ev['accuracy']:.4f}")
        if ev.get("f1") is not None:
            bits.append(f"F1 {ev['f1']:.4f}")
        if ev.get("argmax_agreement") is not None:
            bits.append(f"argmax agreement with PyTorch {ev['argmax_agreement']:.2%}")
        lat = v.get("latency") or {}
        if lat.get("p50_ms") is not None:
            bits.append(f"batch-1 latency p50 {lat['p50_ms']:.1f} ms / p95 {lat['p95_ms']:.1f} ms, batch-32 "
                        f"{lat['throughput_rows_per_s']:.1f} rows/s")
        lines.append(f"- **{variant}**: " + ", ".join(b for b in bits if b))
    return lines


def _usage(folder: Path, f: dict[str, Any]) -> list[str]:
    path, task, auto = str(folder.resolve()), f["task"], AUTO_CLASS.get(f["task"], AUTO_CLASS["classification"])
    labels = repr(dict(enumerate(map(str, f["labels"]))))
    pipe = PIPELINE.get(task, "text-classification")
    extra = ', aggregation_strategy="first"' if task == "ner" else ""
    if f["kind"] == "adapter":
        body = ["With Transformers and PEFT:", "", "```python",
                "from peft import PeftModel", f"from transformers import AutoTokenizer, {auto}, pipeline", "",
                f'path = "{path}"  # this folder', f'base = "{f["base"]}"',
                f"id2label = {labels}",
                f"model = {auto}.from_pretrained(base, num_labels=len(id2label), id2label=id2label,",
                "    label2id={v: k for k, v in id2label.items()})",
                "model = PeftModel.from_pretrained(model, path).merge_and_unload().eval()",
                "tokenizer = AutoTokenizer.from_pretrained(path)",
                f'classify = pipeline("{pipe}", model=model, tokenizer=tokenizer{extra})', "```", "",
                "With lorafit (checks the base model's fingerprint and the files' hashes first):", "", "```python",
                "import lorafit", "", f'predictor = lorafit.load("{path}")', 'print(predictor.predict(["some text"]))',
                "```"]
    elif f["kind"] == "merged":
        body = ["With Transformers (no PEFT needed):", "", "```python",
                "from transformers import pipeline", "", f'path = "{path}"  # this folder',
                f'classify = pipeline("{pipe}", model=path{extra})', 'print(classify("some text"))', "```"]
    else:
        default = (f["bundle"].get("onnx") or {}).get("default", "model.onnx")
        body = ["With ONNX Runtime (inputs as the tokenizer in this folder makes them; output `logits`):", "",
                "```python", "import onnxruntime as ort", "from transformers import AutoTokenizer", "",
                f'path = "{path}"  # this folder', "tokenizer = AutoTokenizer.from_pretrained(path)",
                f'session = ort.InferenceSession(path + "/{default}")',
                "names = [i.name for i in session.get_inputs()]",
                f'enc = tokenizer(["some text"], return_tensors="np", truncation=True, max_length='
                f'{f["bundle"].get("max_length", 512)})',
                'logits = session.run(["logits"], {n: enc[n] for n in names})[0]', "```", "",
                "With lorafit (same tokenisation, batching and label mapping as the PyTorch model):", "",
                "```bash", f'lorafit predict "{path}" --text "some text"', f'lorafit serve "{path}" --backend onnx',
                "```"]
    return body


def write_model_card(folder: str | Path, run_dir: str | Path | None = None, kind: str | None = None,
                     location: str | Path | None = None) -> Path:
    """Write folder/README.md (replacing PEFT's template for adapters); returns its path."""
    folder = Path(folder)
    path = folder / "README.md"
    atomic_write_text(path, model_card(folder, run_dir, kind, location))
    return path
