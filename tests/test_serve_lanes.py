"""Large inputs are decoded in the server's low-priority lane, and large bodies are read at a bounded rate.

On two cores, decoding a large upload in the threads every request shares tripled the latency of the
small requests (benchmarks/serve.py's soak: image p99 3.0x the idle p50, 2.0-2.2x with the lane). Here:
what counts as large, that the lane's thread runs at low priority while the shared ones do not, that a
large upload is decoded there and answered exactly as a small one would be, and that a body past
PACE_AFTER_BYTES is read no faster than the rate while a small one is read at once.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import probe_run
from headstart.serve import body as body_mod
from headstart.serve.lanes import LARGE_BYTES, LARGE_PIXELS, LARGE_TEXT_CHARS, SlowLane, is_large


def _png(w: int, h: int, *, noise: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if noise else np.full((h, w, 3), 90, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def test_what_counts_as_large() -> None:
    small = _png(64, 64)
    assert not is_large(small, image=True)
    assert not is_large("a cat", image=False)
    assert is_large("a" * (LARGE_TEXT_CHARS + 1), image=False)
    assert is_large(b"x" * (LARGE_BYTES + 1), image=False)  # any upload past the byte limit
    canvas = _png(2100, 2100)  # a flat PNG: small in bytes, a large canvas to decode
    assert len(canvas) < LARGE_BYTES and LARGE_PIXELS < 2100 * 2100
    assert is_large(canvas, image=True)
    assert not is_large(canvas, image=False)  # pixels count only for an image model's uploads
    assert not is_large(b"not an image" * 10, image=True)  # the decoder says why, in the shared lane
    assert not is_large(b"", image=True)  # too short for some plugins' header checks: still no crash


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
def test_the_lane_runs_at_low_priority_and_the_shared_threads_do_not() -> None:
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    lane = SlowLane()
    try:
        in_lane = asyncio.run(lane.run(nice))
    finally:
        lane.close()
    here = nice()
    if in_lane == here:  # setpriority refused (a container's policy): the lane only serialises
        pytest.skip("this machine refuses to lower a thread's priority")
    assert in_lane == 19 and here < 19
    assert nice() == here  # the caller's own thread is untouched


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return probe_run(tmp_path_factory.mktemp("lanes"), per_class=8)


def test_a_large_upload_is_decoded_in_the_lane_and_answered_as_a_small_one(run_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    app = TestClient(create_app(run_dir, max_bytes=20_000_000)).app
    predictor = app.state.predictor
    seen: list[str] = []
    decode = predictor.decode

    def spy(data: bytes, name: str = "upload") -> Any:
        seen.append(threading.current_thread().name)
        return decode(data, name)

    predictor.decode = spy
    img = Image.fromarray(np.full((64, 64, 3), (30, 60, 200), np.uint8))
    small, big = io.BytesIO(), io.BytesIO()
    img.save(small, "PNG")
    img.resize((2100, 2100), Image.NEAREST).save(big, "PNG")  # the same picture, a large canvas
    with TestClient(app) as client:
        answers = [
            client.post("/predict", files={"file": ("x.png", b.getvalue(), "image/png")}).json()
            for b in (small, big)
        ]
        parts = [("a.png", small.getvalue()), ("b.png", b"junk"), ("c.png", big.getvalue())]
        files = [("files", (name, data, "image/png")) for name, data in parts]
        batch = client.post("/predict/batch", files=files).json()["results"]
        assert app.state.slow_lane._pool is not None
    assert app.state.slow_lane._pool is None  # the server's shutdown closed the lane
    assert not seen[0].startswith("headstart-large") and seen[1].startswith("headstart-large")
    assert all(s.startswith("headstart-large") for s in seen[2:])  # a batch holding a large one: all there
    assert answers[0]["label"] == answers[1]["label"]
    assert [r.get("label") for r in batch] == [answers[0]["label"], None, answers[1]["label"]]
    assert "error" in batch[1]  # a bad item in the lane still gets its own reason


def _read(n_chunks: int, chunk: int, **patch: Any) -> tuple[int, float]:
    """`read_body` on a request of `n_chunks` chunks: (bytes read, seconds)."""
    from starlette.requests import Request

    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        sent += 1
        return {"type": "http.request", "body": b"x" * chunk, "more_body": sent < n_chunks}

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    t0 = time.perf_counter()
    body = asyncio.run(body_mod.read_body(Request(scope, receive), 1 << 30))
    return len(body), time.perf_counter() - t0


def test_a_large_body_is_read_no_faster_than_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    chunk = 64 * 1024
    monkeypatch.setattr(body_mod, "BODY_BYTES_PER_S", 40 * chunk)  # 40 chunks/s
    monkeypatch.setattr(body_mod, "PACE_AFTER_BYTES", 2 * chunk)
    n, seconds = _read(12, chunk)
    assert n == 12 * chunk
    assert seconds >= 0.9 * 10 / 40, seconds  # the 10 chunks past the first 2, at the rate
    n, seconds = _read(2, chunk)  # up to PACE_AFTER_BYTES: read at once
    assert (n, seconds < 0.05) == (2 * chunk, True)
