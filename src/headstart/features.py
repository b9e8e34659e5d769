"""Embeddings, computed once: a streaming extractor over a content-addressed on-disk cache.

The cache key is (backbone key = weights sha256 + preprocessing, sha256 of the file's bytes), so the
same picture costs one forward ever, across runs, datasets and copies of the file. Decoding runs on a
thread pool ahead of the forward, so it overlaps compute instead of adding to it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.backbones.base import Backbone
from headstart.data.images import DEFAULT_MAX_PIXELS
from headstart.errors import BadInput, HeadstartError
from headstart.fileio import cache_dir
from headstart.modality import Modality
from headstart.progress import progress_bar

log = logging.getLogger(__name__)


class FeatureCache:
    """One SQLite file per backbone key: content hash -> float32 vector. Transactions make writes atomic."""

    def __init__(self, backbone_key: str, root: Path | None = None) -> None:
        folder = (root or cache_dir()) / "features"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{backbone_key}.sqlite"
        self._local = threading.local()
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS feats (hash TEXT PRIMARY KEY, dim INTEGER, vec BLOB)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def get_many(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        uniq = list(dict.fromkeys(hashes))
        conn = self._conn()
        for i in range(0, len(uniq), 500):
            chunk = uniq[i : i + 500]
            rows = conn.execute(
                f"SELECT hash, vec FROM feats WHERE hash IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            out.update((h, np.frombuffer(v, dtype=np.float32)) for h, v in rows)
        return out

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        rows = [(h, int(v.shape[-1]), np.ascontiguousarray(v, dtype=np.float32).tobytes()) for h, v in items]
        with self._conn() as c:  # one transaction: all rows or none
            c.executemany("INSERT OR REPLACE INTO feats VALUES (?, ?, ?)", rows)

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM feats").fetchone()[0])


@dataclass
class Features:
    """Embeddings of the good items, in input order, plus what was skipped and what it cost."""

    X: np.ndarray
    paths: list[str]
    hashes: list[str]
    bad: dict[str, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


def _torch_forward(backbone: Backbone) -> Callable[[Any], np.ndarray]:
    import torch

    backbone.eval()  # BatchNorm uses its running statistics, dropout is off
    if backbone.modality == Modality.IMAGE:
        backbone.to(memory_format=torch.channels_last)

    def run(batch: Any) -> np.ndarray:
        with torch.inference_mode():
            if isinstance(batch, torch.Tensor) and batch.dim() == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            return backbone(batch).float().numpy()

    return run


def make_forward(backbone: Backbone, backend: str = "auto") -> tuple[Callable[[Any], np.ndarray], str]:
    """The fastest available frozen forward: ONNX Runtime when it imports and matches PyTorch."""
    if backend not in ("auto", "onnx", "torch"):
        raise HeadstartError(f"unknown backend {backend!r}", fix="use auto, onnx or torch")
    if backend == "onnx" and not backbone.supports_onnx:
        raise HeadstartError(f"{backbone.name} has no ONNX Runtime path", fix="use --backend torch or auto")
    if backend in ("auto", "onnx") and backbone.supports_onnx:
        try:
            from headstart.onnx_forward import OnnxForward

            return OnnxForward(backbone), "onnx"
        except Exception as e:
            if backend == "onnx":
                raise HeadstartError(f"ONNX Runtime path unavailable: {e}", fix="use --backend torch") from e
            log.warning("ONNX Runtime path unavailable (%s); using PyTorch", e)
    return _torch_forward(backbone), "torch"


def by_size(backbone: Backbone, items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(hash, source) pairs ordered by `backbone.sort_key` (length bucketing: batches of similar-length
    texts pad little); input order when the backbone has no sort key. Results are keyed by hash, so the
    caller's order is restored regardless."""
    keys: list[float] = []
    for _, source in items:
        try:
            k = backbone.sort_key(source)
        except BadInput:
            k = 0.0  # reported when the batch loads it
        if k is None:
            return items
        keys.append(k)
    order = sorted(range(len(items)), key=keys.__getitem__)  # stable: ties keep input order
    return [items[i] for i in order]


