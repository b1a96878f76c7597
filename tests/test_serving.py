"""`lorafit serve`: the HTTP contract on an ephemeral loopback port, the try-it page, and bad input."""

from __future__ import annotations

import csv
import http.client
import json
import re
import socket
import sys
import threading
import types
from html.parser import HTMLParser

import pytest

from conftest import run_cli

LIMITS = {"max_body_bytes": 20_000, "max_text_chars": 500, "max_batch": 8}


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class Client:
    def __init__(self, server) -> None:
        self.host, self.port = server.server_address[:2]

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, dict(resp.getheaders()), data
        finally:
            conn.close()

    def json(self, method: str, path: str, obj=None, raw: bytes | None = None, ctype="application/json"):
        body = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else None)
        status, headers, data = self.request(method, path, body, {"Content-Type": ctype} if body is not None else {})
        assert headers["Content-Type"].startswith("application/json"), headers
        return status, json.loads(data), headers


def start(path=None, **kw):
    from lorafit.serving import Limits, make_server

    server = make_server(path, "127.0.0.1", 0, limits=Limits(**LIMITS), **kw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server(cls_run):
    srv = start(cls_run)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def client(server):
    return Client(server)


def chunks(xs, n):
    return [xs[i : i + n] for i in range(0, len(xs), n)]


# ---- the contract ---------------------------------------------------------------------------------------------
def test_binds_loopback_on_an_ephemeral_port(server):
    assert server.server_address[0] == "127.0.0.1" and server.server_address[1] > 0


def test_health_and_metadata(client, cls_run):
    assert client.json("GET", "/health")[:2] == (200, {"status": "ok"})
    status, meta, _ = client.json("GET", "/metadata")
    metrics = json.loads((cls_run / "metrics.json").read_text())
    params = json.loads((cls_run / "params.json").read_text())
    bundle = json.loads((cls_run / "adapter" / "lorafit.json").read_text())
    assert status == 200 and meta["task"] == "classification" and meta["labels"] == metrics["labels"]
    assert meta["base_model"] == bundle["base_model"]["name_or_path"]
    assert meta["parameters"]["trainable"] == params["trainable"] and meta["parameters"]["total"] == params["total"]
    assert meta["metrics"]["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert meta["backend"] == "torch" and meta["limits"] == LIMITS


def test_predictions_match_lorafit_predict(client, cls_run, cls_data, tmp_path):
    res = run_cli("predict", cls_run, "--input", cls_data["test"], "--output", tmp_path / "p.csv", "--precision",
                  "fp32")  # the server's default: fp32 (lowest single-request latency)
    assert res.code == 0, res.output
    rows = read_csv(tmp_path / "p.csv")
    texts = [r["text"] for r in read_csv(cls_data["test"])]
    got = []
    for part in chunks(texts, LIMITS["max_batch"]):
        status, out, _ = client.json("POST", "/predict", {"inputs": part})
        assert status == 200 and isinstance(out, list) and len(out) == len(part)
        got += out
    labels = json.loads((cls_run / "metrics.json").read_text())["labels"]
    for g, r in zip(got, rows, strict=True):
        assert set(g) == {"label", "score", "scores"} and g["label"] == r["label"]
        assert list(g["scores"]) == labels
        assert g["score"] == pytest.approx(float(r["score"]), abs=1e-4)
        assert all(g["scores"][n] == pytest.approx(float(r[f"p_{n}"]), abs=1e-4) for n in labels)


def test_single_in_single_out(client):
    status, one, _ = client.json("POST", "/predict", {"inputs": "the striker scored in the cup final"})
    assert status == 200 and isinstance(one, dict) and one["label"] in one["scores"]
    assert one["score"] == max(one["scores"].values()) and sum(one["scores"].values()) == pytest.approx(1, abs=1e-5)
    status, many, _ = client.json("POST", "/predict", {"inputs": ["the striker scored in the cup final"]})
    assert status == 200 and isinstance(many, list) and many[0]["label"] == one["label"]


BAD = [
    (b"{not json", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (b"\xff\xfe{}", 400, "invalid_json"),
    (b"[" * 15_000 + b"]" * 15_000, 413, "body_too_large"),
    (b"[" * 9_000 + b"]" * 9_000, 400, "invalid_json"),  # nested too deep for the parser
    (b'["text"]', 400, "invalid_payload"),
    (b'"text"', 400, "invalid_payload"),
    (b"{}", 400, "missing_inputs"),
    (b'{"text": "hello"}', 400, "missing_inputs"),
    (b'{"inputs": 5}', 400, "wrong_type"),
    (b'{"inputs": null}', 400, "wrong_type"),
    (b'{"inputs": {"text": "hello"}}', 400, "wrong_type"),
    (b'{"inputs": ["fine", 5]}', 400, "wrong_type"),
    (b'{"inputs": []}', 400, "empty_inputs"),
    (b'{"inputs": ""}', 400, "empty_text"),
    (b'{"inputs": ["fine", " \\n "]}', 400, "empty_text"),
    (json.dumps({"inputs": "x" * 501}).encode(), 413, "text_too_large"),
    (json.dumps({"inputs": ["match"] * 9}).encode(), 413, "batch_too_large"),
    (json.dumps({"inputs": "x" * 30_000}).encode(), 413, "body_too_large"),
]


@pytest.mark.parametrize("body, status, code", BAD, ids=[f"{c}-{i}" for i, (_, _, c) in enumerate(BAD)])
def test_malformed_requests(client, body, status, code):
    got, out, _ = client.json("POST", "/predict", raw=body)
    assert (got, out["error"]["code"]) == (status, code), out
    assert set(out) == {"error"} and set(out["error"]) == {"code", "message"} and out["error"]["message"]


def test_routes_methods_and_headers(client):
    status, out, headers = client.json("GET", "/nope")
    assert status == 404 and out["error"]["code"] == "not_found"
    status, out, headers = client.json("GET", "/predict")
    assert status == 405 and out["error"]["code"] == "method_not_allowed" and headers["Allow"] == "POST"
    status, out, headers = client.json("POST", "/health", {"inputs": "x"})
    assert status == 405 and headers["Allow"] == "GET"
    for method in ("PUT", "DELETE", "PATCH", "BREW"):
        status, out, _ = client.json(method, "/metadata")
        assert status == 405 and out["error"]["code"] == "method_not_allowed", method
    status, out, _ = client.json("GET", "/health?probe=1")
    assert status == 200


def test_bad_content_length_and_raw_garbage(server, client):
    status, _, data = client.request("POST", "/predict", b"{}", {"Content-Length": "abc"})
    assert status == 400 and json.loads(data)["error"]["code"] == "bad_content_length"
    with socket.create_connection(server.server_address[:2], timeout=10) as s:  # not HTTP at all
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):  # the server answers and closes the connection
            reply += chunk
    assert reply.startswith(b"HTTP/") and b" 400 " in reply.split(b"\r\n")[0] and b'"error"' in reply
    assert client.json("GET", "/health")[0] == 200


def test_concurrent_mixed_requests_never_5xx(client):
    bodies = [b'{"inputs": "market shares fell"}', b"{oops", b'{"inputs": ["goal", "chip"]}', b'{"inputs": 1}']
    statuses: list[int] = []

    def work(i: int) -> None:
        for k in range(6):
            statuses.append(client.request("POST", "/predict", bodies[(i + k) % len(bodies)],
                                            {"Content-Type": "application/json"})[0])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(statuses) == 48 and set(statuses) == {200, 400}
    assert client.json("GET", "/health")[0] == 200


# ---- the page -------------------------------------------------------------------------------------------------
class FormFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self.fields: list[dict] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append(a)
        if tag in ("textarea", "input"):
            self.fields.append(a)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_page_is_served_self_contained_and_its_form_posts_to_predict(client):
    status, headers, data = client.request("GET", "/")
    page = data.decode("utf-8")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    finder = FormFinder()
    finder.feed(page)
    [form] = finder.forms
    assert form["action"] == "/predict" and form["method"].lower() == "post"
    assert any(f.get("name") == "inputs" for f in finder.fields)
    assert finder.refs == [] and not re.search(r"https?://", page) and "<link" not in page
    assert 'fetch("/predict"' in page and "JSON.stringify({inputs: text})" in page
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    # what the form sends without JavaScript is answered too
    status, out, _ = client.json("POST", "/predict", raw=b"inputs=goal+team+coach",
                                 ctype="application/x-www-form-urlencoded")
    assert status == 200 and out["label"] in out["scores"]
    # curl -d '{"inputs": ...}' labels JSON as form-urlencoded: still read as JSON
    status, out, _ = client.json("POST", "/predict", {"inputs": "goal"}, ctype="application/x-www-form-urlencoded")
    assert status == 200 and out["label"] in out["scores"]


# ---- other folders and backends -------------------------------------------------------------------------------
def test_serves_an_onnx_export(cls_run, cls_data, tmp_path):
    from lorafit.inference import Predictor

    res = run_cli("export", cls_run, "--output", tmp_path / "onnx", "--no-bench")
    assert res.code == 0, res.output
    srv = start(tmp_path / "onnx", backend="onnx")
    try:
        c = Client(srv)
        meta = c.json("GET", "/metadata")[1]
        assert meta["backend"] == "onnx-fp32" and meta["kind"] == "export"
        assert meta["metrics"]["test"]["accuracy"] == json.loads((cls_run / "metrics.json").read_text())["test"][
            "accuracy"]
        texts = [r["text"] for r in read_csv(cls_data["test"])][:8]
        _, out, _ = c.json("POST", "/predict", {"inputs": texts})
    finally:
        srv.shutdown()
        srv.server_close()
    want = Predictor.load(cls_run).predict(texts)
    assert [o["label"] for o in out] == [w["label"] for w in want]
    assert max(abs(o["score"] - w["score"]) for o, w in zip(out, want, strict=True)) < 1e-4
    res = run_cli("serve", tmp_path / "onnx", "--backend", "torch", "--port", "0")
    assert res.code == 2 and "E605" in res.output


def test_ner_answers_entities_per_input(monkeypatch):
    """The NER contract (entity, text, start, end, score), single in -> single out, with a stand-in model."""
    from lorafit.serving import Service, make_server

    def fake_entities(predictor, texts):
        return [[{"type": "person", "text": t.split()[0], "start": 0, "end": len(t.split()[0]), "score": 0.9,
                  "word_start": 0, "word_end": 1}] for t in texts]

    monkeypatch.setitem(sys.modules, "lorafit.ner", types.SimpleNamespace(predict_entities=fake_entities))
    predictor = types.SimpleNamespace(task="ner", labels=["O", "person"], max_length=32, bundle={"kind": "adapter"})
    srv = make_server(None, "127.0.0.1", 0, service=Service(predictor))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        c = Client(srv)
        status, one, _ = c.json("POST", "/predict", {"inputs": "Ada wrote code"})
        _, many, _ = c.json("POST", "/predict", {"inputs": ["Ada wrote", "Alan read"]})
        page = c.request("GET", "/")[2].decode()
    finally:
        srv.shutdown()
        srv.server_close()
    assert status == 200 and one == [{"entity": "person", "text": "Ada", "start": 0, "end": 3, "score": 0.9}]
    assert [m[0]["text"] for m in many] == ["Ada", "Alan"]
    assert '"task": "ner"' in page and "showEntities" in page


def test_cli_errors(cls_run, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        res = run_cli("serve", cls_run, "--port", port)
    assert res.code == 2 and "E606" in res.output and str(port) in res.output
    assert "\n" not in str(res.exception)
    res = run_cli("serve", cls_run, "--backend", "onnx", "--port", "0")
    assert res.code == 2 and "E605" in res.output and "lorafit export" in res.output
    res = run_cli("serve", cls_run, "--max-batch", "0", "--port", "0")
    assert res.code == 2 and "E608" in res.output
    res = run_cli("serve", tmp_path, "--port", "0")
    assert res.code == 2 and "E302" in res.output
