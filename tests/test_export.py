"""`lorafit export --format onnx [--quantize int8]`: parity, quantised graph, measured bill, the ONNX backend."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from conftest import make_rows, run_cli, write_csv

QUANT_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "ConvInteger", "DynamicQuantizeMatMul"}


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def op_types(path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def front_matter(text: str) -> dict:
    import yaml

    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)])


def one_line_error(res, code: str) -> None:
    assert res.code == 2, res.output
    assert code in res.output and "\n" not in str(res.exception), res.output


@pytest.fixture(scope="module")
def exported(cls_run, cls_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "onnx"
    res = run_cli("export", cls_run, "--format", "onnx", "--quantize", "int8", "--output", out, "--data",
                  cls_data["test"])
    assert res.code == 0, res.output
    assert "parity: ONNX fp32 vs PyTorch" in res.output
    return out


def test_export_folder_is_a_checked_bundle_with_a_model_card(exported, cls_run):
    from lorafit.artifacts import verify_manifest

    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json", "tokenizer_config.json", "export_report.json",
                 "README.md", "lorafit.json"):
        assert (exported / name).is_file(), name
    bundle = json.loads((exported / "lorafit.json").read_text())
    adapter = json.loads((cls_run / "adapter" / "lorafit.json").read_text())
    assert bundle["kind"] == "export" and bundle["task"] == "classification"
    assert bundle["labels"] == adapter["labels"] and bundle["max_length"] == adapter["max_length"]
    assert bundle["onnx"]["default"] == "int8" and bundle["onnx"]["opset"] >= 17
    assert bundle["onnx"]["exporter"] == "torchscript"
    assert verify_manifest(exported) == []
    meta = front_matter((exported / "README.md").read_text())
    assert meta["library_name"] == "onnx" and meta["pipeline_tag"] == "text-classification"
    assert meta["base_model"] == adapter["base_model"]["name_or_path"]


def test_fp32_graph_matches_pytorch_with_dynamic_axes(exported, cls_run):
    """Straight through onnxruntime (no lorafit code): other batch sizes and lengths than the export example."""
    import onnxruntime as ort
    import torch
    from transformers import AutoTokenizer

    from lorafit.inference import Predictor

    rep = json.loads((exported / "export_report.json").read_text())
    assert rep["variants"]["onnx_fp32"]["max_abs_logit_delta"] < rep["tolerance"] <= 1e-3
    ref = Predictor.load(cls_run)
    tok = AutoTokenizer.from_pretrained(exported)
    session = ort.InferenceSession(str(exported / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    texts = [t for t, _ in make_rows(7, 11)]
    for batch in (texts[:1], texts[:3], texts):
        enc = tok(batch, padding=True, truncation=True, max_length=ref.max_length, return_tensors="np")
        got = session.run(["logits"], {n: enc[n].astype(np.int64) for n in names})[0]
        with torch.inference_mode():
            want = ref.model(**{n: torch.from_numpy(enc[n]) for n in names}).logits.numpy()
        assert got.shape == (len(batch), 3)
        assert np.abs(got - want).max() < 1e-4


def test_int8_graph_is_quantised_and_small(exported):
    assert not op_types(exported / "model.onnx") & QUANT_OPS
    ops = op_types(exported / "model.int8.onnx")
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    fp32, int8 = (exported / "model.onnx").stat().st_size, (exported / "model.int8.onnx").stat().st_size
    assert int8 < 0.4 * fp32
    rep = json.loads((exported / "export_report.json").read_text())["variants"]["onnx_int8"]
    assert rep["size_bytes"] == int8 and rep["size_ratio_to_fp32"] == pytest.approx(int8 / fp32)
    assert rep["quantized_ops"]["MatMulInteger"] >= 4  # 2 layers x (q, k, v, out, up, down) minus nothing


def weight_zero_points(path) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(weight shape, weight zero-point shape) of every MatMulInteger in a graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [(inits[n.input[1]].shape, inits[n.input[3]].shape) for n in model.graph.node
            if n.op_type == "MatMulInteger"]


def test_int8_weights_have_one_scale_per_output_column(exported):
    """Per-channel weights: a per-tensor scale let one large weight coarsen a whole matrix (docs/benchmarks.md)."""
    shapes = weight_zero_points(exported / "model.int8.onnx")
    assert len(shapes) >= 4
    for weight, zero_point in shapes:
        assert zero_point == (weight[1],), (weight, zero_point)
    scheme = json.loads((exported / "lorafit.json").read_text())["onnx"]["int8_scheme"]
    assert "per output column" in scheme["weights"]
    rep = json.loads((exported / "export_report.json").read_text())["variants"]["onnx_int8"]
    assert rep["scheme"] == scheme


def test_report_scores_every_backend_on_the_same_rows(exported, cls_run, cls_data):
    from lorafit.predicting import evaluate_file

    rep = json.loads((exported / "export_report.json").read_text())
    v = rep["variants"]
    assert set(v) == {"pytorch_fp32", "onnx_fp32", "onnx_int8"}
    truth = evaluate_file(cls_run, cls_data["test"])
    assert v["pytorch_fp32"]["eval"]["accuracy"] == pytest.approx(truth["accuracy"])
    assert v["pytorch_fp32"]["eval"]["rows"] == v["onnx_int8"]["eval"]["rows"] == 60
    assert v["onnx_fp32"]["eval"]["argmax_agreement"] == 1.0 and v["onnx_fp32"]["eval"]["accuracy_delta"] == 0
    int8 = v["onnx_int8"]["eval"]
    assert int8["accuracy_delta"] == pytest.approx(int8["accuracy"] - truth["accuracy"])
    assert 0.8 <= int8["argmax_agreement"] <= 1.0
    for name, x in v.items():
        lat = x["latency"]
        assert 0 < lat["p50_ms"] <= lat["p95_ms"] and lat["throughput_rows_per_s"] > 0, name
    assert v["onnx_fp32"]["size_bytes"] == (exported / "model.onnx").stat().st_size
    assert rep["run_metrics"]["test"]["accuracy"] == pytest.approx(truth["accuracy"])


def test_predict_accepts_the_export(exported, cls_run, cls_data, tmp_path, cli):
    """`lorafit predict EXPORT` runs the ONNX graph behind the same Predictor: rows in input order."""
    from lorafit.export import load

    texts = [r["text"] for r in read_csv(cls_data["test"])]
    res = cli("predict", exported, "--input", cls_data["test"], "--output", tmp_path / "p.csv")
    assert res.code == 0, res.output
    onnx_labels = [r["label"] for r in read_csv(tmp_path / "p.csv")]
    res = cli("predict", cls_run, "--input", cls_data["test"], "--output", tmp_path / "t.csv", "--precision", "fp32")
    torch_rows = read_csv(tmp_path / "t.csv")
    agree = np.mean([a == b["label"] for a, b in zip(onnx_labels, torch_rows, strict=True)])
    assert agree >= 0.9  # int8 (the export's default); rows out of order would agree ~1/3 of the time
    fp32 = load(exported, "fp32")
    assert fp32.backend == "onnx-fp32"
    probs = fp32.predict_proba(texts)
    torch_probs = np.array([[float(r[f"p_{n}"]) for n in fp32.labels] for r in torch_rows])
    assert np.abs(probs - torch_probs).max() < 1e-4


def test_export_refuses_a_parity_failure(cls_run, tmp_path, cli):
    res = cli("export", cls_run, "--output", tmp_path / "x", "--tolerance", "1e-12", "--no-bench")
    one_line_error(res, "E604")
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())  # no half-written or temporary folder


def test_dynamo_exporter_also_passes_the_parity_gate(cls_run, tmp_path, cli):
    res = cli("export", cls_run, "--output", tmp_path / "d", "--exporter", "dynamo", "--quantize", "int8", "--no-bench")
    assert res.code == 0, res.output
    rep = json.loads((tmp_path / "d" / "export_report.json").read_text())
    assert rep["exporter"] == "dynamo" and rep["variants"]["onnx_fp32"]["max_abs_logit_delta"] < 1e-4
    assert "MatMulInteger" in op_types(tmp_path / "d" / "model.int8.onnx")


@pytest.mark.parametrize("args, code", [
    (["--format", "tflite"], "E601"),
    (["--quantize", "int4"], "E602"),
    (["--exporter", "jit"], "E003"),
])
def test_export_bad_options(cls_run, tmp_path, cli, args, code):
    res = cli("export", cls_run, "--output", tmp_path / "x", *args)
    one_line_error(res, code)
    assert not (tmp_path / "x").exists()


def test_export_bad_inputs(cls_run, exported, tmp_path, cli):
    broken = tmp_path / "broken"
    shutil.copytree(cls_run, broken, ignore=shutil.ignore_patterns("checkpoints"))
    (broken / "adapter" / "adapter_model.safetensors").unlink()
    res = cli("export", broken, "--output", tmp_path / "a")
    one_line_error(res, "E303")
    assert "adapter_model.safetensors" in res.output

    other = write_csv(tmp_path / "weather.csv", [("rain all week", "weather"), ("goal in the final", "sports")])
    res = cli("export", cls_run, "--output", tmp_path / "b", "--data", other)
    one_line_error(res, "E308")
    assert "weather" in res.output and not (tmp_path / "b").exists()

    res = cli("export", exported, "--output", tmp_path / "c")
    one_line_error(res, "E302")

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    res = cli("export", cls_run, "--output", tmp_path / "d")
    one_line_error(res, "E301")
    (tmp_path / "d" / "lorafit.json").write_text('{"kind": "run"}')  # --overwrite never replaces a run folder
    res = cli("export", cls_run, "--output", tmp_path / "d", "--overwrite")
    one_line_error(res, "E302")
    assert (tmp_path / "d" / "keep.txt").read_text() == "mine"


# ---- NER (runs once lorafit.ner is installed) -------------------------------------------------------------
P, L, C = "person-actor", "location-GPE", "organization-company"  # Few-NERD style coarse-fine types (IO)
NER_SENTENCES = [
    (["John", "Smith", "visited", "Paris", "today", "."], [P, P, "O", L, "O", "O"]),
    (["Acme", "hired", "Mary", "in", "Berlin", "."], [C, "O", P, "O", L, "O"]),
    (["The", "team", "from", "London", "won", "."], ["O", "O", "O", L, "O", "O"]),
    (["Anna", "joined", "Globex", "last", "week", "."], [P, "O", C, "O", "O", "O"]),
]


def _conll(path, n, seed):
    rng = np.random.default_rng(seed)
    lines = []
    for i in rng.integers(0, len(NER_SENTENCES), n):
        words, tags = NER_SENTENCES[i]
        lines += [f"{w}\t{t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_ner_export_parity_and_serving(tiny_roberta, tmp_path):
    pytest.importorskip("lorafit.ner")
    import threading
    import urllib.request

    from lorafit.export import load
    from lorafit.inference import Predictor
    from lorafit.ner import predict_entities, token_logits
    from lorafit.serving import make_server

    train, test = _conll(tmp_path / "train.conll", 120, 0), _conll(tmp_path / "test.conll", 20, 1)
    res = run_cli("train", "--task", "ner", "--model", tiny_roberta, "--train-file", train, "--test-file", test,
                  "--output-dir", tmp_path / "run", "--epochs", "3", "--lr", "2e-2", "--batch-size", "16",
                  "--precision", "fp32")
    assert res.code == 0, res.output
    res = run_cli("report", tmp_path / "run")  # NER plots: per-type and coarse F1 bars beside the common ones
    assert res.code == 0, res.output
    plots = {p.stem for p in (tmp_path / "run" / "plots").glob("*.png")}
    assert {"loss", "validation_metrics", "ner_per_type", "ner_coarse"} <= plots, plots
    assert "roc" not in plots
    res = run_cli("export", tmp_path / "run", "--output", tmp_path / "onnx", "--quantize", "int8", "--data", test,
                  "--no-bench")
    assert res.code == 0, res.output
    rep = json.loads((tmp_path / "onnx" / "export_report.json").read_text())
    assert rep["task"] == "ner" and rep["variants"]["onnx_fp32"]["max_abs_logit_delta"] < 1e-3
    assert rep["variants"]["onnx_fp32"]["eval"]["f1_delta"] == 0
    ref, onnx = Predictor.load(tmp_path / "run"), load(tmp_path / "onnx", "fp32")
    sentences = [s for s, _ in NER_SENTENCES]
    assert np.abs(token_logits(ref, sentences) - token_logits(onnx, sentences)).max() < 1e-3
    assert json.loads((tmp_path / "onnx" / "lorafit.json").read_text())["scheme"] == ref.bundle["scheme"]

    server = make_server(tmp_path / "run", "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        text = "John Smith visited Paris today ."
        req = urllib.request.Request(server.url + "/predict", data=json.dumps({"inputs": text}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            got = json.loads(resp.read())
    finally:
        server.shutdown()
        server.server_close()
    want = predict_entities(ref, [text])[0]
    assert [(e["entity"], e["start"], e["end"]) for e in got] == [(e["type"], e["start"], e["end"]) for e in want]
    for e in got:
        assert set(e) == {"entity", "text", "start", "end", "score"} and text[e["start"] : e["end"]] == e["text"]


# ---- MiniLM (real pretrained weights) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_export(tmp_path_factory):
    from lorafit.demo import minilm_path, write_demo_data

    root = tmp_path_factory.mktemp("minilm")
    paths = write_demo_data(root / "data")
    res = run_cli("train", "--model", minilm_path(), "--train-file", paths["train"], "--test-file", paths["test"],
                  "--output-dir", root / "run", "--precision", "bf16", "--epochs", "3")
    assert res.code == 0, res.output
    res = run_cli("export", root / "run", "--output", root / "onnx", "--quantize", "int8", "--data", paths["test"])
    assert res.code == 0, res.output
    print(res.output)
    return root


@pytest.mark.slow
def test_minilm_int8_is_small_and_agrees_with_pytorch(minilm_export):
    rep = json.loads((minilm_export / "onnx" / "export_report.json").read_text())
    v = rep["variants"]
    assert v["onnx_fp32"]["max_abs_logit_delta"] < rep["tolerance"]
    assert v["onnx_int8"]["size_ratio_to_fp32"] < 0.4
    assert v["onnx_int8"]["eval"]["argmax_agreement"] >= 0.95
    assert v["onnx_int8"]["eval"]["rows"] == 120
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= op_types(minilm_export / "onnx" / "model.int8.onnx")
    assert "token_type_ids" in rep["inputs"]  # BERT-style inputs survive the export


@pytest.mark.slow
def test_minilm_int8_per_channel_is_closer_to_fp32_than_per_tensor(minilm_export, tmp_path):
    """On real weights the shipped scheme (one scale per output column) moves the logits less than one scale per
    tensor, ONNX Runtime's default, on the same rows."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from lorafit.artifacts import read_manifest
    from lorafit.export import OnnxLogitsModel, load_export
    from lorafit.inference import Predictor

    folder = minilm_export / "onnx"
    texts = [r["text"] for r in read_csv(minilm_export / "data" / "test.csv")]
    per_tensor = tmp_path / "per_tensor.onnx"
    quantize_dynamic(str(folder / "model.onnx"), str(per_tensor), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    pred = load_export(Predictor, folder, read_manifest(folder), variant="fp32")
    errors = {}
    ref = np.asarray(pred.logits(texts))
    for name, path in (("per_channel", folder / "model.int8.onnx"), ("per_tensor", per_tensor)):
        pred.model = OnnxLogitsModel(path)
        errors[name] = float(np.abs(np.asarray(pred.logits(texts)) - ref).mean())
    assert 0 < errors["per_channel"] < 0.75 * errors["per_tensor"], errors


@pytest.mark.slow
def test_minilm_report_and_predict_on_export(minilm_export, cli, tmp_path):
    res = cli("report", minilm_export / "run")
    assert res.code == 0, res.output
    assert len(list((minilm_export / "run" / "plots").glob("*.png"))) == 8
    res = cli("predict", minilm_export / "onnx", "--input", minilm_export / "data" / "unlabelled.csv",
              "--output", tmp_path / "p.csv", "--id-column", "id")
    assert res.code == 0, res.output
    assert [r["id"] for r in read_csv(tmp_path / "p.csv")] == [
        r["id"] for r in read_csv(minilm_export / "data" / "unlabelled.csv")]
