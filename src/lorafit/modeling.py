"""Loading base models and tokenizers, LoRA wrapping through PEFT, fingerprints and parameter counts.

The one rule this module enforces: every module the base checkpoint lacks (the new head, and for some
checkpoints the pooler that the classification model uses) is trained and saved with the adapter, so
nothing comes back random at reload.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafit.config import LoraSettings
from lorafit.errors import LorafitError, warn

if TYPE_CHECKING:
    import torch

HEAD_NAMES = ("classifier", "score", "out_proj")
# Position ids of these families start after the padding index, so two positions are not usable.
OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod"}


def auto_class(task: str) -> Any:
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForTokenClassification if task == "ner" else AutoModelForSequenceClassification


def peft_task_type(task: str) -> str:
    return "TOKEN_CLS" if task == "ner" else "SEQ_CLS"


# ---- locating models ---------------------------------------------------------------------------------
def resolve_model(name_or_path: str, revision: str | None = None) -> str:
    """A local folder is checked; a Hub id is checked for reachability so that offline fails in seconds."""
    p = Path(name_or_path).expanduser()
    if p.exists() or name_or_path.startswith((".", "/", "~")):
        if not p.is_dir():
            raise LorafitError("E201", path=name_or_path, reason="no such folder")
        if not (p / "config.json").is_file():
            raise LorafitError("E201", path=name_or_path,
                               reason="it has no config.json (not a Transformers model folder)")
        return str(p.resolve())
    from lorafit.data import hub_reachable

    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"  # use the cache if the files are there, fail at once if not
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(name_or_path, revision=revision, local_files_only=True)
        except Exception:
            raise LorafitError("E202", name=name_or_path) from None
    return name_or_path


def load_config(path: str, revision: str | None = None) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, revision=revision)
    except Exception as err:
        raise LorafitError("E201", path=path, reason=_short(err)) from None


def load_tokenizer(path: str, task: str, revision: str | None = None) -> Any:
    """Load the tokenizer; RoBERTa-family tokenizers get add_prefix_space=True for pre-split words (NER)."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {}
    if task == "ner":
        kwargs["add_prefix_space"] = True
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, **kwargs)
    except Exception as err:
        raise LorafitError("E201", path=path, reason=f"tokenizer: {_short(err)}") from None
    return tok


def model_limit(config: Any, tokenizer: Any | None = None) -> int:
    """The longest input the model accepts, in tokens."""
    limit = int(getattr(config, "max_position_embeddings", 512) or 512)
    if getattr(config, "model_type", "") in OFFSET_POSITION_MODELS:
        limit -= 2
    tok_max = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if isinstance(tok_max, int) and 0 < tok_max < limit:
        limit = tok_max
    return limit


