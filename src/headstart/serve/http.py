"""The HTTP side of `headstart serve`: a FastAPI app over one `Predictor` (its routes: `headstart.serve`).

Bodies are read within their limits by `headstart.serve.body`. A text model's JSON body has its own,
lower limit (`--max-text-mb`, per text; a batch's is that per text it may hold): the model reads only
its first tokens, and every megabyte of JSON costs the event loop milliseconds of parsing that the other
requests wait through. Every refusal is an `HTTPError`, answered by one handler as JSON {"error", "fix"};
FastAPI's and Starlette's own errors (404, 405, validation) get the same shape. Decoding and the forward
run in worker threads, never on the event loop, so a slow input does not hold up the others; a large
input is decoded at low priority (`headstart.serve.lanes`), so it does not slow the small ones either.
"""

# FastAPI reads the endpoints' annotations as strings and resolves them in this module's globals: the
# names they use (Request, JSONResponse, Any) must be imported at module level.
from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from headstart.data.images import ImageTooLarge
from headstart.errors import BadInput, HeadstartError
from headstart.model import TrainedModel
from headstart.serve.body import HTTPError, PacedDrain, parse_json, read_body, read_form, too_big
from headstart.serve.lanes import SlowLane, is_large
from headstart.serve.page import render_page
from headstart.serve.predictor import DEFAULT_TOP, SERVE_MAX_PIXELS, Predictor, load_served_model

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_BATCH = 64
#: One text's JSON: 1 MB is a few hundred pages, far more than any text model reads (hundreds of tokens).
DEFAULT_MAX_TEXT_BYTES = 1024 * 1024


@dataclass
class Server:
    """What every route needs: the model, the limits and token, and the counts /health shows."""

    predictor: Predictor
    ref: str
    token: str | None
    max_bytes: int
    max_batch: int
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    started: float = field(default_factory=time.time)
    counts: dict[str, int] = field(default_factory=lambda: {"requests": 0, "errors": 0})
    slow_lane: SlowLane = field(default_factory=SlowLane)  # where large inputs are decoded

    def error(self, status: int, message: str, fix: str | None = None) -> JSONResponse:
        self.counts["errors"] += 1
        body = {"error": message, **({"fix": fix} if fix else {})}
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @property
    def forward_header(self) -> dict[str, str]:
        """Which forward answered (Predictor.forward: onnx-int8, onnx-fp32, onnx-export or torch)."""
        return {"X-Headstart-Forward": self.predictor.forward}

    def admit(self, request: Request) -> int:
        """Count a prediction request, check its token, and return its `top`."""
        self.counts["requests"] += 1
        authorize(request, self.token)
        return top_k(request, len(self.predictor.classes))

    def text_body_limit(self, *, batch: bool) -> tuple[int, HTTPError]:
        """A text model's JSON body limit, and its refusal: one text's, or a batch's (`max_batch` texts'),
        never over --max-mb. The refusal names the flag that set the limit."""
        per_body = self.max_text_bytes * (self.max_batch if batch else 1)
        limit = min(self.max_bytes, per_body)
        flag = "--max-text-mb" if per_body <= self.max_bytes else "--max-mb"
        if batch:
            fix = f"send fewer or shorter texts (or raise {flag})"
            return limit, too_big(limit, " for a batch of texts", fix)
        reads = getattr(self.predictor.model.backbone, "max_length", None)
        what = f" for one text (this model reads only its first {reads} tokens)" if reads else " for one text"
        return limit, too_big(limit, what, f"send the start of the text (or raise {flag})")


