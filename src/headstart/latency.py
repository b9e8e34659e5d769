"""How fast and how big a loaded model is: forward latency through torch (and through ONNX Runtime where
the backbone runs there), end-to-end time of one file, and the process's peak memory. Used by evaluate and
distill."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def percentile_ms(ts: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(ts) * 1000, q))


def timed(fn: Any, x: Any, repeats: int, per: int = 1) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) / per)
    return out


def measure_latency(
    model: Any,
    source: str,
    *,
    repeats: int = 30,
    batch: int = 32,
    backend: str = "auto",
    device: str = "auto",
) -> dict[str, Any]:
    """Forward time of one preprocessed item and of a batch through `model.module()` (torch, inference
    mode, file decode excluded) on `device`, decode+preprocess+forward of one file (end to end), and, where
    the backbone runs through ONNX Runtime (what embedding and predict use on a CPU), the same two forward
    figures. On a GPU each timed call includes the copy of the batch there and of the logits back (it
    waits for the result, so the asynchronous launch is not mistaken for the work)."""
    import torch

    from headstart.features import forward_device
    from headstart.train.engine import place, placed

    bb = model.backbone
    dev = forward_device("torch", device)
    module = model.module()
    example = bb.load_item(source)
    one, many = bb.collate([example]), bb.collate([example] * batch)
    plain = (one, many)  # ONNX Runtime reads plain contiguous arrays
    if bb.modality == "image":  # the layout the torch embedding path uses too (faster on CPU)
        module = module.to(memory_format=torch.channels_last)
        one, many = (t.contiguous(memory_format=torch.channels_last) for t in (one, many))

    def run(x: Any) -> Any:
        return module(place(x, dev)).cpu()

    batch_repeats = max(3, repeats // 6)
    with torch.inference_mode(), placed(module, dev):
        for _ in range(3):  # warm-up: first calls allocate and pick kernels
            run(one)
        single = timed(run, one, repeats)
        run(many)
        batched = timed(run, many, batch_repeats, per=batch)
        end_to_end = timed(lambda s: run(bb.collate([bb.load_item(s)])), source, max(5, repeats // 3))
    out: dict[str, Any] = {
        "single_p50_ms": percentile_ms(single, 50),
        "single_p95_ms": percentile_ms(single, 95),
        f"batch{batch}_per_item_ms": percentile_ms(batched, 50),
        "end_to_end_p50_ms": percentile_ms(end_to_end, 50),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "backend": "torch eager",
        "device": str(dev),
    }
    int8 = model.int8_forward() if hasattr(model, "int8_forward") else None
    if int8 is not None or (
        backend in ("auto", "onnx") and bb.supports_onnx and forward_device(backend, device).type == "cpu"
    ):
        from headstart.features import make_forward

        # An int8-trained run is timed on the forward it predicts with.
        forward, used = (int8, "onnx") if int8 is not None else make_forward(bb, backend)
        out["onnx_precision"] = "int8" if int8 is not None else "fp32"
        if used == "onnx":
            head = model.head

            def onnx_logits(x: Any) -> Any:
                return head.logits(forward(x))

            for _ in range(3):
                onnx_logits(plain[0])
            single = timed(onnx_logits, plain[0], repeats)
            out["onnx_single_p50_ms"] = percentile_ms(single, 50)
            out["onnx_single_p95_ms"] = percentile_ms(single, 95)
            out[f"onnx_batch{batch}_per_item_ms"] = percentile_ms(
                timed(onnx_logits, plain[1], batch_repeats, per=batch), 50
            )
    return out


def run_latency_ms(run_dir: str | Path, repeats: int = 10) -> float | None:
    """Single-item forward latency (p50, ms, torch eager on the CPU, decode excluded) of a saved run on its
    first test item (else val, else train): the serving cost compare and its report set against accuracy.
    None where the run cannot be loaded or has no readable item (a row is not lost for its timing)."""
    from headstart.errors import HeadstartError
    from headstart.model import load_model
    from headstart.runs import load_run_info
    from headstart.runs.folder import read_split_rows
    from headstart.runs.items import item_sources

    try:
        rows = read_split_rows(run_dir)
        first = next((r for s in ("test", "val", "train") for r in rows if r.split == s), None)
        if first is None:
            return None
        source = item_sources(run_dir, [first], load_run_info(run_dir))[0]
        model = load_model(run_dir)
        timed = measure_latency(model, source, repeats=repeats, batch=2, backend="torch", device="cpu")
    except (HeadstartError, OSError, ValueError, RuntimeError):
        return None
    return float(timed["single_p50_ms"])
