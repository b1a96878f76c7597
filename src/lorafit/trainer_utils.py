"""The Trainer as lorafit uses it: collator, callbacks that write history.csv and train_log.csv as training
goes, weighted loss, early stopping and resume. Shared by classification and NER."""

from __future__ import annotations

import os
from functools import cache
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


def epoch_seeded_sampler(dataset: Any, strategy: str, batch_size: int, seed: int, length_column: str) -> Any:
    """A training sampler whose order depends only on (seed, epoch), never on the global RNG.

    The Trainer's own samplers draw from the global RNG, whose state mid-epoch also depends on dropout; after a
    resume from a mid-epoch checkpoint the data order then differs. With this sampler the Trainer's batch
    skipping lands on exactly the batches an uninterrupted run would see, so resumed weights are identical.
    """
    import torch
    from torch.utils.data import Sampler
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = dataset[length_column] if length_column in dataset.column_names else [len(x) for x in
                                                                                     dataset["input_ids"]]

    class EpochSeededSampler(Sampler[int]):
        def __init__(self) -> None:
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def __len__(self) -> int:
            return len(lengths)

        def __iter__(self) -> Any:
            g = torch.Generator().manual_seed(seed * 1000 + self.epoch)
            if strategy == "group_by_length":
                return iter(get_length_grouped_indices(lengths, batch_size, generator=g))
            return iter(torch.randperm(len(lengths), generator=g).tolist())

    return EpochSeededSampler()


