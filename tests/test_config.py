"""Config loading, overrides and the errors that name the key and the expected type."""

from __future__ import annotations

import pytest
import yaml

from lorafit.config import Config, describe, parse_override
from lorafit.errors import ERRORS, LorafitError
from lorafit.training import build_config


def test_defaults_and_preset_layering():
    cfg = build_config("agnews-r4a4", None, {"lora": {"r": 6}})
    assert cfg.lora.r == 6 and cfg.lora.alpha == 4 and cfg.lora.dropout == 0.2  # flag over preset
    assert cfg.training["learning_rate"] == 1e-5 and cfg.training["max_steps"] == 2000
    assert cfg.training["train_sampling_strategy"] == "group_by_length"  # our default stays
    assert cfg.data.validation_size == 1280


def test_yaml_round_trip(tmp_path):
    cfg = build_config("agnews-qkv-r4a96", None, None)
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = Config.from_yaml(path)
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "override, code, needle",
    [
        ("lora.rank=4", "E001", "lora.rank"),
        ("colour=red", "E001", "colour"),
        ("lora.r=abc", "E002", "lora.r"),
        ("lora.r=-2", "E003", "lora.r"),
        ("lora.alpha=0", "E003", "lora.alpha"),
        ("lora.bias=some", "E002", "one of 'none', 'all', 'lora_only'"),
        ("data.text_columns=5", "E002", "data.text_columns"),
        ("training.warmup_ratio=0.1", "E007", "warmup_steps"),
        ("training.learning_rat=0.1", "E007", "learning_rate"),
        ("training.num_train_epochs=many", "E002", "training.num_train_epochs"),
        ("training.per_device_train_batch_size=0", "E401", "per_device_train_batch_size"),
        ("precision=fp8", "E002", "precision"),
    ],
)
def test_config_errors_name_the_key(override, code, needle):
    parts, value = parse_override(override)
    data: dict = {}
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    with pytest.raises(LorafitError) as info:
        build_config(None, None, data)
    assert info.value.code == code
    assert needle in info.value.message


def test_cli_config_errors_exit_2_with_one_line(cli, tmp_path):
    res = cli("train", "--train-file", "x.csv", "--set", "lora.rank=4", "--output-dir", tmp_path / "r")
    assert res.code == 2
    assert "E001" in res.output and "lora.rank" in res.output
    assert not (tmp_path / "r").exists()
    res = cli("train", "--preset", "nope")
    assert res.code == 2 and "E004" in res.output and "agnews-r2-query" in res.output
    res = cli("train", "--set", "novalue")
    assert res.code == 2 and "E006" in res.output


def test_bad_yaml_file(cli, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("lora: [1, 2\n")
    res = cli("train", "--config", f)
    assert res.code == 2 and "E005" in res.output and "bad.yaml" in res.output
    f.write_text("- 1\n- 2\n")
    assert "mapping" in cli("train", "--config", f).output


def test_help_text_lives_in_field_metadata():
    rows = {key: help for key, _, help in describe()}
    assert rows["lora.r"] == "LoRA rank."
    assert all(help for key, help in rows.items()), [k for k, h in rows.items() if not h]


def test_every_error_message_names_a_subject():
    for code, text in ERRORS.items():
        assert "{" in text or code in ("E009", "E307"), code  # each names its file / key / value


def test_presets_list_and_detail(cli):
    res = cli("presets")
    for name in ("agnews-r2-query", "agnews-r4a4", "agnews-cosine", "agnews-qkv-r4a96", "lora-paper", "fewnerd-r16"):
        assert name in res.output
    assert "630,532" in res.output and "814,852" in res.output
    res = cli("presets", "agnews-cosine")
    assert "training.learning_rate" in res.output and "[source]" in res.output and "[ours]" in res.output
    assert "lora.r " in res.output


def test_preset_configs_validate():
    from lorafit.presets import PRESETS

    for name in PRESETS:
        cfg = build_config(name, None, None)
        assert cfg.preset == name
        yaml.safe_load(cfg.to_yaml())
