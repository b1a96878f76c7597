"""Training: config -> run folder, on the Hugging Face Trainer with a PEFT LoRA model.

The steps: resolve the config and check every input before anything is written; load and validate the data;
measure lengths and choose max_length; load the base, find the modules its checkpoint lacks and wrap it with
LoRA; train with length-grouped, dynamically padded batches; then save the adapter bundle, score validation
and test with the one Predictor, and write metrics, history, statistics, predictions and the manifest.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lorafit.artifacts import (
    atomic_write_text,
    prepare_output_dir,
    read_json,
    write_csv,
    write_json,
    write_manifest,
)
from lorafit.config import Config, deep_merge
from lorafit.errors import LorafitError, logger, warn
from lorafit.inference import cpu_has_bf16
from lorafit.presets import DEFAULT_LORA, DEFAULT_TRAINING
from lorafit.reports import write_model_card


@dataclass
class Run:
    """A finished run folder: its config, metrics and parameter counts; ``predictor()`` loads it back."""

    path: Path
    config: Config
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def open(cls, path: str | Path) -> Run:
        p = Path(path)
        cfg = Config.from_yaml(p / "config.yaml")
        metrics = read_json(p / "metrics.json") if (p / "metrics.json").exists() else {}
        params = read_json(p / "params.json") if (p / "params.json").exists() else {}
        return cls(p, cfg, metrics, params)

    def predictor(self, **kw: Any) -> Any:
        from lorafit.inference import Predictor

        return Predictor.load(self.path, **kw)


# ---- precision ---------------------------------------------------------------------------------------------
def resolve_precision(requested: str) -> tuple[str, str]:
    """The concrete precision (bf16 / fp16 / fp32) and why."""
    import torch

    if requested == "fp32":
        return "fp32", "requested"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported() and requested in ("auto", "bf16"):
            return "bf16", "GPU supports bf16"
        if requested == "bf16":
            warn("W001", reason="this GPU lacks bf16")
            return "fp32", "bf16 unsupported on this GPU"
        return "fp16", "GPU without bf16" if requested == "auto" else "requested"
    if requested == "fp16":
        raise LorafitError("E402", value="fp16", reason="fp16 mixed precision needs a GPU; use bf16 or fp32 on CPU")
    ok, why = cpu_has_bf16()
    if ok:
        return "bf16", why
    if requested == "bf16":
        warn("W001", reason=why)
    return "fp32", why


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch before any random initialisation, so a config reproduces its weights."""
    from transformers import set_seed

    set_seed(seed)


CPU_MICRO_BATCH_TOKENS = 2048  # measured on the benchmark CPUs (docs/benchmarks.md)


def resolve_micro_batch_tokens(requested: int | None) -> int:
    """The token budget of one forward/backward part of a training batch (0: whole batches). On CPU, long batches
    split into parts run faster (their activations stay in cache) and hold less memory; GPUs prefer whole
    batches."""
    import torch

    if requested is not None:
        return int(requested)
    return 0 if torch.cuda.is_available() else CPU_MICRO_BATCH_TOKENS


def resolve_release_memory(requested: bool | None) -> bool:
    """Whether CPU training hands freed memory back to the OS between layers (lorafit.speedups.release_memory).

    Off unless asked for. Measured on the benchmark CPUs (docs/benchmarks.md, roberta-base, batch 32): since fp32
    training holds its dropout masks as bits and LoRA's input once per layer, LoRA's peak RSS without it is 0.61x
    full fine-tuning's in fp32 (the goal: <= 0.65x; 0.52x under bf16), while in fp32 it cost 5-6% of training speed
    (page faults of re-using returned memory). Until 2026-12-07 the default was on in fp32."""
    if requested is not None:
        return bool(requested)
    return False


PARALLEL_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")  # every dropout is a module lorafit swaps


