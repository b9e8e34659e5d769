"""The soak of `benchmarks/serve.py`: a `headstart serve` child process under mixed load on loopback.

What it measures and reports (the `soak_*` keys) is described in serve.py's docstring. Also here: the
helpers that start a server child (`free_port`, `start_server`) and time a call (`timed_ms`).
"""

from __future__ import annotations

import http.client
import io
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import REPO, rnd


def timed_ms(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int) -> subprocess.Popen:
    import httpx

    # The text soak serves the tiny test text model: the child registers the test backbones too.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HEADSTART_BACKBONE_MODULES": "headstart.testing"}
    cmd = [sys.executable, "-m", "headstart", "serve", str(run), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start within 120 s")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


Req = tuple[bytes, str, int]  # body, Content-Type, the status it must get


def _post(conn: http.client.HTTPConnection, req: Req) -> tuple[int, bytes]:
    conn.request("POST", "/predict", body=req[0], headers={"Content-Type": req[1]})
    r = conn.getresponse()
    return r.status, r.read()


def _load(kind: str, port: int, reqs: list[Req], done: Any, out: Any, pause: float) -> None:
    """A background client process: `reqs` in turn until `done`, then its rows on `out`."""
    rng, c, rows = random.Random(0), http.client.HTTPConnection("127.0.0.1", port, timeout=120), []
    i = 0
    while not done.is_set():
        req = reqs[i % len(reqs)] if kind == "large" else rng.choice(reqs)
        t0 = time.perf_counter()
        status, _ = _post(c, req)
        rows.append((kind, status, status == req[2], t0, time.perf_counter()))
        i += 1
        time.sleep(pause)
    c.close()
    out.put(rows)


def _mixed(
    port: int, good: list[Req], want: list[bytes], bad: list[Req], large: list[Req], n_good: int
) -> list[tuple[str, int, bool, float, float]]:
    """`n_good` good requests back to back from here while two client processes send bad ones and keep a
    large one in flight: every request's (kind, status, as expected, t0, t1)."""
    rows: list[tuple[str, int, bool, float, float]] = []
    # The bad and large requests come from their own processes, as other clients would: threads of this
    # process would make the measured client wait for the GIL while they build and send their bodies.
    ctx = multiprocessing.get_context("fork")
    done, out = ctx.Event(), ctx.Queue()
    background = [
        ctx.Process(target=_load, args=("large", port, large, done, out, 0.0)),
        ctx.Process(target=_load, args=("bad", port, bad, done, out, 0.005)),  # a trickle, not a flood
    ]
    for proc in background:
        proc.start()
    time.sleep(0.05)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(n_good):
        t0 = time.perf_counter()  # CLOCK_MONOTONIC: comparable with the other processes' spans
        status, body = _post(c, good[i % len(good)])
        rows.append(("good", status, status == 200 and body == want[i % len(good)], t0, time.perf_counter()))
    c.close()
    done.set()
    for _ in background:
        rows.extend(out.get(timeout=300))
    for proc in background:
        proc.join()
    return rows


def soak(
    port: int, pid: int, good: list[Req], bad: list[Req], large: list[Req], *, per_thread: int, idle_n: int
) -> dict[str, Any]:
    """Mixed load on a running server: see the module docstring. Raises nothing on wrong answers: counts."""
    import numpy as np

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    want = []
    for g in good:  # alone: the reference answers
        status, body = _post(conn, g)
        if status != 200:
            raise SystemExit(f"soak: a good request answered {status}: {body[:200]!r}")
        want.append(body)
    idle = [timed_ms(lambda g=g: _post(conn, g), 1)[0] for g in (good * idle_n)[:idle_n]]
    idle_p50 = statistics.median(idle)
    conn.close()
    rss_cold = rss_mb(pid)
    # A first, unmeasured mixed phase: what the first large decodes leave in the allocator (per-thread
    # arenas) is a high-water mark, not growth; growth is what the measured phase adds after it.
    warm = _mixed(port, good, want, bad, large, max(1, per_thread // 2))
    rss_before = rss_mb(pid)
    rows = _mixed(port, good, want, bad, large, per_thread)
    every = warm + rows  # answers are checked in both phases; latencies are the measured phase's
    rss_after = rss_mb(pid)
    spans = [(a, b) for k, _, _, a, b in rows if k == "large"]
    good_ms = [(b - a) * 1000 for k, _, _, a, b in rows if k == "good"]
    overlapped = [
        (b - a) * 1000 for k, _, _, a, b in rows if k == "good" and any(s < b and a < e for s, e in spans)
    ]
    errors: dict[str, int] = {}
    for _, status, _, _, _ in every:
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1

    def p99(v: list[float]) -> float | None:
        return rnd(float(np.percentile(v, 99)), 2) if v else None

    in_flight = p99(overlapped)
    return {
        "requests": len(every),
        "good": len(good_ms),
        "large": len(spans),
        "errors": errors,
        "5xx": sum(n for s, n in errors.items() if s.startswith("5")),
        "wrong": sum(not ok for _, _, ok, _, _ in every),
        "idle_p50_ms": rnd(idle_p50, 2),
        "idle_p99_ms": p99(idle),
        "p50_ms": rnd(statistics.median(good_ms), 2),
        "p99_ms": p99(good_ms),
        "p99_in_flight_ms": in_flight,
        "in_flight_n": len(overlapped),
        "p99_in_flight_over_idle_p50": rnd(in_flight / idle_p50, 2) if in_flight else None,
        "rss_cold_mb": rnd(rss_cold, 1) if rss_cold else None,
        "rss_before_mb": rnd(rss_before, 1) if rss_before else None,
        "rss_after_mb": rnd(rss_after, 1) if rss_after else None,
    }


def print_soak(name: str, s: dict[str, Any]) -> None:
    print(
        f"  soak, {name} server: {s['requests']} requests in both phases ({s['good']} good and {s['large']} "
        "large in the measured one), "
        f"non-200 by status {s['errors']}, 5xx {s['5xx']}, wrong answers {s['wrong']}"
    )
    print(
        f"    good requests: idle p50 {s['idle_p50_ms']} ms (p99 {s['idle_p99_ms']}); "
        f"under load p50 {s['p50_ms']} ms, "
        f"p99 {s['p99_ms']} ms; p99 of the {s['in_flight_n']} overlapping a large request "
        f"{s['p99_in_flight_ms']} ms = {s['p99_in_flight_over_idle_p50']}x idle p50"
    )
    print(
        f"    server RSS {s['rss_cold_mb']} MB after the good requests alone, {s['rss_before_mb']} MB after "
        f"the first mixed phase, {s['rss_after_mb']} MB after the measured one"
    )


def text_run(root: Path) -> Path:
    """A probe run of the tiny test text encoder on a generated animals-vs-vehicles CSV."""
    from headstart.api import probe
    from headstart.testing import TEST_WORDS

    rng = random.Random(0)
    animals = TEST_WORDS[TEST_WORDS.index("cat") :][:17]
    vehicles = TEST_WORDS[TEST_WORDS.index("car") :][:15]
    lines = ["text,label"] + [
        f"{' '.join(rng.choice(words) for _ in range(rng.randint(3, 9)))},{label}"
        for label, words in (("animal", animals), ("vehicle", vehicles))
        for _ in range(30)
    ]
    (root / "texts.csv").write_text("\n".join(lines) + "\n")
    probe(root / "texts.csv", backbone="test_text_encoder", out=root / "text_run", progress=False)
    return root / "text_run"


def huge_text_body(seed: int, chars: int) -> bytes:
    """{"text": ...} with `chars` characters of words the tiny tokenizer knows (the first depend on seed)."""
    from headstart.testing import TEST_WORDS

    rng = random.Random(seed)
    head = " ".join(rng.choice(TEST_WORDS) for _ in range(200))
    text = (head + " " + "the cat sat on the farm " * (chars // 24 + 1))[:chars]
    return json.dumps({"text": text}).encode()


def png_bomb(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG claiming width x height pixels (30000x30000: 109 kB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, z = b"\x00" * (1 + (width + 7) // 8), zlib.compressobj(9)
    idat = [z.compress(row * min(256, height - y)) for y in range(0, height, 256)] + [z.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def image_soak_requests(paths: list[Path]) -> tuple[list[Req], list[Req], list[Req]]:
    """Good JPEGs; bad uploads (truncated, empty, not an image, a bomb, JSON); a 9.7 MB PNG and a bomb."""
    import numpy as np
    from PIL import Image

    data = Path(paths[0]).read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, (1800, 1800, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG", compress_level=1)
    good = [(Path(p).read_bytes(), "image/jpeg", 200) for p in paths[:8]]
    bad = [
        (data[:300], "image/jpeg", 422),
        (b"", "image/png", 422),
        (b"not an image", "image/png", 422),
        (png_bomb(14000, 14000), "image/png", 413),
        (b"{}", "application/json", 415),
    ]
    large = [(buf.getvalue(), "image/png", 200), (png_bomb(30000, 30000), "image/png", 413)]
    return good, bad, large


def text_soak(root: Path, per_thread: int, idle_n: int) -> dict[str, Any]:
    """The soak on a text server: the largest texts it accepts (1 MB, --max-text-mb's default) and 9.6 MB
    ones (refused with 413 as they stream in), among good and bad requests."""
    from headstart.serve import DEFAULT_MAX_TEXT_BYTES

    run = text_run(root)
    port = free_port()
    server = start_server(run, port)
    try:
        js = "application/json"
        texts = ["a red cat", "the bus on the road", "a dog and a cow", "fly a plane", "a big fish"]
        good_texts = [(json.dumps({"text": t}).encode(), js, 200) for t in texts]
        bad_texts = [
            (b"{", js, 400),
            (json.dumps({"txt": "a cat"}).encode(), js, 422),
            (json.dumps({"text": "   "}).encode(), js, 422),
            (b"a cat", "text/plain", 415),
            (json.dumps({"text": 3}).encode(), js, 422),
        ]
        large_texts = [
            (huge_text_body(s, chars), js, status)
            for s, (chars, status) in enumerate([(DEFAULT_MAX_TEXT_BYTES - 100, 200), (9_600_000, 413)] * 2)
        ]
        return soak(
            port, server.pid, good_texts, bad_texts, large_texts, per_thread=per_thread, idle_n=idle_n
        )
    finally:
        server.terminate()
        server.wait(10)
