"""The server reads the rest of a refused body at a bounded rate (headstart.serve.body.PacedDrain).

A client sends its whole body before it reads the answer, so a refusal (413, 401, 415...) sent before the
body is read still has to read it; at the sender's speed, a client repeating 10 MB uploads on loopback
kept the event loop busy and every other request waited (benchmarks/serve.py's soak). Here, at the ASGI
level: the answer is held until the body is read to its end, at the given rate; a body already read, a
client that sent `Expect: 100-continue`, and a body past the cap are answered at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from headstart.serve.body import PacedDrain

CHUNK = 64 * 1024


async def _refuse_unread(scope: Any, receive: Any, send: Any) -> None:
    """An app that refuses before reading the body (as a declared Content-Length over the limit)."""
    await send({"type": "http.response.start", "status": 413, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _read_then_answer(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body", False):
        pass
    await _refuse_unread(scope, receive, send)


def _serve(app: Any, n_chunks: int, *, headers: list[tuple[bytes, bytes]] | None = None, **kw: Any) -> Any:
    """Run `PacedDrain(app)` on one request of `n_chunks` chunks: (chunks read when the answer started,
    seconds until it started)."""
    read = 0
    started: list[tuple[int, float]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": read < n_chunks}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.append((read, time.perf_counter() - t0))

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers or []}
    t0 = time.perf_counter()
    asyncio.run(PacedDrain(app, **kw)(scope, receive, send))
    return started[0]


def test_a_refused_body_is_read_to_its_end_at_the_rate_before_the_answer() -> None:
    rate = 40 * CHUNK  # 40 chunks/s: 10 chunks take 0.25 s
    read, seconds = _serve(_refuse_unread, 10, rate=rate)
    assert read == 10  # without the drain the answer goes out with nothing read
    assert seconds >= 0.9 * 10 * CHUNK / rate, seconds


def test_a_read_body_an_expect_continue_and_a_body_past_the_cap_are_answered_at_once() -> None:
    read, seconds = _serve(_read_then_answer, 10, rate=CHUNK)  # 1 chunk/s: any pacing would show
    assert (read, seconds < 0.2) == (10, True)
    expect = [(b"expect", b"100-continue")]
    read, seconds = _serve(_refuse_unread, 10, headers=expect, rate=CHUNK)
    assert (read, seconds < 0.2) == (0, True)  # the client has not sent its body: never read it
    read, _ = _serve(_refuse_unread, 100, rate=1e12, max_bytes=3 * CHUNK)
    assert read == 3  # past the cap the HTTP server drops the rest (at full speed, as before)