def resolve_parallel_parts(requested: int | None, model: Any, targs: Any, fast_dropout: bool = True) -> int:
    """How many parts of a batch CPU training runs at once, each on its own thread (LorafitTrainer): torch's thread
    count by default where that keeps a run reproducible, else 1. An explicit number where it does not is an
    error (E003) naming why.

    Reproducible means every random draw comes from the part's own seed: lorafit's dropout masks
    (``fast_dropout``), in a model family whose dropouts are all modules that lorafit swaps and whose attention runs
    through lorafit's (SDPA); gradient checkpointing's recomputation would read torch's global generator instead."""
    import torch

    from lorafit.modeling import count_parameters

    if requested is not None and requested <= 1:
        return 1
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    counts = count_parameters(model)
    blockers = [
        (targs.device.type != "cpu", f"parts run on CPU only (device: {targs.device.type})"),
        (targs.world_size > 1, "one training process only (torchrun / accelerate run processes of their own)"),
        (not fast_dropout, "they need lorafit's dropout masks (fast_dropout=true)"),
        (bool(targs.gradient_checkpointing), "gradient checkpointing recomputes dropout from torch's global generator"),
        (kind not in PARALLEL_MODEL_TYPES, f"model type {kind!r}: only {', '.join(PARALLEL_MODEL_TYPES)}"),
        (getattr(config, "_attn_implementation", "sdpa") != "sdpa"
         and getattr(config, "attention_probs_dropout_prob", 0) > 0, "attention dropout outside SDPA"),
        (counts["trainable"] > counts["total"] // 10,
         "more than a tenth of the weights train: each part would hold a gradient of them all"),
    ]
    why = next((text for blocked, text in blockers if blocked), None)
    if why is not None:
        if requested is not None:
            raise LorafitError("E003", key="parallel_parts", value=requested, expected=f"1 (off) here: {why}")
        return 1
    return int(requested) if requested is not None else torch.get_num_threads()


def resolve_run(cfg: Any, precision: str, model_path: str) -> None:
    """Write the run-time choices every task shares into ``cfg``: precision, speed-ups, absolute paths."""
    cfg.precision = precision
    resolve_speedups(cfg, precision)
    cfg.model.name_or_path = model_path if Path(model_path).is_dir() else cfg.model.name_or_path
    for key in ("train_file", "validation_file", "test_file"):
        value = getattr(cfg.data, key)
        if value:
            setattr(cfg.data, key, str(Path(value).resolve()))


def run_facts(precision_why: str, suggested: int, limit: int, new_modules: list[str], lcfg: Any, model: Any,
              label_order: Any, sources: Any) -> dict[str, Any]:
    """The ``resolved`` facts every task records in config.yaml (each task adds its own)."""
    from lorafit import modeling
    from lorafit.speedups import torch_huge_pages

    return {
        "precision_reason": precision_why, "suggested_max_length": suggested, "model_limit": limit,
        "new_modules": new_modules, "lora_target_modules": _jsonable_targets(lcfg.target_modules),
        "modules_to_save": modeling.saved_modules(model), "label_order": list(label_order), "sources": sources,
        "torch_huge_pages": torch_huge_pages(),
    }


def resolve_speedups(cfg: Config, precision: str) -> None:
    """Write the device- and precision-dependent speed-up defaults into the run's config (None: resolve)."""
    cfg.micro_batch_tokens = resolve_micro_batch_tokens(cfg.micro_batch_tokens)
    cfg.release_memory = resolve_release_memory(cfg.release_memory)


# ---- config resolution -------------------------------------------------------------------------------------
def build_config(preset: str | None = None, file_cfg: dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None) -> Config:
    """Defaults < preset < config file < CLI flags / --set, then typed validation."""
    from lorafit.presets import get_preset

    data: dict[str, Any] = {"lora": dict(DEFAULT_LORA), "training": dict(DEFAULT_TRAINING)}
    if preset:
        p = get_preset(preset)
        data = deep_merge(data, copy.deepcopy(p.config))
        data["preset"] = preset
    if file_cfg:
        file_cfg = {k: v for k, v in file_cfg.items() if k != "resolved"}
        data = deep_merge(data, file_cfg)
    if overrides:
        data = deep_merge(data, overrides)
    return Config.from_dict(data)


