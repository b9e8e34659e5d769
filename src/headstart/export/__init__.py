"""Export a trained model to one self-describing ONNX file, proven equal to PyTorch on real inputs.

    report = export_onnx_model("runs/demo", "runs/demo/model.onnx", quantize=True)

The graph is the whole classifier (backbone + trained delta + linear head) with two outputs: `logits` and
`probabilities` (softmax of logits / the run's calibration temperature). Everything a consumer needs to
feed it correctly (input size, resize, mean/std, interpolation, classes, base card) travels with it: in a
model card JSON beside the .onnx and in the ONNX metadata_props. The export is refused unless ONNX
Runtime and PyTorch agree on the top-1 class of every check input (the run's own test/val files).

A text model's graph takes `input_ids` and `attention_mask` (int64, batch x length); its tokenizer is
written beside the .onnx (`model.tokenizer.json`), and its check inputs are the texts of its split.
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
from headstart.fileio import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_file,
    sha256_file,
)
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
    """Classifier -> (logits, softmax(logits / T)): calibrated probabilities come out of the graph.

    The graph's inputs are the batch's tensors by name: one `input` (images, audio), or a text model's
    `input_ids` and `attention_mask`, handed to the classifier as the dict its backbone collates."""

    def __init__(self, classifier: nn.Module, temperature: float, names: Sequence[str] = ("input",)) -> None:
        super().__init__()
        self.classifier = classifier
        self.temperature = float(temperature)
        self.names = list(names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x: Any = inputs[0] if self.names == ["input"] else dict(zip(self.names, inputs, strict=True))
        logits = self.classifier(x)
        return logits, torch.softmax(logits / self.temperature, dim=1)


def card_path(onnx_path: str | Path) -> Path:
    """The model card written beside `model.onnx`: `model.card.json`."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".card.json")