def _decode_batch(
    sources: Sequence[str], backbone: Backbone, max_pixels: int
) -> tuple[list[int], Any, dict[str, str]]:
    ok, examples, bad = [], [], {}
    for i, p in enumerate(sources):
        try:
            examples.append(backbone.load_item(p, max_pixels=max_pixels))
            ok.append(i)
        except BadInput as e:
            bad[p] = e.reason
    return ok, (backbone.collate(examples) if examples else None), bad


def embed(
    backbone: Backbone,
    paths: Sequence[str | Path],
    *,
    cache: bool | FeatureCache = True,
    backend: str = "auto",
    batch_size: int = 32,
    workers: int = 2,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> Features:
    """Embed files with `backbone`, reading the cache first and doing backbone work only for misses.

    Unreadable files are skipped and listed in `Features.bad` with the reason, or raise with `strict`.
    """
    t0 = time.perf_counter()
    paths = [str(p) for p in paths]
    hashes: list[str | None] = []
    bad: dict[str, str] = {}
    for p in paths:
        try:
            hashes.append(backbone.item_hash(p))
        except OSError as e:
            hashes.append(None)
            bad[p] = f"cannot read ({e.strerror or e})"
    store = cache if isinstance(cache, FeatureCache) else FeatureCache(backbone.key) if cache else None
    found = store.get_many([h for h in hashes if h]) if store is not None else {}
    t_hash = time.perf_counter()

    # Files to compute: one per distinct content.
    todo: dict[str, str] = {}
    for p, h in zip(paths, hashes, strict=True):
        if h and h not in found and h not in todo:
            todo[h] = p
    computed: dict[str, np.ndarray] = {}
    backend_used = "none"
    if todo:
        forward, backend_used = make_forward(backbone, backend)
        items = by_size(backbone, list(todo.items()))
        batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        with (
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
            progress_bar(len(items), f"embedding with {backbone.name}", enabled=progress) as advance,
        ):
            pending: deque[Future] = deque()
            submit = iter(batches)

            def fill() -> None:
                # Keep `workers + 1` batches decoding ahead of the forward.
                while len(pending) < workers + 1:
                    b = next(submit, None)
                    if b is None:
                        return
                    pending.append(pool.submit(_decode_batch, [p for _, p in b], backbone, max_pixels))
                    pending[-1].batch = b  # type: ignore[attr-defined]

            fill()
            while pending:
                fut = pending.popleft()
                fill()
                ok, x, batch_bad = fut.result()
                batch = fut.batch  # type: ignore[attr-defined]
                bad.update(batch_bad)
                if x is not None:
                    out = forward(x)
                    new = [(batch[i][0], out[j]) for j, i in enumerate(ok)]
                    computed.update(new)
                    if store is not None:
                        store.put_many(new)
                advance(len(batch))
    t_embed = time.perf_counter()

    if bad and strict:
        listed = "\n".join(f"  {p}: {r}" for p, r in sorted(bad.items()))
        raise HeadstartError(
            f"{len(bad)} unreadable file(s):\n{listed}", fix="fix or remove them, or drop --strict"
        )
    good = [
        (p, h)
        for p, h in zip(paths, hashes, strict=True)
        if h and p not in bad and (h in found or h in computed)
    ]
    X = (
        np.stack([found.get(h, computed.get(h)) for _, h in good]).astype(np.float32)
        if good
        else np.zeros((0, backbone.embed_dim), np.float32)
    )
    return Features(
        X=X,
        paths=[p for p, _ in good],
        hashes=[h for _, h in good],
        bad=bad,
        stats={
            "n_files": len(paths),
            "cache_hits": sum(1 for h in hashes if h in found),
            "forwards": len(computed),
            "hash_s": t_hash - t0,
            "embed_s": t_embed - t_hash,
            "total_s": time.perf_counter() - t0,
            "backend": backend_used,  # type: ignore[dict-item]
        },
    )
