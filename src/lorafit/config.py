"""The typed run configuration: model, data, task, LoRA and output, plus a pass-through to TrainingArguments.

One source of truth for help text: each field's ``metadata["help"]``. ``Config.from_dict`` rejects unknown
keys and wrong types with a message that names the key and the expected type. Training settings are not
re-invented: ``Config.training`` is a dict handed to ``transformers.TrainingArguments`` and checked
against its field names.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from lorafit.errors import LorafitError

TaskName = Literal["classification", "ner"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text in its metadata (the one place help is written)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelConfig:
    name_or_path: str = _f("roberta-base", "Base model: a Hub id or a local Transformers folder.")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) of the base model.")
    trust_remote_code: bool = _f(False, "Allow custom model code from the Hub (off: safer).")


@dataclass
class DataConfig:
    dataset: str | None = _f(None, "Hub dataset name, e.g. ag_news (loaded with datasets.load_dataset).")
    dataset_config: str | None = _f(None, "Hub dataset configuration name, e.g. supervised for Few-NERD.")
    train_file: str | None = _f(None, "Local training file: .csv, .tsv, .jsonl, .json or .parquet.")
    validation_file: str | None = _f(None, "Local validation file; carved from train when absent.")
    test_file: str | None = _f(None, "Local test file (optional).")
    text_columns: list[str] | None = _f(
        None,
        "Text column(s); several are joined with a space. Default: 'text', else 'sentence', else title+description.",
    )
    text_pair_column: str | None = _f(None, "Second text of a sentence pair, passed to the tokenizer as a pair.")
    label_column: str = _f("label", "Label column: strings or integers.")
    labels: list[str] | None = _f(None, "Label names in id order. Integer labels map through their sorted values.")
    validation_size: float = _f(0.1, "Stratified validation carved from train when there is none: fraction or rows.")
    max_train_samples: int | None = _f(None, "Use a stratified sample of this many training rows.")
    max_eval_samples: int | None = _f(None, "Use at most this many validation rows (stratified sample).")
    max_test_samples: int | None = _f(None, "Use at most this many test rows (stratified sample).")
    min_tokens: int | None = _f(None, "Length filter: drop training rows shorter than this many tokens.")
    max_tokens: int | None = _f(None, "Length filter: drop training rows longer than this many tokens.")
    max_length: int | None = _f(None, "Tokens per input; default: the training data's 99th percentile, capped.")
    class_weights: str | list[float] | None = _f(None, "Loss weights per class: 'auto' (inverse frequency) or a list.")
    seed: int = _f(42, "Seed for splitting and sampling.")
    format: Literal["conll", "jsonl", "csv"] | None = _f(
        None, "NER file format: conll, jsonl or csv (a table: .csv/.tsv/.parquet); sniffed from the file when absent."
    )
    tag_column: str | None = _f(
        None, "NER tag column (JSONL / table / Hub), e.g. fine_ner_tags for Few-NERD's 66 types (ner_tags: 8 coarse)."
    )
    scheme: Literal["io", "bio", "bioes"] | None = _f(
        None, "NER: convert tags to this scheme (io, bio or bioes); default: keep the data's detected scheme."
    )
    label_all_subtokens: bool = _f(False, "NER: label every sub-token of a word, not only the first (rest: -100).")
    stride: int | None = _f(
        None, "NER: tokens shared by consecutive windows of a sentence longer than max_length; default max_length/4."
    )


@dataclass
class LoraSettings:
    r: int = _f(8, "LoRA rank.")
    alpha: float = _f(16, "LoRA alpha (scaling = alpha / r, or alpha / sqrt(r) with rslora).")
    dropout: float = _f(0.1, "Dropout on the LoRA branch.")
    target_modules: list[str] | str | None = _f(
        None, "Modules to adapt: a list of names, a regex, 'all-linear', or none for PEFT's default for the model."
    )
    layers_to_transform: list[int] | None = _f(None, "Only adapt these layer indices.")
    bias: Literal["none", "all", "lora_only"] = _f("none", "Which biases to train.")
    use_rslora: bool = _f(False, "Rank-stabilised LoRA scaling (alpha / sqrt(r)).")
    use_dora: bool = _f(False, "Weight-decomposed LoRA (DoRA).")
    modules_to_save: list[str] | None = _f(
        None, "Extra modules trained in full and saved; the head and modules the checkpoint lacks are added."
    )


@dataclass
class OutputConfig:
    dir: str | None = _f(None, "Run folder; default runs/<timestamp>.")
    overwrite: bool = _f(False, "Replace an existing run folder.")
    save_predictions: bool = _f(True, "Write test-split predictions.")


@dataclass
class Config:
    task: TaskName | None = _f(None, "classification or ner; detected from the data when absent.")
    preset: str | None = _f(None, "The preset this config started from (informational).")
    precision: Precision = _f("auto", "auto: bf16 where the hardware has it, fp16 on older GPUs, else fp32.")
    fast_dropout: bool = _f(True, "CPU training: draw dropout masks 16 random bits at a time (same p to 1/65536, "
                            "about 4x cheaper than torch's bernoulli masks), LoRA layers with the dropout's "
                            "1/(1-p) folded into their scaling; false: torch's own dropout and PEFT's forward.")
    first_token_only: bool = _f(True, "BERT-family sequence classifiers: run the last layer for the first token only, "
                                "the one token the head reads (same logits and gradients, ~7% fewer FLOPs); "
                                "false: the whole last layer.")
    release_memory: bool | None = _f(None, "CPU training: hand freed memory back to the OS after every third encoder "
                                     "layer, forward and backward (glibc malloc_trim; same numerics, about 10% lower "
                                     "peak RSS, 3-6% slower). Default: off (LoRA's peak is within 0.65x of full "
                                     "fine-tuning's without it); true / false: always / never.")
    micro_batch_tokens: int | None = _f(None, "Run a training batch of more padded tokens than this as consecutive "
                                        "parts, gradients summed before the one optimizer step (same update, less "
                                        "memory). Default: 2048 on CPU, whole batches on GPU; 0: never split.")
    parallel_parts: int | None = _f(None, "CPU training: run this many parts of each batch at once, each on its "
                                    "own thread with one intra-op thread, their gradients added in a fixed order "
                                    "(the same update up to float rounding, a seed gives the same run; faster on "
                                    "2+ cores, measured in docs/benchmarks.md). Default: torch's thread count where "
                                    "it applies (CPU, one process, fast_dropout, no gradient checkpointing, BERT-"
                                    "family model), else 1; 1: off.")
    early_stopping_patience: int | None = _f(None, "Stop after this many evaluations without improvement.")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Base model."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Data sources and columns."})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA settings."})
    output: OutputConfig = field(default_factory=OutputConfig, metadata={"help": "Where the run goes."})
    training: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Passed to transformers.TrainingArguments (checked by name)."}
    )
    resolved: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Run-time facts recorded by lorafit (read-only)."}
    )

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        cfg = _build(cls, data, "config")
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        return cls.from_dict(load_yaml(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def validate(self) -> None:
        """Cross-field checks that types alone do not catch."""
        if self.lora.r < 1:
            raise LorafitError("E003", key="lora.r", value=self.lora.r, expected="the rank must be an integer >= 1")
        if self.lora.alpha <= 0:
            raise LorafitError("E003", key="lora.alpha", value=self.lora.alpha, expected="alpha must be > 0")
        if not 0 <= self.lora.dropout < 1:
            raise LorafitError("E003", key="lora.dropout", value=self.lora.dropout, expected="dropout is in [0, 1)")
        if self.data.validation_size <= 0:
            raise LorafitError(
                "E003", key="data.validation_size", value=self.data.validation_size, expected="a fraction or rows > 0"
            )
        if self.data.max_length is not None and self.data.max_length < 8:
            raise LorafitError("E003", key="data.max_length", value=self.data.max_length, expected="at least 8")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 0:
            raise LorafitError("E003", key="micro_batch_tokens", value=self.micro_batch_tokens,
                               expected="a number of tokens >= 0 (0: never split a batch)")
        if self.parallel_parts is not None and self.parallel_parts < 1:
            raise LorafitError("E003", key="parallel_parts", value=self.parallel_parts,
                               expected="a number of parts >= 1 (1: off)")
        cw = self.data.class_weights
        if isinstance(cw, str) and cw != "auto":
            raise LorafitError("E003", key="data.class_weights", value=cw, expected="'auto' or a list of numbers")
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = self.training.get(key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise LorafitError("E401", key=f"training.{key}", value=value)
        check_training_keys(self.training)


def check_training_keys(training: dict[str, Any]) -> None:
    """Every key of ``training`` must be a TrainingArguments field of a plausible type."""
    from transformers import TrainingArguments  # lazy: transformers is heavy

    fields = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}
    hints = typing.get_type_hints(TrainingArguments)
    for key, value in training.items():
        if key not in fields:
            close = [n for n in fields if key.replace("_", "") in n.replace("_", "")][:3]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            if key in ("warmup_ratio", "group_by_length"):
                hint = (
                    "; transformers 5 removed it: use warmup_steps (a float < 1 is a ratio)"
                    if key == "warmup_ratio"
                    else "; use train_sampling_strategy: group_by_length"
                )
            raise LorafitError("E007", key=key, hint=hint)
        if value is None:
            continue
        if not _matches(value, hints.get(key, Any)):
            raise LorafitError(
                "E002", key=f"training.{key}", value=value, got=type(value).__name__, expected=_type_name(hints[key])
            )


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise LorafitError("E005", path=p, reason="no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise LorafitError("E005", path=p, reason=str(err).splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LorafitError("E005", path=p, reason=f"the top level is a {type(data).__name__}, expected a mapping")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """'lora.r=8' -> (['lora', 'r'], 8); the value is parsed as YAML so lists and numbers work."""
    if "=" not in text:
        raise LorafitError("E006", text=text)
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise LorafitError("E006", text=text)
    if raw.strip().lower() in ("yes", "no", "on", "off", "y", "n"):
        return parts, raw.strip()  # YAML 1.1 would read these as booleans: eval_strategy=no means "no"
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def set_path(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, type, help) for every config field: used by `lorafit train --help-config` and the docs."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            rows.extend(describe(t, f"{prefix}{f.name}."))
        else:
            rows.append((prefix + f.name, _type_name(t), f.metadata.get("help", "")))
    return rows


# ---- typed construction from plain data -----------------------------------------------------------
def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise LorafitError("E002", key=where, value=data, got=type(data).__name__, expected="a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = key if where == "config" else f"{where}.{key}"
        if key not in known:
            raise LorafitError("E001", key=path, where=where, known=", ".join(known))
        t = hints[key]
        if dataclasses.is_dataclass(t):
            kwargs[key] = _build(t, value or {}, path)
            continue
        if not _matches(value, t):
            raise LorafitError("E002", key=path, value=value, got=type(value).__name__, expected=_type_name(t))
        if _is_float(t) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value) if key not in ("validation_size",) else value
        kwargs[key] = value
    return cls(**kwargs)


def _is_float(t: Any) -> bool:
    return t is float or (get_origin(t) in (Union, types.UnionType) and float in get_args(t))


def _matches(value: Any, t: Any) -> bool:
    if t is Any:
        return True
    origin = get_origin(t)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in get_args(t))
    if origin is Literal:
        return value in get_args(t)
    if t is type(None):
        return value is None
    if origin in (list, tuple):
        (inner, *_) = get_args(t) or (Any,)
        return isinstance(value, (list, tuple)) and all(_matches(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(t, type):
        if issubclass(t, str):
            return isinstance(value, str)
        return isinstance(value, t)
    return True  # exotic annotations (enums in TrainingArguments): left to TrainingArguments itself


def _type_name(t: Any) -> str:
    origin = get_origin(t)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(t))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(t))
    if origin in (list, tuple):
        args = get_args(t)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if t is type(None):
        return "null"
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
    return names.get(t, getattr(t, "__name__", str(t)))
