"""Export a trained model to one self-describing ONNX file, proven equal to PyTorch on real inputs.

    report = export_onnx_model("runs/demo", "runs/demo/model.onnx", quantize=True)

The graph is the whole classifier (backbone + trained delta + linear head) with two outputs: `logits` and
`probabilities` (softmax of logits / the run's calibration temperature). Everything a consumer needs to
feed it correctly (input size, resize, mean/std, interpolation, classes, base card) travels with it: in a
model card JSON beside the .onnx and in the ONNX metadata_props. The export is refused unless ONNX
Runtime and PyTorch agree on the top-1 class of every check input (the run's own test/val files).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.errors import BadInput, HeadstartError
from headstart.fileio import atomic_write, atomic_write_bytes, atomic_write_json, sha256_file
from headstart.model import TrainedModel, load_model, softmax

log = logging.getLogger(__name__)

OPSET = 17
ONNX_FILE = "model.onnx"
MAX_CHECK = 32
#: Dynamic quantisation of Conv (ConvInteger) measured 8x slower than float on a 2-core CPU and dropped the
#: emoji probe on EfficientNet-Lite0 from 0.685 to chance (0.111): only the matrix products are quantised.
QUANTIZED_OPS = ("MatMul", "Gemm")
#: logits may differ by float rounding only: this much, relative to the largest logit (at least 1).
PARITY_RTOL = 1e-3
CARD_KEY = "headstart.card"


class _WithProbabilities(nn.Module):
    """Classifier -> (logits, softmax(logits / T)): calibrated probabilities come out of the graph."""

    def __init__(self, classifier: nn.Module, temperature: float) -> None:
        super().__init__()
        self.classifier = classifier
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(x)
        return logits, torch.softmax(logits / self.temperature, dim=1)


def card_path(onnx_path: str | Path) -> Path:
    """The model card written beside `model.onnx`: `model.card.json`."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".card.json")


def quantized_path(onnx_path: str | Path) -> Path:
    p = Path(onnx_path)
    return p.with_name(p.stem + ".int8.onnx")


def model_identity(model: TrainedModel) -> dict[str, Any]:
    """What makes an export belong to a model: base key, head and delta hashes, temperature."""
    info = model.info
    return {
        "backbone_key": model.backbone.key,
        "head_sha256": info.get("head", {}).get("sha256"),
        "files": dict(info.get("files", {})),
        "temperature": float(model.temperature),
    }


def _metrics_summary(model: TrainedModel) -> dict[str, Any]:
    if model.path is None or not (model.path / "metrics.json").is_file():
        return {}
    m = json.loads((model.path / "metrics.json").read_text())
    return {
        s: {k: m[s][k] for k in ("accuracy", "macro_f1", "n") if k in m[s]}
        for s in ("val", "test")
        if isinstance(m.get(s), dict)
    }


