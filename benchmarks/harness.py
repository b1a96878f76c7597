"""Machinery shared by the benchmark scripts (not a script itself).

- ``roberta_folder``: the roberta-base architecture (lorafit.planner.ROBERTA_BASE) with random weights and the real
  roberta-base tokenizer, saved as a model folder that ``lorafit train --model FOLDER`` takes; speed does not
  depend on the weights' values, so no download is needed.
- ``lorafit_train``: ``lorafit train ARGS`` run in-process through ``lorafit.cli.main`` (lorafit's own code path:
  data checks, tokenisation, length-grouped sampler, collator, precision, callbacks), with a timing callback and a
  collator wrapper attached to the Trainer that lorafit builds. They only observe.
- ``hf_train``: a plain Hugging Face Trainer + PEFT run the way the public notebooks write it (the pinned
  baseline), with the same timing callback.
- ``spawn``: each measured configuration runs in a fresh worker subprocess (same interpreter, same threads),
  optionally with its peak RSS sampled with psutil; the worker prints one ``BENCH_RESULT {json}`` line.
- ``spawn_lockstep``: several workers at once that take turns, one training step each (a ``Baton``), so that a
  machine whose speed drifts over minutes slows every configuration alike; waiting for a turn is not timed.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ag_news_split, write_rows  # noqa: E402,F401

TOKENIZER = ROOT.parent / "shared" / "data" / "roberta-base-tokenizer"
RESULT = "BENCH_RESULT "
INLINE = False  # set by a script's --smoke: workers run in-process (see spawn)
# --smoke: the same code on a 2-layer, 64-wide RoBERTa with the real tokenizer (seconds instead of minutes)
SMOKE_SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
for _k, _v in OFFLINE.items():
    os.environ.setdefault(_k, _v)


# ---- models and data ---------------------------------------------------------------------------------------
def roberta_config(smoke: bool = False) -> dict[str, Any]:
    from lorafit.planner import ROBERTA_BASE

    values = dict(ROBERTA_BASE)
    if smoke:
        values.update(SMOKE_SHAPE)
    return values


def roberta_folder(folder: Path, smoke: bool = False, seed: int = 0) -> Path:
    """roberta-base's architecture with random weights + the real roberta-base tokenizer, saved to ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModel, RobertaTokenizerFast
    from transformers.utils import logging as hf_logging

    if (folder / "config.json").is_file():
        return folder
    hf_logging.disable_progress_bar()
    # from_pretrained on the folder: RobertaTokenizerFast(vocab_file=, merges_file=) builds an EMPTY vocabulary
    tok = RobertaTokenizerFast.from_pretrained(TOKENIZER)
    if len(tok) != 50265 or len(tok("match goal team")["input_ids"]) != 5:
        raise SystemExit(f"the roberta-base tokenizer at {TOKENIZER} did not load correctly")
    values = roberta_config(smoke)
    cfg = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(seed)
    model = AutoModel.from_config(cfg)  # a base encoder checkpoint, like roberta-base: the head will be new
    model.save_pretrained(folder)
    tok.model_max_length = 512
    tok.save_pretrained(folder)
    return folder


def minilm() -> Path:
    from lorafit.demo import minilm_path

    return minilm_path()


def rows_files(work: Path, n_train: int, n_test: int, n_val: int = 64, seed: int = 0) -> dict[str, Path]:
    """train.csv / heldout.csv / val.csv: disjoint real AG News rows (a small validation file keeps lorafit from
    carving one out of the training rows and keeps its end-of-run scoring short)."""
    train, rest = ag_news_split(n_train, n_test + n_val, seed)
    return {"train": write_rows(work / "train.csv", train), "heldout": write_rows(work / "heldout.csv", rest[:n_test]),
            "val": write_rows(work / "val.csv", rest[n_test:])}


def read_rows(path: Path) -> tuple[list[str], list[int]]:
    """Texts and 0-based label ids (AG News labels 1-4) of a rows file."""
    import csv

    with Path(path).open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [int(r["label"]) - 1 for r in rows]


