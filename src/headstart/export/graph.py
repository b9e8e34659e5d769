"""The classifier as an ONNX graph, and running it: the traced module (`WithProbabilities`: logits and
calibrated probabilities out), the torch.onnx export, batches fed by input name, and ONNX Runtime sessions."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.errors import BadInput, HeadstartError
from headstart.model import TrainedModel

OPSET = 17


class WithProbabilities(nn.Module):
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


def load_batch(model: TrainedModel, sources: Sequence[str]) -> tuple[Any, list[str], dict[str, str]]:
    """(a collated batch of the readable `sources`, or None; those sources; {source: reason} for the rest)."""
    examples, kept, bad = [], [], {}
    for s in sources:
        try:
            examples.append(model.backbone.load_item(s))
            kept.append(s)
        except BadInput as e:
            bad[s] = e.reason
    return (model.backbone.collate(examples) if examples else None), kept, bad


def ort_session(path: Path) -> Any:
    """An ONNX Runtime CPU session on the exported file, with torch's thread count and no spinning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def named_inputs(batch: Any) -> dict[str, torch.Tensor]:
    """A collated batch as the graph's named inputs: `input`, or a dict batch's own keys."""
    return dict(batch) if isinstance(batch, dict) else {"input": batch}


def batch_rows(batch: Any, start: int, stop: int) -> Any:
    """Rows start:stop of a batch (a tensor, or each tensor of a dict batch)."""
    if isinstance(batch, dict):
        return {k: v[start:stop] for k, v in batch.items()}
    return batch[start:stop]


def n_rows(batch: Any) -> int:
    return len(next(iter(named_inputs(batch).values())))


def onnx_feed(batch: Any) -> dict[str, np.ndarray]:
    """What an exported graph is fed for a collated batch: {input name: array}."""
    return {k: v.numpy() for k, v in named_inputs(batch).items()}


def run_onnx(session: Any, batch: Any, chunk: int = 32) -> np.ndarray:
    n = n_rows(batch)
    return np.concatenate(
        [session.run(["logits"], onnx_feed(batch_rows(batch, i, i + chunk)))[0] for i in range(0, n, chunk)]
    )


def torch_logits(module: nn.Module, batch: Any, chunk: int = 32) -> np.ndarray:
    n = n_rows(batch)
    with torch.inference_mode():
        return np.concatenate([module(batch_rows(batch, i, i + chunk)).numpy() for i in range(0, n, chunk)])


def check_exportable(model: TrainedModel, batch: Any) -> None:
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


def _torch_export(
    wrapper: nn.Module, example: dict[str, Any], path: Path, dynamic: dict, outputs: dict[str, dict]
) -> None:
    """torch.onnx.export (TorchScript tracer, OPSET) of the named inputs, each with the `dynamic` axes, to
    the named `outputs` (name -> their dynamic axes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(example.values()),
            str(path),
            input_names=list(example),
            output_names=list(outputs),
            dynamic_axes={**{name: dynamic for name in example}, **outputs},
            opset_version=OPSET,
            dynamo=False,
        )


def export_graph(wrapper: nn.Module, example: dict[str, torch.Tensor], path: Path, dynamic: dict) -> None:
    """torch.onnx.export of the named inputs (batch axes dynamic) to `path`; outputs logits, probabilities."""
    _torch_export(wrapper, example, path, dynamic, {"logits": {0: "batch"}, "probabilities": {0: "batch"}})
