"""Per-position exports (a tagger's labels per token, a language model's logits over its vocabulary): the
graph of (input_ids, attention_mask) -> logits with batch and length axes dynamic, and its parity check
against PyTorch. Apart from headstart.export.graph, whose classifier graphs the card module builds on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.export.card import apply_metadata
from headstart.export.graph import _torch_export

#: Parity of a per-position export: the largest logit difference allowed, relative to the largest logit.
SEQUENCE_PARITY_TOL = 1e-3


def export_sequence_graph(
    wrapper: nn.Module, example: dict[str, Any], out: Path, card: dict[str, Any]
) -> None:
    """torch.onnx.export of (input_ids, attention_mask) -> logits (batch, length, outputs), batch and length
    axes dynamic, the card in the file's metadata; written atomically to `out`."""
    import onnx

    from headstart.fileio import atomic_write

    axes = {0: "batch", 1: "length"}

    def write(tmp: Path) -> None:
        _torch_export(wrapper, example, tmp, axes, {"logits": axes})
        m = onnx.load(str(tmp))
        apply_metadata(m, card)
        onnx.save(m, str(tmp))

    atomic_write(out, write)


def sequence_parity(session: Any, wrapper: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime against PyTorch on one padded batch: max |logit difference| at real tokens, the largest
    logit, and the share of real tokens whose argmax agrees (top1_agreement, the name export prints)."""
    with torch.no_grad():
        ref = wrapper(batch["input_ids"], batch["attention_mask"]).float().numpy()
    got = session.run(["logits"], {k: v.numpy() for k, v in batch.items()})[0]
    real = batch["attention_mask"].numpy().astype(bool)
    diff = float(np.abs(got - ref)[real].max())
    agree = float((got.argmax(-1) == ref.argmax(-1))[real].mean())
    return {"max_abs_diff": diff, "max_abs_logit": float(np.abs(ref[real]).max()), "top1_agreement": agree}


def sequence_parity_holds(figures: dict[str, Any]) -> bool:
    """Every real token's argmax agrees and the logits differ by float rounding only."""
    tol = SEQUENCE_PARITY_TOL * max(1.0, figures["max_abs_logit"])
    return bool(figures["max_abs_diff"] <= tol and figures["top1_agreement"] >= 1)
