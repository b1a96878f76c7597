"""lorafit: LoRA fine-tuning of encoder transformers, one reproducible, measured, deployable command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lorafit.config import Config
    from lorafit.inference import Predictor
    from lorafit.training import Run

__all__ = ["Config", "Predictor", "Run", "__version__", "evaluate", "load", "merge", "plan", "predict", "train"]


def __getattr__(name: str) -> Any:
    """Import the heavy parts lazily so `import lorafit` and `lorafit --help` stay fast."""
    if name == "Config":
        from lorafit.config import Config

        return Config
    if name in ("train", "Run"):
        from lorafit import training

        return getattr(training, name)
    if name in ("load", "Predictor", "evaluate", "predict"):
        from lorafit import inference

        return getattr(inference, name)
    if name == "merge":
        from lorafit.merging import merge

        return merge
    if name == "plan":
        from lorafit.planner import plan

        return plan
    raise AttributeError(f"module 'lorafit' has no attribute {name!r}")
