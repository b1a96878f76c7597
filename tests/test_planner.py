"""The planner: exact preset counts from the shipped roberta-base config, and agreement with PEFT's own count on
really wrapped models for randomly drawn configurations (a lookup table would fail these)."""

from __future__ import annotations

import random

import pytest

from lorafit.config import LoraSettings
from lorafit.planner import budget_search, parse_budget, plan_model

PRESET_COUNTS = {
    "agnews-r2-query": ("630,532", None),
    "agnews-r4a4": ("741,124", None),
    "agnews-qkv-r4a96": ("814,852", None),
    "lora-paper": ("888,580", None),
    "fewnerd-r16": ("641,347", "124,747,910"),
}


@pytest.mark.parametrize("preset", sorted(PRESET_COUNTS))
def test_preset_counts_exact(cli, preset):
    trainable, total = PRESET_COUNTS[preset]
    res = cli("plan", "--preset", preset)
    assert res.code == 0, res.output
    assert f"trainable    {trainable}" in res.output
    if total:
        assert f"total        {total}" in res.output


def test_agnews_cosine_is_under_one_million(cli):
    res = cli("plan", "--preset", "agnews-cosine")
    line = next(ln for ln in res.output.splitlines() if ln.startswith("trainable"))
    assert int(line.split()[1].replace(",", "")) < 1_000_000


def test_fewnerd_deduplicated_total_is_reported(cli):
    res = cli("plan", "--preset", "fewnerd-r16")
    # PEFT counts the frozen original head (768*67+67) beside its trainable copy; the deployed model does not
    assert "deduplicated 124,696,387" in res.output


def _save_base(folder, model_type: str, layers: int, pooler: bool):
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    extra = {"type_vocab_size": 1, "pad_token_id": 1} if model_type == "roberta" else {}
    cfg = AutoConfig.for_model(model_type, vocab_size=300, hidden_size=24, num_hidden_layers=layers,
                               num_attention_heads=2, intermediate_size=40, max_position_embeddings=40, **extra)
    AutoModel.from_config(cfg, add_pooling_layer=pooler).save_pretrained(folder)
    return folder


def _real_count(folder, task, num_labels, lora):
    from lorafit.modeling import count_parameters, load_base, lora_config, wrap

    model, new = load_base(str(folder), task, {i: f"L{i}" for i in range(num_labels)})
    return count_parameters(wrap(model, lora_config(model, lora, task, new)))["trainable"], new


def _independent_count(model_type, layers, num_labels, task, lora, hidden=24, inter=40, pooler_new=False):
    """Arithmetic from the architecture, written independently of PEFT and of the planner."""
    dims = {"query": (hidden, hidden), "key": (hidden, hidden), "value": (hidden, hidden)}
    layer_ids = lora.layers_to_transform if lora.layers_to_transform is not None else range(layers)
    count = 0
    for _ in layer_ids:
        for t in lora.target_modules:
            i, o = dims[t]
            count += lora.r * (i + o)
    if task == "ner":
        head = hidden * num_labels + num_labels
    elif model_type == "roberta":
        head = hidden * hidden + hidden + hidden * num_labels + num_labels
    else:
        head = hidden * num_labels + num_labels
    pooler = hidden * hidden + hidden if pooler_new and task != "ner" and model_type == "bert" else 0
    return count + head + pooler


@pytest.mark.parametrize("seed", range(6))
def test_planner_matches_peft_on_random_configs(tmp_path, seed):
    rng = random.Random(1000 + seed)
    model_type = rng.choice(["bert", "roberta"])
    task = rng.choice(["classification", "ner"])
    layers = rng.randint(2, 4)
    pooler = rng.random() < 0.5
    num_labels = rng.randint(2, 17)
    targets = rng.sample(["query", "key", "value"], rng.randint(1, 3))
    ltt = sorted(rng.sample(range(layers), rng.randint(1, layers))) if rng.random() < 0.5 else None
    lora = LoraSettings(r=rng.choice([1, 2, 3, 5, 8, 16]), alpha=8, target_modules=targets, layers_to_transform=ltt)
    folder = _save_base(tmp_path / "base", model_type, layers, pooler)
    planned = plan_model(str(folder), task, num_labels, lora)
    real, new = _real_count(folder, task, num_labels, lora)
    assert planned.trainable == real
    assert sorted(planned.new_modules) == sorted(new)
    assert planned.trainable == _independent_count(model_type, layers, num_labels, task, lora,
                                                   pooler_new=not pooler)


def test_missing_pooler_is_trained_and_counted(tmp_path):
    folder = _save_base(tmp_path / "nopool", "bert", 2, pooler=False)
    p = plan_model(str(folder), "classification", 3, LoraSettings(r=2, target_modules=["query"]))
    assert "bert.pooler" in p.new_modules


def test_budget_lists_configs_that_fit(cli):
    res = cli("plan", "--preset", "agnews-r2-query", "--budget", "700k")
    assert res.code == 0, res.output
    counts = [int(ln.split()[0].replace(",", "")) for ln in res.output.splitlines()[1:] if ln.strip()]
    assert counts and all(c <= 700_000 for c in counts)
    assert counts == sorted(counts, reverse=True)
    assert 630_532 in counts  # r=2 on query, the preset itself


def test_budget_errors(cli):
    assert parse_budget("1M") == 1_000_000 and parse_budget("750k") == 750_000
    res = cli("plan", "--budget", "lots")
    assert res.code == 2 and "E010" in res.output
    res = cli("plan", "--budget", "1000")
    assert res.code == 2 and "E011" in res.output


def test_budget_search_counts_are_exact():
    rows = budget_search("roberta-base", "classification", 4, 900_000)
    for row in rows[:3]:
        targets = row["target_modules"]
        lora = LoraSettings(r=row["r"], target_modules=targets if targets == "all-linear" else targets.split(","))
        assert plan_model("roberta-base", "classification", 4, lora, quiet=True).trainable == row["trainable"]
