"""The frozen prefix of an augmented fine-tuning phase through ONNX Runtime.

With augmentation on, every epoch sees new pixels, so the activations entering the first trainable group
cannot be cached; they can still be computed by the fast inference engine (ONNX Runtime runs
EfficientNet-Lite0 several times faster than eager PyTorch on this CPU) while only the trainable top runs
under autograd. The prefix's groups are frozen and in eval mode (BatchNorm on its running statistics), so
the exported graph computes exactly what PyTorch would; the export is checked against PyTorch before use,
and any failure falls back to eager PyTorch.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from headstart.backbones.base import Backbone
from headstart.onnx_forward import _session, check_parity, export_onnx

log = logging.getLogger(__name__)


class _Prefix(nn.Module):
    def __init__(self, backbone: Backbone, k: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_groups(x, 0, self.k)


class OnnxPrefix:
    """Callable: a batch of inputs -> the activations entering group k, computed by ONNX Runtime."""

    def __init__(self, backbone: Backbone, k: int, *, threads: int | None = None) -> None:
        self.k = k
        self._dir = tempfile.TemporaryDirectory(prefix="headstart-prefix-")
        path = Path(self._dir.name) / f"prefix-{k}.onnx"
        module = _Prefix(backbone, k)
        was = [m.training for m in backbone.modules()]
        backbone.eval()
        try:
            example = backbone.example_input(2)
            export_onnx(module, example, path)
            self.session = _session(path, threads or torch.get_num_threads())
            parity = check_parity(module, self.session, example.shape[1:])
        finally:
            for m, t in zip(backbone.modules(), was, strict=True):
                m.train(t)
        self.max_abs_diff = parity["max_abs_diff"]
        if not parity["ok"]:
            raise RuntimeError(f"ONNX prefix disagrees with PyTorch (max abs diff {self.max_abs_diff:.2e})")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"input": x.contiguous().numpy()})[0]
        return torch.from_numpy(out).contiguous(memory_format=torch.channels_last)


def onnx_prefix(backbone: Backbone, k: int) -> OnnxPrefix | None:
    """An ONNX Runtime prefix for groups [0, k), or None where eager PyTorch must do (logged)."""
    try:
        return OnnxPrefix(backbone, k)
    except Exception as e:  # export or runtime support varies by model: eager PyTorch is always right
        log.info("frozen prefix through PyTorch (ONNX Runtime unavailable here: %s)", e)
        return None
