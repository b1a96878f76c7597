"""`lorafit serve`: a small local HTTP server over the one Predictor (standard library only).

Contract (Hugging Face style):

- ``POST /predict`` with ``{"inputs": "text"}`` or ``{"inputs": ["text", ...]}``. Classification answers
  ``{"label", "score", "scores"}`` per input, NER a list of ``{"entity", "text", "start", "end", "score"}``
  per input; a single string in gives a single answer out. A form post (``inputs=...``, what the page's form
  sends without JavaScript) is accepted too.
- ``GET /health`` -> ``{"status": "ok"}``; ``GET /metadata`` -> task, labels, base model, counts, metrics;
  ``GET /`` -> a self-contained try-it page.
- Errors are ``{"error": {"code", "message"}}``: 400 invalid_json / invalid_payload / missing_inputs /
  wrong_type / empty_inputs / empty_text / bad_content_length; 413 body_too_large / text_too_large /
  batch_too_large; 404 not_found; 405 method_not_allowed. A 500 (internal_error) only ever means a bug, and
  the server keeps running.

It binds 127.0.0.1 unless told otherwise. Predictions run one at a time behind a lock (the model is shared);
requests are read and answered by a thread each, with a socket timeout so slow clients cannot pin threads.
"""

from __future__ import annotations

import html
import json
import logging
import socket
import socketserver
import threading
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from lorafit.artifacts import read_manifest
from lorafit.errors import LorafitError

logger = logging.getLogger("lorafit.serve")
DEFAULT_PORT = 8000
BACKENDS = ("auto", "torch", "onnx")
ROUTES = {"/": ("GET",), "/health": ("GET",), "/metadata": ("GET",), "/predict": ("POST",)}


@dataclass
class Limits:
    """Request limits; anything above them is answered with 413."""

    max_body_bytes: int = 1_000_000
    max_text_chars: int = 20_000
    max_batch: int = 64

    def check(self) -> Limits:
        for key, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LorafitError("E608", key=key, value=value)
        return self


class ApiError(Exception):
    """A client error with its HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# ---- the service: everything but HTTP -----------------------------------------------------------------------
class Service:
    """Validate a payload, predict under a lock, describe the model; no sockets (tests can call it directly)."""

    def __init__(self, predictor: Any, info: dict[str, Any] | None = None, limits: Limits | None = None) -> None:
        self.predictor = predictor
        self.info = info or {}
        self.limits = (limits or Limits()).check()
        self.lock = threading.Lock()

    def parse_inputs(self, payload: Any) -> tuple[list[str], bool]:
        if not isinstance(payload, dict):
            raise ApiError(400, "invalid_payload", 'The body must be a JSON object such as {"inputs": "some text"}.')
        if "inputs" not in payload:
            raise ApiError(400, "missing_inputs", 'The body has no "inputs": send {"inputs": "text"} or '
                           '{"inputs": ["text", ...]}.')
        value = payload["inputs"]
        if isinstance(value, str):
            texts, single = [value], True
        elif isinstance(value, list):
            if not value:
                raise ApiError(400, "empty_inputs", '"inputs" is an empty list; send at least one text.')
            bad = next((i for i, t in enumerate(value) if not isinstance(t, str)), None)
            if bad is not None:
                raise ApiError(400, "wrong_type", f'"inputs"[{bad}] is a {_json_type(value[bad])}; every input must '
                               "be a string.")
            texts, single = value, False
        else:
            raise ApiError(400, "wrong_type", f'"inputs" is a {_json_type(value)}; expected a string or a list of '
                           "strings.")
        if len(texts) > self.limits.max_batch:
            raise ApiError(413, "batch_too_large", f"{len(texts)} inputs in one request; the limit is "
                           f"{self.limits.max_batch}.")
        for i, t in enumerate(texts):
            where = "The input" if single else f'"inputs"[{i}]'
            if not t.strip():
                raise ApiError(400, "empty_text", f"{where} is empty or only whitespace.")
            if len(t) > self.limits.max_text_chars:
                raise ApiError(413, "text_too_large", f"{where} has {len(t):,} characters; the limit is "
                               f"{self.limits.max_text_chars:,}.")
        return texts, single

    def predict(self, payload: Any) -> Any:
        texts, single = self.parse_inputs(payload)
        with self.lock:
            if self.predictor.task == "ner":
                from lorafit.ner import predict_entities

                out: list[Any] = [[_entity(e) for e in ents] for ents in predict_entities(self.predictor, texts)]
            else:
                out = [{"label": p["label"], "score": p["score"], "scores": p["scores"]}
                       for p in self.predictor.predict(texts, batch_size=32)]
        return out[0] if single else out

    def metadata(self) -> dict[str, Any]:
        p = self.predictor
        base = (p.bundle.get("base_model") or {}).get("name_or_path")
        return {"task": p.task, "labels": p.labels, "base_model": base, "kind": p.bundle.get("kind"),
                "backend": getattr(p, "backend", "torch"), "max_length": p.max_length, **self.info,
                "limits": asdict(self.limits)}

    def page(self) -> str:
        meta = {"task": self.predictor.task, "labels": self.predictor.labels}
        title = f"lorafit · {self.predictor.task} · {(self.metadata().get('base_model') or '')}"
        return (PAGE.replace("__TITLE__", html.escape(title))
                .replace("__META__", json.dumps(meta, ensure_ascii=False).replace("<", "\\u003c")))


def _entity(e: dict[str, Any]) -> dict[str, Any]:
    """The contract's entity shape (lorafit.ner names the type 'type'; the API says 'entity', as HF does)."""
    return {"entity": e.get("entity", e.get("type")), "text": e["text"], "start": int(e["start"]),
            "end": int(e["end"]), "score": float(e["score"])}


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", dict: "object", list: "list", type(None): "null"}.get(
        type(value), type(value).__name__)


