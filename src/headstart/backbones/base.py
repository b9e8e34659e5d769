"""What a backbone is: a pooled-embedding network with ordered layer groups, its preprocessing and card.

Every family module builds a `Backbone` from these pieces, so later stages (caching, strategies, export)
never need to know which family they hold.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image must be prepared for these weights (taken from the weights' own pretrained config).

    Images are resized so the shorter side is `resize`, centre-cropped to `input_size`, scaled to
    0..1 and normalised with `mean`/`std` (per RGB channel, in 0..1 units).
    """

    input_size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        return cls(
            input_size=int(d["input_size"]),
            resize=int(d["resize"]),
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            interpolation=str(d.get("interpolation", "bicubic")),
        )


@dataclass
class BackboneCard:
    """Provenance a model card needs: where the weights came from, exactly which file, under what terms."""

    name: str
    family: str
    source: str
    version: str
    weights_sha256: str | None
    license: str
    pretraining_data: str
    paper: str
    embed_dim: int
    num_params: int = 0
    weights_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The backbone this one was derived from ({"name", "weights_sha256", ...}), e.g. by `headstart adapt`.
    parent: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LayerGroup:
    """One named slice of the network, in input-to-output order (what strategies freeze or unfreeze)."""

    index: int
    name: str
    module: nn.Module

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


class Backbone(nn.Module):
    """A pretrained network that maps a batch to pooled embeddings `(N, embed_dim)`.

    The network is the composition `pool(groups[-1](...groups[0](x)))`, so any prefix of groups can be
    run once and cached while later groups train.
    """

    def __init__(
        self,
        *,
        name: str,
        card: BackboneCard,
        preprocess: PreprocessConfig,
        embed_dim: int,
        groups: list[tuple[str, nn.Module]],
        pool: nn.Module,
        modality: str = "image",
    ) -> None:
        super().__init__()
        if not groups:
            raise ValueError("a backbone needs at least one layer group")
        self.name = name
        self.card = card
        self.preprocess = preprocess
        self.embed_dim = embed_dim
        self.modality = modality
        self.group_names = [n for n, _ in groups]
        self.groups = nn.ModuleList([m for _, m in groups])
        self.pool = pool
        # sha256 of trained weights loaded over the base (set by whoever changes the weights in place).
        self.delta_sha256: str | None = None
        # Set by a parameter-efficient method (LoRA): only parameters whose names pass train, the base
        # weights stay frozen even inside the groups a recipe trains.
        self.trainable_filter: Callable[[str], bool] | None = None
        self.card.num_params = sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_groups(x))

    def forward_groups(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run groups[start:stop] only (the activations between groups, not pooled)."""
        for group in self.groups[start:stop]:
            x = group(x)
        return x

    def layer_groups(self) -> list[LayerGroup]:
        return [
            LayerGroup(i, n, m) for i, (n, m) in enumerate(zip(self.group_names, self.groups, strict=True))
        ]

    @property
    def key(self) -> str:
        """Identity of what this backbone computes: weights and preprocessing. Keys the feature cache."""
        ident = {
            "name": self.name if self.card.weights_sha256 is None else self.card.family,
            "weights": self.card.weights_sha256 or _state_fingerprint(self),
            "preprocess": self.preprocess.to_dict(),
        }
        if self.delta_sha256:  # fine-tuned weights applied on top of the base: a different network
            ident["delta"] = self.delta_sha256
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        s = self.preprocess.input_size
        return torch.zeros(batch, 3, s, s)

    # -- inputs: how one raw item becomes a model input (image by default; text/audio families override) --
    #: ONNX Runtime may replace the frozen forward (inputs are one fixed-shape float tensor).
    supports_onnx: bool = True

    def item_hash(self, source: str) -> str:
        """Content identity of one input (file bytes for images/audio; text families hash the text)."""
        from headstart.features import content_hash

        return content_hash(source)

    def load_item(self, source: str, **options: Any) -> Any:
        """One raw input (a file path for images) -> the preprocessed example; raises BadInput."""
        from headstart.data.images import DEFAULT_MAX_PIXELS, load_image_tensor

        return load_image_tensor(
            source, self.preprocess, max_pixels=options.get("max_pixels", DEFAULT_MAX_PIXELS)
        )

    def collate(self, examples: list[Any]) -> Any:
        """Preprocessed examples -> one batch for `forward` (a tensor, or a dict of tensors)."""
        import numpy as np

        return torch.from_numpy(np.stack(examples))

    def sort_key(self, source: str) -> float | None:
        """Size of one input, for batching inputs of similar size together (text: its token count, so
        padding to the longest of a batch stays small). None keeps the input order; may raise BadInput."""
        return None


def _state_fingerprint(module: nn.Module) -> str:
    """Hash of the actual tensors, for backbones with no weights file (random init, user-built)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class GlobalAvgPool(nn.Module):
    """(N, C, H, W) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def dist_version(dist: str | None) -> str:
    """The installed version of the distribution that ships a backbone's weights, for its card."""
    if dist is None:
        return "unknown"
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