# ---- observing a training run ------------------------------------------------------------------------------
class Recorder:
    """Timestamps at every optimizer step and the shape of every collated batch (in step order)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, int]] = []
        self.step_end: list[float] = []  # step_end[k] = time at the end of global step k+1
        self.begin = self.end = 0.0
        self.eval_seconds = 0.0
        self.rss_at_begin = 0  # bytes: the process once model and data are loaded, before the first step
        self.waited = 0.0  # seconds spent waiting for a turn (lockstep runs); the timestamps above exclude it
        self.intervals: list[tuple[float, float]] = []  # wall-clock (start, end) of every step, for overlap checks
        self._step_start = 0.0

    def clock(self) -> float:
        """perf_counter less the time spent waiting for a turn: the time this run itself used."""
        return time.perf_counter() - self.waited

    def wrap(self, collator: Any) -> Any:
        def collate(features: list[dict[str, Any]]) -> Any:
            batch = collator(features)
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
            lens = mask.sum(dim=1) if mask is not None else ids.new_full((ids.shape[0],), ids.shape[1])
            self.batches.append({"rows": int(ids.shape[0]), "width": int(ids.shape[1]), "real": int(lens.sum()),
                                 "real_sq": int((lens.long() ** 2).sum())})
            return batch

        return collate

    def callback(self) -> Any:
        from transformers import TrainerCallback

        rec = self

        class Timing(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                import psutil

                rec.rss_at_begin = psutil.Process().memory_info().rss
                rec.begin = rec.clock()

            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if BATON is not None:
                    t0 = time.perf_counter()
                    BATON.acquire()
                    rec.waited += time.perf_counter() - t0
                rec._step_start = time.time()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                rec.step_end.append(rec.clock())
                rec.intervals.append((rec._step_start, time.time()))
                if BATON is not None and state.global_step < state.max_steps:
                    BATON.release()  # after the last step the turn is kept until the worker is done (serve)

            def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any) -> None:
                rec.eval_seconds += float((metrics or {}).get("eval_runtime", 0.0))

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                rec.end = rec.clock()

        return Timing()

    def window(self, first: int, last: int) -> dict[str, Any]:
        """Throughput over global steps first..last (1-based, inclusive), timed from the end of step first-1."""
        if last > len(self.step_end) or first < 2:
            raise SystemExit(f"cannot time steps {first}..{last}: the run made {len(self.step_end)} steps")
        seconds = self.step_end[last - 1] - self.step_end[first - 2]
        bs = self.batches[first - 1 : last]
        rows = sum(b["rows"] for b in bs)
        real = sum(b["real"] for b in bs)
        padded = sum(b["rows"] * b["width"] for b in bs)
        return {"steps": last - first + 1, "seconds": seconds, "rows": rows, "real_tokens": real,
                "padded_tokens": padded, "real_sq": sum(b["real_sq"] for b in bs),
                "padded_sq": sum(b["rows"] * b["width"] ** 2 for b in bs),
                "samples_per_s": rows / seconds, "real_tokens_per_s": real / seconds,
                "padded_share": 1 - real / padded, "mean_width": padded / rows}

    def summary(self) -> dict[str, Any]:
        return {"steps": len(self.step_end), "loop_seconds": self.end - self.begin, "eval_seconds": self.eval_seconds,
                "rows": sum(b["rows"] for b in self.batches[: len(self.step_end)]),
                "rss_mib_at_train_begin": self.rss_at_begin / 2**20, "waited_seconds": self.waited,
                "intervals": self.intervals}


def lorafit_train(args: list[str]) -> Recorder:
    """``lorafit train ARGS`` in this process, through the CLI's own entry point, observed by a Recorder."""
    import lorafit.trainer_utils as tu
    from lorafit import cli

    rec = Recorder()
    original = tu.build_trainer

    def build(*a: Any, **kw: Any) -> Any:
        trainer = original(*a, **kw)
        trainer.add_callback(rec.callback())
        trainer.data_collator = rec.wrap(trainer.data_collator)
        return trainer

    tu.build_trainer = build
    argv = sys.argv
    sys.argv = ["lorafit", "train", *map(str, args)]
    try:
        cli.main()
    finally:
        sys.argv = argv
        tu.build_trainer = original
    return rec


