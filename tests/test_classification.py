"""Every classification verb end to end through the CLI, on tiny random models built from a config."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import FAST, make_rows, write_csv


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_run_folder_layout(cls_run, cli):
    for name in ("config.yaml", "lorafit.json", "metrics.json", "history.csv", "train_log.csv", "data_stats.json",
                 "params.json", "predictions.csv", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 "adapter/lorafit.json", "adapter/tokenizer_config.json"):
        assert (cls_run / name).is_file(), name
    metrics = json.loads((cls_run / "metrics.json").read_text())
    for split in ("validation", "test"):
        m = metrics[split]
        assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "loss"} <= set(m)
        assert sum(map(sum, m["confusion_matrix"]["matrix"])) == m["rows"]
    assert metrics["test"]["accuracy"] > 0.6  # learnable synthetic topics: well above chance (0.33)
    history = read_csv(cls_run / "history.csv")
    assert len(history) == 8 and {"epoch", "step", "train_loss", "eval_loss", "accuracy"} <= set(history[0])
    log = read_csv(cls_run / "train_log.csv")
    assert len(log) >= 10 and all(float(r["learning_rate"]) >= 0 for r in log)
    stats = json.loads((cls_run / "data_stats.json").read_text())
    assert stats["splits"]["train"]["rows"] + stats["splits"]["validation"]["rows"] == 240
    assert stats["max_length"] == stats["suggested_max_length"]
    assert sum(stats["splits"]["test"]["tokens"]["histogram"]["counts"]) == 60
    bundle = json.loads((cls_run / "adapter" / "lorafit.json").read_text())
    assert bundle["labels"] == ["business", "science", "sports"] and bundle["task"] == "classification"
    assert bundle["base_model"]["fingerprint"]["model_type"] == "roberta"
    assert "classifier" in bundle["modules_to_save"]
    assert cli("check", cls_run).code == 0


def test_resolved_config_records_runtime_choices(cls_run):
    import yaml

    cfg = yaml.safe_load((cls_run / "config.yaml").read_text())
    assert cfg["precision"] == "fp32"
    assert cfg["data"]["labels"] == ["business", "science", "sports"]
    assert isinstance(cfg["data"]["max_length"], int)
    assert cfg["lora"]["target_modules"] == ["query", "value"]
    assert cfg["training"]["train_sampling_strategy"] == "group_by_length"


def test_params_match_planner(cls_run, cli):
    params = json.loads((cls_run / "params.json").read_text())
    res = cli("plan", "--config", cls_run / "config.yaml")
    assert f"trainable    {params['trainable']:,}" in res.output


def test_predictions_csv_in_dataset_order(cls_run, cls_data):
    """With length grouping on, rows must still come back in the test file's order (the Trainer.predict trap)."""
    from lorafit import load

    rows = read_csv(cls_run / "predictions.csv")
    source = read_csv(cls_data["test"])
    assert [int(r["row_id"]) for r in rows] == list(range(len(source)))
    assert [r["gold"] for r in rows] == [r["label"] for r in source]
    probs = load(cls_run).predict_proba([r["text"] for r in source])
    saved = np.array([[float(r[f"p_{n}"]) for n in ("business", "science", "sports")] for r in rows])
    np.testing.assert_allclose(saved, probs, atol=1e-5)
    # lengths vary a lot, so a length-grouped order would differ from the file order
    lengths = [len(r["text"].split()) for r in source]
    assert lengths != sorted(lengths) and lengths != sorted(lengths, reverse=True)


def test_adapter_reload_is_not_random(cls_run, cls_data):
    """Reloading adapter + head gives the probabilities saved at training time (a random head would not)."""
    from lorafit.inference import Predictor

    p1 = Predictor.load(cls_run)
    p2 = Predictor.load(cls_run)
    texts = ["market shares profit bank oil", "goal match striker cup season"]
    np.testing.assert_allclose(p1.logits(texts), p2.logits(texts), atol=1e-6)
    # the reloaded model scores what training scored (chance is 1/3 on these three balanced topics)
    test = list(csv.DictReader(cls_data["test"].open()))
    saved = json.loads((cls_run / "metrics.json").read_text())["test"]["accuracy"]
    gold = [p1.labels.index(r["label"]) for r in test]
    m, _ = p1.evaluate([r["text"] for r in test], gold)
    assert m["accuracy"] == pytest.approx(saved) and saved >= 0.7


