"""Export a trained model to one self-describing ONNX file, proven equal to PyTorch on real inputs.

    report = export_onnx_model("runs/demo", "runs/demo/model.onnx", quantize=True)

The graph is the whole classifier (backbone + trained delta + linear head) with two outputs: `logits` and
`probabilities` (softmax of logits / the run's calibration temperature). Everything a consumer needs to
feed it correctly (input size, resize, mean/std, interpolation, classes, base card) travels with it: in a
model card JSON beside the .onnx and in the ONNX metadata_props. The export is refused unless ONNX
Runtime and PyTorch agree on the top-1 class of every check input (the run's own test/val files).

A text model's graph takes `input_ids` and `attention_mask` (int64, batch x length); its tokenizer is
written beside the .onnx (`model.tokenizer.json`), and its check inputs are the texts of its split.

graph.py builds and runs the graph; parity.py proves it equal to PyTorch; card.py writes and reads the card;
quantize.py makes and measures the int8 model (the whole export of a run trained on int8 features). This
module runs them in order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.export.card import (
    apply_metadata,
    build_card,
    card_path,
    model_identity,
    read_card,
    tokenizer_path,
    write_metadata,
)
from headstart.export.graph import (
    WithProbabilities,
    batch_rows,
    check_exportable,
    export_graph,
    named_inputs,
    onnx_feed,
    ort_session,
    torch_logits,
)
from headstart.export.parity import check_batch, measure_parity, parity_holds, split_items
from headstart.export.quantize import (
    Int8Classifier,
    compare_with_float,
    int8_card,
    quantize_model,
    quantized_path,
    write_int8_model,
)
from headstart.fileio import atomic_write, atomic_write_json, atomic_write_text, ensure_writable_file
from headstart.model import TrainedModel, load_model
from headstart.runs import ONNX_FILE

__all__ = [
    "ONNX_FILE",
    "card_path",
    "export_onnx_model",
    "model_identity",
    "onnx_feed",
    "ort_session",
    "quantized_path",
    "read_card",
    "split_items",
    "tokenizer_path",
]


def _check_out(out: Path) -> Path:
    if out.suffix != ".onnx":
        raise HeadstartError(f"{out} does not end in .onnx", fix="name the output file *.onnx")
    return ensure_writable_file(out, flag="--out")


def _write_graph(model: TrainedModel, classifier: Any, batch: Any, out: Path, card: dict[str, Any]) -> None:
    """Trace the classifier (two example rows) to `out` with the card in its metadata, atomically; a text
    model the exporter cannot trace is a clear error (an image model's failure is a bug: raised as is)."""
    import onnx

    names = list(named_inputs(batch))
    wrapper = WithProbabilities(classifier, model.temperature, names).eval()
    dynamic = {0: "batch"} if model.modality == "image" else {0: "batch", 1: "length"}

    def write(tmp: Path) -> None:
        export_graph(wrapper, named_inputs(batch_rows(batch, 0, 2)), tmp, dynamic)
        m = onnx.load(str(tmp))
        apply_metadata(m, card)
        onnx.save(m, str(tmp))

    try:
        atomic_write(out, write)
    except (RuntimeError, TypeError, ValueError) as e:  # torch.onnx's errors are RuntimeErrors
        if model.modality == "image":
            raise
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HeadstartError(
            f"{model.path or model.backbone.name} ({model.modality}, {model.backbone.name}) cannot be "
            f"exported to ONNX: {why}",
            fix="serve the run folder with `headstart serve` (PyTorch) instead",
        ) from e


def _finish(model: TrainedModel, out: Path, card: dict[str, Any], report: dict[str, Any]) -> None:
    """What travels with a proven export: a text model's tokenizer, and the card beside and inside it."""
    if model.modality == "text":  # what a consumer tokenizes with (truncation to max_length included)
        tokenizer: Any = model.backbone._tokenizer  # a tokenizers.Tokenizer (TextBackbone)
        atomic_write_text(tokenizer_path(out), tokenizer.to_str())
        report["tokenizer"] = str(tokenizer_path(out))
    atomic_write_json(card_path(out), card)
    write_metadata(out, card)  # the card inside the .onnx gets the parity figures too


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
    difference is float rounding. `quantize=True` also writes the int8 model (`model.int8.onnx`: the int8
    backbone, static QDQ for conv nets calibrated on the run's training split, dynamic for transformers,
    under the float head; headstart.export.quantize) and compares it with float on the run's test split,
    with intervals. A run trained on int8 features is exported as that int8 model itself (its head's own
    forward), proven against the in-process int8 predict path, and always reports the comparison.
    """
    if out_path is not None:  # an unusable --out is refused before the model is loaded
        _check_out(Path(out_path))
    if not isinstance(run_dir_or_model, TrainedModel):
        from headstart.shapes import shape_of_run

        shape = shape_of_run(run_dir_or_model)
        if shape is not None:
            return shape.export(
                Path(run_dir_or_model),
                None if out_path is None else Path(out_path),
                quantize=quantize,
                check_inputs=check_inputs,
            )
    model = run_dir_or_model if isinstance(run_dir_or_model, TrainedModel) else load_model(run_dir_or_model)
    if out_path is None:
        if model.path is None:
            raise HeadstartError("the model has no run folder to export into", fix="pass out_path")
        out_path = model.path / ONNX_FILE
    out = _check_out(Path(out_path))

    batch, kept, bad = check_batch(model, check_inputs)  # real inputs, read before anything is exported
    check_exportable(model, batch)
    if model.modality == "image" and not batch.dtype.is_floating_point:
        raise HeadstartError(f"{model.backbone.name} collates images to {batch.dtype}, not float")
    # A head trained on int8 features is exported on that very int8 backbone (rebuilt exactly, or refused).
    int8 = model.int8_forward()

    classifier = model.module() if int8 is None else Int8Classifier(model, int8)  # what parity is against
    t0 = time.perf_counter()
    card = build_card(model, batch) if int8 is None else int8_card(build_card(model, batch), int8)
    if model.modality == "text":
        card["preprocess"]["tokenizer_file"] = tokenizer_path(out).name
    if int8 is None:
        _write_graph(model, classifier, batch, out, card)
    else:
        write_int8_model(model, int8, out, card)
    export_s = time.perf_counter() - t0

    session = ort_session(out)
    parity, ref = measure_parity(model, session, classifier, batch, caller_inputs=bool(check_inputs))
    parity["unreadable"] = bad
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
            f"parity on {len(kept)} real inputs: max |logit diff| {parity['max_abs_diff']:.2e} "
            f"(largest logit {parity['max_abs_logit']:.2f}), top-1 agreement {parity['top1_agreement']:.1%}"
        )
    if not parity_holds(parity):
        out.unlink(missing_ok=True)
        raise HeadstartError(
            f"the ONNX export of {model.path or model.backbone.name} disagrees with PyTorch: "
            f"top-1 agreement {parity['top1_agreement']:.1%}, max |logit diff| {parity['max_abs_diff']:.3g} "
            f"on {len(kept)} inputs (nothing written)",
            fix="report this with the run folder; serve the run with PyTorch meanwhile",
        )
    card["parity"] = parity
    _finish(model, out, card, report)
    if int8 is not None:  # already the int8 model: how it compares with the float backbone under its head
        float_ref = torch_logits(model.module(), batch)
        cmp = compare_with_float(model, session, float_session=None, check_batch=batch, ref_logits=float_ref)
        report["quantized"] = {
            "onnx": str(out),
            "bytes": report["bytes"],
            "method": int8.identity.method,
            **cmp,
        }
    elif quantize:
        report["quantized"] = quantize_model(model, out, session, card, check_batch=batch, ref_logits=ref)
    return report
