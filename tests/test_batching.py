"""One optimizer step is one step however the batch is cut: gradient accumulation and lorafit's micro-batches
give the same loss and the same weights as the whole batch, with and without class weights; so do parallel parts
(each on its own thread), alone and in groups."""

from __future__ import annotations

import csv
import threading

import pytest
import torch

from conftest import make_rows, write_csv
from lorafit.trainer_utils import batch_loss, label_mass, split_batch


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory, tiny_roberta):
    """The tiny RoBERTa without dropout, so that differently cut batches must give equal numbers."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = tmp_path_factory.mktemp("nodrop")
    cfg = AutoConfig.from_pretrained(tiny_roberta)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_roberta).save_pretrained(folder)
    write_csv(folder / "train.csv", make_rows(64, 3))
    return folder


def _train(cli, folder, out, *extra):
    res = cli("train", "--model", folder, "--train-file", folder / "train.csv", "--output-dir", out, "--max-steps", "3",
              "--precision", "fp32", "--dropout", "0", "--set", "training.logging_steps=1", "--set",
              "training.eval_strategy=no", "--set", "training.save_strategy=no", *extra)
    assert res.code == 0, res.output
    from safetensors.torch import load_file

    log = [(float(r["loss"]), float(r["grad_norm"])) for r in csv.DictReader((out / "train_log.csv").open())]
    return log, load_file(out / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize("weights", [None, "auto"])
def test_accumulation_and_micro_batches_give_the_whole_batch_update(no_dropout_model, cli, tmp_path, weights,
                                                                   monkeypatch):
    """Batch 8 whole, 4 x 2 accumulated, and 8 cut into micro-batches of <= 20 tokens: same losses, gradient norms
    and weights after 3 steps. (The loss of an accumulated step used to come out doubled: transformers 5 assumed
    the RoBERTa head normalised by the step's label count.)"""
    from lorafit import trainer_utils

    parts_seen = []
    real_split = trainer_utils.split_batch
    monkeypatch.setattr(trainer_utils, "split_batch", lambda inputs, budget, multiple=1: parts_seen.append(
        (multiple, len(p := real_split(inputs, budget, multiple)))) or p)
    threads_seen = set()
    real_run = trainer_utils.run_parts

    def run_parts(part_grads, parts, params, threads):
        def recorded(part):
            threads_seen.add((threading.current_thread().name, torch.get_num_threads()))
            return part_grads(part)
        return real_run(recorded, parts, params, threads)

    monkeypatch.setattr(trainer_utils, "run_parts", run_parts)
    extra = ["--set", "data.class_weights=auto"] if weights else []
    one = ["--set", "parallel_parts=1"]
    runs = {
        "whole": _train(cli, no_dropout_model, tmp_path / "a", "--batch-size", "8", "--set", "micro_batch_tokens=0",
                        *one, *extra),
        "accumulated": _train(cli, no_dropout_model, tmp_path / "b", "--batch-size", "4", "--set",
                              "training.gradient_accumulation_steps=2", "--set", "micro_batch_tokens=0", *one, *extra),
        "micro": _train(cli, no_dropout_model, tmp_path / "c", "--batch-size", "8", "--set", "micro_batch_tokens=20",
                        *one, *extra),
    }
    assert max(n for m, n in parts_seen if m == 1) >= 3  # the micro run really cut its batches (8 rows of > 8 tokens)
    assert not threads_seen
    runs["parallel"] = _train(cli, no_dropout_model, tmp_path / "d", "--batch-size", "8", "--set",
                              "micro_batch_tokens=0", "--set", "parallel_parts=2", *extra)
    assert {n for m, n in parts_seen if m == 2} == {2}
    runs["parallel micro"] = _train(cli, no_dropout_model, tmp_path / "e", "--batch-size", "8", "--set",
                                    "micro_batch_tokens=40", "--set", "parallel_parts=2", *extra)
    assert max(n for m, n in parts_seen if m == 2) >= 4  # 2 at a time, in more than one group
    # each part ran on a thread of its own, with one intra-op thread
    assert {t for t, _ in threads_seen} == {"MainThread", "lorafit-part_0"} and {n for _, n in threads_seen} == {1}
    (log, weights_a) = runs["whole"]
    assert len(log) == 3
    for name in ("accumulated", "micro", "parallel", "parallel micro"):
        other_log, other_w = runs[name]
        assert [x for r in other_log for x in r] == pytest.approx([x for r in log for x in r], rel=1e-5), name
        assert max((weights_a[k] - other_w[k]).abs().max().item() for k in weights_a) < 1e-6, name


def test_batch_loss_is_torch_cross_entropy_and_adds_up_over_parts():
    torch.manual_seed(0)
    logits, gold = torch.randn(10, 4), torch.tensor([0, 1, 2, 3, 0, 1, -100, 2, 2, 3])
    w = [0.5, 1.0, 2.0, 4.0]
    for weights, smoothing in ((None, 0.0), (w, 0.0), (w, 0.1), (None, 0.1)):
        loss = batch_loss(weights, smoothing)
        wt = torch.tensor(weights) if weights else None
        want = torch.nn.functional.cross_entropy(logits, gold, weight=wt, ignore_index=-100, label_smoothing=smoothing)
        assert loss({"logits": logits}, gold) == pytest.approx(want.item(), rel=1e-6)
        total = label_mass(gold, wt)  # what the Trainer's count gives a step
        parts = loss({"logits": logits[:3]}, gold[:3], total) + loss({"logits": logits[3:]}, gold[3:], total)
        assert parts.item() == pytest.approx(want.item(), rel=1e-6)


def test_trainer_asks_for_the_label_count_where_lorafit_weighs_it():
    """LorafitTrainer overrides Trainer._get_num_items_in_batch to weigh labels by class weight: the method must
    still exist under that name, or weighted runs would silently normalise by the plain count."""
    from transformers import Trainer

    from lorafit.trainer_utils import trainer_class

    assert callable(getattr(Trainer, "_get_num_items_in_batch", None))
    assert "_get_num_items_in_batch" in vars(trainer_class())


def test_split_batch_parts_and_trimming():
    ids = torch.arange(6 * 10).view(6, 10)
    mask = torch.ones(6, 10, dtype=torch.long)
    mask[3:, 4:] = 0  # rows 3-5 have 4 real tokens
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(6)}
    assert split_batch(batch, 0) == [batch] and split_batch(batch, 60) == [batch]
    parts = split_batch(batch, 30)
    assert [p["labels"].tolist() for p in parts] == [[0, 1, 2], [3, 4, 5]]
    assert parts[0]["input_ids"].shape == (3, 10) and parts[1]["input_ids"].shape == (3, 4)  # cut to its rows
    assert torch.equal(parts[1]["input_ids"], ids[3:, :4])
    assert len(split_batch(batch, 1)) == 6  # never more parts than rows
    # parallel parts: a multiple of that many, every n-th row each (rows of like lengths side by side)
    assert [p["labels"].tolist() for p in split_batch(batch, 0, 2)] == [[0, 2, 4], [1, 3, 5]]
    parts = split_batch(batch, 20, 2)  # 60 tokens in parts of <= 20: 3, rounded up to 4
    assert [p["labels"].tolist() for p in parts] == [[0, 4], [1, 5], [2], [3]]
    assert [p["input_ids"].shape[1] for p in parts] == [10, 10, 10, 4]
    assert len(split_batch(batch, 1, 4)) == 6
    tokens = dict(batch, labels=ids % 3)  # a token classifier's labels: 2-D, flattened with view() by its loss
    for budget, multiple in ((30, 1), (0, 2), (20, 2)):
        for p in split_batch(tokens, budget, multiple):
            assert all(v.is_contiguous() for v in p.values())
            p["labels"].view(-1)
    left = dict(batch, attention_mask=mask.flip(1))  # left padding: parts keep the full width
    assert all(p["input_ids"].shape[1] == 10 for p in split_batch(left, 30))


