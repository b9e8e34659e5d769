"""The proof an export is the model: ONNX Runtime and PyTorch are run on the same real inputs (the caller's
files, else the run's own test then val items) and must agree on every top-1 class, with logits equal up to
float rounding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from headstart.errors import BadInput, HeadstartError
from headstart.export.graph import batch_rows, load_batch, onnx_feed, run_onnx, torch_logits
from headstart.model import TrainedModel, softmax
from headstart.runs import SPLIT_FILE, SplitRow, read_split_rows, resolve_item, split_texts

MAX_CHECK = 32
#: logits may differ by float rounding only: this much, relative to the largest logit (at least 1).
PARITY_RTOL = 1e-3


def split_items(model: TrainedModel, splits: Sequence[str] = ("test", "val")) -> list[tuple[str, str]]:
    """(source, label) of the run's own items in `splits` (in that order) whose files are still there and
    unchanged (sha256 as recorded), found by the run folder's one resolver (headstart.runs.resolve_item)."""
    if model.path is None or not (model.path / SPLIT_FILE).is_file():
        return []
    rows = read_split_rows(model.path)
    if model.modality == "text":
        return _split_texts(model, rows, splits)
    out: list[tuple[str, str]] = []
    for split in splits:
        for r in rows:
            if r.split != split:
                continue
            found = resolve_item(model.path, r, model.run_info, verify=True)
            if found is not None:
                out.append((str(found), r.label))
    return out


def _split_texts(model: TrainedModel, rows: list[SplitRow], splits: Sequence[str]) -> list[tuple[str, str]]:
    """A text run's split.csv lists the texts themselves, never file paths (older runs list row ids, read
    back through the run's data); a recorded sha256 that differs from the text's leaves the row out."""
    texts = split_texts(model.path, "text") if model.path is not None else {}
    out: list[tuple[str, str]] = []
    for split in splits:
        for r in rows:
            if r.split != split:
                continue
            text = texts.get(r.path, r.path)
            if not r.sha256 or model.backbone.item_hash(text) == r.sha256:
                out.append((text, r.label))
    return out


def check_batch(
    model: TrainedModel, check_inputs: Sequence[str | Path] | None
) -> tuple[Any, list[str], dict[str, str]]:
    """(collated batch, the sources in it, {input: reason} for the unreadable) of the real inputs the export
    is checked on: the caller's files (a text model reads each as one text), else the run's own held-out
    items; an error, before anything is exported, when none is usable."""
    unread: dict[str, str] = {}
    if check_inputs:
        files = [str(s) for s in check_inputs][:MAX_CHECK]
        read = model.read_files(files)
        sources = [s for s in read if isinstance(s, str)]
        unread = {f: r.reason for f, r in zip(files, read, strict=True) if isinstance(r, BadInput)}
    else:
        sources = [s for s, _ in split_items(model)[:MAX_CHECK]]
    batch, kept, bad = load_batch(model, sources)
    bad = {**unread, **bad}
    if batch is None:
        where = "check_inputs" if check_inputs else f"the test/val files listed in {model.path}/{SPLIT_FILE}"
        raise HeadstartError(
            f"no usable inputs to check the export against PyTorch ({where}: {len(sources) + len(unread)} "
            f"found, {len(bad)} unreadable)",
            fix=f"restore the data its {SPLIT_FILE} lists (under the data_root in run.json; an older run's "
            "paths are relative to the folder it was made in: run from there), or pass inputs to check "
            "with --check FILE...",
        )
    return batch, kept, bad


def measure_parity(
    model: TrainedModel, session: Any, classifier: nn.Module, batch: Any, *, caller_inputs: bool
) -> tuple[dict[str, Any], np.ndarray]:
    """(parity figures, PyTorch's logits): max |logits difference|, top-1 agreement, and the difference of
    the graph's calibrated probabilities from softmax(logits / T)."""
    ref = torch_logits(classifier, batch)
    got = run_onnx(session, batch)
    proba_onnx = session.run(["probabilities"], onnx_feed(batch_rows(batch, 0, 1)))[0]
    parity = {
        "n": len(ref),
        "inputs": "check_inputs" if caller_inputs else "run split (test, then val)",
        "max_abs_diff": float(np.abs(ref - got).max()),
        "max_abs_logit": float(np.abs(ref).max()),
        "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
        "probabilities_max_abs_diff": float(np.abs(proba_onnx - softmax(ref[:1] / model.temperature)).max()),
    }
    return parity, ref


def parity_holds(parity: dict[str, Any]) -> bool:
    """Every top-1 agrees, and no logit differs by more than float rounding (PARITY_RTOL of the largest)."""
    scale = max(1.0, parity["max_abs_logit"])
    return parity["top1_agreement"] >= 1.0 and parity["max_abs_diff"] <= PARITY_RTOL * scale