def lorafit_args(model: Path, files: dict[str, Path], out: Path, *extra: Any, throughput: bool = True) -> list[str]:
    """`lorafit train` flags; for throughput runs, no per-epoch evaluation or checkpoint inside the timed loop."""
    args = ["--model", model, "--train-file", files["train"], "--validation-file", files["val"], "--output-dir", out,
            "--overwrite", *extra]
    if throughput:
        args += ["--set", "training.eval_strategy=no", "--set", "training.save_strategy=no"]
    return [str(a) for a in args]


def hf_train(model_dir: Path, train_file: Path, out: Path, *, steps: int, batch: int = 16, pad_to: int | None = 128,
             group_by_length: bool = False, bf16: bool = False, lora: bool = True, lr: float = 5e-4,
             speedups: bool = False, gradient_checkpointing: bool = False,
             release_memory: bool | None = None) -> Recorder:
    """Plain HF Trainer + PEFT as the public notebooks write it: tokenise (padding to ``pad_to`` when given, else
    dynamic padding by the collator), LoRA r8 alpha16 dropout 0.1 on query,value (or full fine-tuning), Trainer.
    ``speedups``: with lorafit's training speed-ups as `lorafit train` applies them: its Trainer (micro-batches
    of at most lorafit's default token budget, parallel parts where they apply, the loss normalised over the
    step), the last layer for the first token only, and on CPU the cheaper dropout masks (and bf16 frozen weights
    under bf16) and the per-layer memory release (``release_memory``; None: lorafit's default, off)."""
    from contextlib import ExitStack

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(42)
    texts, labels = read_rows(train_file)
    tok = AutoTokenizer.from_pretrained(model_dir)

    def tokenize(b: dict[str, Any]) -> Any:
        if pad_to:
            return tok(b["text"], padding="max_length", truncation=True, max_length=pad_to)
        return tok(b["text"], truncation=True, max_length=128)

    ds = Dataset.from_dict({"text": texts, "label": labels}).map(tokenize, batched=True, remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=4)
    if lora:
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules=["query", "value"]))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=batch, learning_rate=lr,
                             max_steps=steps, logging_steps=10, save_strategy="no", eval_strategy="no",
                             report_to="none", use_cpu=True, bf16=bf16, seed=42, disable_tqdm=True,
                             gradient_checkpointing=gradient_checkpointing,
                             train_sampling_strategy="group_by_length" if group_by_length else "random")
    rec = Recorder()
    kind: Any = Trainer
    extra: dict[str, Any] = {}
    if speedups:
        from lorafit.trainer_utils import batch_loss, trainer_class

        kind, extra = trainer_class(), {"compute_loss_func": batch_loss(None, 0.0)}
    trainer = kind(model=model, args=args, train_dataset=ds, processing_class=tok,
                   data_collator=rec.wrap(DataCollatorWithPadding(tok)), callbacks=[rec.callback()], **extra)
    with ExitStack() as context:
        if speedups:
            from lorafit import speedups as sp
            from lorafit.training import resolve_micro_batch_tokens, resolve_parallel_parts

            trainer.micro_batch_tokens = resolve_micro_batch_tokens(None)
            trainer.parallel_parts = resolve_parallel_parts(None, model, args)  # 1 for full fine-tuning
            if bf16:
                sp.frozen_linears_to_bf16(model)  # none under full fine-tuning: every weight trains
            context.enter_context(sp.training_speedups(model))
            context.enter_context(sp.first_token_only(model))
            from lorafit.training import resolve_release_memory

            release = resolve_release_memory(release_memory)
            context.enter_context(sp.release_memory(model, release))
        trainer.train()
    return rec


