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
  image one; both `headstart serve` child processes on loopback, one keep-alive connection per client):
  first every good input alone (its answer is the reference), then `idle_n` good requests
  one after another (`soak_idle_p50_ms`, `soak_idle_p99_ms`: the noise floor of this machine); then,
  at once, this process sends `per_thread` good requests back to back while two client processes of
  their own (as other clients would be: threads here would hold up the measured client on the GIL while
  they build and send their bodies) send, one, a trickle of bad ones
  (malformed JSON, wrong key or type, empty text, wrong Content-Type, a truncated JPEG, not an image, a
  decompression bomb...) and the other keeps a large request in flight back to back (text: 1 MB texts,
  the largest `--max-text-mb` accepts by default, answered, and 9.6 MB ones, refused with 413 as they
  stream in; images: a 9.7 MB PNG upload and a 109 kB PNG claiming 30000x30000 pixels). Reported:
  requests sent, non-200 answers by status code (`soak_errors`), 5xx and wrong answers (a good one answering
  otherwise than alone, a bad or large one another status than its own; both must be 0), p50/p99 of
  the good requests under that load, p99 of those that overlapped a large request and its ratio to
  the idle p50 (`soak_p99_in_flight_over_idle_p50`), and the server's RSS after the good requests
  alone (`soak_rss_cold_mb`), after a first, unmeasured mixed phase of half as many good requests
  (`soak_rss_before_mb`: what the first large decodes leave in the allocator's per-thread arenas is a
  high-water mark, not growth) and after the measured mixed phase (`soak_rss_after_mb`; growth is after
  minus before). Wrong answers and error counts cover both mixed phases. The text server runs the tiny
  `test_text_encoder` (no download) on a probe of a made-up CSV.

Threads: whatever torch.get_num_threads() is in this process (the server child inherits the same
environment). Run (from the repository root):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve.py            # ~2-3 minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve.py --quick    # fewer repeats, ~1-2 min
    ... benchmarks/serve.py --quick --soak-only                         # only the soak_* keys

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
from pathlib import Path
from typing import Any

from _common import EMOJI_ROOT, Timer, emit_json, machine_load, make_images, rnd
from _soak import free_port, image_soak_requests, print_soak, soak, start_server, text_soak, timed_ms

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
    "soak_rss_cold_mb",
    "soak_rss_before_mb",
    "soak_rss_after_mb",
)
BACKBONE = "efficientnet_lite0"


def _latencies(root: Path, port: int, paths: list[Path], reps: tuple[int, int, int]) -> dict[str, Any]:
    """Server vs in-process prediction, and ONNX vs PyTorch (see the module docstring); prints them."""
    import httpx
    import numpy as np
    import torch

    from headstart.data.images import load_image_bytes
    from headstart.export import ort_session
    from headstart.model import load_model
    from headstart.serve import DEFAULT_TOP, Predictor

    rounds, per_round, batch_reps = reps
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
            fwd += timed_ms(in_process, per_round)
            tensor += timed_ms(lambda: onnx_fwd(x1), per_round)
            decode += timed_ms(lambda: load_image_bytes(data, cfg), per_round)
            srv += timed_ms(raw_request, per_round)
            multi += timed_ms(multipart_request, per_round)
        answer = raw_request()
        if answer != multipart_request() or answer["label"] != in_process()["label"]:
            raise SystemExit("the server and the in-process prediction disagree")
    conn.close()
    torch1 = timed_ms(lambda: torch_fwd(x1), rounds * per_round)
    onnx1 = timed_ms(lambda: onnx_fwd(x1), rounds * per_round)
    torch32 = timed_ms(lambda: torch_fwd(x32), batch_reps)
    onnx32 = timed_ms(lambda: onnx_fwd(x32), batch_reps)

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
    return {
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
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats; under a minute")
    ap.add_argument("--soak-only", action="store_true", help="only the two soaks (soak_* keys)")
    args = ap.parse_args()
    reps = (6, 4, 3) if args.quick else (15, 4, 7)
    per_thread, idle_n = (60, 40) if args.quick else (200, 100)
    t_start = time.perf_counter()

    import tempfile

    import torch

    from headstart.api import probe
    from headstart.export import export_onnx_model

    print(
        f"serve benchmark ({'quick' if args.quick else 'full'}{', soaks only' if args.soak_only else ''}): "
        f"{BACKBONE}, torch threads {torch.get_num_threads()}; {machine_load()}"
    )
    latencies: dict[str, Any] = {}
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
        port = free_port()
        server = start_server(root / "run", port)
        try:
            if not args.soak_only:
                latencies = _latencies(root, port, paths, reps)
            soak_image = soak(
                port, server.pid, *image_soak_requests(paths), per_thread=per_thread, idle_n=idle_n
            )
        finally:
            server.terminate()
            server.wait(10)
        soak_text = text_soak(root, per_thread, idle_n)

    print_soak("text (test_text_encoder; 1 MB texts, and 9.6 MB ones refused)", soak_text)
    print_soak(f"image ({BACKBONE}, ONNX)", soak_image)
    total = time.perf_counter() - t_start
    print(f"  total wall time {total:.1f} s; {machine_load()}")
    emit_json(
        {
            **latencies,
            **{f"soak_{k}": v for k, v in soak_text.items()},
            **{f"soak_image_{k}": v for k, v in soak_image.items()},
            "quick": bool(args.quick),
            "soak_only": bool(args.soak_only),
            "total_s": rnd(total, 1),
        },
        [k for k in KEYS if k.startswith("soak_") or not args.soak_only],
    )


if __name__ == "__main__":
    main()
