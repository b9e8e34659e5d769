"""The int8 model of an export: the run's int8 frozen forward (headstart.quantize_forward) with its head on
top, as one ONNX file, measured against float with intervals.

- The backbone is quantized the way that fits the network, exactly as `--precision int8` does: static QDQ
  per-channel (int8 weights, uint8 activations) of the whole conv net, calibrated on the run's **training
  split** (the same items, so the same cached int8 model as a probe at int8 on this data); dynamic int8 of
  the MatMul/Gemm layers for transformers. Dynamic int8 of a conv net (only its MatMul/Gemm: the head)
  was measured on the emoji demo at 0.685 -> 0.130 test accuracy and no faster, hence this.
- The head stays one float Gemm: the probe's head (standardisation folded in) has weights from 0.03 to
  426, which one int8 scale cannot hold, and it costs nothing next to the backbone.
- A float run gets `model.int8.onnx` beside its `model.onnx` (`quantize_model`). A run trained on int8
  features exports this graph as its model itself (`write_int8_model`, proven against `Int8Classifier`,
  the in-process predict path): the forward its head was trained on, and that predict and serve run.

The comparison: top-1 agreement with float PyTorch on the check inputs; accuracy of float and int8 on the
run's test split, each with its Wilson interval, and the paired difference (exact McNemar); single-input
latency. Recommended unless int8 loses beyond noise on test.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.export.card import apply_metadata, card_path, write_metadata
from headstart.export.graph import batch_rows, load_batch, onnx_feed, ort_session, run_onnx, torch_logits
from headstart.export.parity import split_items
from headstart.fileio import atomic_write, atomic_write_json
from headstart.model import TrainedModel
from headstart.quantize_forward import Int8Forward


def quantized_path(onnx_path: str | Path) -> Path:
    """The int8 model beside `model.onnx`: `model.int8.onnx`."""
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


def run_int8_forward(model: TrainedModel) -> Int8Forward:
    """The run's own int8 forward (a run trained on int8 features), else one calibrated on the run's
    training split, as `--precision int8` would (an error naming the run when none of it is readable)."""
    own = model.int8_forward()
    if own is not None:
        return own
    train = [s for s, _ in split_items(model, ("train",))]
    try:
        return Int8Forward(model.backbone, train)
    except HeadstartError as e:
        raise HeadstartError(
            f"cannot quantize {model.path or model.backbone.name}: {e.message} (no training item listed in "
            "its split.csv is readable and unchanged)",
            fix="restore the run's training data (under the data_root in run.json), or export without "
            "--quantize",
        ) from e


class Int8Classifier(nn.Module):
    """The in-process int8 predict path as a module (collated batch -> logits): the run's int8 forward, then
    its head in numpy, as TrainedModel.predict_proba and the server compute them."""

    def __init__(self, model: TrainedModel, int8: Int8Forward) -> None:
        super().__init__()
        self.int8, self.head = int8, model.head

    def forward(self, x: Any) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.head.logits(self.int8(x)), np.float32))


def write_int8_model(model: TrainedModel, int8: Int8Forward, dst: Path, card: dict[str, Any]) -> Path:
    """The int8 backbone's graph with the head appended (Gemm -> `logits`; softmax(logits / T) ->
    `probabilities`) and `card` in its metadata, written atomically to `dst`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(int8.ensure()))
    g = m.graph
    (features,) = [o.name for o in g.output]
    g.initializer.extend(
        [
            numpy_helper.from_array(np.asarray(model.head.weight, np.float32), "head.weight"),
            numpy_helper.from_array(np.asarray(model.head.bias, np.float32), "head.bias"),
            numpy_helper.from_array(np.asarray(model.temperature, np.float32), "head.temperature"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Gemm", [features, "head.weight", "head.bias"], ["logits"], transB=1),
            helper.make_node("Div", ["logits", "head.temperature"], ["head.scaled"], name="head.scale"),
            helper.make_node("Softmax", ["head.scaled"], ["probabilities"], axis=1, name="head.softmax"),
        ]
    )
    k = len(model.classes)
    del g.output[:]
    outputs = ("logits", "probabilities")
    g.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", k]) for n in outputs])
    apply_metadata(m, card)
    onnx.checker.check_model(m)
    return atomic_write(dst, lambda tmp: onnx.save(m, str(tmp)))


def int8_card(card: dict[str, Any], int8: Int8Forward) -> dict[str, Any]:
    """An export's card for its int8 graph: the quantisation method and the int8 backbone's record."""
    return {**card, "quantized": int8.identity.method, "int8": int8.record()}


def _test_comparison(model: TrainedModel, qsession: Any, float_session: Any | None) -> dict[str, Any] | None:
    """Float against int8 on the run's test split: accuracies with Wilson intervals, the paired difference."""
    from headstart.intervals import paired_difference, wilson

    test = split_items(model, ("test",))
    batch, kept, _ = load_batch(model, [s for s, _ in test]) if test else (None, [], {})
    if batch is None:
        return None
    usable = set(kept)
    index = {c: i for i, c in enumerate(model.classes)}
    y = np.array([index.get(lab, -1) for s, lab in test if s in usable])
    ref = run_onnx(float_session, batch) if float_session is not None else torch_logits(model.module(), batch)
    hits = {"float": ref.argmax(1) == y, "int8": run_onnx(qsession, batch).argmax(1) == y}
    out: dict[str, Any] = {"n": len(y)}
    for name, h in hits.items():
        out[f"accuracy_{name}"] = float(h.mean())
        out[f"accuracy_{name}_ci"] = list(wilson(int(h.sum()), len(h)))
    out["accuracy_change"] = out["accuracy_int8"] - out["accuracy_float"]
    out["int8_minus_float"] = paired_difference(hits["int8"], hits["float"])
    return out


def compare_with_float(
    model: TrainedModel, qsession: Any, *, float_session: Any | None, check_batch: Any, ref_logits: np.ndarray
) -> dict[str, Any]:
    """The int8 graph against float (the float export's session, else PyTorch): the check inputs' top-1
    agreement, single-input latency, the test comparison, and whether int8 is recommended."""
    from headstart.intervals import paired_verdict

    got = run_onnx(qsession, check_batch)
    one = batch_rows(check_batch, 0, 1)
    latency = {"int8": p50_ms(qsession, one)}
    if float_session is not None:
        latency["float"] = p50_ms(float_session, one)
    result: dict[str, Any] = {
        "check_top1_agreement": float((ref_logits.argmax(1) == got.argmax(1)).mean()),
        "check_max_abs_diff": float(np.abs(ref_logits - got).max()),
        "latency_single_p50_ms": latency,
        "test": _test_comparison(model, qsession, float_session),
    }
    t = result["test"]
    if t is not None:
        d = t["int8_minus_float"]
        worse = paired_verdict(d) == "worse"  # a loss beyond noise, as the verdicts rule
    else:
        worse = result["check_top1_agreement"] < 0.99
    result["recommended"] = not worse
    if worse:
        result["warning"] = (
            "the int8 model loses accuracy against float beyond noise (see test / check_top1_agreement): "
            "use the float model"
        )
    return result


def quantize_model(
    model: TrainedModel,
    out: Path,
    session: Any,
    card: dict[str, Any],
    *,
    check_batch: Any,
    ref_logits: np.ndarray,
) -> dict[str, Any]:
    """Write `model.int8.onnx` (with its own card) beside the float export `out` and measure it."""
    int8 = run_int8_forward(model)
    qcard = int8_card(card, int8)
    qpath = write_int8_model(model, int8, quantized_path(out), qcard)
    qsession = ort_session(qpath)
    result: dict[str, Any] = {
        "onnx": str(qpath),
        "bytes": qpath.stat().st_size,
        "float_bytes": out.stat().st_size,
        "method": int8.identity.method,
        "int8_id": int8.identity.id,
        "calibration_items": len(int8.identity.calibration),
        "quantized_ops": op_counts(qpath, ("QuantizeLinear", "DequantizeLinear", "MatMulInteger")),
        **compare_with_float(
            model, qsession, float_session=session, check_batch=check_batch, ref_logits=ref_logits
        ),
    }
    qcard["quantization"] = {k: v for k, v in result.items() if k != "onnx"}
    atomic_write_json(card_path(qpath), qcard)
    write_metadata(qpath, qcard)
    return result
