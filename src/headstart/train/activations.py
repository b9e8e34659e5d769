"""The frozen prefix of a classifier: activations entering the first trainable group, cached per split.

When a phase does not augment, the activations entering the first trainable group are computed once per
phase and each epoch runs only the top groups (head-only phases read the pooled embeddings from the
on-disk feature cache). With augmentation on a CPU, the frozen groups run through ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from headstart.backbones.base import Backbone
from headstart.train.augment import augment_images
from headstart.train.data import Split
from headstart.train.engine import Engine


def _channels_last(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _pinned(x: Any) -> Any:
    """Page-locked host memory, so the copy to the GPU can overlap the step."""
    if isinstance(x, torch.Tensor):
        return x.pin_memory()
    if isinstance(x, dict):
        return {k: _pinned(v) for k, v in x.items()}
    return x


def take(states: Any, idx: torch.Tensor) -> Any:
    """The rows `idx` of cached activations (a tensor, or a dict of tensors for text)."""
    if isinstance(states, dict):
        return {k: v[idx] for k, v in states.items()}
    return states[idx]


class FrozenPrefix:
    """Activations of a backbone's frozen groups for the Classification task (a mixin: it reads the task's
    backbone, engine, feature cache and which groups have trained)."""

    backbone: Backbone
    engine: Engine
    n_groups: int
    prefix_cache: bool
    pristine: bool
    eval_batch_size: int
    embed_pristine: Callable[[str], np.ndarray] | None
    trained_groups: set[int]
    _states: dict[tuple[str, int], Any]
    _onnx_prefixes: dict[int, Any]

    def _collate(self, split: Split, idx: Sequence[int]) -> Any:
        x = _channels_last(self.backbone.collate(split.fetch(idx)))
        return _pinned(x) if self.engine.device.type == "cuda" else x

    def _prefix(self, x: Any, k: int) -> Any:
        """Activations entering group k (pooled embeddings when k == n_groups), without autograd."""
        with torch.no_grad():
            h = self.backbone.forward_groups(self.engine.place(x), 0, k)
            return self.backbone.pool(h) if k >= self.n_groups else h

    def inputs(
        self, name: str, split: Split, idx: torch.Tensor, k: int, *, augment: bool, gen: torch.Generator
    ) -> tuple[Any, int]:
        """A training batch entering group k, on the engine's device: from cached activations when
        possible, else decoded (and augmented) inputs run through the frozen prefix. Returns (activations,
        group to start at)."""
        cached = None if augment or not self.prefix_cache else self.states(name, split, k)
        if cached is not None:
            return take(cached, idx), k
        x = self._collate(split, idx.tolist())
        if augment:
            x = _channels_last(augment_images(x, self.backbone.preprocess, gen))
        if k == 0:
            return self.engine.place(x), 0
        fast = self._fast_prefix(k) if augment else None
        return (self.engine.place(fast(x)) if fast is not None else self._prefix(x, k)), k

    def _fast_prefix(self, k: int) -> Any:
        """ONNX Runtime for the frozen groups [0, k) of an augmented phase on a CPU, where it applies."""
        if k not in self._onnx_prefixes:
            usable = (
                self.prefix_cache
                and self.engine.device.type == "cpu"
                and self.backbone.modality == "image"
                and self.backbone.supports_onnx
                and self.backbone.trainable_filter is None
                and all(i >= k for i in self.trained_groups)  # the prefix holds only untouched weights
            )
            from headstart.train.onnx_prefix import onnx_prefix

            self._onnx_prefixes[k] = onnx_prefix(self.backbone, k) if usable else None
        return self._onnx_prefixes[k]

    def states(self, name: str, split: Split, k: int) -> Any | None:
        """Cached activations entering group k for every item of `split` (None when they cannot be cached)."""
        key = (name, k)
        if key in self._states:
            return self._states[key]
        if k == 0:
            return None  # the inputs themselves: collated per batch, not copied
        if k >= self.n_groups and self.pristine and self.embed_pristine is not None:
            # Embedded on the training's device (the backbone is already there) through the feature cache.
            pristine = np.ascontiguousarray(self.embed_pristine(name))
            out: Any = self.engine.place(torch.from_numpy(pristine))
        else:
            was = [m.training for m in self.backbone.groups]
            self.backbone.eval()
            parts: list[torch.Tensor] | None = []
            for b in range(0, len(split), self.eval_batch_size):
                idx = range(b, min(b + self.eval_batch_size, len(split)))
                part = self._prefix(self._collate(split, idx), k)
                if not isinstance(part, torch.Tensor):  # per-batch padded states (text): computed per batch
                    parts = None
                    break
                parts.append(part)  # type: ignore[union-attr]
            for m, t in zip(self.backbone.groups, was, strict=True):
                m.train(t)
            if parts is None or len({tuple(p.shape[1:]) for p in parts}) > 1:
                self._states[key] = None  # remembered, so it is not attempted again
                return None
            out = torch.cat(parts) if parts else torch.zeros(0)
            if out.dim() == 4:
                out = out.contiguous(memory_format=torch.channels_last)
        self._states[key] = out
        return out

    def _forget_states(self, trained_from: int = 0) -> None:
        """Drop activations that passed through a group >= `trained_from` (they changed)."""
        self._states = {key: v for key, v in self._states.items() if key[1] <= trained_from}