def create_app(
    model_ref: str | Path | TrainedModel,
    *,
    token: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
    engine: str = "auto",
    max_pixels: int = SERVE_MAX_PIXELS,
    device: str = "auto",
) -> Any:
    """A FastAPI app serving one model (loaded here, once). `token`: require `Authorization: Bearer`.
    `max_text_bytes`: a text model's limit per text (see the module docstring). `device`: where the
    model runs (checked before the model is loaded)."""
    from fastapi import FastAPI

    from headstart.features import forward_device

    forward_device(engine, device)
    shape, folder = (None, None) if isinstance(model_ref, TrainedModel) else _shape_of(model_ref)
    predictor: Any
    if shape is not None and folder is not None:  # a task shape's run (multi-label, regression, ...)
        from headstart.serve.shape_predictor import ShapeServePredictor

        ref = str(model_ref)
        predictor = ShapeServePredictor(
            shape.predictor(folder, device=device, backend=engine),
            folder,
            engine=engine,
            device=device,
            max_pixels=max_pixels,
            max_text_chars=max_text_bytes,
        )
    else:
        if isinstance(model_ref, TrainedModel):
            model, ref = model_ref, str(model_ref.path)
        else:
            model, ref = load_served_model(model_ref), str(model_ref)
        predictor = Predictor(
            model, engine=engine, max_pixels=max_pixels, device=device, max_text_chars=max_text_bytes
        )
    server = Server(predictor, ref, token, max_bytes, max_batch, max_text_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        server.slow_lane.close()  # at shutdown: a queued large input is dropped, its thread let go

    app = FastAPI(title=f"headstart: {ref}", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(PacedDrain)  # a refused body's sender waits, not the other clients
    app.state.predictor = predictor
    app.state.slow_lane = server.slow_lane
    _add_error_handlers(app, server)
    _add_prediction_routes(app, server)
    _add_info_routes(app, server)
    return app


def _shape_of(ref: str | Path) -> tuple[Any, Path | None]:
    """(the task shape, its folder) of a run folder or stored model (headstart.shapes); (None, None) for a
    classifier, or a reference load_served_model will refuse with its own message."""
    from headstart.commands import run_folder
    from headstart.shapes import shape_of_run

    try:
        folder, _ = run_folder(ref)
    except HeadstartError:
        return None, None
    shape = shape_of_run(folder) if folder.is_dir() else None
    return shape, folder if shape is not None else None


# -- routes ---------------------------------------------------------------------------------------------


def _add_error_handlers(app: Any, server: Server) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return server.error(exc.status, exc.message, exc.fix)

    @app.exception_handler(HeadstartError)
    async def _headstart_error(request: Request, exc: HeadstartError) -> JSONResponse:
        return server.error(400, exc.message, exc.fix)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return server.error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return server.error(422, f"invalid request: {exc.errors()}")


def _add_prediction_routes(app: Any, server: Server) -> None:
    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        top = server.admit(request)
        items = await request_items(request, server, batch=False)
        if len(items) != 1:
            raise HTTPError(422, "no input: send one file as the form field 'file'")
        (res,), (exc,) = await answer(server, items, top)
        if isinstance(exc, ImageTooLarge):
            raise HTTPError(
                413,
                f"cannot use {res['file']}: {res['error']}",
                fix="send a smaller image, or start the server with a larger --max-pixels",
            )
        if "error" in res:
            raise HTTPError(422, f"cannot use {res['file']}: {res['error']}", fix="send a readable file")
        res.pop("file")
        return JSONResponse(res, headers=server.forward_header)

    @app.post("/predict/batch")
    async def predict_batch(request: Request) -> JSONResponse:
        top = server.admit(request)
        items = await request_items(request, server, batch=True)
        if not items:
            raise HTTPError(422, "no inputs in the request")
        if len(items) > server.max_batch:
            raise HTTPError(413, f"{len(items)} inputs: over the batch limit of {server.max_batch}")
        results, _ = await answer(server, items, top)
        return JSONResponse({"results": results}, headers=server.forward_header)


def _add_info_routes(app: Any, server: Server) -> None:
    from fastapi.responses import HTMLResponse

    predictor, model = server.predictor, server.predictor.model

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": server.ref,
            "modality": model.modality,
            "engine": predictor.engine,
            "forward": predictor.forward,
            "precision": predictor.precision,
            "device": str(predictor.device),
            "classes": len(predictor.classes),
            "uptime_s": round(time.time() - server.started, 1),
            **server.counts,
        }

    @app.get("/model")
    async def model_card(request: Request) -> dict[str, Any]:
        authorize(request, server.token)
        return predictor.card(server.ref)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = render_page(
            server.ref, predictor.classes, token_required=bool(server.token), modality=model.modality
        )
        return HTMLResponse(html)


# -- what a request asks for ---------------------------------------------------------------------------------


def authorize(request: Request, token: str | None) -> None:
    if token is None:
        return
    got = request.headers.get("authorization", "")
    scheme, _, value = got.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise HTTPError(401, "missing or wrong bearer token", fix="send 'Authorization: Bearer <token>'")


def top_k(request: Request, n_classes: int) -> int:
    raw = request.query_params.get("top", str(DEFAULT_TOP))
    try:
        k = int(raw)
    except ValueError:
        raise HTTPError(422, f"top={raw!r} is not a whole number") from None
    if k < 1:
        raise HTTPError(422, f"top={k} must be at least 1")
    return min(k, n_classes)


async def request_items(request: Request, server: Server, *, batch: bool) -> list[tuple[str, Any]]:
    """The request's items as (name, raw): raw is bytes (files) or str (texts)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    text_model = server.predictor.model.modality == "text"
    if ctype == "application/json":
        if not text_model:
            raise HTTPError(
                415,
                "this model classifies files: JSON bodies are for text models",
                fix="send the file as multipart/form-data field 'file'",
            )
        return await _json_texts(request, *server.text_body_limit(batch=batch), batch=batch)
    if text_model:
        raise HTTPError(
            415,
            f"Content-Type {ctype or '(none)'} is not accepted by a text model",
            fix='send JSON {"text": ...} with Content-Type application/json',
        )
    if ctype == "multipart/form-data":
        parts = await read_form(request, server.max_bytes, max_parts=server.max_batch if batch else 1)
        unknown = sorted({f for f, _, _ in parts} - {"file", "files"})
        if unknown:
            raise HTTPError(
                422, f"unknown form field(s) {unknown}", fix="send the file(s) as the field 'file'"
            )
        return [(name, data) for _, name, data in parts]
    if not batch and (ctype.startswith(("image/", "audio/")) or ctype == "application/octet-stream"):
        return [("body", await read_body(request, server.max_bytes))]
    raise HTTPError(
        415,
        f"Content-Type {ctype or '(none)'} is not accepted",
        fix="send multipart/form-data with the field 'file' (or a raw image/* body to /predict)",
    )


async def _json_texts(
    request: Request, max_bytes: int, refusal: HTTPError, *, batch: bool
) -> list[tuple[str, Any]]:
    try:
        obj = parse_json(await read_body(request, max_bytes, refusal))
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


# -- predicting -----------------------------------------------------------------------------------------


Decoded = tuple[list[Any], list[int], list[dict[str, Any]], list[BadInput | None]]


def decode_items(predictor: Predictor, items: list[tuple[str, Any]]) -> Decoded:
    """Decode every item; a bad one gets its reason. (examples, their result slots, results, BadInputs)."""
    examples, where, results, bad = [], [], [], []
    for name, raw in items:
        try:
            ex = predictor.decode_text(raw, name) if isinstance(raw, str) else predictor.decode(raw, name)
            examples.append(ex)
            where.append(len(results))
            results.append({"file": name})
            bad.append(None)
        except BadInput as e:
            results.append({"file": name, "error": e.reason})
            bad.append(e)
    return examples, where, results, bad


def answer_items(
    predictor: Predictor, decoded: Decoded, top: int
) -> tuple[list[dict[str, Any]], list[BadInput | None]]:
    """One forward for the decoded items. Also returns each item's BadInput (None when it was usable),
    for /predict's status code."""
    examples, where, results, bad = decoded
    if examples:
        proba = predictor.predict(examples)
        for i, p in zip(where, proba, strict=True):
            results[i].update(predictor.result(p, top))
    return results, bad


def run_items(
    predictor: Predictor, items: list[tuple[str, Any]], top: int
) -> tuple[list[dict[str, Any]], list[BadInput | None]]:
    return answer_items(predictor, decode_items(predictor, items), top)


async def answer(
    server: Server, items: list[tuple[str, Any]], top: int
) -> tuple[list[dict[str, Any]], list[BadInput | None]]:
    """Decode and predict in worker threads; a request holding a large input is decoded in the slow lane
    (`headstart.serve.lanes`) and only its forward runs on the shared threads."""
    image = server.predictor.model.modality == "image"
    if not any(is_large(raw, image=image) for _, raw in items):
        return await guarded(run_items, server.predictor, items, top)
    decoded = await guarded(decode_items, server.predictor, items, lane=server.slow_lane)
    return await guarded(answer_items, server.predictor, decoded, top)


async def guarded(fn: Callable[..., Any], *args: Any, lane: SlowLane | None = None) -> Any:
    """`fn(*args)` in a worker thread (the shared ones, or `lane`'s); an unforeseen failure is a 500
    answer, never a crashed server."""
    from starlette.concurrency import run_in_threadpool

    try:
        return await (lane.run(fn, *args) if lane is not None else run_in_threadpool(fn, *args))
    except (HTTPError, HeadstartError):
        raise
    except Exception as e:  # a bug or an input the decoder did not foresee: answer, never crash
        log.exception("prediction failed")
        raise HTTPError(500, f"prediction failed: {type(e).__name__}: {e}") from e
