"""`headstart cluster`: group a dataset's embeddings; find items whose label their neighbours disagree with.

How many groups (k), when not given: k-means (scikit-learn) on the L2-normalised embeddings for each k in a
range around the number of labels, keeping the k of the best mean silhouette. Normalised, the euclidean
distance k-means and the silhouette use orders pairs as cosine distance does, the measure embeddings are
compared by. The silhouette needs no parameter of its own (HDBSCAN needs a minimum cluster size, and calls
part of the data noise: every item should get a group here), and the range keeps to the scale a labeller
thinks in: from half the number of labels (classes that share a look) to twice it (classes in several
looks). Kept fast: k-means runs on at most SELECT_SAMPLE items while k is chosen, and the silhouette on at
most SILHOUETTE_SAMPLE; the chosen k is then fitted on every item.

Suspected mislabels: each item's K_NEIGHBOURS nearest other items (exact cosine); its score is the share of
them that carry another label. Items scoring MISLABEL_SHARE or more are listed, with the label most of the
neighbours carry: with 10 neighbours, at most 3 agree with the item's label. Most certain first: the highest
score, then the neighbours most agreed on another label.

The map: PCA of the normalised embeddings to 2-D (scikit-learn; UMAP is not installed).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError

K_NEIGHBOURS = 10
MISLABEL_SHARE = 0.7
SILHOUETTE_SAMPLE = 2000
SELECT_SAMPLE = 5000
MAX_CANDIDATES = 12  # values of k tried at most
CRITERION = (
    "k-means on L2-normalised embeddings; k with the best silhouette (cosine) over k from half to twice the "
    "number of labels"
)
MAP_METHOD = "PCA of the L2-normalised embeddings to 2-D (UMAP is not installed)"


@dataclass
class Clusters:
    """The grouping of n items: per-item arrays line up with the items; `clusters` and `mislabels` are
    JSON-shaped rows. Clusters are numbered by size, 0 the largest."""

    k: int
    criterion: str
    silhouettes: dict[int, float]
    assignments: np.ndarray  # (n,) cluster per item
    ari: float
    clusters: list[dict[str, Any]]
    mislabel_scores: np.ndarray  # (n,) share of neighbours with another label
    neighbour_labels: list[str]  # the label most neighbours carry, per item
    mislabels: list[dict[str, Any]]
    coords: np.ndarray  # (n, 2)


def check_k(k: int | str, n: int | None, data: Any) -> None:
    """Refuse a k the data cannot have, before any embedding work (`n` None: before reading the data, the
    checks that need no count)."""
    if k == "auto":
        if n is not None and n < 3:
            raise HeadstartError(
                f"{data} has {n} item(s): choosing k needs at least 3", fix="add items, or give --k 2"
            )
        return
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise HeadstartError(
            f"--k {k!r}: give a whole number of clusters of at least 2", fix="give --k 2 or more, or --k auto"
        )
    if n is not None and k > n:
        raise HeadstartError(
            f"--k {k} for {data}, which has {n} items: there cannot be more clusters than items",
            fix=f"give --k between 2 and {n}, or --k auto",
        )


def normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


def candidate_ks(n_labels: int, n: int) -> list[int]:
    """k from half to twice the number of labels (at least 2, at most n - 1), MAX_CANDIDATES of them at
    most, the number of labels always among them."""
    lo = max(2, math.ceil(n_labels / 2))
    hi = max(lo, min(n - 1, 2 * n_labels))
    ks = list(range(lo, hi + 1))
    if len(ks) > MAX_CANDIDATES:
        picks = np.unique(np.round(np.geomspace(lo, hi, MAX_CANDIDATES)).astype(int))
        ks = sorted({*picks.tolist(), min(max(n_labels, lo), hi)})
    return ks


def _kmeans(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    import warnings

    from sklearn.cluster import KMeans

    with warnings.catch_warnings():  # fewer distinct points than k: the empty groups are dropped after
        warnings.simplefilter("ignore")
        return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(X)


def choose_k(Xn: np.ndarray, n_labels: int, seed: int = 0) -> tuple[int, dict[int, float]]:
    """The k of the best silhouette (see the module's docstring), and each candidate's score."""
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    n = len(Xn)
    sample = Xn if n <= SELECT_SAMPLE else Xn[np.sort(rng.choice(n, SELECT_SAMPLE, replace=False))]
    scores: dict[int, float] = {}
    for k in candidate_ks(n_labels, len(sample)):
        assign = _kmeans(sample, k, seed)
        if not 2 <= len(np.unique(assign)) <= len(sample) - 1:
            continue  # too few distinct points for k groups: no silhouette
        size = SILHOUETTE_SAMPLE if len(sample) > SILHOUETTE_SAMPLE else None
        scores[k] = float(silhouette_score(sample, assign, sample_size=size, random_state=seed))
    if not scores:
        raise HeadstartError(
            "the embeddings have fewer than 3 distinct points: no grouping to choose",
            fix="check the data (are the items copies of each other?) or give --k",
        )
    best = max(scores, key=lambda k: (scores[k], -k))  # a tie goes to the fewer groups
    return best, scores


def by_size(assign: np.ndarray) -> np.ndarray:
    """Cluster ids renumbered 0.. by falling size (ties by old id); empty clusters disappear."""
    ids, counts = np.unique(assign, return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    new = {int(old): i for i, old in enumerate(order)}
    return np.array([new[int(a)] for a in assign], dtype=np.int64)


def cluster_rows(assign: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """Per cluster: size, the label most of its items carry and that label's share."""
    rows = []
    for c in range(int(assign.max()) + 1 if len(assign) else 0):
        counts = Counter(lab for lab, a in zip(labels, assign, strict=True) if a == c)
        size = sum(counts.values())
        top, n_top = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        rows.append({"cluster": c, "size": size, "majority_label": top, "majority_share": n_top / size})
    return rows


def neighbours(Xn: np.ndarray, k: int = K_NEIGHBOURS, block: int = 1024) -> np.ndarray:
    """(n, k) indices of each row's k nearest other rows by cosine similarity (exact; nearest first)."""
    n = len(Xn)
    k = min(k, n - 1)
    out = np.empty((n, max(k, 0)), dtype=np.int64)
    if k <= 0:
        return out
    for start in range(0, n, block):
        sims = Xn[start : start + block] @ Xn.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # not its own neighbour
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[start : start + block] = np.take_along_axis(part, order, axis=1)
    return out


def disagreement(nbrs: np.ndarray, labels: list[str]) -> tuple[np.ndarray, list[str], list[float]]:
    """Per item: share of its neighbours with another label, the label most of them carry (a tie: the one
    nearest first), and that label's share."""
    scores = np.zeros(len(labels))
    top: list[str] = []
    shares: list[float] = []
    for i, row in enumerate(nbrs):
        theirs = [labels[j] for j in row]
        if not theirs:
            top.append(labels[i])
            shares.append(1.0)
            continue
        scores[i] = sum(lab != labels[i] for lab in theirs) / len(theirs)
        counts = Counter(theirs)
        best = max(counts.values())
        label = next(lab for lab in theirs if counts[lab] == best)
        top.append(label)
        shares.append(best / len(theirs))
    return scores, top, shares


def cluster_embeddings(
    X: np.ndarray,
    labels: list[str],
    *,
    k: int | str = "auto",
    seed: int = 0,
    sources: list[str] | None = None,
) -> Clusters:
    """Group the rows of `X` (k-means, k given or chosen by `choose_k`), score each item's label against its
    neighbours, and place the items on a 2-D map. `sources` name the items in the mislabel list."""
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    n = len(X)
    check_k(k, n, "the data")
    Xn = normalise(X)
    if k == "auto":
        k, silhouettes = choose_k(Xn, len(set(labels)), seed)
        criterion = "silhouette"
    else:
        silhouettes, criterion = {}, "given"
    assign = by_size(_kmeans(Xn, int(k), seed))
    nbrs = neighbours(Xn)
    scores, top, shares = disagreement(nbrs, labels)
    names = sources or [str(i) for i in range(n)]
    suspects = [
        {
            "index": i,
            "source": names[i],
            "label": labels[i],
            "score": float(scores[i]),
            "neighbours_label": top[i],
            "neighbours_label_share": shares[i],
            "cluster": int(assign[i]),
        }
        for i in np.flatnonzero(scores >= MISLABEL_SHARE - 1e-9).tolist()
    ]
    # Most certain first: more neighbours disagreeing, then more of them agreeing on one other label.
    suspects.sort(key=lambda r: (-r["score"], -r["neighbours_label_share"], r["index"]))
    coords = PCA(n_components=2, random_state=seed).fit_transform(Xn) if n >= 2 else np.zeros((n, 2))
    return Clusters(
        k=int(assign.max()) + 1,
        criterion=criterion,
        silhouettes=silhouettes,
        assignments=assign,
        ari=float(adjusted_rand_score(labels, assign)),
        clusters=cluster_rows(assign, labels),
        mislabel_scores=scores,
        neighbour_labels=top,
        mislabels=suspects,
        coords=np.asarray(coords, dtype=np.float64),
    )


def cluster_dataset(
    data: str | Path,
    backbone: str,
    *,
    k: int | str = "auto",
    out: str | Path | None = None,
    seed: int = 0,
    backend: str = "auto",
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Read `data`, check `k` against its items and `out` (before embedding), embed every item with
    `backbone` (cached) and group them. Returns clusters.json's content, plus `written`: the files written
    to `out` (clusters.json, .csv, .html; none without `out`)."""
    from headstart.data import load_dataset
    from headstart.explore.embedded import embed_dataset
    from headstart.fileio import ensure_writable_dir

    check_k(k, None, data)  # no reading needed to refuse a k below 2
    if out is not None:
        ensure_writable_dir(out)
    ds = load_dataset(data, seed=seed)
    check_k(k, len(ds.items), data)
    emb = embed_dataset(
        data, backbone, seed=seed, backend=backend, device=device, progress=progress, dataset=ds
    )
    check_k(k, len(emb.sources), data)  # items the backbone could not read are gone
    sources = [s if emb.modality == "text" else str(Path(s).resolve()) for s in emb.sources]
    result = cluster_embeddings(emb.X, emb.labels, k=k, seed=seed, sources=sources)
    summary = summarise(str(data), emb, sources, result)
    written = write_clusters(out, summary) if out is not None else []
    return {**summary, "written": [str(p) for p in written]}


def summarise(data: str, emb: Any, sources: list[str], result: Clusters) -> dict[str, Any]:
    """clusters.json: the summary, the tables, and every item's place on the map."""
    return {
        "data": data,
        "backbone": emb.backbone,
        "modality": emb.modality,
        "n": len(result.assignments),
        "k": result.k,
        "criterion": result.criterion,
        "criterion_text": CRITERION if result.criterion == "silhouette" else "k given (--k)",
        "silhouettes": {str(k): v for k, v in result.silhouettes.items()},
        "ari": result.ari,
        "n_labels": len(set(emb.labels)),
        "clusters": result.clusters,
        "mislabel_rule": {"neighbours": K_NEIGHBOURS, "metric": "cosine", "min_share": MISLABEL_SHARE},
        "mislabels": result.mislabels,
        "map": MAP_METHOD,
        "skipped": emb.skipped,
        "points": [
            {
                "source": sources[i],
                "label": emb.labels[i],
                "split": emb.splits[i],
                "cluster": int(result.assignments[i]),
                "x": round(float(result.coords[i, 0]), 5),
                "y": round(float(result.coords[i, 1]), 5),
                "mislabel_score": round(float(result.mislabel_scores[i]), 4),
            }
            for i in range(len(result.assignments))
        ],
    }


def write_clusters(out: str | Path, summary: dict[str, Any]) -> list[Path]:
    """clusters.json, clusters.csv and the map page clusters.html in `out` (each written atomically)."""
    from headstart.fileio import atomic_write_json, atomic_write_text
    from headstart.report.sections.clusters import standalone_page
    from headstart.runs import CLUSTERS_FILE

    out = Path(out)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["source", "label", "split", "cluster", "mislabel_score"])
    w.writerows(
        (p["source"], p["label"], p["split"], p["cluster"], p["mislabel_score"]) for p in summary["points"]
    )
    page = standalone_page(summary, resolve=lambda s: Path(s) if Path(s).is_file() else None)
    return [
        atomic_write_json(out / CLUSTERS_FILE, summary),
        atomic_write_text(out / "clusters.csv", buf.getvalue()),
        atomic_write_text(out / "clusters.html", page),
    ]
