"""`embed_dataset`: a dataset's items with their cached embeddings, in one place for every verb that works
on embeddings rather than on a trained head (embed, search, cluster, suggest, overlap)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError


@dataclass
class EmbeddedData:
    """Rows of `X` line up with `sources`, `labels`, `splits` (items the backbone could not read are
    dropped and listed in `skipped`)."""

    X: np.ndarray  # (n, d) float32
    sources: list[str]  # file paths, or the texts themselves
    labels: list[str]
    splits: list[str]
    classes: list[str]
    modality: str
    backbone: str
    skipped: dict[str, str]
    stats: dict[str, Any]
    backbone_key: str = ""  # what the backbone computes (weights, preprocessing): Backbone.key

    @property
    def y(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[lab] for lab in self.labels], dtype=np.int64)

    def rows(self, split: str) -> np.ndarray:
        """Indices of the rows in `split`."""
        return np.array([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)


def embed_dataset(
    data: str | Path,
    backbone: str,
    *,
    seed: int = 0,
    backend: str = "auto",
    device: str = "auto",
    progress: bool = True,
    dataset: Any = None,
) -> EmbeddedData:
    """Load labeled `data` (any layout `load_dataset` reads; `dataset`: one already loaded) and embed every
    item with `backbone` through the feature cache. A backbone for another modality is refused before any
    embedding work."""
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.features import embed, forward_device
    from headstart.verdicts.curve import check_backbone_modality

    forward_device(backend, device)
    ds = dataset if dataset is not None else load_dataset(data, seed=seed)
    bb = create_backbone(backbone)
    check_backbone_modality(bb, ds.modality, data)
    feats = embed(bb, [it.source for it in ds.items], backend=backend, progress=progress, device=device)
    ds = ds.drop(feats.bad) if feats.bad else ds
    row = {p: i for i, p in enumerate(feats.paths)}
    kept = [it for it in ds.items if it.source in row]
    if not kept:
        raise HeadstartError(f"no item of {data} could be embedded", fix="check the files (see skipped)")
    return EmbeddedData(
        X=feats.X[[row[it.source] for it in kept]],
        sources=[it.source for it in kept],
        labels=[it.label for it in kept],
        splits=[it.split or "train" for it in kept],
        classes=list(ds.classes),
        modality=ds.modality,
        backbone=bb.name,
        skipped=dict(ds.skipped),
        stats=feats.stats,
        backbone_key=bb.key,
    )