def bf16_supported() -> bool:
    from lorafit.training import resolve_precision

    return resolve_precision("auto")[0] == "bf16"


# ---- worker subprocesses -----------------------------------------------------------------------------------
def serve(worker: Any) -> None:
    """The worker side: ``SCRIPT --worker JSON`` runs ``worker(spec)`` and prints its result as one line."""
    global BATON
    spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    if "baton" in spec:  # lockstep: load, train and finish only in this worker's turns
        BATON = Baton(Path(spec["baton"]), spec["baton_index"], spec["baton_size"])
        BATON.acquire()
    try:
        result = worker(spec)
    finally:
        if BATON is not None:
            BATON.finish()
    print(RESULT + json.dumps(result), flush=True)


def is_worker() -> bool:
    return "--worker" in sys.argv


def _result(spec: dict[str, Any], returncode: int | None, output: str, wall: float) -> dict[str, Any]:
    """The worker's ``BENCH_RESULT`` line as a dict (with its wall time), or stop with the end of its output."""
    lines = [ln for ln in output.splitlines() if ln.startswith(RESULT)]
    if returncode != 0 or not lines:
        raise SystemExit(f"benchmark worker failed ({spec.get('kind', spec)}), exit {returncode}:\n{output[-4000:]}")
    return {**json.loads(lines[-1][len(RESULT):]), "wall_seconds": wall}


def worker_env(spec: dict[str, Any]) -> dict[str, str]:
    """A worker's environment: this one, offline, and, except for the pinned baseline (the seeds set nothing), the
    variables the `lorafit` command sets before torch loads (``lorafit.cli.PROCESS_ENV``), which a worker that
    imports torch first would otherwise miss. A variable already set here wins, as it does for the command; the
    spec's own ``env`` (an ablation's) wins over both."""
    from lorafit.cli import PROCESS_ENV

    extra = {} if spec.get("kind") == "baseline" else PROCESS_ENV
    return {**extra, **os.environ, **spec.get("env", {}), **OFFLINE}


def spawn(worker: Any, spec: dict[str, Any], *, rss: bool = False, timeout: float = 3600) -> dict[str, Any]:
    """Run ``worker(spec)`` in a fresh process of its script; with ``rss``, sample the process's peak RSS every 20 ms
    (psutil) and take the kernel's own high-water mark (ru_maxrss) as well. In smoke mode (``INLINE``) a worker
    without ``rss`` runs in this process, to keep the smoke test within seconds."""
    if INLINE and not rss:
        t0 = time.time()
        result = json.loads(json.dumps(worker(spec)))
        result["wall_seconds"] = time.time() - t0
        return result
    script = sys.modules[worker.__module__].__file__
    cmd = [sys.executable, script, "--worker", json.dumps(spec)]
    env = worker_env(spec)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        peak = 0
        status = None
        usage = None
        if rss:
            import psutil

            ps = psutil.Process(proc.pid)
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                try:
                    peak = max(peak, ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(True)))
                except psutil.Error:
                    pass
                if time.time() - t0 > timeout:
                    proc.kill()
                time.sleep(0.02)
        else:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        wall = time.time() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    result = _result(spec, proc.returncode, stdout + stderr, wall)
    if rss:
        result["peak_rss_mib_sampled"] = peak / 2**20
        result["peak_rss_mib"] = max(peak, usage.ru_maxrss * 1024 if usage else 0) / 2**20
    return result


