"""Decode a dataset once into memory for training (small data: hundreds to a few thousand items)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from headstart.backbones.base import Backbone
from headstart.data.images import DEFAULT_MAX_PIXELS
from headstart.errors import BadInput
from headstart.progress import progress_bar


@dataclass
class Split:
    """Decoded examples of one split (what `backbone.load_item` returned) and their class indices."""

    examples: list[Any]
    y: torch.Tensor  # class indices; -1 marks an unlabeled example
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)


def decode_all(
    backbone: Backbone,
    sources: Sequence[str],
    *,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, str]]:
    """{source: preprocessed example} for the readable sources, {source: reason} for the rest."""

    def one(src: str) -> tuple[str, Any, str | None]:
        try:
            return src, backbone.load_item(src, max_pixels=max_pixels), None
        except BadInput as e:
            return src, None, e.reason
        except OSError as e:
            return src, None, f"cannot read ({e.strerror or e})"

    uniq = list(dict.fromkeys(sources))
    good: dict[str, Any] = {}
    bad: dict[str, str] = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        progress_bar(len(uniq), "decoding", enabled=progress) as advance,
    ):
        for src, ex, reason in pool.map(one, uniq):
            if reason is None:
                good[src] = ex
            else:
                bad[src] = reason
            advance(1)
    return good, bad