def default_output_dir() -> str:
    return str(Path("runs") / datetime.now().strftime("run-%Y%m%d-%H%M%S"))


# ---- the pipeline ------------------------------------------------------------------------------------------
def train(config: Config, *, resume: bool | str = False, quiet: bool = False, allow_pickle: bool = False) -> Run:
    """Train one run and write its folder; returns the Run. Inputs are validated before anything is written."""
    task = config.task or "classification"
    owns_group = not _process_group_exists()  # under torchrun, TrainingArguments creates it during this call
    if task == "ner":
        from lorafit.ner import train_ner

        run = train_ner(config, resume=resume, quiet=quiet, allow_pickle=allow_pickle)
    else:
        run = _train_classification(config, resume=resume, quiet=quiet, allow_pickle=allow_pickle)
    if owns_group:
        end_process_group()
    return run


def _train_classification(config: Config, *, resume: bool | str, quiet: bool, allow_pickle: bool = False) -> Run:
    from lorafit import data as data_mod
    from lorafit import modeling

    t0 = time.time()
    cfg = copy.deepcopy(config)
    cfg.task = "classification"
    out = Path(cfg.output.dir or default_output_dir())
    if is_main_process() and not resume and out.is_dir() and any(out.iterdir()) and not cfg.output.overwrite:
        raise LorafitError("E301", path=out)  # fail before any slow work

    precision, precision_why = resolve_precision(cfg.precision)
    model_path = modeling.resolve_model(cfg.model.name_or_path, cfg.model.revision)
    base_config = modeling.load_config(model_path, cfg.model.revision)
    tokenizer = modeling.load_tokenizer(model_path, "classification", cfg.model.revision)
    limit = modeling.model_limit(base_config, tokenizer)

    ds = data_mod.load_classification(cfg.data)
    labels = ds.labels
    pairs = "text_pair" in ds.splits["train"].column_names
    lengths = {
        s: data_mod.token_lengths(d["text"], tokenizer, d["text_pair"] if pairs else None)
        for s, d in ds.splits.items()
    }
    if cfg.data.min_tokens or cfg.data.max_tokens:
        ds.splits["train"], ds.filtered = data_mod.apply_length_filter(
            ds.splits["train"], lengths["train"], cfg.data.min_tokens, cfg.data.max_tokens
        )
        lengths["train"] = data_mod.token_lengths(ds.splits["train"]["text"], tokenizer,
                                                  ds.splits["train"]["text_pair"] if pairs else None)
    stats = {s: data_mod.length_summary(v) for s, v in lengths.items()}
    suggested = data_mod.suggest_max_length(stats["train"]["p99"], limit)
    max_length = cfg.data.max_length or suggested
    if max_length > limit:
        raise LorafitError("E205", value=max_length, limit=limit)
    for split, values in lengths.items():
        over = sum(1 for n in values if n > max_length)
        if over and (split != "train" or cfg.data.max_length):  # the p99 default truncates ~1% by design
            warn("W003", count=over, rows=len(values), split=split, max_length=max_length)
    class_weights = _class_weights(cfg.data.class_weights, ds.splits["train"]["label"], labels.names)

    # resolve every run-time choice into the config that is written to the run folder
    cfg.data.labels = list(labels.names)
    cfg.data.max_length = max_length
    cfg.data.text_columns = ds.text_columns
    resolve_run(cfg, precision, model_path)
    id2label = labels.id2label

    seed_everything(int(cfg.training.get("seed", cfg.data.seed)))  # the new head and LoRA init are random
    base, new_modules = modeling.load_base(model_path, "classification", id2label, cfg.model.revision)
    modeling.report_new_modules(new_modules)
    lcfg = modeling.lora_config(base, cfg.lora, "classification", new_modules)
    if cfg.lora.target_modules is None:
        cfg.lora.target_modules = sorted(lcfg.target_modules)
    targs = _training_args(cfg, out, precision)  # validates the pass-through settings before writing

    main = is_main_process()  # under torchrun / accelerate only rank 0 writes
    if main:
        out = prepare_output_dir(out, cfg.output.overwrite) if not resume else out
        out.mkdir(parents=True, exist_ok=True)
    wait_for_everyone()
    model = modeling.wrap(base, lcfg)
    cfg.parallel_parts = resolve_parallel_parts(cfg.parallel_parts, model, targs, cfg.fast_dropout)
    counts = modeling.count_parameters(model)
    cfg.resolved = run_facts(precision_why, suggested, limit, new_modules, lcfg, model, labels.names, ds.sources)
    cfg.resolved["filtered_train_rows"] = ds.filtered
    data_stats = _data_stats(ds, stats, max_length, suggested, limit)
    params = params_record(counts)
    if main:
        atomic_write_text(out / "config.yaml", cfg.to_yaml())
        write_json(out / "data_stats.json", data_stats)
        write_json(out / "params.json", params)
        if not quiet:
            _print_summary(cfg, data_stats, params, precision, precision_why)

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, Any]:
        enc = tokenizer(batch["text"], batch["text_pair"] if pairs else None, truncation=True, max_length=max_length)
        enc["labels"] = batch["label"]
        enc["length"] = [len(x) for x in enc["input_ids"]]
        return enc

    keep = ["row_id"]
    tokenized = {
        s: d.map(tokenize, batched=True, remove_columns=[c for c in d.column_names if c not in keep],
                 desc=f"tokenizing {s}")
        for s, d in ds.splits.items()
    }
    from lorafit.trainer_utils import build_trainer, run_training

    trainer = build_trainer(model, targs, tokenizer, tokenized["train"], tokenized["validation"], class_weights,
                            cfg, out)
    score_precision = run_training(trainer, out, resume, cfg, allow_pickle=allow_pickle)
    if not main:  # the other ranks are done: rank 0 saves and scores once, on every row
        return Run(out, cfg, {}, params, time.time() - t0)

    # save the adapter bundle (LoRA + head + every new module) with its tokenizer
    adapter = out / "adapter"
    model.save_pretrained(adapter, safe_serialization=True)
    tokenizer.save_pretrained(adapter)
    write_model_card(adapter, out)  # replaces PEFT's template README before the manifest hashes it
    bundle_meta = _bundle_meta("adapter", cfg, base_config, model_path, lcfg, tokenizer, counts,
                               modeling.saved_modules(model))
    write_manifest(adapter, bundle_meta)

    from lorafit.inference import Predictor

    predictor = Predictor(model, tokenizer, read_json(adapter / "lorafit.json"), precision=score_precision)
    metrics: dict[str, Any] = {"task": "classification", "labels": list(labels.names),
                               "scored_in": score_precision}
    eval_bs = int(targs.per_device_eval_batch_size)
    for split in ("validation", "test"):
        if split not in ds.splits:
            continue
        d = ds.splits[split]
        m, probs = predictor.evaluate(d["text"], d["label"], d["text_pair"] if pairs else None, batch_size=eval_bs)
        metrics[split] = m
        if split == "test" and cfg.output.save_predictions:
            _write_predictions(out / "predictions.csv", d["row_id"], d["label"], probs, labels.names)
    samples = ds.splits["validation"].select(range(min(64, len(ds.splits["validation"]))))
    write_json(out / "samples.json", {"text": samples["text"], "text_pair": samples["text_pair"] if pairs else None})
    metrics["seconds"] = round(time.time() - t0, 1)
    write_json(out / "metrics.json", metrics)
    write_model_card(adapter, out)  # now with the test metrics
    write_manifest(adapter, bundle_meta)
    try:  # plots are a convenience: a missing matplotlib or a plotting bug must not fail a finished run
        from lorafit.plots import write_plots

        write_plots(out)
    except Exception as err:
        warn("W601", reason=f"{type(err).__name__}: {err}")
    write_manifest(out, {"kind": "run", "task": "classification", "preset": cfg.preset})
    if not quiet:
        _print_result(out, metrics)
    return Run(out, cfg, metrics, params, time.time() - t0)