def load_predictor(path: str | Path, backend: str = "auto", base_model: str | None = None,
                   variant: str | None = None, precision: str = "fp32") -> Any:
    """A Predictor on a run / bundle (torch) or an export folder (onnx), refusing a backend that cannot load it."""
    from lorafit.inference import Predictor, bundle_dir

    folder = bundle_dir(path)
    bundle = read_manifest(folder)
    kind = bundle["kind"]
    if backend not in BACKENDS:
        raise LorafitError("E605", backend=backend, path=folder, holds=f"a '{kind}' bundle",
                           hint=f"Backends: {', '.join(BACKENDS)}.")
    if backend == "auto":
        backend = "onnx" if kind == "export" else "torch"
    if backend == "onnx" and kind != "export":
        raise LorafitError("E605", backend="onnx", path=folder, holds=f"a PyTorch '{kind}' bundle",
                           hint="Export it first (lorafit export RUN --format onnx --output DIR) and serve DIR.")
    if backend == "torch" and kind == "export":
        raise LorafitError("E605", backend="torch", path=folder, holds="ONNX graphs only",
                           hint="Use --backend onnx, or serve the run folder it was exported from.")
    if backend == "onnx":
        from lorafit.export import load_export

        return load_export(Predictor, folder, bundle, variant=variant)
    return Predictor.load(path, base_model=base_model, precision=precision)


def describe(path: str | Path) -> dict[str, Any]:
    """Parameter counts and metrics for /metadata, from the run folder or the export report."""
    from lorafit.inference import bundle_dir
    from lorafit.reports import _json, run_dir_of, scalar_metrics

    folder = bundle_dir(path)
    bundle = _json(folder / "lorafit.json")
    run = run_dir_of(folder)
    info: dict[str, Any] = {"parameters": (_json(run / "params.json") if run else {}) or bundle.get("parameters")}
    metrics = _json(run / "metrics.json") if run else {}
    info["metrics"] = {s: scalar_metrics(metrics[s]) for s in ("validation", "test") if isinstance(metrics.get(s),
                                                                                                  dict)}
    report = _json(folder / "export_report.json")
    if report:
        info["metrics"] = info["metrics"] or report.get("run_metrics") or {}
        info["export"] = {name: {k: v.get(k) for k in ("file", "size_bytes", "max_abs_logit_delta")} | (
            {"eval": v["eval"]} if "eval" in v else {}) for name, v in (report.get("variants") or {}).items()}
    return info


