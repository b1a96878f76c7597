"""Reliability: kill -9 and resume to identical weights, checkpoint pickles guarded by the manifest, NaN stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_rows, write_csv


def _train_cmd(model, train, out, *extra):
    return [sys.executable, "-m", "lorafit", "train", "--model", str(model), "--train-file", str(train),
            "--output-dir", str(out), "--precision", "fp32", "--batch-size", "8", "--lr", "5e-3",
            "--max-steps", "1200", "--set", "training.eval_strategy=steps", "--set", "training.eval_steps=200",
            "--set", "training.save_strategy=steps", "--set", "training.save_steps=40", "--set",
            "training.logging_steps=10", "--set", "parallel_parts=2", *extra]  # parts on two threads, as on 2 cores


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    return write_csv(d / "train.csv", make_rows(400, 21))


def _recorded(out, rel):
    try:
        files = json.loads((out / "lorafit.json").read_text()).get("files", {})
    except (OSError, json.JSONDecodeError):
        return False
    return rel in files


def test_kill_minus_9_then_resume_gives_identical_weights(tiny_roberta, resume_data, tmp_path):
    from safetensors.torch import load_file

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    full = tmp_path / "full"
    subprocess.run(_train_cmd(tiny_roberta, resume_data, full), check=True, env=env, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_roberta, resume_data, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not _recorded(killed, "checkpoints/checkpoint-80/trainer_state.json"):
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter").exists(), "killed mid-run: the run must not look finished"
    res = subprocess.run([sys.executable, "-m", "lorafit", "train", "--output-dir", str(killed), "--resume", "last"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    a = load_file(full / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    hist_a = (full / "history.csv").read_text().splitlines()
    hist_b = (killed / "history.csv").read_text().splitlines()
    assert hist_a == hist_b  # the rows before the checkpoint are restored, the rows after it are equal


def test_resume_refuses_unrecorded_pickles(tiny_roberta, resume_data, tmp_path, cli):
    out = tmp_path / "run"
    res = cli("train", "--model", tiny_roberta, "--train-file", resume_data, "--output-dir", out, "--precision",
              "fp32", "--max-steps", "40", "--batch-size", "8", "--set", "training.save_strategy=steps",
              "--set", "training.save_steps=20", "--set", "training.eval_strategy=no")
    assert res.code == 0, res.output
    ck = out / "checkpoints" / "checkpoint-40"
    (ck / "optimizer.pt").write_bytes((ck / "optimizer.pt").read_bytes() + b"\0")  # changed after it was recorded
    res = cli("train", "--output-dir", out, "--resume", str(ck))
    assert res.code == 2 and "E309" in res.output and "optimizer.pt" in res.output


def test_nan_loss_stops_with_a_clear_message(tiny_roberta, resume_data, tmp_path, cli):
    out = tmp_path / "nan"
    res = cli("train", "--model", tiny_roberta, "--train-file", resume_data, "--output-dir", out, "--precision",
              "fp32", "--lr", "1e30", "--max-steps", "60", "--batch-size", "8", "--set", "training.logging_steps=2",
              "--set", "training.eval_strategy=no", "--set", "training.max_grad_norm=0")
    assert res.code == 2 and "E403" in res.output, res.output
    assert not (out / "adapter").exists()


def test_torchrun_two_processes_on_cpu(tiny_roberta, cls_data, tmp_path):
    """2 processes (gloo, fp32): artefacts written once, every evaluation row counted once, the expected number of
    optimizer steps, predictions.csv equal row by row to a 1-process prediction with the same adapter, and each
    rank's process group destroyed before exit (left to interpreter shutdown, gloo can abort a rank, and torchrun
    then kills rank 0 mid-write: seen once in CI)."""
    import csv as csv_mod

    from lorafit.inference import Predictor

    out = tmp_path / "ddp"
    driver = tmp_path / "driver.py"  # `python -m lorafit`, plus a report of the process group at exit
    driver.write_text("import atexit, sys\nimport torch.distributed as dist\n"
                      "atexit.register(lambda: print('group left at exit:', dist.is_initialized(), flush=True))\n"
                      "sys.argv[0] = 'lorafit'\nfrom lorafit.cli import main\nmain()\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(driver), "train", "--model", str(tiny_roberta), "--train-file", str(cls_data["train"]),
           "--test-file", str(cls_data["test"]), "--output-dir", str(out), "--precision", "fp32", "--epochs", "2",
           "--batch-size", "8", "--lr", "5e-3"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("group left at exit: False") == 2, res.stdout[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    stats = json.loads((out / "data_stats.json").read_text())
    assert metrics["validation"]["rows"] == stats["splits"]["validation"]["rows"] == 24
    assert metrics["test"]["rows"] == 60
    state = json.loads(sorted((out / "checkpoints").glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    per_epoch = -(-216 // (8 * 2))  # 216 training rows, batch 8 on each of 2 processes
    assert state["global_step"] == 2 * per_epoch
    with (out / "predictions.csv").open() as fh:
        rows = list(csv_mod.DictReader(fh))
    with open(cls_data["test"]) as fh:
        texts = [r["text"] for r in csv_mod.DictReader(fh)]
    single = Predictor.load(out).predict(texts)
    assert [r["predicted"] for r in rows] == [s["label"] for s in single]
    assert [int(r["row_id"]) for r in rows] == list(range(60))
    check = subprocess.run([sys.executable, "-m", "lorafit", "check", str(out)], env=env, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_server_under_load(cls_run, cls_data, tmp_path):
    """~2,000 requests at concurrency 8 (valid, malformed, oversized, mixed batches) against a loopback server:
    no 5xx, no crash, and every valid answer carries lorafit predict's fp32 label with probabilities within 1e-4.
    Bounded in count and time; it stops by itself."""
    import csv as csv_mod
    import http.client
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from lorafit.predicting import predict_file
    from lorafit.serving import Limits, make_server

    with open(cls_data["test"], newline="") as fh:
        texts = [r["text"] for r in csv_mod.DictReader(fh)]
    predict_file(cls_run, cls_data["test"], tmp_path / "ref.csv")
    with open(tmp_path / "ref.csv", newline="") as fh:
        ref = {t: r for t, r in zip(texts, csv_mod.DictReader(fh), strict=True)}
    labels = ["business", "science", "sports"]

    server = make_server(cls_run, "127.0.0.1", 0, limits=Limits(max_body_bytes=50_000, max_text_chars=2_000,
                                                                 max_batch=16))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]

    def send(i: int) -> tuple[int, int, bytes, list[str] | None]:
        kind = i % 6
        batch = None
        if kind == 0:
            batch = [texts[i % len(texts)]]
            body = json.dumps({"inputs": batch[0]}).encode()
        elif kind == 1:
            batch = [texts[(i + k) % len(texts)] for k in range(5)]
            body = json.dumps({"inputs": batch}).encode()
        elif kind == 2:
            body = b'{"inputs": ["ok", 3'  # malformed JSON
        elif kind == 3:
            body = json.dumps({"inputs": "x" * 5_000}).encode()  # text over the limit
        elif kind == 4:
            body = json.dumps({"inputs": ["a"] * 40}).encode()  # batch over the limit
        else:
            body = json.dumps({"text": "wrong key"}).encode()
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return i, resp.status, resp.read(), batch
        finally:
            conn.close()

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(send, range(1_998), timeout=600))
    finally:
        server.shutdown()
        server.server_close()
    thread.join(10)
    assert not thread.is_alive()  # it stops by itself
    statuses = [s for _, s, _, _ in results]
    assert all(s < 500 for s in statuses)
    assert statuses.count(200) == 666 and statuses.count(413) == 666 and statuses.count(400) == 666
    for _, status, data, batch in results:
        if status != 200:
            assert set(json.loads(data)["error"]) == {"code", "message"}
            continue
        answer = json.loads(data)
        answers = [answer] if isinstance(answer, dict) else answer
        assert len(answers) == len(batch)
        for text, a in zip(batch, answers, strict=True):
            r = ref[text]
            assert a["label"] == r["label"]
            for name in labels:
                assert abs(a["scores"][name] - float(r[f"p_{name}"])) <= 1e-4
