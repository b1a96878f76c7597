"""Bad input through the CLI: one line naming the file / row / column / value, exit code 2, nothing written."""

from __future__ import annotations

import json

import pytest

from conftest import FAST, make_rows, write_csv


def _train(cli, model, train, out, *extra):
    return cli("train", "--model", model, "--train-file", train, "--output-dir", out, *FAST, "--epochs", "1", *extra)


@pytest.fixture
def good(tmp_path):
    return write_csv(tmp_path / "good.csv", make_rows(60, 7))


CASES = {
    "missing_file": (lambda d: d / "nope.csv", "E101", "nope.csv"),
    "directory": (lambda d: d, "E102", "is a directory"),
    "extension": (lambda d: _write(d / "data.xlsx", "a,b\n"), "E103", ".xlsx"),
    "empty": (lambda d: _write(d / "empty.csv", ""), "E104", "empty.csv"),
    "header_only": (lambda d: _write(d / "header.csv", "text,label\n"), "E105", "header.csv"),
    "not_utf8": (lambda d: _write_bytes(d / "latin.csv", "text,label\ncaf\xe9 au lait,a\nb,b\n".encode("latin-1")),
                 "E106", "latin.csv"),
    "missing_column": (lambda d: _write(d / "cols.csv", "body,label\nhello,a\nbye,b\n"), "E107", "'text'"),
    "nan_text": (lambda d: _write(d / "nan.csv", "text,label\nhello,a\n,b\nbye,b\n"), "E108", "row 2"),
    "missing_label": (lambda d: _write(d / "nolabel.csv", "text,label\nhello,a\nbye,\nhi,b\n"), "E110", "row 2"),
    "single_class": (lambda d: _write(d / "one.csv", "text,label\nhello,a\nbye,a\nhi,a\n"), "E112", "'a'"),
    "wrong_delimiter": (lambda d: _write(d / "semi.csv", "text;label\nhello;a\nbye;b\n"), "E107", "text;label"),
    "bad_jsonl": (lambda d: _write(d / "bad.jsonl", '{"text": "a", "label": 1}\n{"text": \n'), "E111", "bad.jsonl"),
}


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_training_data(case, cli, tiny_roberta, tmp_path):
    make, code, needle = CASES[case]
    src = tmp_path / "src"
    src.mkdir()
    path = make(src)
    out = tmp_path / "run"
    res = _train(cli, tiny_roberta, path, out)
    assert res.code == 2, res.output
    err = res.output.strip().splitlines()[-1]
    assert err.startswith(f"error: [{code}]"), err
    assert needle in err
    assert not out.exists(), "nothing may be written for bad input"


def test_label_outside_label_set_in_test_file(cli, tiny_roberta, good, tmp_path):
    test = _write(tmp_path / "test.csv", "text,label\nhello there,sports\nmarket,weather\n")
    out = tmp_path / "run"
    res = _train(cli, tiny_roberta, good, out, "--test-file", test)
    assert res.code == 2 and "E109" in res.output and "'weather'" in res.output and "row 2" in res.output
    assert not out.exists()


def test_labels_option_rejects_unknown_training_label(cli, tiny_roberta, good, tmp_path):
    res = _train(cli, tiny_roberta, good, tmp_path / "run", "--labels", "sports,business")
    assert res.code == 2 and "E109" in res.output and "science" in res.output


def test_unreadable_model_folder(cli, good, tmp_path):
    empty = tmp_path / "model"
    empty.mkdir()
    res = _train(cli, empty, good, tmp_path / "run")
    assert res.code == 2 and "E201" in res.output and "config.json" in res.output
    (empty / "config.json").write_text("{not json")
    res = _train(cli, empty, good, tmp_path / "run")
    assert res.code == 2 and "E201" in res.output


def test_hub_unreachable_fails_fast(cli, good, tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    res = _train(cli, "some-org/not-cached-model", good, tmp_path / "run")
    assert res.code == 2 and "E202" in res.output and "--model PATH" in res.output
    assert time.time() - t0 < 30


@pytest.mark.parametrize("args, code, needle", [
    (["--max-length", "4096"], "E205", "4096"),
    (["--batch-size", "0"], "E401", "per_device_train_batch_size"),
    (["--target-modules", "qkv_proj"], "E204", "qkv_proj"),
    (["--target-modules", "classifier"], "E207", "classifier"),
    (["--set", "data.class_weights=[1, 2]"], "E118", "3 labels"),
    (["--set", "data.validation_size=5000"], "E114", "5000"),
    (["--precision", "fp16"], "E402", "fp16"),
    (["--set", "training.lr_scheduler_type=bogus"], "E008", "bogus"),
])
def test_bad_settings(cli, tiny_roberta, good, tmp_path, args, code, needle):
    out = tmp_path / "run"
    res = _train(cli, tiny_roberta, good, out, *args)
    assert res.code == 2, res.output
    assert f"[{code}]" in res.output and needle in res.output, res.output
    assert not out.exists()


def test_tampered_and_missing_run_files(cls_run, cli, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cls_run, copy)
    assert cli("check", copy).code == 0
    (copy / "metrics.json").write_text(json.dumps({"accuracy": 1.0}))
    res = cli("check", copy)
    assert res.code == 2 and "metrics.json" in res.output
    # a changed adapter weight refuses to load; a missing one is named
    w = copy / "adapter" / "adapter_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    res = cli("predict", copy, "--text", "hello")
    assert res.code == 2 and "E304" in res.output and "adapter_model.safetensors" in res.output
    w.unlink()
    res = cli("predict", copy, "--text", "hello")
    assert res.code == 2 and "E303" in res.output


def test_not_a_run_folder_and_nothing_to_predict(cli, cls_run, tmp_path):
    res = cli("predict", tmp_path, "--text", "x")
    assert res.code == 2 and "E302" in res.output
    res = cli("predict", cls_run)
    assert res.code == 2 and "E307" in res.output
    res = cli("predict", cls_run, "--input", tmp_path / "none.csv", "--output", tmp_path / "o.csv")
    assert res.code == 2 and "E101" in res.output


def test_evaluate_with_foreign_labels(cli, cls_run, tmp_path):
    f = _write(tmp_path / "other.csv", "text,label\nhello,weather\nbye,sports\n")
    res = cli("evaluate", cls_run, "--data", f)
    assert res.code == 2 and "E308" in res.output and "weather" in res.output


def test_duplicate_ids(cli, cls_run, tmp_path):
    f = _write(tmp_path / "ids.csv", "id,text\n1,hello\n2,bye\n1,again\n")
    res = cli("predict", cls_run, "--input", f, "--output", tmp_path / "o.csv", "--id-column", "id")
    assert res.code == 2 and "E115" in res.output and "rows 1 and 3" in res.output