def test_parallel_parts_repeat_exactly_with_dropout(tiny_roberta, cli, tmp_path):
    """With dropout on, two runs with parallel parts and the same seed give the same weights bit for bit: each
    part's masks come from its own seed, not from whichever thread draws first."""
    from safetensors.torch import load_file

    data = write_csv(tmp_path / "train.csv", make_rows(48, 5))
    weights = []
    for name in ("a", "b"):
        res = cli("train", "--model", tiny_roberta, "--train-file", data, "--output-dir", tmp_path / name,
                  "--max-steps", "4", "--precision", "fp32", "--batch-size", "8", "--set", "parallel_parts=2",
                  "--set", "training.eval_strategy=no", "--set", "training.save_strategy=no")
        assert res.code == 0, res.output
        weights.append(load_file(tmp_path / name / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_parallel_parts_where_they_cannot_hold_a_seed(tiny_roberta, cls_data, cli, tmp_path):
    """Gradient checkpointing recomputes dropout from torch's global generator: asked for there, parallel parts are
    a one-line error naming why; by default they resolve to 1 (off), written in config.yaml."""
    import yaml

    common = ["train", "--model", tiny_roberta, "--train-file", cls_data["train"], "--max-steps", "2",
              "--precision", "fp32", "--set", "training.gradient_checkpointing=true", "--set",
              "training.eval_strategy=no", "--set", "training.save_strategy=no"]
    res = cli(*common, "--output-dir", tmp_path / "asked", "--set", "parallel_parts=2")
    assert res.code != 0 and "E003" in res.output and "gradient checkpointing" in res.output, res.output
    assert "Traceback" not in res.output
    res = cli(*common, "--output-dir", tmp_path / "auto")
    assert res.code == 0, res.output
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["parallel_parts"] == 1


def test_a_failing_part_raises_its_own_error_after_the_others_finish():
    """An error in the part on the calling thread propagates as itself (not masked by the bookkeeping), once the
    other threads' parts are done; an error on a pool thread propagates too; torch's thread count is restored."""
    import time

    from lorafit.trainer_utils import run_parts

    param = torch.nn.Parameter(torch.zeros(2))
    finished = []
    threads = torch.get_num_threads()

    def part_grads(part):
        if part == "bad":
            raise ValueError("part failed")
        time.sleep(0.2)
        finished.append(part)
        return torch.tensor(1.0), (torch.ones(2),)

    with pytest.raises(ValueError, match="part failed"):
        run_parts(part_grads, ["bad", "good"], [param], 2)
    assert finished == ["good"] and param.grad is None
    with pytest.raises(ValueError, match="part failed"):
        run_parts(part_grads, ["good", "bad"], [param], 2)
    assert torch.get_num_threads() == threads
    losses = run_parts(part_grads, ["a", "b", "c"], [param], 2)
    assert len(losses) == 3 and param.grad.tolist() == [3.0, 3.0]
