"""Nearest-neighbour search over embeddings, and the work of `headstart embed` and `headstart search`.

Search is by cosine similarity: `ExactIndex` (numpy, one matrix product) or `FaissIndex` (FAISS's HNSW graph
over L2-normalised vectors with the inner-product metric), both `search(Q, k) -> (scores, ids)`.
`build_index(X, kind="auto")` takes HNSW when faiss is installed and there are at least `HNSW_MIN_ITEMS`
items; the graph is built once per content and kept in the cache, since building it costs far more than
an exact search of a few queries. The files are `index_file`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from headstart.errors import HeadstartError
from headstart.explore.index_file import (
    IndexFile,
    check_out_path,
    fix_rewrite,
    load_index_file,
    write_index_file,
)
from headstart.fileio import atomic_write, cache_dir, sha256_bytes

# Below this many items exact search costs a few ms per query (3 ms at 25,661 x 384, one thread; see
# docs/search.md), less than the one-off HNSW build (17 s there) repays over any likely number of queries.
HNSW_MIN_ITEMS = 50_000
HNSW_M = 32  # graph degree (FAISS's usual choice for d of a few hundred)
HNSW_EF_CONSTRUCTION = 80
# benchmarks/search.py: recall@10 0.953 at efSearch 32 on 10k items, 0.970 at 48 and 0.982 at 64 on 25.7k;
# recall falls as the index grows, and HNSW answers from 50k items up: 64 keeps a margin over 0.95.
HNSW_EF_SEARCH = 64


class Index(Protocol):
    kind: str

    def search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (len(Q), k'), k' = min(k, n): cosine similarity, best first."""
        ...


