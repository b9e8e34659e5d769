"""The items a training run reads: checked once up front, then decoded as batches need them (streamed).

`check_all` decodes every input once to find the unreadable ones before any training starts (a file that
fails must be a listed skip, not a crash mid-epoch) and keeps nothing. Training then reads through
`ItemDataset`, a `torch.utils.data.Dataset` that decodes an item when a batch asks for it, on a small thread
pool (image decoding releases the GIL), with the next batch decoded while the current one trains. Memory
therefore no longer grows with the data: 10k 224-px images decoded up front were ~6 GB of float32.
A `Split` may also hold a plain list of examples (tests, small in-memory data).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from headstart.backbones.base import Backbone
from headstart.data.images import DEFAULT_MAX_PIXELS
from headstart.errors import BadInput, HeadstartError
from headstart.progress import progress_bar

DECODE_THREADS = 2  # the machines this targets have 2 cores; decoding is a few % of a training step
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _decode_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="headstart-decode")
        return _pool


class ItemDataset(Dataset):
    """The inputs `sources` decoded by `backbone.load_item` on access; nothing is kept after a batch."""

    def __init__(self, backbone: Backbone, sources: Sequence[str], *, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.backbone = backbone
        self.sources = list(sources)
        self.max_pixels = max_pixels
        self._pending: dict[int, Future[Any]] = {}

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> Any:
        src = self.sources[i]
        try:
            return self.backbone.load_item(src, max_pixels=self.max_pixels)
        except (BadInput, OSError) as e:
            reason = e.reason if isinstance(e, BadInput) else f"cannot read ({e.strerror or e})"
            raise HeadstartError(
                f"{src} became unreadable during training ({reason}); it was readable when the run started",
                fix="leave the data unchanged while a run trains, then rerun",
            ) from e

    def prefetch(self, indices: Sequence[int]) -> None:
        """Start decoding `indices` in the background (the next batch, while this one trains)."""
        pool = _decode_pool()
        for i in indices:
            i = int(i)
            if i not in self._pending:
                self._pending[i] = pool.submit(self.__getitem__, i)

    def fetch(self, indices: Sequence[int]) -> list[Any]:
        """The decoded items `indices`, in order, decoded in parallel (or taken from a prefetch); an index
        may repeat (pairs and target batches are drawn with replacement)."""
        self.prefetch(indices)
        done = {i: self._pending.pop(i).result() for i in dict.fromkeys(int(i) for i in indices)}
        return [done[int(i)] for i in indices]


@dataclass
class Split:
    """The examples of one split (an `ItemDataset`, or a list of what `backbone.load_item` returned) and
    their class indices."""

    examples: Sequence[Any]
    y: torch.Tensor  # class indices; -1 marks an unlabeled example
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    def fetch(self, indices: Sequence[int]) -> list[Any]:
        if isinstance(self.examples, ItemDataset):
            return self.examples.fetch(indices)
        return [self.examples[int(i)] for i in indices]

    def prefetch(self, indices: Sequence[int]) -> None:
        if isinstance(self.examples, ItemDataset):
            self.examples.prefetch(indices)


def streamed_split(backbone: Backbone, sources: list[str], y: torch.Tensor, *, max_pixels: int) -> Split:
    return Split(ItemDataset(backbone, sources, max_pixels=max_pixels), y, list(sources))


def decode_all(
    backbone: Backbone,
    sources: Sequence[str],
    *,
    workers: int = DECODE_THREADS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    keep: bool = True,
) -> tuple[dict[str, Any], dict[str, str]]:
    """{source: preprocessed example} for the readable sources (None each with keep=False: a check that
    holds no decoded data), {source: reason} for the rest."""

    def one(src: str) -> tuple[str, Any, str | None]:
        try:
            ex = backbone.load_item(src, max_pixels=max_pixels)
            return src, ex if keep else None, None
        except BadInput as e:
            return src, None, e.reason
        except OSError as e:
            return src, None, f"cannot read ({e.strerror or e})"

    uniq = list(dict.fromkeys(sources))
    good: dict[str, Any] = {}
    bad: dict[str, str] = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        progress_bar(len(uniq), "checking inputs" if not keep else "decoding", enabled=progress) as advance,
    ):
        for src, ex, reason in pool.map(one, uniq):
            if reason is None:
                good[src] = ex
            else:
                bad[src] = reason
            advance(1)
    return good, bad


def check_all(
    backbone: Backbone,
    sources: Sequence[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> tuple[set[str], dict[str, str]]:
    """(readable sources, {unreadable source: reason}): every input decoded once, nothing kept."""
    good, bad = decode_all(backbone, sources, max_pixels=max_pixels, progress=progress, keep=False)
    return set(good), bad
