"""Plots, `lorafit report` and model cards, on the shared tiny classification run (copied where written to)."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import struct
import sys

import numpy as np
import pytest
import yaml

from conftest import make_rows, write_csv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLS_PLOTS = ("loss", "validation_metrics", "confusion_matrix", "confusion_matrix_normalized", "per_class", "roc",
             "reliability", "token_lengths")


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def load_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def front_matter(text: str) -> dict:
    """The YAML between the leading '---' lines of a model card (parsed with yaml.safe_load)."""
    assert text.startswith("---\n"), text[:80]
    block = text[4 : text.index("\n---\n", 4)]
    data = yaml.safe_load(block)
    assert isinstance(data, dict)
    return data


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def assert_valid_png(path) -> None:
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 200 and height >= 150, (path, width, height)
    pixels = imread(path)  # decodes the whole image: a truncated or corrupt file fails here
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0.01, f"{path} is blank"


@pytest.fixture(scope="module")
def report_run(cls_run, tmp_path_factory):
    """A copy of the shared run, with `lorafit report` run on it."""
    from conftest import run_cli

    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(cls_run, run)
    res = run_cli("report", run)
    assert res.code == 0, res.output
    return run


# ---- plots ----------------------------------------------------------------------------------------------------
def test_training_writes_every_plot_with_its_data(cls_run):
    for name in CLS_PLOTS:
        assert_valid_png(cls_run / "plots" / f"{name}.png")
        assert (cls_run / "plots" / f"{name}.json").is_file(), name
    assert not (cls_run / "plots" / "ner_per_type.png").exists()  # no NER scores in a classification run
    from lorafit.artifacts import verify_manifest

    assert verify_manifest(cls_run) == []  # the plots were written before the run's manifest


def test_plot_data_agrees_with_run_files(cls_run):
    plots = cls_run / "plots"
    metrics = load_json(cls_run / "metrics.json")
    history = read_csv(cls_run / "history.csv")
    train_log = read_csv(cls_run / "train_log.csv")
    stats = load_json(cls_run / "data_stats.json")

    loss = load_json(plots / "loss.json")
    assert loss["train"]["step"] == [int(r["step"]) for r in train_log]
    assert loss["train"]["loss"] == pytest.approx([float(r["loss"]) for r in train_log])
    assert loss["validation"]["step"] == [int(r["step"]) for r in history]
    assert loss["validation"]["loss"] == pytest.approx([float(r["eval_loss"]) for r in history])

    val = load_json(plots / "validation_metrics.json")
    assert val["step"] == [int(r["step"]) for r in history]
    for key in ("accuracy", "macro_f1"):
        assert val["metrics"][key] == pytest.approx([float(r[key]) for r in history])

    test = metrics["test"]
    raw = load_json(plots / "confusion_matrix.json")
    assert raw["split"] == "test" and raw["labels"] == metrics["labels"]
    assert raw["matrix"] == test["confusion_matrix"]["matrix"]
    norm = load_json(plots / "confusion_matrix_normalized.json")
    counts = np.array(test["confusion_matrix"]["matrix"], dtype=float)
    assert np.allclose(norm["matrix"], counts / counts.sum(axis=1, keepdims=True))

    per = load_json(plots / "per_class.json")
    assert per["labels"] == metrics["labels"]
    assert per["f1"] == pytest.approx([test["per_class"][n]["f1"] for n in metrics["labels"]])
    assert per["accuracy"] == pytest.approx(list(np.diag(counts) / counts.sum(axis=1)))  # right / support
    assert per["support"] == [int(x) for x in counts.sum(axis=1)]

    hist = load_json(plots / "token_lengths.json")
    assert hist["max_length"] == stats["max_length"]
    for split, s in stats["splits"].items():
        assert hist["splits"][split]["counts"] == s["tokens"]["histogram"]["counts"]
        assert hist["splits"][split]["edges"] == s["tokens"]["histogram"]["edges"]


def test_roc_and_reliability_recomputed_from_predictions(cls_run):
    from sklearn.metrics import roc_auc_score

    metrics = load_json(cls_run / "metrics.json")
    labels = metrics["labels"]
    rows = read_csv(cls_run / "predictions.csv")
    gold = np.array([int(r["gold_id"]) for r in rows])
    probs = np.array([[float(r[f"p_{n}"]) for n in labels] for r in rows])

    roc = load_json(cls_run / "plots" / "roc.json")
    for k, name in enumerate(labels):
        assert roc["curves"][name]["auc"] == pytest.approx(roc_auc_score(gold == k, probs[:, k]))
        assert roc["curves"][name]["fpr"][0] == 0 and roc["curves"][name]["tpr"][-1] == 1
    assert roc["macro_auc"] == pytest.approx(np.mean([roc["curves"][n]["auc"] for n in labels]))

    rel = load_json(cls_run / "plots" / "reliability.json")
    conf, correct = probs.max(1), probs.argmax(1) == gold
    ece = 0.0
    for lo in np.arange(10) / 10:
        inside = (conf > lo) & (conf <= lo + 0.1) if lo > 0 else conf <= 0.1
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    assert rel["ece"] == pytest.approx(ece, abs=1e-9)
    assert sum(b["count"] for b in rel["bins"]) == rel["rows"] == metrics["test"]["rows"]
    assert rel["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1.5 / len(rows))


def test_ner_type_plots_from_ner_metrics(tmp_path):
    """NER runs get per-type and coarse F1 bars when metrics.json has them (the shape lorafit.ner writes)."""
    from lorafit.plots import write_plots

    per = {"person-actor": {"precision": 0.8, "recall": 0.6, "f1": 0.69, "support": 10},
           "location-city": {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 5}}
    coarse = {"f1": 0.75, "precision": 0.8, "recall": 0.7,
              "per_type": {"person": {"f1": 0.7, "support": 10}, "location": {"f1": 0.9, "support": 5}}}
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"task": "ner", "labels": ["O", "person-actor", "location-city"],
         "test": {"f1": 0.78, "per_type": per, "coarse": coarse}}))
    written = {p.stem for p in write_plots(tmp_path, strict=True)}
    assert written == {"ner_per_type", "ner_coarse"}
    fine = load_json(tmp_path / "plots" / "ner_per_type.json")
    assert dict(zip(fine["types"], fine["f1"], strict=True)) == {"person-actor": 0.69, "location-city": 0.9}
    co = load_json(tmp_path / "plots" / "ner_coarse.json")
    assert dict(zip(co["types"], co["f1"], strict=True)) == {"person": 0.7, "location": 0.9}
    assert co["overall_f1"] == 0.75
    for name in written:
        assert_valid_png(tmp_path / "plots" / f"{name}.png")


def test_plot_failure_does_not_fail_training(tiny_roberta, tmp_path, monkeypatch, caplog, cli):
    import lorafit.plots

    def broken(run_dir, **kw):
        raise RuntimeError("no plotting today")

    monkeypatch.setattr(lorafit.plots, "write_plots", broken)
    train = write_csv(tmp_path / "train.csv", make_rows(60, 3))
    res = cli("train", "--model", tiny_roberta, "--train-file", train, "--output-dir", tmp_path / "run",
              "--epochs", "1", "--lr", "2e-2", "--batch-size", "16", "--precision", "fp32",
              "--set", "training.logging_steps=2")
    assert res.code == 0, res.output
    assert (tmp_path / "run" / "metrics.json").is_file() and not (tmp_path / "run" / "plots").exists()
    assert any("W601" in r.getMessage() and "no plotting today" in r.getMessage() for r in caplog.records)


# ---- the report -----------------------------------------------------------------------------------------------
def test_report_html_is_self_contained(report_run):
    page = (report_run / "report.html").read_text(encoding="utf-8")
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), [r[:40] for r in refs]
    assert not re.search(r"https?://", page) and "<link" not in page and "url(" not in page
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    pngs = sorted((report_run / "plots").glob("*.png"))
    assert len(embedded) == len(pngs) == len(CLS_PLOTS)
    assert {base64.b64decode(e) for e in embedded} == {p.read_bytes() for p in pngs}


def test_report_md_has_config_params_data_metrics_and_plots(report_run):
    md = (report_run / "report.md").read_text(encoding="utf-8")
    params = load_json(report_run / "params.json")
    metrics = load_json(report_run / "metrics.json")
    stats = load_json(report_run / "data_stats.json")
    for count in (params["trainable"], params["total"], params["total_deduplicated"]):
        assert f"{count:,}" in md
    for split in ("validation", "test"):
        assert f"| {split} | {metrics[split]['rows']} | {metrics[split]['accuracy']:.4f} |" in md
    assert f"max_length {stats['max_length']}" in md and f"| train | {stats['splits']['train']['rows']} |" in md
    assert "| lora.r | 8 |" in md and "| training.learning_rate | 0.0100 |" in md
    for name in CLS_PLOTS:
        assert f"](plots/{name}.png)" in md
    assert "Preset reference" not in md  # not a preset run


def test_report_keeps_the_run_checkable_and_refreshes_the_adapter_card(report_run, cli):
    res = cli("check", report_run)
    assert res.code == 0, res.output
    manifest = load_json(report_run / "lorafit.json")["files"]
    assert {"report.md", "report.html", "plots/roc.png", "plots/roc.json"} <= set(manifest)
    meta = front_matter((report_run / "adapter" / "README.md").read_text(encoding="utf-8"))
    test_acc = load_json(report_run / "metrics.json")["test"]["accuracy"]
    results = meta["model-index"][0]["results"]
    assert any(r["dataset"]["split"] == "test" and any(m["type"] == "accuracy" and m["value"] == round(test_acc, 4)
                                                       for m in r["metrics"]) for r in results)


def test_report_puts_the_preset_reference_beside_ours(report_run, tmp_path):
    from lorafit.reports import parse_reference, write_report

    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["preset"] = "agnews-cosine"  # reference: "test accuracy 0.854"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    write_report(run, plots=False)
    acc = load_json(run / "metrics.json")["test"]["accuracy"]
    md = (run / "report.md").read_text()
    assert f"ours {acc:.4f} vs reference 0.854" in md
    assert "ours " in (run / "report.html").read_text()
    assert parse_reference("validation accuracy ~0.89, test accuracy ~0.88") == [
        {"split": "validation", "metric": "accuracy", "op": "~", "value": 0.89},
        {"split": "test", "metric": "accuracy", "op": "~", "value": 0.88}]
    assert parse_reference("test F1 0.674 (124,747,910 total in PEFT's count)")[0]["value"] == 0.674
    assert parse_reference("GLUE (not AG News): e.g. SST-2 95.1, MNLI 87.5") == []


def test_report_errors(tmp_path, cli, report_run, monkeypatch):
    res = cli("report", tmp_path)
    assert res.code == 2 and "E302" in res.output and "\n" not in str(res.exception)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    res = cli("report", run)
    assert res.code == 2 and "E607" in res.output and "lorafit[report]" in res.output


# ---- model cards ----------------------------------------------------------------------------------------------
def test_adapter_card_from_training_parses_and_its_code_runs(cls_run):
    from lorafit.artifacts import verify_manifest
    from lorafit.inference import Predictor

    adapter = cls_run / "adapter"
    text = (adapter / "README.md").read_text(encoding="utf-8")
    meta = front_matter(text)
    bundle = load_json(adapter / "lorafit.json")
    assert meta["base_model"] == bundle["base_model"]["name_or_path"]
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-classification"
    assert set(meta["metrics"]) == {"accuracy", "f1"}
    test_acc = load_json(cls_run / "metrics.json")["test"]["accuracy"]  # the card is rewritten with the metrics
    results = meta["model-index"][0]["results"]
    assert all(r["task"]["type"] == "text-classification" for r in results)
    assert {"type": "accuracy", "value": round(float(test_acc), 4)} in [
        {k: m[k] for k in ("type", "value")} for r in results for m in r["metrics"]]
    assert "More Information Needed" not in text  # PEFT's template was replaced
    assert verify_manifest(adapter) == []  # and replaced before the adapter's manifest hashed it
    scope: dict = {}
    exec(python_blocks(text)[0], scope)  # the card's Transformers + PEFT snippet, as a user would run it
    texts = [t for t, _ in make_rows(6, 9)]
    expected = [p["label"] for p in Predictor.load(cls_run).predict(texts)]
    assert [p["label"] for p in scope["classify"](texts)] == expected


def test_merged_card(cls_run, tmp_path, cli):
    from lorafit.inference import Predictor

    res = cli("merge", cls_run, "--output", tmp_path / "merged")
    assert res.code == 0, res.output
    text = (tmp_path / "merged" / "README.md").read_text(encoding="utf-8")
    meta = front_matter(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert "Merge proof" in text
    scope: dict = {}
    exec(python_blocks(text)[0], scope)
    texts = [t for t, _ in make_rows(6, 9)]
    expected = [p["label"] for p in Predictor.load(cls_run).predict(texts)]
    assert [p["label"] for p in scope["classify"](texts)] == expected
    from lorafit.artifacts import verify_manifest

    assert verify_manifest(tmp_path / "merged") == []