def test_evaluate_and_predict_files(cls_run, cls_data, cli, tmp_path):
    res = cli("evaluate", cls_run, "--data", cls_data["test"], "--output", tmp_path / "m.json", "--precision", "fp32")
    assert res.code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    saved = json.loads((cls_run / "metrics.json").read_text())["test"]
    assert m["accuracy"] == pytest.approx(saved["accuracy"]) and m["inference_precision"] == "fp32"
    # predict with an id column, several formats, and the Kaggle shape
    src = read_csv(cls_data["test"])
    inp = tmp_path / "in.csv"
    with inp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        for i, r in enumerate(src):
            w.writerow([f"x{i}", r["text"]])
    res = cli("predict", cls_run, "--input", inp, "--output", tmp_path / "p.csv", "--id-column", "id", "--precision",
              "fp32")
    assert res.code == 0, res.output
    out = read_csv(tmp_path / "p.csv")
    assert [r["id"] for r in out] == [f"x{i}" for i in range(len(src))]
    preds = read_csv(cls_run / "predictions.csv")
    assert [r["label"] for r in out] == [r["predicted"] for r in preds]
    res = cli("predict", cls_run, "--input", inp, "--output", tmp_path / "k.csv", "--id-column", "id", "--kaggle")
    assert read_csv(tmp_path / "k.csv")[0].keys() == {"ID", "Label"}
    res = cli("predict", cls_run, "--input", inp, "--output", tmp_path / "p.jsonl")
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert len(lines) == len(src) and json.loads(lines[0])["label"] == out[0]["label"]
    res = cli("predict", cls_run, "--text", src[0]["text"], "--precision", "fp32")
    assert res.code == 0 and res.output.startswith(out[0]["label"] + "\t")
    assert cli("predict", cls_run, "--input", inp, "--output", tmp_path / "p.csv").code == 2  # exists


def test_pickle_needs_opt_in(cls_run, cli, tmp_path):
    import pandas as pd

    pkl = tmp_path / "unlabelled.pkl"
    pd.DataFrame({"text": ["market shares profit", "goal match team"]}).to_pickle(pkl)
    res = cli("predict", cls_run, "--input", pkl, "--output", tmp_path / "o.csv")
    assert res.code == 2 and "E116" in res.output and "--allow-pickle" in res.output
    assert not (tmp_path / "o.csv").exists()
    res = cli("predict", cls_run, "--input", pkl, "--output", tmp_path / "o.csv", "--allow-pickle")
    assert res.code == 0 and len(read_csv(tmp_path / "o.csv")) == 2


