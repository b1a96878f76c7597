"""The `lorafit` command: thin Typer wrappers over the Python API (nothing imports this module).

User errors print one line ``error: [CODE] message`` and exit with code 2 (a traceback only with --debug);
anything else is a bug and exits with code 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from lorafit.errors import LorafitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="LoRA fine-tuning of encoder transformers for classification and NER: train, evaluate, "
                  "predict, merge, plan, report, export, serve.")
Opt = typer.Option
Arg = typer.Argument
STATE = {"debug": False}
# Set in the process before torch loads (a value the user set wins). torch's CPU allocator reads
# THP_MEM_ALLOC_ENABLE once, at its first allocation: buffers of 2 MiB and more then get transparent huge pages
# (madvise), which made fp32 LoRA training 5-9% faster at a lower peak RSS on an AMD Zen 3 VM (docs/benchmarks.md).
PROCESS_ENV = {"TOKENIZERS_PARALLELISM": "false", "THP_MEM_ALLOC_ENABLE": "1"}


@app.callback()
def _root(debug: bool = Opt(False, "--debug", help="Show tracebacks for user errors.")) -> None:
    STATE["debug"] = debug


# fmt: off
PRECISION_HELP = ("PyTorch backend: auto (bf16 autocast where the CPU/GPU has bf16: 1.8-2.8x faster in batches, "
                  "accuracy within 0.1 point), bf16 or fp32 (exact reference).")

@app.command()
def train(
    preset: str = Opt(None, "--preset", "-p", help="Start from a preset (see `lorafit presets`)."),
    config: Path = Opt(None, "--config", "-c", help="YAML config file (e.g. a run's config.yaml)."),
    output_dir: str = Opt(None, "--output-dir", "-o", help="Run folder to create."),
    overwrite: bool = Opt(None, "--overwrite", help="Replace an existing run folder."),
    resume: str = Opt(None, "--resume", help="Continue a run: 'last' or a checkpoint folder.", show_default=False),
    task: str = Opt(None, "--task", help="classification or ner (detected when absent)."),
    model: str = Opt(None, "--model", "-m", help="Base model: Hub id or local folder."),
    dataset: str = Opt(None, "--dataset", help="Hub dataset name."),
    dataset_config: str = Opt(None, "--dataset-config", help="Hub dataset configuration."),
    train_file: str = Opt(None, "--train-file", help="Local training file."),
    validation_file: str = Opt(None, "--validation-file", help="Local validation file."),
    test_file: str = Opt(None, "--test-file", help="Local test file."),
    text_column: list[str] = Opt(None, "--text-column", help="Text column (repeat to join several)."),
    text_pair_column: str = Opt(None, "--text-pair-column", help="Second text of a pair."),
    label_column: str = Opt(None, "--label-column", help="Label column."),
    labels: str = Opt(None, "--labels", help="Comma-separated label names in id order."),
    data_format: str = Opt(None, "--format", help="NER file format: conll, jsonl or csv (sniffed when absent)."),
    tag_column: str = Opt(None, "--tag-column", help="NER tag column (e.g. fine_ner_tags for Few-NERD)."),
    scheme: str = Opt(None, "--scheme", help="NER: convert tags to io, bio or bioes."),
    max_length: int = Opt(None, "--max-length", help="Tokens per input (default: p99 of the data)."),
    rank: int = Opt(None, "--rank", "-r", help="LoRA rank."),
    alpha: float = Opt(None, "--alpha", help="LoRA alpha."),
    dropout: float = Opt(None, "--dropout", help="LoRA dropout."),
    target_modules: str = Opt(None, "--target-modules", help="Comma-separated names, a regex, or all-linear."),
    epochs: float = Opt(None, "--epochs", help="Training epochs."),
    max_steps: int = Opt(None, "--max-steps", help="Training steps (overrides epochs)."),
    learning_rate: float = Opt(None, "--lr", help="Learning rate."),
    batch_size: int = Opt(None, "--batch-size", help="Training batch size per device."),
    precision: str = Opt(None, "--precision", help="auto, bf16, fp16 or fp32."),
    seed: int = Opt(None, "--seed", help="Random seed."),
    no_group_by_length: bool = Opt(False, "--no-group-by-length", help="Random batches instead of length-grouped."),
    set_: list[str] = Opt(None, "--set", help="Override any key: section.key=value (repeatable)."),
    allow_pickle: bool = Opt(False, "--allow-pickle", help="Resume from checkpoint pickles this run did not record."),
) -> None:
    # fmt: on
    """Train a LoRA run and write its folder (adapter, metrics, history, predictions, manifest)."""
    from lorafit.config import load_yaml, parse_override, set_path
    from lorafit.training import build_config
    from lorafit.training import train as train_api

    ov: dict[str, Any] = {}
    flags = {
        ("task",): task, ("model", "name_or_path"): model, ("data", "dataset"): dataset,
        ("data", "dataset_config"): dataset_config, ("data", "train_file"): train_file,
        ("data", "validation_file"): validation_file, ("data", "test_file"): test_file,
        ("data", "text_columns"): list(text_column) if text_column else None,
        ("data", "text_pair_column"): text_pair_column, ("data", "label_column"): label_column,
        ("data", "labels"): [s.strip() for s in labels.split(",")] if labels else None,
        ("data", "format"): data_format, ("data", "tag_column"): tag_column, ("data", "scheme"): scheme,
        ("data", "max_length"): max_length, ("lora", "r"): rank, ("lora", "alpha"): alpha,
        ("lora", "dropout"): dropout, ("lora", "target_modules"): _targets(target_modules),
        ("training", "num_train_epochs"): epochs, ("training", "max_steps"): max_steps,
        ("training", "learning_rate"): learning_rate, ("training", "per_device_train_batch_size"): batch_size,
        ("precision",): precision, ("training", "seed"): seed, ("data", "seed"): seed,
        ("output", "dir"): output_dir, ("output", "overwrite"): overwrite,
    }
    for path, value in flags.items():
        if value is not None:
            set_path(ov, list(path), value)
    if no_group_by_length:
        set_path(ov, ["training", "train_sampling_strategy"], "random")
    for item in set_ or []:
        parts, value = parse_override(item)
        set_path(ov, parts, value)
    if resume and config is None and output_dir and (Path(output_dir) / "config.yaml").is_file():
        config = Path(output_dir) / "config.yaml"  # resuming a run: its own resolved config
    file_cfg = load_yaml(config) if config else None
    if file_cfg and not preset and file_cfg.get("preset"):
        preset = None  # a resolved config is complete; its preset name is informational
    cfg = build_config(preset, file_cfg, ov)
    if cfg.task is None:
        cfg.task = _detect_task(cfg)
    res: bool | str = False
    if resume:
        res = True if resume in ("last", "true", "1") else resume
    train_api(cfg, resume=res, allow_pickle=allow_pickle)


def _targets(text: str | None) -> Any:
    if text is None:
        return None
    if text == "all-linear" or any(ch in text for ch in "*()[]|\\^$"):
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


def _detect_task(cfg: Any) -> str:
    from lorafit.ner import detect_ner

    return "ner" if detect_ner(cfg.data) else "classification"


@app.command()
def evaluate(
    run: Path = Arg(..., help="Run folder or bundle."),
    data: Path = Opt(..., "--data", "-d", help="Labelled file to score."),
    text_column: list[str] = Opt(None, "--text-column", help="Text column(s)."),
    label_column: str = Opt("label", "--label-column", help="Label column."),
    base_model: str = Opt(None, "--base-model", help="Local copy of the base model."),
    output: Path = Opt(None, "--output", help="Write the metrics as JSON here."),
    batch_size: int = Opt(64, "--batch-size", help="Batch size."),
    precision: str = Opt("auto", "--precision", help=PRECISION_HELP),
    allow_pickle: bool = Opt(False, "--allow-pickle", help="Allow reading .pkl files (runs code in them!)."),
) -> None:
    """Score any labelled file with a trained run."""
    from lorafit.predicting import evaluate_file

    _positive(batch_size, "--batch-size")
    m = evaluate_file(run, data, text_columns=list(text_column) if text_column else None, label_column=label_column,
                      base_model=base_model, batch_size=batch_size, output=output, allow_pickle=allow_pickle,
                      precision=precision)
    if "accuracy" in m:
        typer.echo(f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  loss {m['loss']:.4f}  "
                   f"({m['rows']} rows of {data})")
        for name, s in m["per_class"].items():
            typer.echo(f"  {name:<20} P {s['precision']:.3f}  R {s['recall']:.3f}  F1 {s['f1']:.3f}  n={s['support']}")
    else:
        from lorafit.ner import format_ner_metrics

        typer.echo(format_ner_metrics(m))


@app.command()
def predict(
    run: Path = Arg(..., help="Run folder or bundle."),
    input: Path = Opt(None, "--input", "-i", help="File to predict (CSV / JSONL / Parquet; .pkl with --allow-pickle)."),
    output: Path = Opt(None, "--output", "-o", help="Output file (.csv, .jsonl or .parquet)."),
    text: list[str] = Opt(None, "--text", "-t", help="Predict this text (repeatable)."),
    text_column: list[str] = Opt(None, "--text-column", help="Text column(s)."),
    id_column: str = Opt(None, "--id-column", help="Carry this id column into the output."),
    kaggle: bool = Opt(False, "--kaggle", help="Write ID,Label only."),
    base_model: str = Opt(None, "--base-model", help="Local copy of the base model."),
    batch_size: int = Opt(64, "--batch-size", help="Batch size."),
    allow_pickle: bool = Opt(False, "--allow-pickle", help="Allow reading .pkl files (runs code in them!)."),
    overwrite: bool = Opt(False, "--overwrite", help="Replace an existing output file."),
    backend: str = Opt("auto", "--backend", help="torch (a run), onnx (an export folder) or auto."),
    variant: str = Opt(None, "--variant", help="ONNX graph to use: fp32 or int8 (default: int8 when exported)."),
    precision: str = Opt("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Predict labels (or entities) for texts or a file, in input order."""
    import json

    from lorafit.serving import load_predictor

    _positive(batch_size, "--batch-size")
    if not text and input is None:
        raise LorafitError("E307")
    pred = load_predictor(run, backend, base_model, variant, precision=precision)
    if text:
        if pred.task == "ner":
            from lorafit.ner import predict_entities

            for t, ents in zip(text, predict_entities(pred, list(text)), strict=True):
                typer.echo(json.dumps({"text": t, "entities": ents}, ensure_ascii=False))
            return
        for t, p in zip(text, pred.predict(list(text), batch_size=batch_size), strict=True):
            top = sorted(p["scores"].items(), key=lambda kv: -kv[1])[:3]
            typer.echo(f"{p['label']}\t{p['score']:.4f}\t{t[:80]}\t" + " ".join(f"{k}={v:.3f}" for k, v in top))
        return
    if output is None:
        output = input.with_name(input.stem + ".predictions.csv")
    from lorafit.predicting import predict_file

    n = predict_file(run, input, output, text_columns=list(text_column) if text_column else None,
                     id_column=id_column, kaggle=kaggle, base_model=base_model, batch_size=batch_size,
                     allow_pickle=allow_pickle, overwrite=overwrite, predictor=pred)
    typer.echo(f"wrote {n} predictions to {output}")


