"""Reading a request body within its limit: raw bytes, a multipart form, JSON; and `HTTPError`.

A body is read through `limited_stream`, which refuses it with 413 as soon as it is over the limit
(declared in Content-Length, or actually sent), before it is all in memory. Forms are parsed by
Starlette's own multipart parser from that stream, in memory (the limit bounds them).
A body's bytes past PACE_AFTER_BYTES are read at a bounded rate, and so is the rest of a refused body
before the refusal goes out (`PacedDrain`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

FORM_FIX = "let your HTTP client build the form"


class HTTPError(Exception):
    """A request we refuse: status code, a message naming what is wrong, and how to fix it."""

    def __init__(self, status: int, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.fix = status, message, fix


def too_big(limit: int, what: str = "", fix: str = "send a smaller file (or raise --max-mb)") -> HTTPError:
    return HTTPError(413, f"request body over the {limit:,}-byte limit{what}", fix=fix)


async def limited_stream(
    request: Request, max_bytes: int, refusal: HTTPError | None = None
) -> AsyncIterator[bytes]:
    """The body's chunks, refused (`refusal`, else a plain 413) as soon as it is over max_bytes (declared
    or actually sent)."""
    refusal = refusal or too_big(max_bytes)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise refusal
        except ValueError:
            raise HTTPError(400, f"bad Content-Length {declared!r}") from None
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise refusal
        if size > PACE_AFTER_BYTES:  # see PACE_AFTER_BYTES
            await asyncio.sleep(len(chunk) / BODY_BYTES_PER_S)
        yield chunk


async def read_body(request: Request, max_bytes: int, refusal: HTTPError | None = None) -> bytearray:
    """The whole body, within the limit, copied chunk by chunk as it arrives.

    Not `b"".join(chunks)` at the end: that is one copy of the whole body into fresh memory (~4 ms for
    10 MB) holding the GIL, during which every other request waits; a bytearray grows in place.
    """
    body = bytearray()
    async for chunk in limited_stream(request, max_bytes, refusal):
        body += chunk
    return body


async def read_form(request: Request, max_bytes: int, max_parts: int) -> list[tuple[str, str, bytes]]:
    """A multipart/form-data body -> (field, file name or else field, bytes) per part, in memory.

    Starlette's parser, told that the form's charset is latin-1: it then hands back a plain field (no
    file name, as `curl -F 'file=<photo.jpg'` sends it) as text that maps back to its exact bytes, and
    names are decoded here as UTF-8, the way clients send them.
    """
    from python_multipart.multipart import parse_options_header
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartException, MultiPartParser

    boundary = parse_options_header(request.headers["content-type"])[1].get(b"boundary")
    if not boundary:
        raise HTTPError(400, "multipart body without a boundary", fix=FORM_FIX)
    ctype = b'multipart/form-data; boundary="' + boundary + b'"; charset=latin-1'
    parser = MultiPartParser(
        Headers(raw=[(b"content-type", ctype)]),
        limited_stream(request, max_bytes),
        max_files=max_parts,
        max_fields=max_parts,
        max_part_size=max_bytes,
    )
    parser.spool_max_size = max_bytes  # no temp files: the body limit already bounds what is held
    too_many = HTTPError(413, f"more than {max_parts} parts in one request", fix="send fewer files")
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many"):
            raise too_many from e
        # Starlette says "Invalid multipart data."; the parser's own error says where and what.
        raise HTTPError(400, f"malformed multipart body ({e.__cause__ or e.message})", fix=FORM_FIX) from e
    try:
        parts = form.multi_items()
        if len(parts) > max_parts:  # the parser counts files and plain fields apart
            raise too_many
        items = []
        for latin1_name, value in parts:
            name = _utf8(latin1_name)
            if isinstance(value, str):  # a plain field: latin-1 gives back its bytes exactly
                items.append((name, name, value.encode("latin-1")))
            else:
                items.append((name, _utf8(value.filename or "") or name, await value.read()))
        return items
    finally:
        await form.close()


def _utf8(latin1: str) -> str:
    """A name the parser decoded as latin-1, decoded as the UTF-8 that clients send."""
    return latin1.encode("latin-1").decode("utf-8", "replace")


def parse_json(body: bytes | bytearray) -> Any:
    """A request body's JSON, through FastAPI's own Rust parser when it is there (pydantic-core).

    It holds the GIL as json does, but ~6x shorter: ~2 ms for a 10 MB text instead of ~13 ms, during
    which the event loop and every other request wait (hence a text model's --max-text-mb).
    """
    try:
        from pydantic_core import from_json
    except ImportError:  # pydantic 1
        return json.loads(body)
    return from_json(body)


#: A body's bytes past this many are read at most at BODY_BYTES_PER_S. Reading (and parsing) a body costs
#: the event loop CPU that every request shares: a client sending 1 MB texts back to back on loopback
#: took most of a core and raised the small requests' median latency 2.6x (1.5 -> 3.9 ms; paced: 1.6).
#: Paced, that client waits instead; one over a real network rarely sends faster than this anyway.
PACE_AFTER_BYTES = 256 * 1024
#: How fast a large body, and the rest of a refused body, is read (bytes/s). A client sends the whole
#: body before it reads the answer (unless it asked `Expect: 100-continue`), so the server must read
#: what it refused to deliver its 413; read at the sender's speed, a client repeating a 10 MB upload on
#: loopback kept the event loop busy and held up every other request (the soak of benchmarks/serve.py).
BODY_BYTES_PER_S = 32 * 1024 * 1024
#: Past this much, the rest is left to the HTTP server (which reads and drops it at full speed).
DRAIN_MAX_BYTES = 64 * 1024 * 1024


class PacedDrain:
    """ASGI middleware: before an answer to a request whose body is not read to its end (a refusal),
    read and drop the rest at `rate` bytes/s, so its sender waits, not the other clients.

    The server lets a paused read fill the socket's buffers and then stops reading, so pacing the reads
    here paces the sender (TCP back-pressure). A client that sent `Expect: 100-continue` has not sent
    its body and is answered at once, as before.
    """

    def __init__(self, app: Any, rate: float = BODY_BYTES_PER_S, max_bytes: int = DRAIN_MAX_BYTES) -> None:
        self.app, self.rate, self.max_bytes = app, rate, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        done = headers.get(b"expect", b"").lower() == b"100-continue"

        async def tracked_receive() -> Any:
            nonlocal done
            message = await receive()
            done = done or message["type"] == "http.disconnect" or not message.get("more_body", False)
            return message

        async def paced_send(message: Any) -> None:
            nonlocal done
            if message["type"] == "http.response.start" and not done:
                drained = 0
                while not done and drained < self.max_bytes:
                    chunk = (await tracked_receive()).get("body", b"")
                    drained += len(chunk)
                    await asyncio.sleep(len(chunk) / self.rate)
                done = True
            await send(message)

        await self.app(scope, tracked_receive, paced_send)
