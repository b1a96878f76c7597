"""Real pretrained weights (the MiniLM package) on real AG News rows, with lorafit's defaults."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_defaults_reach_085_on_real_ag_news(minilm_run):
    """No hyper-parameter flags: rank, targets, lr, epochs, batch and max_length all come from the defaults;
    precision is auto (bf16 autocast on CPUs with AVX512-BF16/AMX, fp32 elsewhere): the suite's one bf16 run."""
    metrics = json.loads((minilm_run / "metrics.json").read_text())
    assert metrics["test"]["rows"] == 1000  # rows of the file it never trained on
    assert metrics["test"]["accuracy"] >= 0.85, metrics["test"]["accuracy"]
    cfg = (minilm_run / "config.yaml").read_text()
    assert "precision: bf16" in cfg or "precision: fp32" in cfg
    # AG News labels are the integers 1-4: they keep their names
    assert metrics["labels"] == ["1", "2", "3", "4"]


def test_demo_command_end_to_end(cli, tmp_path):
    res = cli("demo", "--output-dir", tmp_path / "demo", "--precision", "fp32", "--epochs", "4")
    assert res.code == 0, res.output
    for rel in ("run/adapter/adapter_model.safetensors", "run/metrics.json", "predictions.csv",
                "merged/model.safetensors", "merged/merge_report.json", "test_metrics.json"):
        assert (tmp_path / "demo" / rel).is_file(), rel
    m = json.loads((tmp_path / "demo" / "test_metrics.json").read_text())
    assert m["accuracy"] >= 0.8
    assert "test accuracy" in res.output
    assert cli("demo", "--output-dir", tmp_path / "demo").code == 2  # an existing demo is kept