# ---- helpers -----------------------------------------------------------------------------------------------
def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch, or the only process."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def wait_for_everyone() -> None:
    """A barrier when several processes train together (the process group exists once TrainingArguments does)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _process_group_exists() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def end_process_group() -> None:
    """Destroy the process group on a clean finish, in every rank (each after its own last collective).

    A gloo group left to interpreter shutdown can abort the process (SIGABRT, "terminate called without an active
    exception": its worker threads still hold tensors), and torchrun then kills the other ranks, rank 0 included,
    while it is still writing the run folder. Not called on an error: destroying a group while another rank waits
    in a collective can hang (PyTorch's advice). A later train() in the same process sets the group up again:
    TrainingArguments resets accelerate's cached state each time."""
    if not _process_group_exists():
        return
    import torch.distributed as dist

    dist.destroy_process_group()


def params_record(counts: dict[str, int]) -> dict[str, Any]:
    return {"trainable": counts["trainable"], "total": counts["total"],
            "total_deduplicated": counts["total_deduplicated"],
            "percent_trainable": round(100 * counts["trainable"] / counts["total"], 4),
            "convention": "total counts the frozen original of each fully trained module beside its trainable "
                          "copy (PEFT's print_trainable_parameters); total_deduplicated is the deployed model"}


def _jsonable_targets(t: Any) -> Any:
    return sorted(t) if isinstance(t, (set, list, tuple)) else t


def _class_weights(spec: Any, train_labels: list[int], names: list[str]) -> list[float] | None:
    import numpy as np

    if spec is None:
        return None
    if spec == "auto":
        counts = np.bincount(np.asarray(train_labels), minlength=len(names)).astype(float)
        counts[counts == 0] = 1.0
        w = counts.sum() / (len(names) * counts)
        return [round(float(x), 6) for x in w]
    if len(spec) != len(names):
        raise LorafitError("E118", got=len(spec), expected=len(names), labels=names)
    return [float(x) for x in spec]


def _training_args(cfg: Config, out: Path, precision: str) -> Any:
    import torch
    from transformers import TrainingArguments

    settings = dict(cfg.training)
    settings.setdefault("seed", cfg.data.seed)
    settings["output_dir"] = str(out / "checkpoints")
    settings["bf16"] = precision == "bf16"
    settings["fp16"] = precision == "fp16"
    settings["use_cpu"] = not torch.cuda.is_available()
    if settings["use_cpu"] and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        settings.setdefault("ddp_backend", "gloo")  # torchrun / accelerate on CPUs
    settings["remove_unused_columns"] = False  # our collator keeps only model inputs; 'length' feeds the sampler
    settings["length_column_name"] = "length"
    settings.setdefault("logging_strategy", "steps")
    settings.setdefault("logging_nan_inf_filter", False)  # a NaN loss must be seen (and stop the run), not hidden
    settings.setdefault("disable_tqdm", False)
    if cfg.early_stopping_patience:
        settings["load_best_model_at_end"] = True
        settings.setdefault("metric_for_best_model", "accuracy" if cfg.task != "ner" else "f1")
        if settings.get("eval_strategy") != settings.get("save_strategy"):
            settings["save_strategy"] = settings.get("eval_strategy", "epoch")
    if settings.get("eval_strategy") == "steps" and "save_steps" not in settings and "eval_steps" in settings:
        settings["save_steps"] = settings["eval_steps"]
    try:
        return TrainingArguments(**settings)
    except (ValueError, TypeError) as err:
        raise LorafitError("E008", reason=" ".join(str(err).split())[:400]) from None


def _data_stats(ds: Any, stats: dict[str, Any], max_length: int, suggested: int, limit: int) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {"max_length": max_length, "suggested_max_length": suggested, "model_limit": limit,
                           "labels": ds.labels.names, "splits": {}}
    for split, d in ds.splits.items():
        counts = np.bincount(np.asarray(d["label"]), minlength=len(ds.labels)).tolist()
        s = stats[split]
        truncated = int(sum(c for c, e in zip(s["histogram"]["counts"], s["histogram"]["edges"][1:], strict=False)
                            if e > max_length)) if s["max"] > max_length else 0
        out["splits"][split] = {
            "rows": len(d), "source": ds.sources.get(split, ""),
            "class_counts": dict(zip(ds.labels.names, counts, strict=True)),
            "tokens": s, "rows_over_max_length_approx": truncated,
        }
    if ds.filtered:
        out["length_filter_removed"] = ds.filtered
    return out


def _write_predictions(path: Path, row_ids: list[int], gold: list[int], probs: Any, names: list[str]) -> None:
    header = ["row_id", "gold", "predicted", "gold_id", "predicted_id", *[f"p_{n}" for n in names]]
    rows = []
    for rid, g, p in zip(row_ids, gold, probs, strict=True):
        k = int(p.argmax())
        rows.append([rid, names[g], names[k], g, k, *[f"{float(v):.6f}" for v in p]])
    write_csv(path, header, rows)


def _bundle_meta(kind: str, cfg: Config, base_config: Any, model_path: str, lcfg: Any, tokenizer: Any,
                 counts: dict[str, int], saved_modules: list[str]) -> dict[str, Any]:
    from lorafit.modeling import fingerprint

    local = Path(model_path).is_dir()
    dtype = getattr(base_config, "dtype", None) or "float32"
    return {
        "kind": kind,
        "task": cfg.task,
        "labels": list(cfg.data.labels or []),
        "scheme": None,
        "max_length": cfg.data.max_length,
        "text_pair": bool(cfg.data.text_pair_column),
        "base_model": {
            "name_or_path": model_path if local else cfg.model.name_or_path,
            "revision": cfg.model.revision or getattr(base_config, "_commit_hash", None),
            "fingerprint": fingerprint(base_config, model_path if local else None),
            "dtype": str(dtype).replace("torch.", ""),
        },
        "tokenizer": {"class": type(tokenizer).__name__,
                      "add_prefix_space": bool(getattr(tokenizer, "add_prefix_space", False)),
                      "do_lower_case": bool(getattr(tokenizer, "do_lower_case", False))},
        "lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "dropout": cfg.lora.dropout,
                 "target_modules": _jsonable_targets(lcfg.target_modules), "use_rslora": cfg.lora.use_rslora,
                 "use_dora": cfg.lora.use_dora, "bias": cfg.lora.bias},
        "modules_to_save": saved_modules,
        "parameters": counts,
    }


def _print_summary(cfg: Config, stats: dict[str, Any], params: dict[str, Any], precision: str, why: str) -> None:
    say = logger.info if os.environ.get("LORAFIT_QUIET") else print
    say(f"lorafit: task classification, base {cfg.model.name_or_path}, {len(cfg.data.labels or [])} labels")
    for split, s in stats["splits"].items():
        t = s["tokens"]
        bal = ", ".join(f"{k}={v}" for k, v in s["class_counts"].items())
        say(f"  {split:<10} {s['rows']:>7} rows | {bal} | tokens p50 {t['p50']} p95 {t['p95']} p99 {t['p99']} "
            f"max {t['max']}")
    say(f"  max_length {stats['max_length']} (suggested p99: {stats['suggested_max_length']}, model limit "
        f"{stats['model_limit']})")
    say(f"  trainable {params['trainable']:,} of {params['total']:,} ({params['percent_trainable']:.3f}%)")
    say(f"  precision {precision} ({why})")


def _print_result(out: Path, metrics: dict[str, Any]) -> None:
    for split in ("validation", "test"):
        if split in metrics:
            m = metrics[split]
            print(f"  {split}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} ({m['rows']} rows)")
    print(f"  run folder: {out}  ({metrics['seconds']} s)")