# ---- HTTP ---------------------------------------------------------------------------------------------------
class LorafitServer(ThreadingHTTPServer):
    daemon_threads = True
    service: Service

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no getfqdn(): a reverse lookup can hang on offline machines
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("request from %s failed", client_address, exc_info=True)

    @property
    def url(self) -> str:
        host = self.server_name if ":" not in self.server_name else f"[{self.server_name}]"
        return f"http://{host}:{self.server_port}"


class Handler(BaseHTTPRequestHandler):
    server: LorafitServer
    server_version = "lorafit"
    sys_version = ""
    timeout = 30  # seconds a client may take to send its request

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    # routing
    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_OPTIONS(self) -> None:
        self._route("OPTIONS")

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        try:
            if path not in ROUTES:
                raise ApiError(404, "not_found", f"No such endpoint: {path}. Endpoints: GET /, GET /health, "
                               "GET /metadata, POST /predict.")
            if method not in ROUTES[path]:
                raise ApiError(405, "method_not_allowed", f"{path} accepts {', '.join(ROUTES[path])}, not {method}.")
            service = self.server.service
            if path == "/":
                self._send(200, service.page().encode("utf-8"), "text/html; charset=utf-8",
                           {"Content-Security-Policy": CSP})
            elif path == "/health":
                self._json(200, {"status": "ok"})
            elif path == "/metadata":
                self._json(200, service.metadata())
            else:
                self._json(200, service.predict(self._payload()))
        except ApiError as err:
            extra = {"Allow": ", ".join(ROUTES[path])} if err.status == 405 else None
            self._json(err.status, {"error": {"code": err.code, "message": err.message}}, extra)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:  # a bug, never the client's input: answer 500 and keep serving
            logger.exception("internal error on %s %s", method, path)
            self._json(500, {"error": {"code": "internal_error", "message": "The server failed on this request; "
                                       "see its log."}})

    def _payload(self) -> Any:
        limits = self.server.service.limits
        raw = self.headers.get("Content-Length")
        try:
            length = int(raw) if raw is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self._discard_pending()
            raise ApiError(400, "bad_content_length", "Send the JSON body with a valid Content-Length header.")
        if length > limits.max_body_bytes:
            self._drain(length)
            raise ApiError(413, "body_too_large", f"The body has {length:,} bytes; the limit is "
                           f"{limits.max_body_bytes:,}.")
        body = self.rfile.read(length)
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            text = body.decode("utf-8")
            if ctype == "application/x-www-form-urlencoded" and not text.lstrip().startswith(("{", "[", '"')):
                # the page's form without JavaScript (curl -d '{...}' also says form-urlencoded: that is JSON)
                values = parse_qs(text, keep_blank_values=True).get("inputs")
                return {} if values is None else {"inputs": values[0] if len(values) == 1 else values}
            return json.loads(text)
        except UnicodeDecodeError:
            raise ApiError(400, "invalid_json", "The body is not UTF-8 text.") from None
        except (ValueError, RecursionError) as err:
            raise ApiError(400, "invalid_json", f"The body is not valid JSON: {str(err)[:200]}.") from None

    def _drain(self, length: int) -> None:
        """Read (and drop) an oversized body up to a cap, so the client can read the 413 instead of a reset."""
        left = min(length, 16 * self.server.service.limits.max_body_bytes)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)
        self.close_connection = True

    def _discard_pending(self) -> None:
        """Drop whatever body bytes already arrived (of unknown length), so closing the socket does not reset the
        connection before the client has read the error."""
        self.close_connection = True
        try:
            self.connection.settimeout(0.05)
            while self.rfile.read1(1 << 16):
                pass
        except (OSError, ValueError):
            pass
        finally:
            self.connection.settimeout(self.timeout)

    # answers
    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8", headers)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (malformed request line, unknown method, huge headers) in our JSON shape."""
        status = 405 if code == HTTPStatus.NOT_IMPLEMENTED else code
        names = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "timeout",
                 414: "uri_too_long", 431: "headers_too_large"}
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unparsable request line: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        self._json(status, {"error": {"code": names.get(status, "bad_request"), "message": message or phrase}})