def test_merge_proof_pipeline_and_corruption(cls_run, cli, tmp_path):
    from transformers import AutoModelForSequenceClassification, pipeline

    from lorafit.inference import Predictor

    merged = tmp_path / "merged"
    res = cli("merge", cls_run, "--output", merged)
    assert res.code == 0, res.output
    report = json.loads((merged / "merge_report.json").read_text())
    assert report["passed"] and report["max_abs_logit_delta"] < 1e-4 and report["inputs"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(merged)
    assert set(model.config.id2label.values()) == {"business", "science", "sports"}
    clf = pipeline("text-classification", model=str(merged))
    text = "market shares profit bank oil"
    assert clf(text)[0]["label"] == Predictor.load(cls_run).predict(text)["label"]  # fp32, like the pipeline
    assert cli("merge", cls_run, "--verify", merged).code == 0
    # corrupt one merged weight: the proof must fail
    from safetensors.torch import load_file, save_file

    weights = load_file(merged / "model.safetensors")
    key = next(k for k in weights if "value.weight" in k)  # a weight the LoRA merge changed
    weights[key] = weights[key] * 1.5
    save_file(weights, merged / "model.safetensors", metadata={"format": "pt"})
    res = cli("merge", cls_run, "--verify", merged)
    assert res.code == 2 and "E305" in res.output
    assert cli("merge", cls_run, "--output", merged).code == 2  # never overwritten silently


def test_reproduce_from_resolved_config(cls_run, cli, tmp_path):
    """`train --config RUN/config.yaml --output-dir NEW` reproduces the run: equal weights within 1e-6."""
    from safetensors.torch import load_file

    new = tmp_path / "again"
    res = cli("train", "--config", cls_run / "config.yaml", "--output-dir", new)
    assert res.code == 0, res.output
    a = load_file(cls_run / "adapter" / "adapter_model.safetensors")
    b = load_file(new / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_existing_run_folder_is_never_overwritten(cls_run, cli, cls_data, tiny_roberta):
    before = (cls_run / "lorafit.json").read_text()
    res = cli("train", "--model", tiny_roberta, "--train-file", cls_data["train"], "--output-dir", cls_run, *FAST)
    assert res.code == 2 and "E301" in res.output and "--overwrite" in res.output
    assert (cls_run / "lorafit.json").read_text() == before


def test_integer_labels_bert_and_label_names(cli, tiny_bert, tmp_path):
    """Integer labels map through their sorted values (1..3 -> 0..2) and keep their names; --labels names them."""
    train = write_csv(tmp_path / "train.csv", make_rows(150, 3, {"sports": 1, "business": 2, "science": 3}))
    test = write_csv(tmp_path / "test.csv", make_rows(30, 4, {"sports": 1, "business": 2, "science": 3}))
    out = tmp_path / "run"
    res = cli("train", "--model", tiny_bert, "--train-file", train, "--test-file", test, "--output-dir", out,
              *FAST, "--epochs", "2")
    assert res.code == 0, res.output
    bundle = json.loads((out / "adapter" / "lorafit.json").read_text())
    assert bundle["labels"] == ["1", "2", "3"]
    preds = read_csv(out / "predictions.csv")
    assert [r["gold"] for r in preds] == [r["label"] for r in read_csv(test)]
    assert bundle["base_model"]["fingerprint"]["model_type"] == "bert"
    out2 = tmp_path / "named"
    res = cli("train", "--model", tiny_bert, "--train-file", train, "--output-dir", out2, "--labels",
              "Sports,Business,Sci/Tech", *FAST, "--epochs", "1")
    assert res.code == 0, res.output
    assert json.loads((out2 / "adapter" / "lorafit.json").read_text())["labels"] == ["Sports", "Business", "Sci/Tech"]
    # evaluate accepts the integer values of a file against integer-named labels
    assert cli("evaluate", out, "--data", test).code == 0


def test_mismatched_base_model_is_refused(cls_run, cli, tiny_bert):
    res = cli("predict", cls_run, "--text", "hello", "--base-model", tiny_bert)
    assert res.code == 2 and "E203" in res.output


def test_text_pairs_class_weights_length_filter_early_stopping(cli, tiny_roberta, tmp_path):
    rows = make_rows(120, 5)
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["premise", "hypothesis", "label"])
        for text, label in rows:
            half = len(text.split()) // 2
            w.writerow([" ".join(text.split()[:half]) or "x", " ".join(text.split()[half:]) or "y", label])
    out = tmp_path / "run"
    res = cli("train", "--model", tiny_roberta, "--train-file", path, "--text-column", "premise",
              "--text-pair-column", "hypothesis", "--output-dir", out, *FAST, "--epochs", "3",
              "--set", "data.class_weights=auto", "--set", "data.min_tokens=14",
              "--set", "early_stopping_patience=1")
    assert res.code == 0, res.output
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["length_filter_removed"] > 0
    cfg = (out / "config.yaml").read_text()
    assert "text_pair_column: hypothesis" in cfg
    # the pair reaches the tokenizer as a pair: two separator groups in the encoded input
    from lorafit.inference import Predictor

    p = Predictor.load(out)
    enc = p.tokenizer("goal match", "team cup")
    assert enc["input_ids"].count(p.tokenizer.sep_token_id) == 3  # RoBERTa: <s> A </s></s> B </s>
    probs = p.predict_proba(["goal match"], ["team cup"])
    assert probs.shape == (1, 3)


def test_python_api(cls_data, tiny_roberta, tmp_path):
    import lorafit
    from lorafit.training import build_config

    cfg = build_config(None, None, {"model": {"name_or_path": str(tiny_roberta)},
                                    "data": {"train_file": str(cls_data["train"])}, "precision": "fp32",
                                    "training": {"num_train_epochs": 1}, "output": {"dir": str(tmp_path / "r")}})
    run = lorafit.train(cfg, quiet=True)
    assert run.path == tmp_path / "r" and run.params["trainable"] > 0
    out = lorafit.load(run.path).predict(["goal match team", "market shares"])
    assert len(out) == 2 and set(out[0]["scores"]) == {"business", "science", "sports"}
    assert abs(sum(out[0]["scores"].values()) - 1) < 1e-5


def test_real_entry_point_prints_one_line(tmp_path):
    """The installed console script: a user error is one line on stderr and exit code 2, no traceback."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "lorafit", "train", "--train-file", str(tmp_path / "missing.csv"),
                           "--model", str(tmp_path), "--output-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: [E201]") and "Traceback" not in proc.stderr


def test_bf16_request_falls_back_to_fp32_without_hardware_support(monkeypatch, caplog):
    from lorafit import training

    monkeypatch.setattr(training, "cpu_has_bf16", lambda: (False, "CPU lacks AVX512-BF16 and AMX"))
    with caplog.at_level("WARNING", logger="lorafit"):
        assert training.resolve_precision("bf16") == ("fp32", "CPU lacks AVX512-BF16 and AMX")
    assert "W001" in caplog.text
    assert training.resolve_precision("auto")[0] == "fp32"
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: (True, "CPU has amx_bf16"))
    assert training.resolve_precision("auto") == ("bf16", "CPU has amx_bf16")
    assert training.resolve_precision("fp32")[0] == "fp32"


def test_adapter_on_another_machine_with_base_model_copy(cls_run, cli, tiny_roberta, tmp_path):
    """A copy of the base in another place is accepted (same fingerprint, same weights hash)."""
    import shutil

    from lorafit.inference import Predictor

    copy = tmp_path / "base-copy"
    shutil.copytree(tiny_roberta, copy)
    text = "market shares profit bank oil"
    res = cli("predict", cls_run, "--text", text, "--base-model", copy, "--precision", "fp32")
    expected = Predictor.load(cls_run).predict(text)["label"]
    assert res.code == 0 and res.output.startswith(expected + "\t"), res.output
    # same architecture, different weights: refused by the weights hash
    from safetensors.torch import load_file, save_file

    w = load_file(copy / "model.safetensors")
    k = next(iter(w))
    w[k] = w[k] + 1
    save_file(w, copy / "model.safetensors", metadata={"format": "pt"})
    res = cli("predict", cls_run, "--text", "x", "--base-model", copy)
    assert res.code == 2 and "E203" in res.output and "weights_sha256" in res.output


def test_hub_style_dataset_with_classlabel_names(cli, tiny_roberta, tmp_path):
    """The --dataset path (datasets.load_dataset) on a local dataset folder: ClassLabel names become label names,
    and a dataset without a validation split gets a stratified one."""
    from datasets import ClassLabel, Dataset, Features, Value

    names = ["business", "science", "sports"]
    feats = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    folder = tmp_path / "hubds"
    folder.mkdir()
    for split, seed, n in (("train", 11, 150), ("test", 12, 30)):
        rows = make_rows(n, seed)
        ds = Dataset.from_dict({"text": [t for t, _ in rows], "label": [names.index(lab) for _, lab in rows]},
                               features=feats)
        ds.to_parquet(str(folder / f"{split}.parquet"))
    out = tmp_path / "run"
    res = cli("train", "--model", tiny_roberta, "--dataset", folder, "--output-dir", out, *FAST, "--epochs", "1")
    assert res.code == 0, res.output
    bundle = json.loads((out / "adapter" / "lorafit.json").read_text())
    assert bundle["labels"] == names
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["splits"]["validation"]["rows"] == 15 and stats["splits"]["test"]["rows"] == 30
    assert "Hub dataset" in stats["splits"]["train"]["source"]


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_chunked_prediction_keeps_input_order(cls_run, cls_data, tmp_path, ext):
    """Large files are read, length-sorted, predicted and written in bounded chunks: the output is the same as
    one pass, row for row, in input order."""
    import pandas as pd

    from lorafit.inference import Predictor
    from lorafit.predicting import predict_file

    src = pd.read_csv(cls_data["test"])
    inp = tmp_path / f"in{ext}"
    if ext == ".csv":
        src.to_csv(inp, index=False)
    elif ext == ".jsonl":
        src.to_json(inp, orient="records", lines=True)
    else:
        src.to_parquet(inp)
    pred = Predictor.load(cls_run)
    n = predict_file(cls_run, inp, tmp_path / f"chunked{ext}", chunk_rows=7, predictor=pred)
    predict_file(cls_run, inp, tmp_path / f"whole{ext}", chunk_rows=10_000, predictor=pred)
    assert n == len(src)
    read = {".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True), ".parquet": pd.read_parquet}[ext]
    a, b = read(tmp_path / f"chunked{ext}"), read(tmp_path / f"whole{ext}")
    assert a["row"].tolist() == list(range(len(src)))
    assert a["label"].tolist() == b["label"].tolist()
    np.testing.assert_allclose(a["p_sports"].to_numpy(), b["p_sports"].to_numpy(), atol=1e-6)
    direct = pred.predict(src["text"].tolist())
    assert a["label"].tolist() == [d["label"] for d in direct]
