"""Augmented views, embedded once: K augmented copies of each training image through the frozen backbone.

The probe sees each training image once, as it is. A view is the same image through the fine-tunes' own
augmentations (headstart.train.augment: random resized crop, flip, colour jitter), embedded by the frozen
forward; the head then trains on the originals plus every view (the `views` recipe, `views:K`), while
val, test and predict read originals only, so the run is a probe run and predicts as one.

Each view is cached once, like any embedding, in its own FeatureCache: its key is the backbone's key plus
the augmentation's identity (its config, the seed, this scheme), so views never mix with plain features,
and an entry is `<content hash>#<view index>`. View i of an image is drawn from a generator seeded by
(seed, content hash, i) alone: the same whatever the batch, the order or K, so a rerun is all cache hits
and `views:8` reuses the 4 views `views:4` embedded. Images only: a cheap view of a text or a clip that
keeps its label is not this mechanism (refused, with the reason).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.errors import BadInput, HeadstartError

if TYPE_CHECKING:
    from headstart.backbones.base import Backbone
    from headstart.feature_cache import FeatureCache
    from headstart.train.augment import AugmentConfig

#: Bumped when how a view is drawn changes, so views drawn the old way are never read as new ones.
SCHEME = "augment_images/1"


def check_views(views: int, modality: str, what: object, precision: str = "fp32") -> None:
    """Refuse, before any embedding, views the data (`what` names it) or the frozen forward cannot take."""
    if views and modality != "image":
        raise HeadstartError(
            f"augmented views are image augmentations (crop, flip, colour); {what} is {modality} data",
            fix="use the probe or multi-depth for text and audio, or drop the views strategy",
        )
    if views and precision != "fp32":
        raise HeadstartError(
            f"augmented views run through the float frozen forward; --precision {precision} was asked",
            fix="use --precision fp32 with the views strategy",
        )


def views_key(backbone: Backbone, seed: int, augment: AugmentConfig | None = None) -> str:
    """The views' cache identity: the backbone's features, drawn by this augmentation with this seed."""
    from headstart.train.augment import AugmentConfig

    ident = {
        "features": backbone.key,
        "augment": asdict(augment or AugmentConfig()),
        "seed": seed,
        "scheme": SCHEME,
    }
    return "views-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _generator(seed: int, content: str, view: int) -> Any:
    import torch

    digest = hashlib.sha256(f"{seed}|{content}|{view}".encode()).hexdigest()
    return torch.Generator().manual_seed(int(digest[:15], 16))


def draw_view(backbone: Backbone, x: Any, content: str, view: int, seed: int) -> Any:
    """View `view` of the decoded image `x` (C, H, W) whose content hash is `content`: the same tensor
    whenever and wherever it is drawn."""
    from headstart.train.augment import augment_images

    return augment_images(x[None], backbone.image_preprocess, _generator(seed, content, view))[0]


def _cache(backbone: Backbone, seed: int, cache: bool | FeatureCache) -> FeatureCache | None:
    from headstart.feature_cache import FeatureCache

    if cache is False:
        return None
    key = views_key(backbone, seed)
    root = cache.path.parent.parent if isinstance(cache, FeatureCache) else None
    return FeatureCache(key, root=root)


def embed_views(
    backbone: Backbone,
    sources: Sequence[str],
    hashes: Sequence[str],
    k: int,
    *,
    seed: int = 0,
    cache: bool | FeatureCache = True,
    backend: str = "auto",
    batch_size: int = 32,
    device: str = "auto",
    max_pixels: int | None = None,
    progress: bool = True,
    **_: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """((n, k, D) views of `sources` (readable images, `hashes` their content hashes), stats): cache
    first; each missing image is decoded once and its missing views forwarded in batches."""
    import torch

    from headstart.data.images import DEFAULT_MAX_PIXELS
    from headstart.features import forward_device, make_forward
    from headstart.progress import progress_bar
    from headstart.train.engine import placed

    check_views(k, backbone.modality, backbone.name)
    t0 = time.perf_counter()
    dev = forward_device(backend, device)
    store = _cache(backbone, seed, cache)
    entries = [[f"{h}#{i}" for i in range(k)] for h in hashes]
    found = store.get_many([e for row in entries for e in row]) if store is not None else {}
    todo = [(s, h) for s, h, row in zip(sources, hashes, entries, strict=True) if set(row) - found.keys()]
    computed: dict[str, np.ndarray] = {}
    backend_used = "none"
    if todo:
        keys: list[str] = []
        xs: list[Any] = []

        def flush() -> None:
            out = forward(torch.stack(xs))
            new = list(zip(keys, out, strict=True))
            computed.update(new)
            if store is not None:
                store.put_many(new)
            keys.clear()
            xs.clear()

        with (
            placed(backbone, dev),
            progress_bar(len(todo), f"embedding {k} views with {backbone.name}", enabled=progress) as advance,
        ):
            forward, backend_used = make_forward(backbone, backend, dev)
            for source, h in todo:
                try:
                    x = torch.from_numpy(
                        backbone.load_item(source, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
                    )
                except BadInput as e:  # it was read a moment ago, for its plain embedding
                    raise HeadstartError(f"{source} changed while its views were made: {e.reason}") from e
                for i in range(k):
                    e = f"{h}#{i}"
                    if e in found or e in computed or e in keys:
                        continue
                    keys.append(e)
                    xs.append(draw_view(backbone, x, h, i, seed))
                    if len(keys) >= batch_size:
                        flush()
                advance(1)
            if keys:
                flush()
    dim = backbone.embed_dim
    X = np.zeros((len(entries), k, dim), np.float32)
    for j, row in enumerate(entries):
        for i, e in enumerate(row):
            X[j, i] = found[e] if e in found else computed[e]
    return X, {
        "k": k,
        "images": len(entries),
        "cache_hits": len(entries) * k - len(computed),
        "forwards": len(computed),
        "embed_s": time.perf_counter() - t0,
        "backend": backend_used,
    }


def with_views(X: np.ndarray, y: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training rows: the originals `X` (n, D), then their views `V` (n, K, D) under the item's label."""
    k = V.shape[1]
    return np.concatenate([X, V.reshape(-1, X.shape[1])]), np.concatenate([y, np.repeat(y, k)])
