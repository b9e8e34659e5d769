"""Train/val/test leakage: the same item, or nearly the same, in two splits inflates every held-out score.

Exact copies are found by content (sha256 of the file bytes, or of the text). Near copies: images by a
64-bit DCT perceptual hash (pHash: survives resizing, re-encoding, small edits) within a Hamming distance;
texts by a normalised hash (lowercase, punctuation stripped, whitespace collapsed). Only pairs across
different splits are reported; `dedupe` drops the copy in the later split (train is always kept).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from headstart.data.dataset import Dataset
from headstart.data.items import SPLITS, Item
from headstart.errors import BadInput

# Bits of 64 that may differ for two images to count as near copies. Re-encoding and resizing move a
# pHash by 0-4 bits; unrelated pictures differ by ~32 on average. 6 keeps edits and catches little else.
PHASH_MAX_DISTANCE = 6
_HASH_SIDE = 32  # the image is reduced to 32x32 grey, then its 8x8 lowest DCT frequencies are kept
_LOW = 8
_ORDER = {s: i for i, s in enumerate(SPLITS)}


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis: (D @ x) is the DCT of a length-n signal x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    d[0] /= np.sqrt(2)
    return d


_DCT = _dct_matrix(_HASH_SIDE)


def phash_array(grey: np.ndarray) -> int:
    """64-bit pHash of a 32x32 grey array: signs of the 8x8 low DCT block against its median (DC excluded)."""
    coeffs = (_DCT @ grey.astype(np.float64) @ _DCT.T)[:_LOW, :_LOW].ravel()
    bits = coeffs > np.median(coeffs[1:])
    return int(np.packbits(bits).view(">u8")[0])


def phash_image(path: str) -> int:
    """pHash of an image file (decoded upright, transparency over white); raises BadInput."""
    from PIL import Image

    from headstart.data.images import open_image

    img = open_image(path, draft_to=_HASH_SIDE * 2)
    grey = img.convert("L").resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.BOX)
    return phash_array(np.asarray(grey, dtype=np.float64))


def normalise_text(text: str) -> str:
    """Lowercase, punctuation and symbols removed, whitespace collapsed: what a reformatted copy keeps."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _exact_key(it: Item) -> str | None:
    if it.text is not None:
        return _text_hash(it.text)
    from headstart.backbones.base import content_hash

    try:
        return content_hash(it.path)
    except OSError:
        return None


def _pair(a: Item, b: Item) -> tuple[Item, Item]:
    """Earlier split first: the second one is the copy `dedupe` removes."""
    return (a, b) if _ORDER[a.split or "train"] <= _ORDER[b.split or "train"] else (b, a)


def _row(a: Item, b: Item, **extra: Any) -> dict[str, Any]:
    a, b = _pair(a, b)
    return {"a": str(a.path), "b": str(b.path), "splits": [a.split, b.split], **extra}


def _cross_split_groups(items: list[Item], keys: list[Any]) -> list[tuple[Item, Item]]:
    """Pairs (first item of the group in the earliest split, each item in another split) per equal key."""
    groups: dict[Any, list[Item]] = {}
    for it, k in zip(items, keys, strict=True):
        if k is not None:
            groups.setdefault(k, []).append(it)
    pairs = []
    for members in groups.values():
        if len({m.split for m in members}) < 2:
            continue
        members = sorted(members, key=lambda m: _ORDER[m.split or "train"])
        first = members[0]
        pairs.extend((first, m) for m in members[1:] if m.split != first.split)
    return pairs


def _near_image_pairs(
    items: list[Item], hashes: np.ndarray, max_distance: int
) -> list[tuple[Item, Item, int]]:
    """Cross-split pairs within `max_distance` bits: XOR + popcount, vectorised one block at a time."""
    split_idx = np.array([_ORDER[it.split or "train"] for it in items])
    out = []
    block = 1024
    for start in range(0, len(items), block):
        rows = np.arange(start, min(start + block, len(items)))
        dist = np.bitwise_count(hashes[rows, None] ^ hashes[None, :])
        # Each unordered pair once: only partners later in the list, and only in a different split.
        mask = (dist <= max_distance) & (np.arange(len(items))[None, :] > rows[:, None])
        mask &= split_idx[None, :] != split_idx[rows, None]
        for r, c in zip(*np.nonzero(mask), strict=True):
            out.append((items[rows[r]], items[c], int(dist[r, c])))
    return out


def find_leaks(ds: Dataset, *, max_distance: int = PHASH_MAX_DISTANCE, workers: int = 2) -> dict[str, Any]:
    """Exact and near copies across splits: {"exact": [...], "near": [...], "n_exact", "n_near"}.

    Each entry is {"a", "b", "splits": [split of a, split of b]} with `a` in the earlier split; near
    entries add "distance" (differing pHash bits, or 0 for texts equal after normalisation). Items that
    cannot be read are left out of the check.
    """
    items = [it for it in ds.items if it.split is not None]
    exact_keys = [_exact_key(it) for it in items]
    exact_pairs = _cross_split_groups(items, exact_keys)
    exact_ids = {frozenset((str(a.path), str(b.path))) for a, b in exact_pairs}
    near_rows: list[dict[str, Any]] = []
    texts = [it for it in items if it.text is not None]
    if texts:
        keys = [_text_hash(normalise_text(it.text or "")) for it in texts]
        for a, b in _cross_split_groups(texts, keys):
            if frozenset((str(a.path), str(b.path))) not in exact_ids:
                near_rows.append(_row(a, b, distance=0))
    images = [it for it in items if it.text is None and ds.modality == "image"]
    if images:

        def safe_hash(it: Item) -> int | None:
            try:
                return phash_image(str(it.path))
            except BadInput:
                return None

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            ph = list(pool.map(safe_hash, images))
        ok = [i for i, h in enumerate(ph) if h is not None]
        hashed = [images[i] for i in ok]
        arr = np.array([ph[i] for i in ok], dtype=np.uint64)
        for a, b, d in _near_image_pairs(hashed, arr, max_distance):
            if frozenset((str(a.path), str(b.path))) not in exact_ids:
                near_rows.append(_row(a, b, distance=d))
    near_rows.sort(key=lambda r: (r["distance"], r["a"], r["b"]))
    exact_rows = sorted((_row(a, b) for a, b in exact_pairs), key=lambda r: (r["a"], r["b"]))
    return {"exact": exact_rows, "near": near_rows, "n_exact": len(exact_rows), "n_near": len(near_rows)}


def dedupe(ds: Dataset, report: dict[str, Any]) -> Dataset:
    """`ds` without the later-split copy of every reported pair (so train keeps its items)."""
    drop = {r["b"] for r in [*report.get("exact", []), *report.get("near", [])]}
    keep = [it for it in ds.items if str(it.path) not in drop]
    return replace(ds, items=keep)