def tokenizer_path(onnx_path: str | Path) -> Path:
    """A text model's tokenizer, written beside `model.onnx`: `model.tokenizer.json`."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".tokenizer.json")


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
    with open(model.path / "split.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if model.modality == "text":
        return _split_texts(model, rows, splits)
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


def _split_texts(
    model: TrainedModel, rows: list[dict[str, str]], splits: Sequence[str]
) -> list[tuple[str, str]]:
    """A text run's split.csv lists the texts themselves, never file paths (older runs list row ids, read
    back through the run's data); a recorded sha256 that differs from the text's leaves the row out."""
    from headstart.evaluate import _text_sources

    texts = _text_sources(model.path, "text") if model.path is not None else {}
    out: list[tuple[str, str]] = []
    for split in splits:
        for r in rows:
            if r.get("split") != split:
                continue
            text = texts.get(r["path"], r["path"])
            if not r.get("sha256") or model.backbone.item_hash(text) == r["sha256"]:
                out.append((text, r["label"]))
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


def _named(batch: Any) -> dict[str, torch.Tensor]:
    """A collated batch as the graph's named inputs: `input`, or a dict batch's own keys."""
    return dict(batch) if isinstance(batch, dict) else {"input": batch}


def _rows(batch: Any, start: int, stop: int) -> Any:
    """Rows start:stop of a batch (a tensor, or each tensor of a dict batch)."""
    if isinstance(batch, dict):
        return {k: v[start:stop] for k, v in batch.items()}
    return batch[start:stop]


def _n_rows(batch: Any) -> int:
    return len(next(iter(_named(batch).values())))


def onnx_feed(batch: Any) -> dict[str, np.ndarray]:
    """What an exported graph is fed for a collated batch: {input name: array}."""
    return {k: v.numpy() for k, v in _named(batch).items()}


def _run_onnx(session: Any, batch: Any, chunk: int = 32) -> np.ndarray:
    n = _n_rows(batch)
    return np.concatenate(
        [session.run(["logits"], onnx_feed(_rows(batch, i, i + chunk)))[0] for i in range(0, n, chunk)]
    )


def _torch_logits(module: nn.Module, batch: Any, chunk: int = 32) -> np.ndarray:
    n = _n_rows(batch)
    with torch.inference_mode():
        return np.concatenate([module(_rows(batch, i, i + chunk)).numpy() for i in range(0, n, chunk)])


def _check_exportable(model: TrainedModel, batch: Any) -> None:
    # Text models collate to a dict of tensors (token ids, mask): exported as named inputs.
    text_batch = (
        model.modality == "text"
        and isinstance(batch, dict)
        and all(isinstance(v, torch.Tensor) for v in batch.values())
    )
    if not isinstance(batch, torch.Tensor) and not text_batch:
        kind = type(batch).__name__
        keys = f" with keys {sorted(batch)}" if isinstance(batch, dict) else ""
        raise HeadstartError(
            f"{model.modality} models are not exportable to ONNX yet: {model.backbone.name} takes a "
            f"{kind}{keys} per batch, and the export takes one tensor (or a text model's token tensors)",
            fix="serve the run folder with `headstart serve` (PyTorch) instead",
        )


def _build_card(
    model: TrainedModel, batch: Any, *, quantized: bool = False, parity: dict[str, Any] | None = None
) -> dict[str, Any]:
    info = model.info
    inputs = [
        {
            "name": name,
            "dtype": str(x.dtype).removeprefix("torch."),
            "shape": ["batch", "length"] if model.modality == "text" else ["batch", *list(x.shape[1:])],
        }
        for name, x in _named(batch).items()
    ]
    card: dict[str, Any] = {
        "format": "onnx",
        "opset": OPSET,
        "quantized": "dynamic-int8" if quantized else None,
        "modality": model.modality,
        "inputs": inputs,
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
    elif model.modality == "text":
        bb: Any = model.backbone
        card["preprocess"] = {
            **bb.preprocess.to_dict(),
            "pad_id": bb.pad_id,
            "steps": (
                "tokenize with the tokenizer saved beside the model (*.tokenizer.json: special tokens added, "
                f"truncated to {bb.max_length} tokens); pad right with pad_id to the longest of the batch; "
                "attention_mask 1 on real tokens, 0 on padding; both int64"
            ),
        }
    if parity is not None:
        card["parity"] = parity
    return card


def _export(
    wrapper: nn.Module, example: dict[str, torch.Tensor], path: Path, card: dict[str, Any], dynamic: dict
) -> None:
    """torch.onnx.export of the named inputs + metadata_props, written atomically."""
    import onnx

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                tuple(example.values()),
                str(tmp),
                input_names=list(example),
                output_names=["logits", "probabilities"],
                dynamic_axes={
                    **{name: dynamic for name in example},
                    "logits": {0: "batch"},
                    "probabilities": {0: "batch"},
                },
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


def _p50_ms(session: Any, x: Any, repeats: int = 10) -> float:
    feed = onnx_feed(x)
    session.run(["logits"], feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(["logits"], feed)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def _accuracy(session: Any, batch: Any, labels: list[str], classes: list[str]) -> float:
    pred = _run_onnx(session, batch).argmax(1)
    return float(np.mean([classes[int(p)] == y for p, y in zip(pred, labels, strict=True)]))


def _check_out(out: Path) -> Path:
    if out.suffix != ".onnx":
        raise HeadstartError(f"{out} does not end in .onnx", fix="name the output file *.onnx")
    return ensure_writable_file(out, flag="--out")


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
    if out_path is not None:  # an unusable --out is refused before the model is loaded
        _check_out(Path(out_path))
    model = run_dir_or_model if isinstance(run_dir_or_model, TrainedModel) else load_model(run_dir_or_model)
    if out_path is None:
        if model.path is None:
            raise HeadstartError("the model has no run folder to export into", fix="pass out_path")
        out_path = model.path / ONNX_FILE
    out = _check_out(Path(out_path))

    # Real inputs for the parity check: the caller's files (a text model reads each as one text), else the
    # run's own held-out items.
    unread: dict[str, str] = {}
    if check_inputs:
        files = [str(s) for s in check_inputs][:MAX_CHECK]
        read = model.read_files(files)
        sources = [s for s in read if isinstance(s, str)]
        unread = {f: r.reason for f, r in zip(files, read, strict=True) if isinstance(r, BadInput)}
    else:
        sources = [s for s, _ in split_items(model)[:MAX_CHECK]]
    batch, kept, bad = _load_batch(model, sources)
    bad = {**unread, **bad}
    if batch is None:
        where = "check_inputs" if check_inputs else f"the test/val files listed in {model.path}/split.csv"
        raise HeadstartError(
            f"no usable inputs to check the export against PyTorch ({where}: {len(sources) + len(unread)} "
            f"found, {len(bad)} unreadable)",
            fix="run from the folder the run was made in (its split.csv paths are relative to it), "
            "or pass inputs to check with --check FILE...",
        )
    _check_exportable(model, batch)
    if model.modality == "image" and not batch.dtype.is_floating_point:
        raise HeadstartError(f"{model.backbone.name} collates images to {batch.dtype}, not float")

    classifier = model.module()
    named = _named(batch)
    wrapper = _WithProbabilities(classifier, model.temperature, list(named)).eval()
    dynamic = {0: "batch"} if model.modality == "image" else {0: "batch", 1: "length"}
    t0 = time.perf_counter()
    card = _build_card(model, batch)
    if model.modality == "text":
        card["preprocess"]["tokenizer_file"] = tokenizer_path(out).name
    try:
        _export(wrapper, _named(_rows(batch, 0, 2)), out, card, dynamic)
    except (RuntimeError, TypeError, ValueError) as e:  # torch.onnx's errors are RuntimeErrors
        if model.modality == "image":
            raise
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HeadstartError(
            f"{model.path or model.backbone.name} ({model.modality}, {model.backbone.name}) cannot be "
            f"exported to ONNX: {why}",
            fix="serve the run folder with `headstart serve` (PyTorch) instead",
        ) from e
    export_s = time.perf_counter() - t0

    session = _session(out)
    ref = _torch_logits(classifier, batch)
    got = _run_onnx(session, batch)
    diff = float(np.abs(ref - got).max())
    scale = max(1.0, float(np.abs(ref).max()))
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    proba_onnx = session.run(["probabilities"], onnx_feed(_rows(batch, 0, 1)))[0]
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
    if model.modality == "text":  # what a consumer tokenizes with (truncation to max_length included)
        tokenizer: Any = model.backbone._tokenizer  # a tokenizers.Tokenizer (TextBackbone)
        atomic_write_text(tokenizer_path(out), tokenizer.to_str())
        report["tokenizer"] = str(tokenizer_path(out))
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
    check_batch: Any,
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
    one = _rows(check_batch, 0, 1)
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