def trainer_class() -> Any:
    from transformers import Trainer

    class LorafitTrainer(Trainer):
        """The HF Trainer with an epoch-seeded training sampler (exact resume, see epoch_seeded_sampler), a loss
        normalised over the whole optimizer step (batch_loss), and micro-batches: a training batch of more than
        ``micro_batch_tokens`` padded tokens runs forward and backward in parts of at most that many, their
        gradients summed before the one optimizer step (the same update, less memory for activations); with
        ``parallel_parts`` > 1 that many parts run at once, each on its own thread (``run_parts``), each part at
        most ``micro_batch_tokens / parallel_parts`` tokens, so as many tokens are in flight as before."""

        micro_batch_tokens = 0
        parallel_parts = 1

        def _parallel_step(self, model: Any, parts: list[Any], num_items_in_batch: Any) -> Any:
            """Run ``parts`` (a multiple of ``parallel_parts``) ``parallel_parts`` at a time, each on its own
            thread with one intra-op thread, and add their gradients to the parameters' in part order; see
            ``run_parts``."""
            import torch

            model.train()
            if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
                self.optimizer.train()
            params = [p for p in model.parameters() if p.requires_grad]
            scale = 1.0 / self.accelerator.gradient_accumulation_steps  # what accelerator.backward divides by

            def part_grads(part: Any) -> tuple[Any, tuple[Any, ...]]:
                with self.compute_loss_context_manager():
                    loss = self.compute_loss(model, self._prepare_inputs(part), num_items_in_batch=num_items_in_batch)
                return loss.detach(), torch.autograd.grad(loss * scale, params, allow_unused=True)

            losses = run_parts(part_grads, parts, params, self.parallel_parts)
            return torch.stack(losses).sum()

        def _get_num_items_in_batch(self, batch_samples: list[Any], device: Any) -> Any:
            """With class weights a step's loss is normalised by the sum of its labels' weights (training and
            evaluation both ask here), as torch's weighted mean does for one batch."""
            count = super()._get_num_items_in_batch(batch_samples, device)
            weights = getattr(self.compute_loss_func, "weights", None)
            if weights is None or count is None or not batch_samples:
                return count
            mass = sum(label_mass(b["labels"].view(-1), weights) for b in batch_samples).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                mass = self.accelerator.gather(mass).sum()
            return mass

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            from contextlib import nullcontext

            if self.parallel_parts > 1 and num_items_in_batch is not None:
                parts = split_batch(inputs, self.micro_batch_tokens // self.parallel_parts, self.parallel_parts)
                if len(parts) > 1:
                    return self._parallel_step(model, parts, num_items_in_batch)
            parts = split_batch(inputs, self.micro_batch_tokens) if num_items_in_batch is not None else [inputs]
            loss = None
            for k, part in enumerate(parts):  # gradients synchronise (DDP) once, after the last part
                with self.accelerator.no_sync(model) if k < len(parts) - 1 else nullcontext():
                    step = super().training_step(model, part, num_items_in_batch)
                loss = step if loss is None else loss + step
            return loss

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            ds = train_dataset if train_dataset is not None else self.train_dataset
            strategy = str(getattr(self.args.train_sampling_strategy, "value", self.args.train_sampling_strategy))
            if strategy in ("group_by_length", "random") and hasattr(ds, "column_names"):
                return epoch_seeded_sampler(ds, strategy, self.args.train_batch_size *
                                            self.args.gradient_accumulation_steps, self.args.seed,
                                            self.args.length_column_name)
            return super()._get_train_sampler(train_dataset)

        def _get_eval_sampler(self, eval_dataset: Any) -> Any:
            """Dataset order: transformers 5 length-groups evaluation too, which returns predictions shuffled (the
            trap in DEVELOPERS.md) and draws on the global RNG mid-training. Under DDP, Accelerate shards these
            sequential batches across processes and gathers them back in order."""
            from torch.utils.data import SequentialSampler

            return SequentialSampler(eval_dataset)

    return LorafitTrainer


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
    # a fixed column order: a resumed Trainer reloads its log history with sorted keys
    first = ["eval_accuracy", "eval_macro_f1", "eval_precision", "eval_recall", "eval_f1"]
    metric_keys.sort(key=lambda k: (first.index(k) if k in first else len(first), k))
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


PICKLED = (".pt", ".pth", ".bin", ".pkl")


def make_guard_callback(out: Path, meta: dict[str, Any]) -> Any:
    """Records each checkpoint's files in the run manifest as it is written, and stops on a NaN / inf loss."""
    import math

    from transformers import TrainerCallback

    from lorafit.artifacts import write_manifest

    class GuardCallback(TrainerCallback):
        bad: tuple[int, float] | None = None

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                write_manifest(out, {**meta, "status": "training", "global_step": state.global_step})

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            logs = logs or {}
            loss, norm = logs.get("loss"), logs.get("grad_norm")
            bad = [float(v) for v in (loss, norm) if v is not None and not math.isfinite(float(v))]
            if bad:
                self.bad = (state.global_step, bad[0])
                control.should_training_stop = True
                control.should_save = False  # keep the last good checkpoint as the newest one
                control.should_evaluate = False

    return GuardCallback()


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


def batch_loss(weights: list[float] | None, smoothing: float) -> Any:
    """Cross-entropy over the labelled rows (classification) or sub-tokens (NER), summed and divided by the
    Trainer's ``num_items_in_batch``: the number of labels (or, with class weights, the sum of their weights) in
    the whole optimizer step. Gradient accumulation and lorafit's micro-batches then give exactly the loss of one
    big batch. (transformers 5 treats a model whose forward takes ``**kwargs`` as normalising by that count itself;
    BERT/RoBERTa heads do not, so their own mean loss came out multiplied by the accumulation steps.)"""
    import torch

    w = torch.tensor(weights, dtype=torch.float32) if weights else None

    def compute(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        flat, gold = logits.float().view(-1, logits.shape[-1]), labels.view(-1)
        weight = w.to(logits.device) if w is not None else None
        total = torch.nn.functional.cross_entropy(flat, gold, weight=weight, ignore_index=-100,
                                                  label_smoothing=smoothing, reduction="sum")
        if num_items_in_batch is None:  # evaluation: this batch alone
            num_items_in_batch = label_mass(gold, weight)
        return total / num_items_in_batch

    compute.weights = w  # type: ignore[attr-defined]
    return compute


def label_mass(labels: Any, weights: Any = None) -> Any:
    """How many labels are not ignored (-100), or the sum of their class weights."""
    keep = labels[labels != -100]
    return keep.numel() if weights is None else weights.to(keep.device)[keep].sum()


def split_batch(inputs: dict[str, Any], budget: int, multiple: int = 1) -> list[dict[str, Any]]:
    """Rows of a padded batch in parts of at most ``budget`` padded tokens each (whole batch when it fits and
    ``multiple`` is 1), each part cut to its own longest row when the batch is right-padded.

    ``multiple`` > 1 (parallel parts): a multiple of that many parts, as rows allow, each taking every n-th row
    (rows k, k+n, ...), so that parts run side by side get rows of like lengths (length-grouped batches are sorted
    by length) and finish together; otherwise consecutive rows."""
    ids = inputs["input_ids"]
    rows, width = ids.shape
    parts = -(-rows * width // budget) if budget > 0 else 1
    parts = min(rows, -(-parts // multiple) * multiple)
    if parts <= 1:
        return [inputs]
    mask = inputs.get("attention_mask")
    right_padded = mask is not None and bool(mask[:, 0].all())
    out = []
    for k in range(parts):
        take = slice(k, None, parts) if multiple > 1 else slice(k * rows // parts, (k + 1) * rows // parts)
        part = {key: v[take] if hasattr(v, "shape") and v.dim() and v.shape[0] == rows else v
                for key, v in inputs.items()}
        if right_padded:
            w = int(part["attention_mask"].sum(dim=1).max())
            part = {key: v[:, :w] if hasattr(v, "shape") and v.dim() == 2 and v.shape[1] == width else v
                    for key, v in part.items()}
        # copies of their own: a token classifier's loss flattens its labels with view(), which a slice refuses
        out.append({key: v.contiguous() if hasattr(v, "contiguous") else v for key, v in part.items()})
    return out


def run_parts(part_grads: Any, parts: list[Any], params: list[Any], threads: int) -> list[Any]:
    """Run ``part_grads(part) -> (loss, grads of params)`` for every part, ``threads`` at a time: the first of
    each group on this thread, the others on a pool, every one with one intra-op thread and its dropout masks from a
    seed drawn here from torch's generator (``lorafit.masks.part_stream``). The grads are added to ``p.grad`` in part
    order, whatever order the threads finish in: the same update for a seed on every run, and (up to float
    rounding) the one the whole batch gives. Returns the parts' losses in order.

    Why (docs/benchmarks.md): in eager PyTorch the main thread runs Python, op dispatch and allocation between the
    matmuls while torch's other intra-op threads wait (a sixth of a bf16 step on 2 cores, measured); parts on their
    own threads fill that time with another part's work."""
    from concurrent.futures import wait

    import torch

    from lorafit.masks import part_stream
    from lorafit.speedups import clear_thread_caches

    def run(part: Any, seed: int) -> tuple[Any, tuple[Any, ...]]:
        torch.set_num_threads(1)
        try:
            with part_stream(seed):
                return part_grads(part)
        finally:
            clear_thread_caches()

    main_threads = torch.get_num_threads()
    losses = []
    pool = _part_pool(threads - 1)
    try:
        for lo in range(0, len(parts), threads):
            group = parts[lo:lo + threads]
            seeds = torch.empty(len(group), dtype=torch.int64).random_(0, None).tolist()
            futures = [pool.submit(run, part, seed) for part, seed in zip(group[1:], seeds[1:], strict=True)]
            try:
                results = [run(group[0], seeds[0])]
            except BaseException:
                wait(futures)  # no part left running when the error propagates
                raise
            results += [f.result() for f in futures]  # re-raises a part's error
            for loss, grads in results:
                losses.append(loss)
                for p, g in zip(params, grads, strict=True):
                    if g is not None:
                        p.grad = g if p.grad is None else p.grad.add_(g)
    finally:
        torch.set_num_threads(main_threads)
    return losses


@cache
def _part_pool(workers: int) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lorafit-part")


os.register_at_fork(after_in_child=_part_pool.cache_clear)  # a forked child has no pool threads: it starts its own


def build_trainer(model: Any, args: Any, tokenizer: Any, train_ds: Any, eval_ds: Any,
                  class_weights: list[float] | None, cfg: Config, out: Path, *, ner: bool = False,
                  compute_metrics: Any = None) -> Any:
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding, EarlyStoppingCallback

    from lorafit.metrics import trainer_metrics

    inner = DataCollatorForTokenClassification(tokenizer) if ner else DataCollatorWithPadding(tokenizer)
    callbacks = [make_history_callback(out), make_guard_callback(out, {"kind": "run", "task": cfg.task})]
    if cfg.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=InputsOnlyCollator(inner),
        compute_metrics=compute_metrics or trainer_metrics,
        compute_loss_func=batch_loss(class_weights, args.label_smoothing_factor),
        callbacks=callbacks,
    )
    trainer.micro_batch_tokens = int(cfg.micro_batch_tokens or 0)
    trainer.parallel_parts = int(cfg.parallel_parts or 1)
    return trainer


def find_checkpoint(out: Path, resume: bool | str) -> str | None:
    if isinstance(resume, str):
        if not Path(resume).is_dir():
            raise LorafitError("E302", path=resume, reason="no such checkpoint folder")
        return resume
    from lorafit.artifacts import MANIFEST, read_json

    manifest = out / MANIFEST
    recorded = read_json(manifest).get("files", {}) if manifest.is_file() else {}
    found = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    for ck in reversed(found):
        # complete = written to the end: the manifest records a checkpoint only after the Trainer saved all of it
        rel = ck.relative_to(out).as_posix()
        if (ck / "trainer_state.json").is_file() and f"{rel}/trainer_state.json" in recorded:
            return str(ck)
    return None


def check_checkpoint(out: Path, checkpoint: str, allow_pickle: bool) -> None:
    """Pickled optimizer / scheduler / RNG files are loaded only if this run's manifest recorded them."""
    from lorafit.artifacts import MANIFEST, read_json
    from lorafit.modeling import sha256_file

    manifest = out / MANIFEST
    recorded = read_json(manifest).get("files", {}) if manifest.is_file() else {}
    ck = Path(checkpoint)
    for f in sorted(ck.iterdir()):
        if f.suffix not in PICKLED:
            continue
        try:
            rel = f.resolve().relative_to(out.resolve()).as_posix()
        except ValueError:
            rel = None
        if (rel is None or recorded.get(rel) != sha256_file(f)) and not allow_pickle:
            raise LorafitError("E309", path=f)


def run_training(trainer: Any, out: Path, resume: bool | str, cfg: Config, allow_pickle: bool = False) -> str:
    """Train (resuming from the newest complete checkpoint when asked); returns the precision to score in.

    On CPU the speed-ups in lorafit.speedups apply: cheaper dropout masks (unless cfg.fast_dropout is off) and,
    under bf16 autocast, frozen Linear weights stored in bf16 (bit-identical matmuls). Those weights stay bf16, so
    the run is then scored in bf16 too. On every device, a BERT-family sequence classifier runs its last layer for
    the first token only (unless cfg.first_token_only is off). On CPU, with cfg.release_memory on, freed memory goes
    back to the OS after every third encoder layer."""
    from lorafit import speedups

    checkpoint = find_checkpoint(out, resume) if resume else None
    if checkpoint:
        check_checkpoint(out, checkpoint, allow_pickle)
    cpu = trainer.args.device.type == "cpu"
    if cpu and trainer.args.bf16 and trainer.args.world_size == 1:
        speedups.frozen_linears_to_bf16(trainer.model)
    with speedups.training_speedups(trainer.model, fast_dropout=cfg.fast_dropout and cpu), \
            speedups.first_token_only(trainer.model, cfg.first_token_only), \
            speedups.release_memory(trainer.model, cfg.release_memory and cpu):
        trainer.train(resume_from_checkpoint=checkpoint)
    guard = next((c for c in trainer.callback_handler.callbacks if hasattr(c, "bad")), None)
    if guard is not None and guard.bad is not None:
        step, loss = guard.bad
        last = find_checkpoint(out, True)
        raise LorafitError("E403", step=step, loss=loss, checkpoint=last or "none yet")
    return "bf16" if trainer.args.bf16 else "fp32"