def make_server(path: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, backend: str = "auto",
                limits: Limits | None = None, base_model: str | None = None, variant: str | None = None,
                service: Service | None = None) -> LorafitServer:
    """Bind first (a port in use fails in a second, before any model loads), then load the model; port 0 picks
    a free port (``server.server_port``). Run it with ``server.serve_forever()`` (e.g. in a thread)."""
    limits = (limits or Limits()).check()
    cls = LorafitServer
    if ":" in host:
        cls = type("LorafitServer6", (LorafitServer,), {"address_family": socket.AF_INET6})
    try:
        server = cls((host, port), Handler)
    except OSError as err:
        raise LorafitError("E606", host=host, port=port, reason=err.strerror or str(err)) from None
    try:
        if service is None:
            service = Service(load_predictor(path, backend, base_model, variant), describe(path), limits)
        server.service = service
    except BaseException:
        server.server_close()
        raise
    return server


def serve(path: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, **kw: Any) -> None:
    """Serve until Ctrl-C."""
    server = make_server(path, host, port, **kw)
    meta = server.service.metadata()
    print(f"lorafit serving {path} ({meta['task']}, {len(meta['labels'])} labels, backend {meta['backend']}) on "
          f"{server.url}  (POST /predict, GET /health, GET /metadata, try-it page at /); Ctrl-C stops it",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'")

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;max-width:760px;margin:2em auto;padding:0 1em;color:#222}
textarea{width:100%;box-sizing:border-box;font:inherit;padding:.5em}
button{margin:.5em 0;padding:.4em 1.2em;font:inherit}
.row{display:flex;align-items:center;gap:.6em;margin:.2em 0}.name{width:30%;overflow:hidden;text-overflow:ellipsis}
.bar{flex:1;background:#eee;height:1em}.fill{background:#4a7fd4;height:100%}.top .name{font-weight:bold}
.pct{width:4.5em;text-align:right;font-variant-numeric:tabular-nums}
mark{background:#ffe28a;padding:0 .15em;border-radius:3px}mark sup{font-size:.65em;color:#805b00;margin-left:.2em}
.err{color:#b00020}.sub{color:#666}#text{line-height:1.9;white-space:pre-wrap}
</style></head><body>
<h1>lorafit</h1><p class="sub">__TITLE__</p>
<form id="form" action="/predict" method="post">
<textarea id="inputs" name="inputs" rows="5" required placeholder="Type or paste a text"></textarea>
<button type="submit">Predict</button></form>
<div id="out"></div>
<script>
const META = __META__;
const out = document.getElementById("out");
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; }
function showScores(p) {
  const rows = Object.entries(p.scores).sort((a, b) => b[1] - a[1]);
  for (const [name, prob] of rows) {
    const row = el("div", name === p.label ? "row top" : "row");
    row.appendChild(el("span", "name", name));
    const bar = el("div", "bar"); const fill = el("div", "fill"); fill.style.width = (100 * prob).toFixed(1) + "%";
    bar.appendChild(fill); row.appendChild(bar); row.appendChild(el("span", "pct", (100 * prob).toFixed(1) + "%"));
    out.appendChild(row);
  }
}
function showEntities(text, ents) {
  const box = el("div"); box.id = "text"; let at = 0;
  for (const e of [...ents].sort((a, b) => a.start - b.start)) {
    if (e.start < at) continue;
    box.appendChild(document.createTextNode(text.slice(at, e.start)));
    const m = el("mark", "", text.slice(e.start, e.end)); m.title = e.entity + " " + e.score.toFixed(3);
    m.appendChild(el("sup", "", e.entity)); box.appendChild(m); at = e.end;
  }
  box.appendChild(document.createTextNode(text.slice(at)));
  out.appendChild(box);
  if (!ents.length) out.appendChild(el("p", "sub", "No entities found."));
}
document.getElementById("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = document.getElementById("inputs").value;
  out.textContent = "...";
  try {
    const r = await fetch("/predict", {method: "POST", headers: {"Content-Type": "application/json"},
                                       body: JSON.stringify({inputs: text})});
    const data = await r.json();
    out.textContent = "";
    if (!r.ok) { out.appendChild(el("p", "err", data.error.code + ": " + data.error.message)); return; }
    if (META.task === "ner") showEntities(text, data); else showScores(data);
  } catch (e) { out.textContent = ""; out.appendChild(el("p", "err", String(e))); }
});
</script></body></html>
"""
