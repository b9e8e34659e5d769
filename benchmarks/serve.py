"""Serving cost: POST /predict through a real server vs the model's own prediction; ONNX vs PyTorch.

What is measured (EfficientNet-Lite0 with its packaged ImageNet weights and a linear head from a probe
of examples/emoji/images built here; embeddings come from the usual feature cache, so a second run of
this script does no backbone work for the probe):

- `server_p50_ms`: median wall time of `POST /predict` with one 320 px JPEG (16 kB) as the raw body
  (Content-Type image/jpeg), sent with the standard library's http.client over one keep-alive loopback
  connection to `headstart serve RUN` running in a child process (uvicorn, one worker), the exported
  `RUN/model.onnx` present, so the server runs ONNX Runtime. This includes the upload, JPEG decode +
  resize + normalise, the forward, the top-k answer as JSON, and the client's own parsing.
- `forward_p50_ms`: the model's own prediction on the same image in this process, with no server: the
  very object the server calls (`headstart.serve.Predictor` on the same run and ONNX file, same engine
  and threads) doing decode + preprocess + forward + top-k on the same JPEG bytes. The ratio
  `server_overhead_ratio` = server_p50 / forward_p50 is therefore what serving adds: HTTP, routing,
  the hand-off to the worker thread and back, JSON.
- Printed too, so nothing hides in that definition:
  - `tensor_forward_p50_ms`: ONNX Runtime's forward alone on the already-preprocessed tensor, and
    `ratio_vs_tensor_forward` = server_p50 / that (the request's decode + preprocess count as overhead);
  - `decode_preprocess_p50_ms`: `load_image_bytes` on the same bytes;
  - `multipart_httpx_p50_ms`: the same request as a multipart upload (field "file") with httpx, the way a
    browser form or `curl -F` sends it, and `multipart_httpx_ratio` against forward_p50.
  All five latencies are measured interleaved (rounds of a few of each), so machine load hits them alike.
- `onnx_vs_torch_single`, `onnx_vs_torch_batch32`: PyTorch eager latency / ONNX Runtime latency (> 1:
  ONNX is faster) for one image and for a batch of 32 distinct images, median of several runs each.

- A soak of each server under mixed load (`soak_*` keys for the text server, `soak_image_*` for the
  image one; both `headstart serve` child processes on loopback, one keep-alive connection per client
  thread): first every good input alone (its answer is the reference), then `idle_n` good requests
  one after another (`soak_idle_p50_ms`, `soak_idle_p99_ms`: the noise floor of this machine); then,
  at once, one thread sends `per_thread` good requests back to back, a second a trickle of bad ones
  (malformed JSON, wrong key or type, empty text, wrong Content-Type, a truncated JPEG, not an image, a
  decompression bomb...) and a third keeps a large request in flight back to back (text: 9.6 MB
  texts; images: a 9.7 MB PNG upload and a 109 kB PNG claiming 30000x30000 pixels). Reported: requests
  sent, non-200 answers by status code (`soak_errors`), 5xx and wrong answers (a good one answering
  otherwise than alone, a bad or large one another status than its own; both must be 0), p50/p99 of
  the good requests under that load, p99 of those that overlapped a large request and its ratio to
  the idle p50 (`soak_p99_in_flight_over_idle_p50`), and the server's RSS before and after the mixed
  phase. The text server runs the tiny `test_text_encoder` (no download) on a probe of a made-up CSV.

Threads: whatever torch.get_num_threads() is in this process (the server child inherits the same
environment). Run (from the repository root):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve.py            # ~2-3 minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve.py --quick    # fewer repeats, ~1-2 min

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import EMOJI_ROOT, REPO, Timer, emit_json, machine_load, make_images, rnd

KEYS = (
    "server_overhead_ratio",
    "server_p50_ms",
    "forward_p50_ms",
    "onnx_vs_torch_single",
    "onnx_vs_torch_batch32",
    "soak_requests",
    "soak_errors",
    "soak_5xx",
    "soak_wrong",
    "soak_idle_p50_ms",
    "soak_p50_ms",
    "soak_p99_ms",
    "soak_p99_in_flight_ms",
    "soak_rss_before_mb",
    "soak_rss_after_mb",
)
BACKBONE = "efficientnet_lite0"


def _ms(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(run: Path, port: int) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
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


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


Req = tuple[bytes, str, int]  # body, Content-Type, the status it must get


def soak(
    port: int, pid: int, good: list[Req], bad: list[Req], large: list[Req], *, per_thread: int, idle_n: int
) -> dict[str, Any]:
    """Mixed load on a running server: see the module docstring. Raises nothing on wrong answers: counts."""
    import numpy as np

    def post(conn: http.client.HTTPConnection, req: Req) -> tuple[int, bytes]:
        conn.request("POST", "/predict", body=req[0], headers={"Content-Type": req[1]})
        r = conn.getresponse()
        return r.status, r.read()

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    want = []
    for g in good:  # alone: the reference answers
        status, body = post(conn, g)
        if status != 200:
            raise SystemExit(f"soak: a good request answered {status}: {body[:200]!r}")
        want.append(body)
    idle = [_ms(lambda g=g: post(conn, g), 1)[0] for g in (good * idle_n)[:idle_n]]
    idle_p50 = statistics.median(idle)
    conn.close()
    rss_before = _rss_mb(pid)
    rows: list[tuple[str, int, bool, float, float]] = []  # kind, status, as expected, t0, t1
    lock, done = threading.Lock(), threading.Event()

    def record(kind: str, status: int, ok: bool, t0: float) -> None:
        with lock:
            rows.append((kind, status, ok, t0, time.perf_counter()))

    def goods() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for i in range(per_thread):
            t0 = time.perf_counter()
            status, body = post(c, good[i % len(good)])
            record("good", status, status == 200 and body == want[i % len(good)], t0)
        c.close()

    def bads() -> None:
        rng, c = random.Random(0), http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while not done.is_set():
            req, t0 = rng.choice(bad), time.perf_counter()
            status, _ = post(c, req)
            record("bad", status, status == req[2], t0)
            time.sleep(0.005)  # a steady trickle, not a second flood competing with the good requests
        c.close()

    def heavy() -> None:
        c, i = http.client.HTTPConnection("127.0.0.1", port, timeout=120), 0
        while not done.is_set():
            t0 = time.perf_counter()
            status, _ = post(c, large[i % len(large)])
            record("large", status, status == large[i % len(large)][2], t0)
            i += 1
        c.close()

    background = [threading.Thread(target=heavy), threading.Thread(target=bads)]
    for t in background:
        t.start()
    time.sleep(0.05)
    goods()  # in this thread, while the other two run
    done.set()
    for t in background:
        t.join()
    rss_after = _rss_mb(pid)
    spans = [(a, b) for k, _, _, a, b in rows if k == "large"]
    good_ms = [(b - a) * 1000 for k, _, _, a, b in rows if k == "good"]
    overlapped = [
        (b - a) * 1000 for k, _, _, a, b in rows if k == "good" and any(s < b and a < e for s, e in spans)
    ]
    errors: dict[str, int] = {}
    for _, status, _, _, _ in rows:
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1

    def p99(v: list[float]) -> float | None:
        return rnd(float(np.percentile(v, 99)), 2) if v else None

    in_flight = p99(overlapped)
    return {
        "requests": len(rows),
        "good": len(good_ms),
        "large": len(spans),
        "errors": errors,
        "5xx": sum(n for s, n in errors.items() if s.startswith("5")),
        "wrong": sum(not ok for _, _, ok, _, _ in rows),
        "idle_p50_ms": rnd(idle_p50, 2),
        "idle_p99_ms": p99(idle),
        "p50_ms": rnd(statistics.median(good_ms), 2),
        "p99_ms": p99(good_ms),
        "p99_in_flight_ms": in_flight,
        "in_flight_n": len(overlapped),
        "p99_in_flight_over_idle_p50": rnd(in_flight / idle_p50, 2) if in_flight else None,
        "rss_before_mb": rnd(rss_before, 1) if rss_before else None,
        "rss_after_mb": rnd(rss_after, 1) if rss_after else None,
    }


def _print_soak(name: str, s: dict[str, Any]) -> None:
    print(
        f"  soak, {name} server: {s['requests']} requests ({s['good']} good, {s['large']} large), "
        f"non-200 by status {s['errors']}, 5xx {s['5xx']}, wrong answers {s['wrong']}"
    )
    print(
        f"    good requests: idle p50 {s['idle_p50_ms']} ms (p99 {s['idle_p99_ms']}); "
        f"under load p50 {s['p50_ms']} ms, "
        f"p99 {s['p99_ms']} ms; p99 of the {s['in_flight_n']} overlapping a large request "
        f"{s['p99_in_flight_ms']} ms = {s['p99_in_flight_over_idle_p50']}x idle p50"
    )
    print(f"    server RSS {s['rss_before_mb']} MB before the mixed phase, {s['rss_after_mb']} MB after")


def _text_run(root: Path) -> Path:
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


def _huge_text_body(seed: int) -> bytes:
    from headstart.testing import TEST_WORDS

    rng = random.Random(seed)
    head = " ".join(rng.choice(TEST_WORDS) for _ in range(200))
    text = (head + " " + "the cat sat on the farm " * 400_000)[:9_600_000]
    return json.dumps({"text": text}).encode()


def _png_bomb(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG claiming width x height pixels (30000x30000: 109 kB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, z = b"\x00" * (1 + (width + 7) // 8), zlib.compressobj(9)
    idat = [z.compress(row * min(256, height - y)) for y in range(0, height, 256)] + [z.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats; under a minute")
    args = ap.parse_args()
    rounds, per_round, batch_reps = (6, 4, 3) if args.quick else (15, 4, 7)
    per_thread, idle_n = (60, 40) if args.quick else (200, 100)
    t_start = time.perf_counter()

    import tempfile

    import httpx
    import numpy as np
    import torch

    from headstart.api import probe
    from headstart.data.images import load_image_bytes
    from headstart.export import export_onnx_model, ort_session
    from headstart.model import load_model
    from headstart.serve import DEFAULT_TOP, Predictor

    print(
        f"serve benchmark ({'quick' if args.quick else 'full'}): {BACKBONE}, "
        f"torch threads {torch.get_num_threads()}; {machine_load()}"
    )
    with tempfile.TemporaryDirectory(prefix="headstart-bench-serve-") as tmp:
        root = Path(tmp)
        with Timer() as t:
            rep = probe(EMOJI_ROOT, backbone=BACKBONE, out=root / "run", progress=False)
        e = rep.metrics["embed"]
        print(
            f"  probe on examples/emoji/images: {t.s:.1f} s ({e['cache_hits']} embeddings from the cache, "
            f"{e['forwards']} computed); test accuracy {rep.metrics['test']['accuracy']:.3f}"
        )
        with Timer() as t:
            ex = export_onnx_model(root / "run")
        par = ex["parity"]
        print(
            f"  export: {t.s:.1f} s, parity on {par['n']} real inputs: top-1 {par['top1_agreement']:.0%}, "
            f"max |logit diff| {par['max_abs_diff']:.1e}"
        )

        paths = make_images(root / "imgs", 32, size=320, quality=90)
        data = Path(paths[0]).read_bytes()
        model = load_model(root / "run")
        cfg = model.backbone.preprocess
        x1 = load_image_bytes(data, cfg)[None]
        x32 = np.stack([load_image_bytes(Path(p).read_bytes(), cfg) for p in paths])
        sess = ort_session(root / "run" / "model.onnx")
        module = model.module()
        predictor = Predictor(model)
        if predictor.engine != "onnx":
            raise SystemExit("the in-process predictor did not pick the ONNX export")

        def onnx_fwd(x: np.ndarray) -> Any:
            return sess.run(["probabilities"], {"input": x})

        def torch_fwd(x: np.ndarray) -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(x))

        def in_process() -> Any:  # what the server does for one request, minus the HTTP
            return predictor.result(predictor.predict([predictor.decode(data, "a.jpg")])[0], DEFAULT_TOP)

        for _ in range(3):  # warm-up both engines
            onnx_fwd(x1), torch_fwd(x1), in_process()

        port = _free_port()
        server = _start_server(root / "run", port)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                health = client.get("/health").json()
                if health["engine"] != "onnx":
                    raise SystemExit(f"server did not pick the ONNX export: {health}")

                def raw_request() -> dict[str, Any]:
                    conn.request("POST", "/predict", body=data, headers={"Content-Type": "image/jpeg"})
                    r = conn.getresponse()
                    body = r.read()
                    if r.status != 200:
                        raise SystemExit(f"POST /predict answered {r.status}: {body[:200]!r}")
                    return json.loads(body)

                def multipart_request() -> dict[str, Any]:
                    r = client.post("/predict", files={"file": ("a.jpg", data, "image/jpeg")})
                    r.raise_for_status()
                    return r.json()

                for _ in range(3):
                    raw_request(), multipart_request()
                fwd, tensor, decode, srv, multi = [], [], [], [], []
                for _ in range(rounds):  # interleaved, so load on the machine hits all alike
                    fwd += _ms(in_process, per_round)
                    tensor += _ms(lambda: onnx_fwd(x1), per_round)
                    decode += _ms(lambda: load_image_bytes(data, cfg), per_round)
                    srv += _ms(raw_request, per_round)
                    multi += _ms(multipart_request, per_round)
                answer = raw_request()
                if answer != multipart_request() or answer["label"] != in_process()["label"]:
                    raise SystemExit("the server and the in-process prediction disagree")
            conn.close()
            from PIL import Image

            noise = np.random.default_rng(0).integers(0, 256, (1800, 1800, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(noise).save(buf, "PNG", compress_level=1)
            good_imgs = [(Path(p).read_bytes(), "image/jpeg", 200) for p in paths[:8]]
            bad_imgs = [
                (data[:300], "image/jpeg", 422),
                (b"", "image/png", 422),
                (b"not an image", "image/png", 422),
                (_png_bomb(14000, 14000), "image/png", 413),
                (b"{}", "application/json", 415),
            ]
            large_imgs = [(buf.getvalue(), "image/png", 200), (_png_bomb(30000, 30000), "image/png", 413)]
            soak_image = soak(
                port, server.pid, good_imgs, bad_imgs, large_imgs, per_thread=per_thread, idle_n=idle_n
            )
        finally:
            server.terminate()
            server.wait(10)

        text_run = _text_run(root)
        port = _free_port()
        server = _start_server(text_run, port)
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
            large_texts = [(_huge_text_body(s), js, 200) for s in range(4)]
            soak_text = soak(
                port, server.pid, good_texts, bad_texts, large_texts, per_thread=per_thread, idle_n=idle_n
            )
        finally:
            server.terminate()
            server.wait(10)

        torch1 = _ms(lambda: torch_fwd(x1), rounds * per_round)
        onnx1 = _ms(lambda: onnx_fwd(x1), rounds * per_round)
        torch32 = _ms(lambda: torch_fwd(x32), batch_reps)
        onnx32 = _ms(lambda: onnx_fwd(x32), batch_reps)

    med = statistics.median
    server_p50, forward_p50, tensor_p50, decode_p50 = med(srv), med(fwd), med(tensor), med(decode)
    multi_p50 = med(multi)
    ratio = server_p50 / forward_p50
    print(f"  JPEG: {len(data) / 1000:.1f} kB, 320x320 -> {cfg.input_size} px; answered {answer['label']}")
    print(f"  POST /predict p50, raw body, http.client:      {server_p50:7.2f} ms  (n={len(srv)})")
    print(f"  same, multipart form, httpx:                   {multi_p50:7.2f} ms  (n={len(multi)})")
    print(f"  in-process prediction p50 (decode + forward):  {forward_p50:7.2f} ms  (n={len(fwd)})")
    print(f"    of which decode + preprocess p50:            {decode_p50:7.2f} ms")
    print(f"    and ONNX forward alone on the tensor p50:    {tensor_p50:7.2f} ms")
    print(f"  left for serving (HTTP, thread hand-off, JSON): {server_p50 - forward_p50:6.2f} ms")
    print(f"  server overhead ratio (request / in-process prediction): {ratio:.2f}x")
    print(f"    multipart + httpx instead: {multi_p50 / forward_p50:.2f}x")
    print(
        f"    against the tensor forward alone (decode counted as overhead): {server_p50 / tensor_p50:.2f}x"
    )
    print(
        f"  one image:  torch {med(torch1):7.2f} ms, onnx {med(onnx1):7.2f} ms -> "
        f"onnx {med(torch1) / med(onnx1):.2f}x faster"
    )
    print(
        f"  batch 32:   torch {med(torch32):7.1f} ms, onnx {med(onnx32):7.1f} ms -> "
        f"onnx {med(torch32) / med(onnx32):.2f}x faster"
    )
    _print_soak("text (test_text_encoder, 9.6 MB texts)", soak_text)
    _print_soak(f"image ({BACKBONE}, ONNX)", soak_image)
    total = time.perf_counter() - t_start
    print(f"  total wall time {total:.1f} s; {machine_load()}")
    emit_json(
        {
            "server_overhead_ratio": rnd(ratio, 2),
            "server_p50_ms": rnd(server_p50, 2),
            "forward_p50_ms": rnd(forward_p50, 2),
            "tensor_forward_p50_ms": rnd(tensor_p50, 2),
            "ratio_vs_tensor_forward": rnd(server_p50 / tensor_p50, 2),
            "decode_preprocess_p50_ms": rnd(decode_p50, 2),
            "serving_ms": rnd(server_p50 - forward_p50, 2),
            "multipart_httpx_p50_ms": rnd(multi_p50, 2),
            "multipart_httpx_ratio": rnd(multi_p50 / forward_p50, 2),
            "onnx_vs_torch_single": rnd(med(torch1) / med(onnx1), 2),
            "onnx_vs_torch_batch32": rnd(med(torch32) / med(onnx32), 2),
            "torch_single_ms": rnd(med(torch1), 2),
            "onnx_single_ms": rnd(med(onnx1), 2),
            "torch_batch32_ms": rnd(med(torch32), 1),
            "onnx_batch32_ms": rnd(med(onnx32), 1),
            "backbone": BACKBONE,
            "engine": "onnx",
            "threads": torch.get_num_threads(),
            **{f"soak_{k}": v for k, v in soak_text.items()},
            **{f"soak_image_{k}": v for k, v in soak_image.items()},
            "quick": bool(args.quick),
            "total_s": rnd(total, 1),
        },
        KEYS,
    )


if __name__ == "__main__":
    main()