class Baton:
    """Turns between the workers of one lockstep group, in a small JSON file under an exclusive lock:
    ``{"turn": i, "done": [...]}``. A worker holds the turn while it loads, for each training step, and from its
    last step until it is done; passing skips the workers that are done."""

    def __init__(self, path: Path, index: int, size: int) -> None:
        self.path, self.index, self.size, self.holding = path, index, size, False

    @staticmethod
    def create(path: Path) -> None:
        path.write_text(json.dumps({"turn": 0, "done": []}))

    def _update(self, change: Any) -> bool:
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            state = json.loads(f.read())
            result = change(state)
            f.seek(0)
            f.truncate()
            f.write(json.dumps(state))
        return result

    def _pass(self, state: dict[str, Any]) -> None:
        for k in range(1, self.size + 1):
            j = (self.index + k) % self.size
            if j not in state["done"]:
                state["turn"] = j
                return

    def acquire(self) -> None:
        while not self.holding:
            self.holding = self._update(lambda st: st["turn"] == self.index)
            if not self.holding:
                time.sleep(0.01)  # a waiting worker polls rarely: the running one has the CPU

    def release(self) -> None:
        if self.holding:
            self._update(self._pass)
            self.holding = False

    def finish(self) -> None:
        def done(state: dict[str, Any]) -> None:
            if self.index not in state["done"]:
                state["done"].append(self.index)
            if state["turn"] == self.index:
                self._pass(state)

        self._update(done)
        self.holding = False


BATON: Baton | None = None  # set in a lockstep worker (serve)


def spawn_lockstep(worker: Any, specs: list[dict[str, Any]], *, timeout: float = 7200) -> list[dict[str, Any]]:
    """Run ``worker(spec)`` for every spec at once, each in its own process, taking turns one training step at a
    time (round-robin, in the order given; see ``Baton``). Their results, in that order."""
    script = sys.modules[worker.__module__].__file__
    with tempfile.TemporaryDirectory() as tmp:
        baton = Path(tmp) / "baton.json"
        Baton.create(baton)
        logs = [tempfile.TemporaryFile() for _ in specs]
        procs = []
        for i, (spec, log) in enumerate(zip(specs, logs, strict=True)):
            turn = {"baton": str(baton), "baton_index": i, "baton_size": len(specs)}
            procs.append(subprocess.Popen([sys.executable, script, "--worker", json.dumps({**spec, **turn})],
                                          stdout=log, stderr=subprocess.STDOUT, env=worker_env(spec)))
        t0 = time.time()
        wall = [0.0] * len(procs)
        running = set(range(len(procs)))
        while running:
            for i in list(running):
                if procs[i].poll() is not None:
                    running.discard(i)
                    wall[i] = time.time() - t0
                    Baton(baton, i, len(specs)).finish()  # a worker that died must not keep the others waiting
            if time.time() - t0 > timeout:
                for i in running:
                    procs[i].kill()
            time.sleep(0.05)
        results = []
        for spec, proc, log, seconds in zip(specs, procs, logs, wall, strict=True):
            log.seek(0)
            text = log.read().decode(errors="replace")
            log.close()
            results.append(_result(spec, proc.returncode, text, seconds))
    return results


def overlaps(results: list[dict[str, Any]]) -> int:
    """Steps of one lockstep worker that ran while a step of another one ran (0 when the turns held)."""
    spans = sorted((a, b, i) for i, r in enumerate(results) for a, b in r.get("intervals", []))
    count, last_end, last_who = 0, float("-inf"), -1
    for a, b, i in spans:
        if a < last_end - 1e-3 and i != last_who:
            count += 1
        if b > last_end:
            last_end, last_who = b, i
    return count


# ---- printing and small statistics ------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table (it prints readably and pastes into docs/benchmarks.md as is)."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    import numpy as np

    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def paired_interval(gold: list[int], a: list[int], b: list[int], n: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of accuracy(b) - accuracy(a) in points, rows resampled together."""
    import numpy as np

    g, a_, b_ = np.asarray(gold), np.asarray(a), np.asarray(b)
    diff = (b_ == g).astype(float) - (a_ == g).astype(float)
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return 100 * float(lo), 100 * float(hi)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def header(title: str, smoke: bool) -> None:
    from common import machine

    print(f"# {title}{' (smoke size: numbers mean nothing)' if smoke else ''}")
    print(f"machine: {machine()}")
    print(f"bf16 autocast on this CPU: {'yes' if bf16_supported() else 'no'}\n", flush=True)


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"lorafit-{prefix}-"))


def save_json(path: Path | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2))