def normalise(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32 and contiguous, as FAISS wants it."""
    X = np.asarray(X, dtype=np.float32)
    return np.ascontiguousarray(X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12))


class ExactIndex:
    """Brute force: every query against every item, one matrix product per block of queries."""

    kind = "exact"

    def __init__(self, X: np.ndarray) -> None:
        self.X = normalise(X)

    def search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n, k = len(self.X), min(k, len(self.X))
        Q = normalise(Q)
        scores = np.empty((len(Q), k), np.float32)
        ids = np.empty((len(Q), k), np.int64)
        for lo in range(0, len(Q), 1024):  # bounded memory: 1,024 x n similarities at a time
            S = Q[lo : lo + 1024] @ self.X.T
            top = np.sort(
                np.argpartition(-S, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(S), 1))
            )
            part = np.take_along_axis(S, top, axis=1)
            order = np.argsort(-part, axis=1, kind="stable")  # ties: the lower id first
            ids[lo : lo + 1024] = np.take_along_axis(top, order, axis=1)
            scores[lo : lo + 1024] = np.take_along_axis(part, order, axis=1)
        return scores, ids


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


class FaissIndex:
    """FAISS HNSW over unit vectors with the inner-product metric (= cosine), approximate. `cache`: keep
    the built graph in the cache, keyed by the vectors' content and the graph's parameters."""

    kind = "faiss-hnsw"

    def __init__(
        self, X: np.ndarray, *, ef_search: int = HNSW_EF_SEARCH, m: int = HNSW_M, cache: bool = True
    ) -> None:
        faiss = _faiss()
        if faiss is None:
            raise HeadstartError(
                "HNSW search needs faiss, which is not installed",
                fix="pip install 'headstart[search]', or use --exact",
            )
        Xn = normalise(X)
        self.ef_search = ef_search
        key = f"{sha256_bytes(Xn.tobytes())[:24]}-d{Xn.shape[1]}-m{m}-efc{HNSW_EF_CONSTRUCTION}.faiss"
        stored = cache_dir() / "search" / key
        self.cached = cache and stored.is_file()
        if self.cached:
            self.index = faiss.read_index(str(stored))
        else:
            self.index = faiss.IndexHNSWFlat(Xn.shape[1], m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            self.index.add(Xn)
            if cache:
                atomic_write(stored, lambda tmp: faiss.write_index(self.index, str(tmp)))

    def search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        self.index.hnsw.efSearch = max(self.ef_search, k)  # HNSW cannot return more than efSearch
        scores, ids = self.index.search(normalise(Q), k)
        return scores, ids.astype(np.int64)  # -1 where the graph found fewer than k


def build_index(X: np.ndarray, kind: str = "auto", **options: Any) -> Index:
    """An index over `X`: "exact", "hnsw" (needs faiss), or "auto" (HNSW from HNSW_MIN_ITEMS items up when
    faiss is installed, else exact). `options` go to FaissIndex."""
    if kind not in ("auto", "exact", "hnsw"):
        raise HeadstartError(f"index kind {kind!r} is not one of auto, exact, hnsw", fix="pick one of those")
    if kind == "hnsw" or (kind == "auto" and len(X) >= HNSW_MIN_ITEMS and _faiss() is not None):
        return FaissIndex(X, **options)
    return ExactIndex(X)


# -- the verbs' work ---------------------------------------------------------------------------------------


def export_embeddings(
    data: str | Path,
    out: str | Path,
    *,
    backbone: str,
    overwrite: bool = False,
    seed: int = 0,
    backend: str = "auto",
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """`headstart embed`: every item of `data` embedded with `backbone` (cached) and written to `out`."""
    from headstart.explore.embedded import embed_dataset

    out = check_out_path(out, overwrite=overwrite)  # before any embedding
    emb = embed_dataset(data, backbone, seed=seed, backend=backend, device=device, progress=progress)
    meta = {"backbone": backbone.strip(), "backbone_name": emb.backbone, "backbone_key": emb.backbone_key}
    meta |= {"modality": emb.modality, "data": str(data)}
    rows = list(zip(emb.sources, emb.labels, emb.splits, strict=True))
    files = write_index_file(out, emb.X, rows, meta)
    written = {"out": str(out), "files": [str(p) for p in files], "n": len(rows), "dim": emb.X.shape[1]}
    return {**meta, **written, "skipped": emb.skipped, "embed": emb.stats}


def query_sources(queries: list[str], modality: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """([(query, what the backbone reads)], {query: why not}). Images and audio: the path. Text: a query
    naming an existing file is that file's text, so a file name is never embedded as if it were the text;
    one word ending in .txt that names no file is refused as a missing file, not searched as a text."""
    if modality != "text":
        return [(q, q) for q in queries], {}
    from headstart.data.text import TABLE_SUFFIXES, TEXT_FILE_SUFFIX, read_one_text
    from headstart.errors import BadInput

    todo, bad = [], {}
    for q in queries:
        path = Path(q).expanduser()
        try:
            exists = path.exists()
        except (OSError, ValueError):  # a long text is no file name (ENAMETOOLONG), nor one with a NUL
            exists = False
        try:
            if exists:
                todo.append((q, read_one_text(path, table_fix="give one text, or one .txt file, per query")))
            elif len(q.split()) == 1 and path.suffix.lower() in (TEXT_FILE_SUFFIX, *TABLE_SUFFIXES):
                bad[q] = "file not found (a query naming a .txt file is read from that file)"
            else:
                todo.append((q, q))
        except BadInput as e:
            bad[q] = e.reason
    return todo, bad


def _embed_queries(
    f: IndexFile, todo: list[tuple[str, str]], errors: dict[str, str], **embed_kw: Any
) -> tuple[list[str], np.ndarray]:
    """(the queries embedded, their embeddings) by the index's own backbone; the others into `errors`."""
    from headstart.backbones import create_backbone
    from headstart.features import embed

    bb = create_backbone(str(f.meta["backbone"]))
    if f.meta.get("backbone_key") and bb.key != f.meta["backbone_key"]:
        raise HeadstartError(
            f"{f.path} was embedded by other weights or preprocessing than {f.meta['backbone']} has now: "
            "its vectors and the queries' would not be comparable",
            fix=fix_rewrite(f.path),
        )
    feats = embed(bb, [s for _, s in todo], **embed_kw) if todo else None
    row = {s: i for i, s in enumerate(feats.paths)} if feats else {}
    for q, s in todo:
        if s not in row:
            errors[q] = feats.bad.get(s, "could not be embedded") if feats else "could not be embedded"
    done = [(q, row[s]) for q, s in todo if s in row]
    if not done:
        listed = "; ".join(f"{q[:80]}: {why}" for q, why in errors.items())
        kind = "texts or .txt files" if f.modality == "text" else f"{f.modality} files"
        raise HeadstartError(f"no query could be read ({listed})", fix=f"give {kind}, as {f.path} holds")
    return [q for q, _ in done], feats.X[[i for _, i in done]]


def search(
    index: str | Path,
    queries: list[str],
    *,
    k: int = 10,
    exact: bool = False,
    backend: str = "auto",
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """`headstart search`: the `k` items of the index file `index` nearest to each query (cosine)."""
    import time

    if k < 1:
        raise HeadstartError(f"--k {k}: no item to return", fix="give --k 1 or more")
    f = load_index_file(index)
    todo, errors = query_sources([str(q) for q in queries], f.modality)
    done, Q = _embed_queries(f, todo, errors, backend=backend, device=device, progress=progress)
    t0 = time.perf_counter()
    idx = build_index(f.X, "exact" if exact else "auto")
    t1 = time.perf_counter()
    scores, ids = idx.search(Q, k)
    hits = [
        [
            {"rank": r + 1, "score": float(s), "id": int(i), "source": f.sources[i], "label": f.labels[i]}
            | {"split": f.splits[i]}
            for r, (s, i) in enumerate((s, i) for s, i in zip(srow, irow, strict=True) if i >= 0)
        ]
        for srow, irow in zip(scores, ids, strict=True)
    ]
    return {
        "index": str(f.path),
        "backbone": f.meta["backbone"],
        "modality": f.modality,
        "n_items": len(f.X),
        "backend": idx.kind,
        "ef_search": getattr(idx, "ef_search", None),
        "k": k,
        "build_s": t1 - t0,
        "search_s": time.perf_counter() - t1,
        "results": [{"query": q, "hits": h} for q, h in zip(done, hits, strict=True)],
        "errors": errors,
    }
