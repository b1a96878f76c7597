"""Exact parameter counts without weights: the architecture is built on the meta device and wrapped by PEFT.

The counts are PEFT's own (``get_peft_model`` on a meta model), so they agree with a real run by
construction; which modules are new (trained in full) is read from a local checkpoint's safetensors
header, or assumed to be only the head for a Hub id.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafit.config import Config, LoraSettings
from lorafit.errors import LorafitError, warn
from lorafit.modeling import count_parameters, load_config, lora_config, missing_modules

# roberta-base's config.json values, shipped so that planning the presets needs no download.
ROBERTA_BASE = {
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
KNOWN_CONFIGS = {"roberta-base": ROBERTA_BASE, "FacebookAI/roberta-base": ROBERTA_BASE}

STANDARD_TARGETS: list[list[str] | str] = [["query"], ["value"], ["query", "value"], ["query", "key", "value"],
                                           "all-linear"]
STANDARD_RANKS = [1, 2, 4, 8, 16, 32, 64]


@dataclass
class Plan:
    model: str
    task: str
    num_labels: int
    trainable: int
    total: int
    total_deduplicated: int
    new_modules: list[str]
    assumption: str
    targets: Any

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total

    @property
    def adapter_bytes(self) -> int:
        """Approximate adapter file size: fp32 trainable tensors (the safetensors header is small)."""
        return 4 * self.trainable

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "task": self.task, "num_labels": self.num_labels, "trainable": self.trainable,
            "total": self.total, "total_deduplicated": self.total_deduplicated, "percent": round(self.percent, 4),
            "adapter_bytes": self.adapter_bytes, "new_modules": self.new_modules, "assumption": self.assumption,
            "target_modules": sorted(self.targets) if isinstance(self.targets, (set, list)) else self.targets,
        }


def base_config(name: str, task: str, num_labels: int) -> Any:
    from transformers import AutoConfig

    kwargs = {"num_labels": num_labels}
    if name in KNOWN_CONFIGS:
        values = dict(KNOWN_CONFIGS[name])
        return AutoConfig.for_model(values.pop("model_type"), **values, **kwargs)
    cfg = load_config(name)
    cfg.num_labels = num_labels
    return cfg


def checkpoint_keys(folder: str | Path) -> set[str] | None:
    """Tensor names from the safetensors headers of a local checkpoint (no weights are read)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    keys: set[str] = set()
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        keys.update(k for k in header if k != "__metadata__")
    return keys


def _missing_from_checkpoint(model: Any, keys: set[str]) -> list[str]:
    prefix = getattr(model, "base_model_prefix", "")
    missing = []
    for name in model.state_dict():
        stripped = name[len(prefix) + 1 :] if prefix and name.startswith(prefix + ".") else name
        if name not in keys and stripped not in keys and f"{prefix}.{name}" not in keys:
            missing.append(name)
    return missing


def plan_model(name: str, task: str, num_labels: int, lora: LoraSettings, quiet: bool = False) -> Plan:
    import torch
    from peft import get_peft_model

    from lorafit.modeling import auto_class

    cfg = base_config(name, task, num_labels)
    with torch.device("meta"):
        model = auto_class(task).from_config(cfg)
    local = Path(name).is_dir()
    keys = checkpoint_keys(name) if local else None
    if keys is not None:
        new = missing_modules(model, _missing_from_checkpoint(model, keys))
        assumption = f"new modules read from the checkpoint in {name}"
    else:
        prefix = getattr(model, "base_model_prefix", "")
        new = sorted({n.split(".")[0] for n, _ in model.named_parameters() if not n.startswith(prefix + ".")})
        assumption = "Hub id: checkpoint assumed complete, only the head is new"
        if not quiet and name not in KNOWN_CONFIGS:
            warn("W002", name=name)
        if name in KNOWN_CONFIGS:
            assumption = f"{name}: shipped config; its checkpoint has the encoder, only the head is new"
    config = lora_config(model, lora, task, new)
    peft_model = get_peft_model(model, config)
    counts = count_parameters(peft_model)
    return Plan(name, task, num_labels, counts["trainable"], counts["total"], counts["total_deduplicated"],
                new, assumption, config.target_modules)


def plan(config: Config, num_labels: int | None = None) -> Plan:
    """Exact counts for a config (a preset's num_labels is used when the config names no labels)."""
    task = config.task or "classification"
    if num_labels is None:
        if config.data.labels:
            num_labels = len(config.data.labels)
        elif config.preset:
            from lorafit.presets import get_preset

            num_labels = get_preset(config.preset).num_labels
        else:
            num_labels = 2
    return plan_model(config.model.name_or_path, task, num_labels, config.lora)


def parse_budget(text: str) -> int:
    t = text.strip().lower().replace(",", "").replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise LorafitError("E010", value=text) from None
    if value <= 0:
        raise LorafitError("E010", value=text)
    return int(value)


def budget_search(name: str, task: str, num_labels: int, budget: int) -> list[dict[str, Any]]:
    """Standard configs (rank x targets, head trained in full) under a trainable-parameter budget.

    A LoRA count is affine in the rank, so each target set is planned at r=1 and r=2 with PEFT and the
    rest follows exactly; the listed counts are then re-planned for the winners as a check.
    """
    rows = []
    smallest: tuple[int, str] | None = None
    for targets in STANDARD_TARGETS:
        c1 = plan_model(name, task, num_labels, LoraSettings(r=1, target_modules=targets), quiet=True).trainable
        c2 = plan_model(name, task, num_labels, LoraSettings(r=2, target_modules=targets), quiet=True).trainable
        slope, base = c2 - c1, c1 - (c2 - c1)
        label = targets if isinstance(targets, str) else ",".join(targets)
        for r in STANDARD_RANKS:
            count = base + slope * r
            if smallest is None or count < smallest[0]:
                smallest = (count, f"r={r} on {label}")
            if count <= budget:
                rows.append({"r": r, "target_modules": label, "trainable": count})
    if not rows:
        assert smallest is not None
        raise LorafitError("E011", budget=budget, smallest=smallest[1], needed=smallest[0])
    rows.sort(key=lambda row: (-row["trainable"], row["r"]))
    return rows