def split_items(model: TrainedModel, splits: Sequence[str] = ("test", "val")) -> list[tuple[str, str]]:
    """(source, label) of the run's own items in `splits` (in that order) whose files are still there and
    unchanged (sha256 as recorded). Relative paths are tried from the working directory, then the run's."""
    if model.path is None or not (model.path / "split.csv").is_file():
        return []
    with open(model.path / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out: list[tuple[str, str]] = []
    for split in splits:
        for r in rows:
            if r.get("split") != split:
                continue
            p = Path(r["path"])
            candidates = [p] if p.is_absolute() else [p, model.path / p, model.path.parent / p]
            for c in candidates:
                if c.is_file() and (not r.get("sha256") or sha256_file(c) == r["sha256"]):
                    out.append((str(c), r["label"]))
                    break
    return out


def _load_batch(model: TrainedModel, sources: Sequence[str]) -> tuple[Any, list[str], dict[str, str]]:
    examples, kept, bad = [], [], {}
    for s in sources:
        try:
            examples.append(model.backbone.load_item(s))
            kept.append(s)
        except BadInput as e:
            bad[s] = e.reason
    return (model.backbone.collate(examples) if examples else None), kept, bad


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run_onnx(session: Any, batch: torch.Tensor, chunk: int = 32) -> np.ndarray:
    x = batch.numpy()
    return np.concatenate(
        [session.run(["logits"], {"input": x[i : i + chunk]})[0] for i in range(0, len(x), chunk)]
    )


def _torch_logits(module: nn.Module, batch: torch.Tensor, chunk: int = 32) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([module(batch[i : i + chunk]).numpy() for i in range(0, len(batch), chunk)])


def _check_exportable(model: TrainedModel, batch: Any) -> None:
    if not isinstance(batch, torch.Tensor):
        kind = type(batch).__name__
        keys = f" with keys {sorted(batch)}" if isinstance(batch, dict) else ""
        raise HeadstartError(
            f"{model.modality} models are not exportable to ONNX yet: {model.backbone.name} takes a "
            f"{kind}{keys} per batch, and the export takes one tensor",
            fix="serve the run folder with `headstart serve` (PyTorch) instead",
        )


def _build_card(
    model: TrainedModel, batch: torch.Tensor, *, quantized: bool = False, parity: dict[str, Any] | None = None
) -> dict[str, Any]:
    info = model.info
    shape: list[Any] = ["batch", *list(batch.shape[1:])]
    card: dict[str, Any] = {
        "format": "onnx",
        "opset": OPSET,
        "quantized": "dynamic-int8" if quantized else None,
        "modality": model.modality,
        "inputs": [{"name": "input", "dtype": str(batch.dtype).removeprefix("torch."), "shape": shape}],
        "outputs": [
            {"name": "logits", "shape": ["batch", len(model.classes)]},
            {
                "name": "probabilities",
                "shape": ["batch", len(model.classes)],
                "temperature": model.temperature,
            },
        ],
        "classes": model.classes,
        "temperature": float(model.temperature),
        "kind": model.kind,
        "backbone": info.get("backbone", {}),
        "metrics": _metrics_summary(model),
        "identity": model_identity(model),
        "run": str(model.path) if model.path else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if model.modality == "image":
        pre = model.backbone.preprocess.to_dict()
        card["preprocess"] = {
            **pre,
            "layout": "NCHW float32, RGB",
            "steps": (
                f"decode to RGB (EXIF upright, transparency over white); resize the shorter side to "
                f"{pre['resize']} ({pre['interpolation']}); centre-crop {pre['input_size']} square; "
                "x/255; (x - mean) / std per channel"
            ),
        }
    if parity is not None:
        card["parity"] = parity
    return card


def _export(
    wrapper: nn.Module, example: torch.Tensor, path: Path, card: dict[str, Any], dynamic: dict
) -> None:
    """torch.onnx.export + metadata_props, written atomically."""
    import onnx

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example,),
                str(tmp),
                input_names=["input"],
                output_names=["logits", "probabilities"],
                dynamic_axes={"input": dynamic, "logits": {0: "batch"}, "probabilities": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        m = onnx.load(str(tmp))
        _apply_metadata(m, card)
        onnx.save(m, str(tmp))

    atomic_write(path, write)


def _write_metadata(path: Path, card: dict[str, Any]) -> None:
    """Replace the card stored in an existing .onnx (atomically)."""
    import onnx

    m = onnx.load(str(path))
    _apply_metadata(m, card)
    atomic_write_bytes(path, m.SerializeToString())


def _apply_metadata(m: Any, card: dict[str, Any]) -> None:
    props = {
        CARD_KEY: json.dumps(card),
        "classes": json.dumps(card["classes"]),
        "temperature": str(card["temperature"]),
    }
    if "preprocess" in card:
        props["preprocess"] = json.dumps(card["preprocess"])
    del m.metadata_props[:]
    for k, v in props.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    m.producer_name = "headstart"
    m.doc_string = f"{card['kind']} model on {card['backbone'].get('name')}: {len(card['classes'])} classes"


def read_card(onnx_path: str | Path) -> dict[str, Any]:
    """The card of an exported model (from the JSON beside it, else from the ONNX metadata)."""
    cp = card_path(onnx_path)
    if cp.is_file():
        return json.loads(cp.read_text())
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    for p in m.metadata_props:
        if p.key == CARD_KEY:
            return json.loads(p.value)
    raise HeadstartError(f"{onnx_path} has no headstart card", fix="export it with `headstart export`")


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """quantize_dynamic logs a warning per tensor it cannot shape-infer (harmless, and very long)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _op_counts(path: Path, ops: Sequence[str]) -> dict[str, int]:
    import onnx

    nodes = onnx.load(str(path)).graph.node
    return {op: sum(n.op_type == op for n in nodes) for op in ops}


def _p50_ms(session: Any, x: torch.Tensor, repeats: int = 10) -> float:
    feed = {"input": x.numpy()}
    session.run(["logits"], feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(["logits"], feed)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def _accuracy(session: Any, batch: torch.Tensor, labels: list[str], classes: list[str]) -> float:
    pred = _run_onnx(session, batch).argmax(1)
    return float(np.mean([classes[int(p)] == y for p, y in zip(pred, labels, strict=True)]))


def export_onnx_model(
    run_dir_or_model: str | Path | TrainedModel,
    out_path: str | Path | None = None,
    *,
    quantize: bool = False,
    check_inputs: Sequence[str | Path] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Export the model to `out_path` (default RUN/model.onnx) and prove it equals PyTorch.

    Parity: max |logits difference| and top-1 agreement between ONNX Runtime and PyTorch on up to 32 real
    inputs (`check_inputs`, else the run's test then val files); refused unless every top-1 agrees and the
    difference is float rounding. `quantize=True` also writes a dynamic-int8 copy (`model.int8.onnx`; for
    conv nets this quantises the MatMul/Gemm layers only) and reports its accuracy on the run's test split
    against the float export.
    """
    model = run_dir_or_model if isinstance(run_dir_or_model, TrainedModel) else load_model(run_dir_or_model)
    if out_path is None:
        if model.path is None:
            raise HeadstartError("the model has no run folder to export into", fix="pass out_path")
        out_path = model.path / ONNX_FILE
    out = Path(out_path)
    if out.suffix != ".onnx":
        raise HeadstartError(f"{out} does not end in .onnx", fix="name the output file *.onnx")

    # Real inputs for the parity check: the caller's, else the run's own held-out files.
    if check_inputs:
        sources = [str(s) for s in check_inputs][:MAX_CHECK]
    else:
        sources = [s for s, _ in split_items(model)[:MAX_CHECK]]
    batch, kept, bad = _load_batch(model, sources)
    if batch is None:
        where = "check_inputs" if check_inputs else f"the test/val files listed in {model.path}/split.csv"
        raise HeadstartError(
            f"no usable inputs to check the export against PyTorch ({where}: {len(sources)} found, "
            f"{len(bad)} unreadable)",
            fix="run from the folder the run was made in (its split.csv paths are relative to it), "
            "or pass inputs to check with --check FILE...",
        )
    _check_exportable(model, batch)
    if not batch.dtype.is_floating_point and model.modality == "image":
        raise HeadstartError(f"{model.backbone.name} collates images to {batch.dtype}, not float")

    classifier = model.module()
    wrapper = _WithProbabilities(classifier, model.temperature).eval()
    dynamic = {0: "batch"} if model.modality == "image" else {0: "batch", 1: "length"}
    t0 = time.perf_counter()
    card = _build_card(model, batch)
    _export(wrapper, batch[:2], out, card, dynamic)
    export_s = time.perf_counter() - t0

    session = _session(out)
    ref = _torch_logits(classifier, batch)
    got = _run_onnx(session, batch)
    diff = float(np.abs(ref - got).max())
    scale = max(1.0, float(np.abs(ref).max()))
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    proba_onnx = session.run(["probabilities"], {"input": batch[:1].numpy()})[0]
    proba_diff = float(np.abs(proba_onnx - softmax(ref[:1] / model.temperature)).max())
    parity = {
        "n": len(kept),
        "inputs": "check_inputs" if check_inputs else "run split (test, then val)",
        "max_abs_diff": diff,
        "max_abs_logit": float(np.abs(ref).max()),
        "top1_agreement": agree,
        "probabilities_max_abs_diff": proba_diff,
        "unreadable": bad,
    }
    report: dict[str, Any] = {
        "onnx": str(out),
        "card": str(card_path(out)),
        "bytes": out.stat().st_size,
        "export_s": round(export_s, 3),
        "parity": parity,
        "classes": model.classes,
        "temperature": model.temperature,
    }
    if verbose:
        print(
            f"parity on {len(kept)} real inputs: max |logit diff| {diff:.2e} "
            f"(largest logit {parity['max_abs_logit']:.2f}), top-1 agreement {agree:.1%}"
        )
    if agree < 1.0 or diff > PARITY_RTOL * scale:
        out.unlink(missing_ok=True)
        raise HeadstartError(
            f"the ONNX export of {model.path or model.backbone.name} disagrees with PyTorch: "
            f"top-1 agreement {agree:.1%}, max |logit diff| {diff:.3g} on {len(kept)} inputs "
            "(nothing written)",
            fix="report this with the run folder; serve the run with PyTorch meanwhile",
        )
    card["parity"] = parity
    atomic_write_json(card_path(out), card)
    _write_metadata(out, card)  # the card inside the .onnx gets the parity figures too

    if quantize:
        report["quantized"] = _quantize(model, out, session, card, check_batch=batch, ref_logits=ref)
    return report


def _quantize(
    model: TrainedModel,
    out: Path,
    session: Any,
    card: dict[str, Any],
    *,
    check_batch: torch.Tensor,
    ref_logits: np.ndarray,
) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    qpath = quantized_path(out)
    with warnings.catch_warnings(), _quiet_logging():
        warnings.simplefilter("ignore")
        atomic_write(
            qpath,
            lambda tmp: quantize_dynamic(
                str(out), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS)
            ),
        )
    qsession = _session(qpath)
    got = _run_onnx(qsession, check_batch)
    one = check_batch[:1]
    result: dict[str, Any] = {
        "onnx": str(qpath),
        "bytes": qpath.stat().st_size,
        "float_bytes": out.stat().st_size,
        "method": "onnxruntime quantize_dynamic: int8 weights, activations quantised at run time",
        "quantized_ops": _op_counts(qpath, ("ConvInteger", "MatMulInteger")),
        "note": "dynamic int8 quantisation is applied to the MatMul/Gemm layers only (the linear head, "
        "and the attention/MLP matrices of transformer backbones); the convolutions of a conv net stay "
        "float, so there it shrinks little and speeds up little",
        "check_top1_agreement": float((ref_logits.argmax(1) == got.argmax(1)).mean()),
        "check_max_abs_diff": float(np.abs(ref_logits - got).max()),
        "latency_single_p50_ms": {"float": _p50_ms(session, one), "int8": _p50_ms(qsession, one)},
    }
    test = [(s, y) for s, y in split_items(model, ("test",))]
    if test:
        batch, kept, _ = _load_batch(model, [s for s, _ in test])
        if batch is not None:
            usable = set(kept)
            labels = [y for s, y in test if s in usable]
            acc_f, acc_q = (
                _accuracy(session, batch, labels, model.classes),
                _accuracy(qsession, batch, labels, model.classes),
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
    _write_metadata(qpath, qcard)
    return result
