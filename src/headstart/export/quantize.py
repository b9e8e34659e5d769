"""The optional dynamic-int8 copy of an export (`model.int8.onnx`), measured against the float graph: top-1
agreement on the check inputs, accuracy on the run's test split, single-input latency; it is recommended
only when it loses (almost) no accuracy."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.export.card import card_path, write_metadata
from headstart.export.graph import batch_rows, load_batch, onnx_feed, ort_session, run_onnx
from headstart.export.parity import split_items
from headstart.fileio import atomic_write_json
from headstart.model import TrainedModel
from headstart.quantize_forward import quantize_dynamic_file


def quantized_path(onnx_path: str | Path) -> Path:
    """The int8 copy beside `model.onnx`: `model.int8.onnx`."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".int8.onnx")


def op_counts(path: Path, ops: Sequence[str]) -> dict[str, int]:
    import onnx

    nodes = onnx.load(str(path)).graph.node
    return {op: sum(n.op_type == op for n in nodes) for op in ops}


def p50_ms(session: Any, x: Any, repeats: int = 10) -> float:
    feed = onnx_feed(x)
    session.run(["logits"], feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(["logits"], feed)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def onnx_accuracy(session: Any, batch: Any, labels: list[str], classes: list[str]) -> float:
    pred = run_onnx(session, batch).argmax(1)
    return float(np.mean([classes[int(p)] == y for p, y in zip(pred, labels, strict=True)]))


def quantize_model(
    model: TrainedModel,
    out: Path,
    session: Any,
    card: dict[str, Any],
    *,
    check_batch: Any,
    ref_logits: np.ndarray,
) -> dict[str, Any]:
    """Write `model.int8.onnx` (with its own card) beside `out` and measure it against the float graph."""
    qpath = quantize_dynamic_file(out, quantized_path(out))
    qsession = ort_session(qpath)
    got = run_onnx(qsession, check_batch)
    one = batch_rows(check_batch, 0, 1)
    result: dict[str, Any] = {
        "onnx": str(qpath),
        "bytes": qpath.stat().st_size,
        "float_bytes": out.stat().st_size,
        "method": "onnxruntime quantize_dynamic: int8 weights, activations quantised at run time",
        "quantized_ops": op_counts(qpath, ("ConvInteger", "MatMulInteger")),
        "note": "dynamic int8 quantisation is applied to the MatMul/Gemm layers only (the linear head, "
        "and the attention/MLP matrices of transformer backbones); the convolutions of a conv net stay "
        "float, so there it shrinks little and speeds up little",
        "check_top1_agreement": float((ref_logits.argmax(1) == got.argmax(1)).mean()),
        "check_max_abs_diff": float(np.abs(ref_logits - got).max()),
        "latency_single_p50_ms": {"float": p50_ms(session, one), "int8": p50_ms(qsession, one)},
    }
    test = [(s, y) for s, y in split_items(model, ("test",))]
    if test:
        batch, kept, _ = load_batch(model, [s for s, _ in test])
        if batch is not None:
            usable = set(kept)
            labels = [y for s, y in test if s in usable]
            acc_f, acc_q = (
                onnx_accuracy(session, batch, labels, model.classes),
                onnx_accuracy(qsession, batch, labels, model.classes),
            )
            result["test"] = {
                "n": len(kept),
                "accuracy_float": acc_f,
                "accuracy_int8": acc_q,
                "accuracy_change": acc_q - acc_f,
            }
    else:
        result["test"] = None
    t = result.get("test")
    worse = t["accuracy_change"] < -0.01 if t else result["check_top1_agreement"] < 0.99
    result["recommended"] = not worse
    if worse:
        result["warning"] = (
            "the int8 model loses accuracy against the float export (see test / check_top1_agreement): "
            "use the float model.onnx"
        )
    qcard = {
        **card,
        "quantized": "dynamic-int8",
        "quantization": {k: v for k, v in result.items() if k != "onnx"},
    }
    atomic_write_json(card_path(qpath), qcard)
    write_metadata(qpath, qcard)
    return result
