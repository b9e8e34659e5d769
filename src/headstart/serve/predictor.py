"""An HTTP prediction server for a run folder or a stored model (FastAPI; `headstart serve` runs it).

    app = create_app("runs/demo", token="s3cret")        # or "emoji@production" from the model store

POST /predict          one input: multipart field "file" (images, audio), a raw image/audio body, or
                       JSON {"text": ...} for text models -> {"label", "probability", "top": [...]}
POST /predict/batch    several "file" fields, or JSON {"texts": [...]} -> {"results": [...]}, where an
                       unreadable item (also an image over --max-pixels) gets {"error": reason} and the
                       others still get their prediction
GET  /health           liveness and what is loaded;  GET /model  the model card;  GET /  a drop-a-file page

The model loads once. Uploads are decoded from memory (no temp files for images) with exactly the
preprocessing the backbone's own loader applies; the forward runs under a lock (one at a time: the cores
are better used by one batch than by two competing ones), through ONNX Runtime when an export of this
very model (`headstart export RUN --onnx`) sits in the run folder, else PyTorch in inference mode.
Every bad request gets a 4xx with a JSON {"error", "fix"}: the server never crashes on input.

Slow inputs do not hold up the others: decoding and the forward run in worker threads, never on the
event loop, and a text is tokenized only as far as the model reads it (`encode_head`): a 10 MB text
would otherwise keep the Rust tokenizer, which holds the GIL, busy for seconds.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request is imported
# inside create_app so that importing this module stays cheap).

import hmac
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.images import ImageTooLarge
from headstart.errors import BadInput, HeadstartError
from headstart.model import TrainedModel, softmax

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_BATCH = 64
DEFAULT_TOP = 5
#: Uploads are untrusted: a small PNG can claim a huge canvas. 40 MP is larger than any phone photo.
SERVE_MAX_PIXELS = 40_000_000
#: Characters of a text tokenized at first, per token the model reads: tokens average 3-5 characters.
CHARS_PER_TOKEN = 16


class HTTPError(Exception):
    """A request we refuse: status code, a message naming what is wrong, and how to fix it."""

    def __init__(self, status: int, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.fix = status, message, fix


@dataclass
class Upload:
    field: str
    filename: str | None
    content_type: str | None
    data: bytes


# -- the model side ---------------------------------------------------------------------------------


def load_served_model(ref: str | Path) -> TrainedModel:
    """A run folder, else a model-store reference such as "emoji@production"."""
    from headstart.model import load_model

    path = Path(ref)
    if path.is_dir():
        return load_model(path)
    try:
        from headstart import store  # type: ignore[attr-defined]
    except ImportError:
        store = None
    if store is not None and hasattr(store, "load"):
        return store.load(str(ref))
    return load_model(path)  # raises the "not a headstart run" error with its fix


class Predictor:
    """The loaded model behind the server: decode one upload, predict a batch, format the answer."""

    def __init__(self, model: TrainedModel, *, engine: str = "auto", max_pixels: int = SERVE_MAX_PIXELS):
        if engine not in ("auto", "onnx", "torch"):
            raise HeadstartError(f"unknown engine {engine!r}", fix="use auto, onnx or torch")
        self.model = model
        self.classes = model.classes
        self.max_pixels = max_pixels
        self.lock = threading.Lock()
        self.session: Any = None
        self.onnx_path: Path | None = None
        if engine in ("auto", "onnx"):
            self.onnx_path = matching_export(model)
            if self.onnx_path is None and engine == "onnx":
                raise HeadstartError(
                    f"no ONNX export of this model in {model.path}",
                    fix=f"run `headstart export {model.path} --onnx` first, or use engine torch",
                )
        if self.onnx_path is not None:
            from headstart.export import _session

            self.session = _session(self.onnx_path)
            self.engine = "onnx"
        else:
            self.module = model.module()
            self.engine = "torch"

    def decode(self, data: bytes, name: str = "upload") -> Any:
        """Upload bytes -> one preprocessed example (raises BadInput with the reason)."""
        from headstart.backbones.base import Backbone

        bb = self.model.backbone
        if self.model.modality == "image" and type(bb).load_item is Backbone.load_item:
            from headstart.data.images import load_image_bytes

            return load_image_bytes(data, bb.preprocess, name=name, max_pixels=self.max_pixels)
        from_bytes = getattr(bb, "load_item_bytes", None)
        if from_bytes is not None:
            return from_bytes(data, name=name)
        # A family that only reads files (e.g. an audio decoder): hand it a private temp file.
        suffix = Path(name).suffix if name else ""
        with tempfile.NamedTemporaryFile(suffix=suffix) as f:
            f.write(data)
            f.flush()
            return bb.load_item(f.name)

    def decode_text(self, text: str) -> Any:
        bb = self.model.backbone
        encode, max_length = getattr(bb, "encode", None), getattr(bb, "max_length", None)
        if encode is None or not max_length:
            return bb.load_item(text)
        # Not load_item: that also remembers every truncated text (in full) for a run's report, which
        # in a server would only grow.
        return encode_head(encode, text, int(max_length))

    def predict(self, examples: list[Any]) -> np.ndarray:
        """Preprocessed examples -> calibrated probabilities (N, K)."""
        batch = self.model.backbone.collate(examples)
        with self.lock:
            if self.session is not None:
                from headstart.export import onnx_feed

                # The export's own input names: `input`, or a text model's token ids and mask.
                return self.session.run(["probabilities"], onnx_feed(batch))[0]
            import torch

            with torch.inference_mode():
                logits = self.module(batch).numpy()
        return softmax(logits / self.model.temperature)

    def result(self, p: np.ndarray, top: int) -> dict[str, Any]:
        order = np.argsort(-p)[:top]
        return {
            "label": self.classes[int(order[0])],
            "probability": float(p[order[0]]),
            "top": [{"label": self.classes[int(j)], "probability": float(p[j])} for j in order],
        }

    def card(self, ref: str) -> dict[str, Any]:
        m = self.model
        metrics = {}
        if m.path is not None and (m.path / "metrics.json").is_file():
            raw = json.loads((m.path / "metrics.json").read_text())
            metrics = {
                s: {k: raw[s][k] for k in ("accuracy", "macro_f1", "n") if k in raw[s]}
                for s in ("val", "test")
                if isinstance(raw.get(s), dict)
            }
        card = {
            "ref": ref,
            "kind": m.kind,
            "modality": m.modality,
            "classes": self.classes,
            "temperature": m.temperature,
            "metrics": metrics,
            "backbone": m.info.get("backbone", {}),
            "preprocess": m.info.get("preprocess"),
            "engine": self.engine,
            "created": m.info.get("created"),
        }
        if self.onnx_path is not None:
            card["onnx"] = str(self.onnx_path)
        return card


def encode_head(encode: Callable[[str], Any], text: str, max_length: int) -> Any:
    """`encode(text)`, which truncates to `max_length` tokens, at the cost of a prefix of a long text.

    A tokenizer reads a whole text even though only `max_length` tokens are kept. A prefix cut at
    whitespace gives the same first tokens (the pre-tokenizers split at whitespace) as soon as it
    overflows `max_length` itself (`truncated`); when it does not (say, mostly spaces), a 4x longer
    prefix is tried, so the work stays within about 1.3x that of the shortest prefix that overflows.
    A run of over `n / 2` characters without whitespace is cut inside the word: only that word's tokens
    can then differ, and only if the word reaches into the first `max_length` tokens.
    """
    n = max(4096, CHARS_PER_TOKEN * max_length)
    while n < len(text):
        cut = max(text.rfind(c, n // 2, n) for c in " \n\t")
        head = text[: cut if cut > 0 else n]
        if head.strip():  # an all-blank prefix would be refused as an empty text
            ids = encode(head)
            if getattr(ids, "truncated", False):
                return ids
        n *= 4
    return encode(text)


def parse_json(body: bytes) -> Any:
    """A request body's JSON, through FastAPI's own Rust parser when it is there (pydantic-core).

    It holds the GIL as json does, but ~3x shorter: ~8 ms for a 10 MB text instead of ~25 ms, during
    which the event loop and every other request wait.
    """
    try:
        from pydantic_core import from_json
    except ImportError:  # pydantic 1
        return json.loads(body)
    return from_json(body)


def matching_export(model: TrainedModel) -> Path | None:
    """RUN/model.onnx if it was exported from exactly this model (same base, head, delta, temperature)."""
    from headstart.export import ONNX_FILE, card_path, model_identity

    if model.path is None:
        return None
    path = model.path / ONNX_FILE
    if not (path.is_file() and card_path(path).is_file()):
        return None
    try:
        card = json.loads(card_path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if card.get("identity") != model_identity(model) or card.get("quantized"):
        log.warning("ignoring %s: exported from a different model (re-export it)", path)
        return None
    return path


# -- the HTTP side ----------------------------------------------------------------------------------


def parse_multipart(body: bytes, content_type: str, *, max_parts: int) -> list[Upload]:
    """A multipart/form-data body (already in memory) -> its parts, without temp files."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPError(400, "multipart body without a boundary", fix="let your HTTP client build the form")
    parts: list[dict[str, Any]] = []
    field, value = bytearray(), bytearray()

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise HTTPError(413, f"more than {max_parts} parts in one request", fix="send fewer files")
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_end() -> None:
        parts[-1]["headers"][bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": lambda d, s, e: parts[-1]["data"].extend(d[s:e]),
        "on_header_field": lambda d, s, e: field.extend(d[s:e]),
        "on_header_value": lambda d, s, e: value.extend(d[s:e]),
        "on_header_end": on_header_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise HTTPError(
            400, f"malformed multipart body ({e})", fix="let your HTTP client build the form"
        ) from e
    uploads = []
    for p in parts:
        _, disp = parse_options_header(p["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        ctype = p["headers"].get(b"content-type")
        uploads.append(
            Upload(
                field=name,
                filename=filename.decode("utf-8", "replace") if filename is not None else None,
                content_type=ctype.decode("latin-1") if ctype else None,
                data=bytes(p["data"]),
            )
        )
    return uploads


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>headstart: __TITLE__</title>
<style>
body{font:15px/1.4 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}
#drop{border:2px dashed #888;border-radius:8px;padding:2.5rem;text-align:center;cursor:pointer}
#drop.over{background:#eef4ff;border-color:#36c}
.row{display:flex;align-items:center;gap:.5rem;margin:.25rem 0}
.name{width:11rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{height:1rem;background:#36c;border-radius:3px}
.err{color:#b00}
img{max-width:12rem;max-height:12rem;display:block;margin:1rem 0}
</style></head><body>
<h1>__TITLE__</h1>
<p id="info">__INFO__</p>
<p id="tokenrow" hidden><label>Token <input id="token" type="password" size="30"></label></p>
<div id="drop">Drop a file here, or click to choose one
<input id="file" type="file" hidden></div>
<div id="text" hidden><textarea id="q" rows="4" style="width:100%"></textarea>
<button id="send">Classify</button></div>
<img id="preview" alt="" hidden>
<div id="out"></div>
<script>
const needsToken = __TOKEN__, modality = "__MODALITY__";
const $ = (id) => document.getElementById(id);
if (needsToken) $("tokenrow").hidden = false;
if (modality === "text") { $("drop").hidden = true; $("text").hidden = false; }
function headers() {
  const h = {};
  if (needsToken) h["Authorization"] = "Bearer " + $("token").value;
  return h;
}
function show(res) {
  const out = $("out"); out.textContent = "";
  if (res.error) { const p = document.createElement("p"); p.className = "err";
    p.textContent = res.error + (res.fix ? " (" + res.fix + ")" : ""); out.append(p); return; }
  for (const t of res.top) {
    const row = document.createElement("div"); row.className = "row";
    const name = document.createElement("span"); name.className = "name"; name.textContent = t.label;
    const bar = document.createElement("div"); bar.className = "bar";
    bar.style.width = Math.max(2, Math.round(t.probability * 300)) + "px";
    const pct = document.createElement("span"); pct.textContent = (t.probability * 100).toFixed(1) + " %";
    row.append(name, bar, pct); out.append(row);
  }
}
async function send(body, extra) {
  $("out").textContent = "...";
  try {
    const r = await fetch("predict", {method: "POST", body, headers: {...headers(), ...extra}});
    show(await r.json());
  } catch (e) { show({error: String(e)}); }
}
function sendFile(f) {
  if (!f) return;
  if (f.type.startsWith("image/")) { $("preview").src = URL.createObjectURL(f); $("preview").hidden = false; }
  const fd = new FormData(); fd.append("file", f); send(fd, {});
}
const drop = $("drop");
drop.onclick = () => $("file").click();
$("file").onchange = (e) => sendFile(e.target.files[0]);
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => {
  e.preventDefault(); drop.classList.remove("over"); sendFile(e.dataTransfer.files[0]);
};
$("send").onclick = () => send(JSON.stringify({text: $("q").value}), {"Content-Type": "application/json"});
</script></body></html>
"""


def _html_escape(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def create_app(
    model_ref: str | Path | TrainedModel,
    *,
    token: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    engine: str = "auto",
    max_pixels: int = SERVE_MAX_PIXELS,
) -> Any:
    """A FastAPI app serving one model (loaded here, once). `token`: require `Authorization: Bearer`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if isinstance(model_ref, TrainedModel):
        model, ref = model_ref, str(model_ref.path)
    else:
        model, ref = load_served_model(model_ref), str(model_ref)
    predictor = Predictor(model, engine=engine, max_pixels=max_pixels)
    text_model = model.modality == "text"
    app = FastAPI(title=f"headstart: {ref}", docs_url=None, redoc_url=None)
    app.state.predictor = predictor
    started = time.time()
    counts = {"requests": 0, "errors": 0}

    def error(status: int, message: str, fix: str | None = None) -> JSONResponse:
        counts["errors"] += 1
        body = {"error": message, **({"fix": fix} if fix else {})}
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return error(exc.status, exc.message, exc.fix)

    @app.exception_handler(HeadstartError)
    async def _headstart_error(request: Request, exc: HeadstartError) -> JSONResponse:
        return error(400, exc.message, exc.fix)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, f"invalid request: {exc.errors()}")

    def authorize(request: Request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise HTTPError(401, "missing or wrong bearer token", fix="send 'Authorization: Bearer <token>'")

    async def read_body(request: Request) -> bytes:
        """The whole body, refused as soon as it is over max_bytes (declared or actually sent)."""
        too_big = HTTPError(
            413,
            f"request body over the {max_bytes:,}-byte limit",
            fix="send a smaller file (or raise --max-mb)",
        )
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > max_bytes:
                    raise too_big
            except ValueError:
                raise HTTPError(400, f"bad Content-Length {declared!r}") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)  # one copy at the end, not a buffer regrown on the event loop

    def top_k(request: Request) -> int:
        raw = request.query_params.get("top", str(DEFAULT_TOP))
        try:
            k = int(raw)
        except ValueError:
            raise HTTPError(422, f"top={raw!r} is not a whole number") from None
        if k < 1:
            raise HTTPError(422, f"top={k} must be at least 1")
        return min(k, len(predictor.classes))

    async def inputs(request: Request, *, batch: bool) -> list[tuple[str, Any]]:
        """The request's items as (name, raw): raw is bytes (files) or str (texts)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        single_field, many_field = ("text", "texts") if text_model else ("file", "file")
        if ctype == "application/json":
            if not text_model:
                raise HTTPError(
                    415,
                    "this model classifies files: JSON bodies are for text models",
                    fix="send the file as multipart/form-data field 'file'",
                )
            try:
                obj = parse_json(await read_body(request))
            except (ValueError, RecursionError) as e:  # also bad UTF-8, and nesting too deep
                raise HTTPError(400, f"body is not valid JSON ({e})") from e
            key = "texts" if batch else "text"
            if not isinstance(obj, dict) or set(obj) != {key}:
                got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise HTTPError(422, f"expected a JSON object with exactly the key {key!r}, got {got}")
            texts = obj[key] if batch else [obj[key]]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise HTTPError(422, f"{key!r} must be {'a list of strings' if batch else 'a string'}")
            return [(f"text[{i}]", t) for i, t in enumerate(texts)]
        if text_model:
            raise HTTPError(
                415,
                f"Content-Type {ctype or '(none)'} is not accepted by a text model",
                fix=f'send JSON {{"{single_field}": ...}} with Content-Type application/json',
            )
        if ctype == "multipart/form-data":
            body = await read_body(request)
            parts = parse_multipart(
                body, request.headers["content-type"], max_parts=max_batch if batch else 1
            )
            unknown = sorted({p.field for p in parts} - {"file", "files"})
            if unknown:
                raise HTTPError(
                    422,
                    f"unknown form field(s) {unknown}",
                    fix=f"send the file(s) as the field '{many_field}'",
                )
            return [(p.filename or p.field, p.data) for p in parts]
        if not batch and (ctype.startswith(("image/", "audio/")) or ctype == "application/octet-stream"):
            return [("body", await read_body(request))]
        raise HTTPError(
            415,
            f"Content-Type {ctype or '(none)'} is not accepted",
            fix="send multipart/form-data with the field 'file' (or a raw image/* body to /predict)",
        )

    def run(items: list[tuple[str, Any]], top: int) -> tuple[list[dict[str, Any]], list[BadInput | None]]:
        """Decode every item (bad ones get their reason), then one forward for the good ones.

        Also returns each item's BadInput (None when it was usable), for /predict's status code.
        """
        examples, where, results, bad = [], [], [], []
        for name, raw in items:
            try:
                ex = predictor.decode_text(raw) if isinstance(raw, str) else predictor.decode(raw, name)
                examples.append(ex)
                where.append(len(results))
                results.append({"file": name})
                bad.append(None)
            except BadInput as e:
                results.append({"file": name, "error": e.reason})
                bad.append(e)
        if examples:
            proba = predictor.predict(examples)
            for i, p in zip(where, proba, strict=True):
                results[i].update(predictor.result(p, top))
        return results, bad

    async def guarded(fn: Any, *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except (HTTPError, HeadstartError):
            raise
        except Exception as e:  # a bug or an input the decoder did not foresee: answer, never crash
            log.exception("prediction failed")
            raise HTTPError(500, f"prediction failed: {type(e).__name__}: {e}") from e

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        counts["requests"] += 1
        authorize(request)
        top = top_k(request)
        items = await inputs(request, batch=False)
        if len(items) != 1:
            raise HTTPError(422, "no input: send one file as the form field 'file'")
        (res,), (exc,) = await guarded(run, items, top)
        if isinstance(exc, ImageTooLarge):
            raise HTTPError(
                413,
                f"cannot use {res['file']}: {res['error']}",
                fix="send a smaller image, or start the server with a larger --max-pixels",
            )
        if "error" in res:
            raise HTTPError(422, f"cannot use {res['file']}: {res['error']}", fix="send a readable file")
        res.pop("file")
        return JSONResponse(res)

    @app.post("/predict/batch")
    async def predict_batch(request: Request) -> JSONResponse:
        counts["requests"] += 1
        authorize(request)
        top = top_k(request)
        items = await inputs(request, batch=True)
        if not items:
            raise HTTPError(422, "no inputs in the request")
        if len(items) > max_batch:
            raise HTTPError(413, f"{len(items)} inputs: over the batch limit of {max_batch}")
        results, _ = await guarded(run, items, top)
        return JSONResponse({"results": results})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": ref,
            "modality": model.modality,
            "engine": predictor.engine,
            "classes": len(predictor.classes),
            "uptime_s": round(time.time() - started, 1),
            **counts,
        }

    @app.get("/model")
    async def model_card(request: Request) -> dict[str, Any]:
        authorize(request)
        return predictor.card(ref)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        info = f"{len(predictor.classes)} classes: {', '.join(predictor.classes[:12])}"
        if len(predictor.classes) > 12:
            info += ", ..."
        html = (
            _PAGE.replace("__TITLE__", _html_escape(Path(ref).name or ref))
            .replace("__INFO__", _html_escape(info))
            .replace("__TOKEN__", "true" if token else "false")
            .replace("__MODALITY__", _html_escape(model.modality))
        )
        return HTMLResponse(html)

    return app