def _short(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(err).__name__


# ---- the base model and its missing modules ------------------------------------------------------------
def load_base(path: str, task: str, id2label: dict[int, str], revision: str | None = None) -> tuple[Any, list[str]]:
    """Load the task model from a base checkpoint and name the modules the checkpoint lacks."""
    import torch
    from transformers.utils import logging as hf_logging

    cls = auto_class(task)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # we report missing modules ourselves, clearly
    hf_logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(
            path, revision=revision, num_labels=len(id2label), id2label=dict(id2label),
            label2id={v: k for k, v in id2label.items()}, output_loading_info=True, dtype=torch.float32,
        )
    except Exception as err:
        raise LorafitError("E201", path=path, reason=_short(err)) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model, missing_modules(model, info.get("missing_keys", []))


def missing_modules(model: torch.nn.Module, missing_keys: list[str] | set[str]) -> list[str]:
    """The smallest set of module paths whose parameters are all missing from the checkpoint."""
    missing = set(missing_keys)
    if not missing:
        return []
    modules = dict(model.named_modules())
    complete: set[str] = set()
    for name, module in modules.items():
        params = [f"{name}.{p}" if name else p for p, _ in module.named_parameters()]
        if params and all(p in missing for p in params):
            complete.add(name)
    top = sorted(n for n in complete if n and not any(n.startswith(c + ".") for c in complete if c and c != n))
    return top


# ---- LoRA -------------------------------------------------------------------------------------------------
def linear_module_names(model: torch.nn.Module) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def resolve_targets(model: torch.nn.Module, lora: LoraSettings, exclude: list[str]) -> list[str] | str:
    """Concrete LoRA targets: PEFT's default for the architecture, a checked list, a regex, or all linear
    layers of the encoder (never the head or a module trained in full)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    linears = linear_module_names(model)
    outside = tuple(exclude) + HEAD_NAMES
    enc = [n for n in linears if not any(n == e or n.startswith(e + ".") or n.split(".")[0] == e for e in outside)]
    targets = lora.target_modules
    if targets is None:
        mt = getattr(model.config, "model_type", "")
        if mt not in DEFAULTS:
            raise LorafitError("E003", key="lora.target_modules", value=None,
                               expected=f"PEFT has no default for model type '{mt}'; name the modules")
        return list(DEFAULTS[mt])
    if targets == "all-linear":
        suffixes: dict[str, set[str]] = {}
        for n in enc:
            m = re.match(r"^(.*\.)\d+\.(.*)$", n)
            if m:
                suffixes.setdefault(m.group(1), set()).add(m.group(2))
        parts = [rf"{re.escape(pre)}\d+\.({'|'.join(sorted(map(re.escape, suf)))})" for pre, suf in suffixes.items()]
        return "|".join(f"(?:{p})" for p in parts)
    if isinstance(targets, str):
        try:
            rx = re.compile(targets)
        except re.error as err:
            raise LorafitError("E003", key="lora.target_modules", value=targets,
                               expected=f"a valid regex ({err})") from None
        if not any(rx.fullmatch(n) for n in enc):
            raise LorafitError("E204", missing=targets, available=_suffixes(enc))
        return targets
    for t in targets:
        if t in HEAD_NAMES or t in exclude:
            raise LorafitError("E207", name=t)
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in enc)]
    if missing:
        raise LorafitError("E204", missing=", ".join(missing), available=_suffixes(enc))
    return list(targets)


def _suffixes(names: list[str]) -> str:
    return ", ".join(sorted({n.split(".")[-1] for n in names}))


def lora_config(model: torch.nn.Module, lora: LoraSettings, task: str, new_modules: list[str]) -> Any:
    from peft import LoraConfig

    save = sorted(set(new_modules) | set(lora.modules_to_save or []))
    targets = resolve_targets(model, lora, save)
    return LoraConfig(
        task_type=peft_task_type(task),
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        layers_to_transform=lora.layers_to_transform,
        bias=lora.bias,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        modules_to_save=save or None,
    )


def wrap(model: torch.nn.Module, config: Any) -> Any:
    from peft import get_peft_model

    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise LorafitError("E003", key="lora", value=str(config.target_modules), expected=_short(err)) from None


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and total counts: PEFT's convention (the frozen original of each module trained in full is
    counted beside its trainable copy) and the deduplicated total of the model you deploy."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    dup = 0
    for _name, module in model.named_modules():
        if type(module).__name__ == "ModulesToSaveWrapper":
            dup += sum(p.numel() for p in module.original_module.parameters())
    return {"trainable": trainable, "total": total, "total_deduplicated": total - dup}


def saved_modules(model: torch.nn.Module) -> list[str]:
    """Paths of the modules PEFT trains in full and saves (its wrappers), relative to the task model."""
    names = []
    for name, module in model.named_modules():
        if type(module).__name__ == "ModulesToSaveWrapper":
            names.append(name.removeprefix("base_model.model."))
    return sorted(names)


# ---- fingerprints ---------------------------------------------------------------------------------------
FINGERPRINT_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


def fingerprint(config: Any, path: str | None = None) -> dict[str, Any]:
    out = {k: getattr(config, k, None) for k in FINGERPRINT_FIELDS}
    if path and Path(path).is_dir():
        files = sorted(Path(path).glob("*.safetensors"))
        if files:
            h = hashlib.sha256()
            for f in files:
                h.update(sha256_file(f).encode())
            out["weights_sha256"] = h.hexdigest()
    return out


def check_fingerprint(recorded: dict[str, Any], actual: dict[str, Any]) -> None:
    for key in (*FINGERPRINT_FIELDS, "weights_sha256"):
        want, got = recorded.get(key), actual.get(key)
        if want is not None and got is not None and want != got:
            raise LorafitError("E203", field=key, got=got, expected=want)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def report_new_modules(new_modules: list[str]) -> None:
    extra = [m for m in new_modules if m not in HEAD_NAMES]
    if extra:
        warn("W005", modules=", ".join(extra))
