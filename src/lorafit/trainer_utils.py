"""The Trainer as lorafit uses it: collator, callbacks that write history.csv and train_log.csv as training
goes, weighted loss, early stopping and resume. Shared by classification and NER."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorafit.artifacts import write_csv
from lorafit.config import Config
from lorafit.errors import LorafitError

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class InputsOnlyCollator:
    """Pads a batch and drops bookkeeping columns ('length', 'row_id') that the model does not take."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        return self.inner([{k: v for k, v in f.items() if k in MODEL_KEYS} for f in features])


def history_rows(log_history: list[dict[str, Any]]) -> tuple[list[list[Any]], list[list[Any]], list[str]]:
    """train_log rows, history rows and the history header, from the Trainer's own log history."""
    train_rows, hist_rows = [], []
    last_loss = None
    metric_keys: list[str] = []
    for entry in log_history:
        for k in entry:
            if k.startswith("eval_") and k not in ("eval_loss", "eval_runtime", "eval_samples_per_second",
                                                   "eval_steps_per_second") and k not in metric_keys:
                metric_keys.append(k)
    for entry in log_history:
        if "loss" in entry:
            last_loss = entry["loss"]
            train_rows.append([entry.get("step"), entry.get("epoch"), entry["loss"], entry.get("learning_rate"),
                               entry.get("grad_norm")])
        if "eval_loss" in entry:
            hist_rows.append([entry.get("epoch"), entry.get("step"), last_loss, entry["eval_loss"],
                              *[entry.get(k) for k in metric_keys]])
    header = ["epoch", "step", "train_loss", "eval_loss", *[k[len("eval_"):] for k in metric_keys]]
    return train_rows, hist_rows, header


def make_history_callback(out: Path) -> Any:
    from transformers import TrainerCallback

    class HistoryCallback(TrainerCallback):
        """Rewrites history.csv and train_log.csv (atomically) from the Trainer's log history."""

        def _write(self, state: Any) -> None:
            if not state.is_world_process_zero:
                return
            train_rows, hist_rows, header = history_rows(state.log_history)
            write_csv(out / "train_log.csv", ["step", "epoch", "loss", "learning_rate", "grad_norm"], train_rows)
            write_csv(out / "history.csv", header, hist_rows)

        def on_log(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._write(state)

        def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._write(state)

    return HistoryCallback()


def weighted_loss(weights: list[float], smoothing: float) -> Any:
    import torch

    w = torch.tensor(weights, dtype=torch.float32)

    def compute(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return torch.nn.functional.cross_entropy(
            logits.float().view(-1, logits.shape[-1]), labels.view(-1), weight=w.to(logits.device),
            ignore_index=-100, label_smoothing=smoothing,
        )

    return compute


def build_trainer(model: Any, args: Any, tokenizer: Any, train_ds: Any, eval_ds: Any,
                  class_weights: list[float] | None, cfg: Config, out: Path, *, ner: bool = False,
                  compute_metrics: Any = None) -> Any:
    from transformers import (
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        Trainer,
    )

    from lorafit.metrics import trainer_metrics

    inner = DataCollatorForTokenClassification(tokenizer) if ner else DataCollatorWithPadding(tokenizer)
    callbacks = [make_history_callback(out)]
    if cfg.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=InputsOnlyCollator(inner),
        compute_metrics=compute_metrics or trainer_metrics,
        compute_loss_func=weighted_loss(class_weights, args.label_smoothing_factor) if class_weights else None,
        callbacks=callbacks,
    )


def run_training(trainer: Any, out: Path, resume: bool | str) -> None:
    checkpoint: str | bool | None = None
    if resume:
        ckdir = out / "checkpoints"
        if isinstance(resume, str):
            checkpoint = resume
            if not Path(resume).is_dir():
                raise LorafitError("E302", path=resume, reason="no such checkpoint folder")
        else:
            found = sorted(ckdir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
            checkpoint = str(found[-1]) if found else None
    trainer.train(resume_from_checkpoint=checkpoint)