@app.command()
def merge(
    run: Path = Arg(..., help="Run folder."),
    output: Path = Opt(None, "--output", "-o", help="Folder for the merged model (default RUN/merged)."),
    verify: Path = Opt(None, "--verify", help="Only re-check an existing merged folder against the adapter."),
    n: int = Opt(64, "--n", help="Inputs used in the proof."),
    tolerance: float = Opt(1e-4, "--tolerance", help="Largest |logit difference| accepted."),
    base_model: str = Opt(None, "--base-model", help="Local copy of the base model."),
    overwrite: bool = Opt(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Merge the adapter into the base and prove the merged model gives the same logits."""
    from lorafit import merging

    if verify is not None:
        rep = merging.verify(run, verify, n=n, tolerance=tolerance, base_model=base_model)
        typer.echo(f"proof passed: max |logit delta| {rep['max_abs_logit_delta']:.3g} <= {tolerance:g} "
                   f"on {rep['inputs']} inputs")
        return
    output = output or run / "merged"
    rep = merging.merge(run, output, n=n, tolerance=tolerance, base_model=base_model, overwrite=overwrite)
    typer.echo(f"merged model: {output}")
    typer.echo(f"proof: max |logit delta| {rep['max_abs_logit_delta']:.3g} <= {tolerance:g} on {rep['inputs']} "
               f"inputs (adapter loaded separately before merging; merged re-loaded from disk)")


@app.command()
def plan(
    preset: str = Opt(None, "--preset", "-p", help="Preset to plan."),
    config: Path = Opt(None, "--config", "-c", help="Config file to plan."),
    model: str = Opt(None, "--model", "-m", help="Base model (Hub id or local folder)."),
    task: str = Opt(None, "--task", help="classification or ner."),
    num_labels: int = Opt(None, "--num-labels", help="Number of labels."),
    rank: int = Opt(None, "--rank", "-r", help="LoRA rank."),
    target_modules: str = Opt(None, "--target-modules", help="Comma-separated names, regex or all-linear."),
    budget: str = Opt(None, "--budget", help="List standard configs under this many trainable parameters (e.g. 1M)."),
    set_: list[str] = Opt(None, "--set", help="Override any key: section.key=value."),
) -> None:
    """Exact trainable / total parameter counts without downloading weights."""
    from lorafit.config import load_yaml, parse_override, set_path
    from lorafit.planner import budget_search, parse_budget
    from lorafit.planner import plan as plan_api
    from lorafit.training import build_config

    ov: dict[str, Any] = {}
    for path, value in {("model", "name_or_path"): model, ("task",): task, ("lora", "r"): rank,
                        ("lora", "target_modules"): _targets(target_modules)}.items():
        if value is not None:
            set_path(ov, list(path), value)
    for item in set_ or []:
        parts, value = parse_override(item)
        set_path(ov, parts, value)
    cfg = build_config(preset, load_yaml(config) if config else None, ov)
    if budget:
        b = parse_budget(budget)
        from lorafit.presets import get_preset

        k = num_labels or (len(cfg.data.labels) if cfg.data.labels else
                           get_preset(cfg.preset).num_labels if cfg.preset else 2)
        rows = budget_search(cfg.model.name_or_path, cfg.task or "classification", k, b)
        typer.echo(f"standard LoRA configs for {cfg.model.name_or_path} ({k} labels) under {b:,} trainable:")
        for row in rows:
            typer.echo(f"  {row['trainable']:>12,}  r={row['r']:<3} {row['target_modules']}")
        return
    p = plan_api(cfg, num_labels)
    typer.echo(f"model        {p.model} ({p.task}, {p.num_labels} labels)")
    typer.echo(f"targets      {p.to_dict()['target_modules']}   r={cfg.lora.r}")
    typer.echo(f"new modules  {', '.join(p.new_modules) or 'none'} (trained in full and saved)")
    typer.echo(f"trainable    {p.trainable:,}")
    typer.echo(f"total        {p.total:,}  (PEFT's count: frozen original of each fully trained module counted too)")
    typer.echo(f"deduplicated {p.total_deduplicated:,}  (the model you deploy)")
    typer.echo(f"trainable %  {p.percent:.4f}%")
    typer.echo(f"adapter size ~{p.adapter_bytes / 1e6:.2f} MB (fp32 safetensors)")
    typer.echo(f"basis        {p.assumption}")


@app.command()
def presets(name: str = Arg(None, help="Show one preset in full.")) -> None:
    """List the presets with their reference results; name one to see every hyper-parameter."""
    from lorafit.presets import DEFAULT_TRAINING, PRESETS, flatten, get_preset

    if name is None:
        for p in PRESETS.values():
            count = f"{p.trainable:,}" if p.trainable else "-"
            typer.echo(f"{p.name:<18} {count:>9} trainable  {p.summary}\n{'':<18} reference: {p.reference}")
        return
    p = get_preset(name)
    typer.echo(f"{p.name}: {p.summary}\nsource: {p.source}\nreference: {p.reference}\nnum_labels: {p.num_labels}"
               f"\ntrainable: {p.trainable:,}\n")
    merged = flatten({"training": {**DEFAULT_TRAINING, **p.config.get("training", {})}}) | flatten(
        {k: v for k, v in p.config.items() if k != "training"})
    for key in sorted(merged):
        origin = "source" if key in flatten(p.config) and key not in p.ours else "ours"
        typer.echo(f"  {key:<42} {merged[key]!s:<28} [{origin}]")


@app.command()
def check(run: Path = Arg(..., help="Run folder.")) -> None:
    """Verify every file of a run against its manifest."""
    from lorafit.predicting import check_run

    problems = check_run(run)
    if problems:
        for p in problems[:20]:
            typer.echo(p, err=True)
        raise LorafitError("E304", path=run, reason=f"{len(problems)} problem(s), first: {problems[0]}")
    typer.echo(f"{run}: every file matches its manifest")


@app.command()
def demo(
    output_dir: Path = Opt(Path("lorafit-demo"), "--output-dir", "-o", help="Where the demo run goes."),
    overwrite: bool = Opt(False, "--overwrite", help="Replace an existing demo run."),
    precision: str = Opt("auto", "--precision", help="auto, bf16 or fp32."),
    epochs: float = Opt(None, "--epochs", help="Override the demo's epochs."),
) -> None:
    """Offline demo: LoRA on the shipped MiniLM encoder with a shipped sample: train, evaluate, predict, merge."""
    from lorafit.demo import run_demo

    run_demo(output_dir, overwrite=overwrite, precision=precision, epochs=epochs)


@app.command()
def report(run: Path = Arg(..., help="Run folder.")) -> None:
    """Plots, report.md and a self-contained report.html for a run; refreshes the adapter's model card."""
    from lorafit.reports import write_report

    res = write_report(run)
    pngs = [p for p in res["plots"] if p.suffix == ".png" and p.parent.name == "plots"]
    typer.echo(f"report: {res['report_md']} and {res['report_html']} ({len(pngs)} plots in {run / 'plots'})")


# fmt: off
@app.command()
def export(
    run: Path = Arg(..., help="Run folder (or a merged folder)."),
    fmt: str = Opt("onnx", "--format", "-f", help="Export format: onnx."),
    quantize: str = Opt(None, "--quantize", "-q", help="Also write a quantised graph: int8."),
    output: Path = Opt(None, "--output", "-o", help="Export folder (default RUN/export)."),
    data: Path = Opt(None, "--data", "-d", help="Labelled file: score PyTorch, ONNX fp32 and int8 on its rows."),
    text_column: list[str] = Opt(None, "--text-column", help="Text column(s) of --data."),
    label_column: str = Opt("label", "--label-column", help="Label column of --data."),
    tolerance: float = Opt(1e-3, "--tolerance", help="Largest |logit difference| accepted for the fp32 graph."),
    base_model: str = Opt(None, "--base-model", help="Local copy of the base model."),
    no_bench: bool = Opt(False, "--no-bench", help="Skip the latency / throughput measurements."),
    threads: int = Opt(None, "--threads", help="CPU threads for both backends while measuring (default: torch's)."),
    overwrite: bool = Opt(False, "--overwrite", help="Replace an existing export folder."),
    exporter: str = Opt("torchscript", "--exporter", help="torch ONNX exporter: torchscript (faster int8 graph) or "
                        "dynamo."),
) -> None:
    # fmt: on
    """Merge, export to ONNX (optionally int8), check parity, measure accuracy, size and speed."""
    from lorafit.export import export as export_api

    output = output or (run / "export" if (run / "config.yaml").is_file() else run.with_name(run.name + "-onnx"))
    rep = export_api(run, output, fmt=fmt, quantize=quantize, data=data,
                     text_columns=list(text_column) if text_column else None, label_column=label_column,
                     tolerance=tolerance, base_model=base_model, bench=not no_bench, overwrite=overwrite,
                     threads=threads, exporter=exporter)
    v = rep["variants"]
    typer.echo(f"exported: {output}")
    typer.echo(f"parity: ONNX fp32 vs PyTorch max |logit delta| {v['onnx_fp32']['max_abs_logit_delta']:.3g} <= "
               f"{tolerance:g} on {rep['parity_inputs']} inputs")
    for name, x in v.items():
        line = f"  {name:<13} {x['size_bytes'] / 1e6:8.2f} MB"
        if name != "pytorch_fp32":
            line += f"  max |delta| {x['max_abs_logit_delta']:.3g}"
        ev = x.get("eval") or {}
        for key in ("accuracy", "macro_f1", "f1"):
            if ev.get(key) is not None:
                line += f"  {key} {ev[key]:.4f} ({ev.get(key + '_delta', 0):+.4f})"
        if ev.get("argmax_agreement") is not None:
            line += f"  agreement {ev['argmax_agreement']:.2%}"
        lat = x.get("latency")
        if lat:
            line += (f"  batch-1 p50 {lat['p50_ms']:.1f} ms p95 {lat['p95_ms']:.1f} ms, batch-32 "
                     f"{lat['throughput_rows_per_s']:.1f} rows/s")
        typer.echo(line)
    typer.echo(f"report: {output / 'export_report.json'}")


# fmt: off
@app.command()
def serve(
    path: Path = Arg(..., help="Run folder, bundle or export folder."),
    host: str = Opt("127.0.0.1", "--host", help="Interface to bind (127.0.0.1: this machine only)."),
    port: int = Opt(8000, "--port", "-p", help="Port (0 picks a free one)."),
    backend: str = Opt("auto", "--backend", help="auto, torch (run / merged) or onnx (export folder)."),
    variant: str = Opt(None, "--onnx-variant", help="fp32 or int8 for an export (default: what export chose)."),
    base_model: str = Opt(None, "--base-model", help="Local copy of the base model."),
    max_body_bytes: int = Opt(1_000_000, "--max-body-bytes", help="Largest request body."),
    max_text_chars: int = Opt(20_000, "--max-text-chars", help="Longest text."),
    max_batch: int = Opt(64, "--max-batch", help="Most texts in one request."),
) -> None:
    # fmt: on
    """Serve a model over HTTP: POST /predict, GET /health, GET /metadata and a try-it page at /."""
    from lorafit.serving import Limits
    from lorafit.serving import serve as serve_api

    serve_api(path, host, port, backend=backend, variant=variant, base_model=base_model,
              limits=Limits(max_body_bytes, max_text_chars, max_batch))


def _positive(value: int, key: str) -> None:
    if value < 1:
        raise LorafitError("E401", value=value, key=key)


def main() -> None:
    import warnings

    for key, value in PROCESS_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes are not for our users
    debug = "--debug" in sys.argv
    try:
        app(standalone_mode=False)
    except LorafitError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as err:
        code = getattr(err, "exit_code", getattr(err, "code", 0))
        sys.exit(code if isinstance(code, int) else 0)
    except Exception as err:  # click usage errors come here in non-standalone mode
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(2)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(130)
        raise
