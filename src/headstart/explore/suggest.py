"""Which items to label next (`select`): typical items at cold start, then margin spread by clusters.

The default strategy, `typical-margin`, works in two regimes:

1. **Cold start** (fewer than COLD_START_PER_CLASS labels per class): TypiClust (Hacohen, Dekel &
   Weinshall, "Active learning on a budget", ICML 2022). With a handful of labels the head's
   probabilities are mostly noise, so uncertainty picks noise; what teaches most is to cover the data:
   k-means the labeled and unlabeled items into (labeled + K) clusters and take the most typical (densest)
   item of each cluster no label covers yet, largest first.
2. **Then `margin-diverse`** (cluster-margin): **margin** (top-1 minus top-2 class probability) finds the
   items next to the head's decision boundaries, the only ones whose labels move a linear head (Settles,
   "Active Learning Literature Survey", 2009); **diversity** keeps a batch from being K near copies of one
   confusion: the `POOL_FACTOR * K` lowest-margin candidates are split by k-means (L2-normalised
   embeddings) into K clusters and each gives its lowest-margin item (Zhdanov, "Diverse mini-batch active
   learning", 2019; Citovsky et al., "Batch active learning at scale", NeurIPS 2021).

In benchmarks/suggest.py's labeling loop (docs/suggest.md) the cold-start phase cut the labels to the
full-pool accuracy on Fashion-MNIST against margin-diverse alone (within the intervals; ties on digits
and emoji) and led the first rounds on Fashion-MNIST, digits and both fortunes tasks;
`badge` (Ash et al., ICLR 2020: k-means++ on the head's gradient embeddings, uncertainty and diversity in
one) needed more labels than either on the image tasks. `margin-kcenter` (k-center greedy over the
lowest margins, Sener & Savarese's core-set, ICLR 2018) favours outliers, the odd items whose labels
teach little about the bulk, and lost to clusters early on emoji. `margin` (no diversity) and `random`
(the baseline any strategy must beat) are selectable too.

Exact copies are never suggested: a candidate whose embedding equals a labeled item's (the feature cache is
content-addressed, so the same bytes or text give the same vector) or an earlier candidate's is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError

STRATEGIES = ("typical-margin", "margin-diverse", "badge", "margin-kcenter", "margin", "random")
DEFAULT_STRATEGY = "typical-margin"
# typical-margin: representative picks (TypiClust) until this many labels per class, then margin-diverse.
# Below it the head's margins are mostly noise (Hacohen et al., ICML 2022: typical items win at budgets of
# a few labels per class, uncertainty above).
COLD_START_PER_CLASS = 5
MAX_CLUSTERS = 500  # TypiClust's cap: more clusters than this are too small for "typical" to mean much
MIN_CLUSTER = 5  # clusters smaller than this are outliers' clusters, skipped while larger ones remain
TYPICAL_NEIGHBOURS = 20  # typicality = 1 / mean distance to this many nearest neighbours in the cluster
TYPICAL_SAMPLE = 2000  # a larger cluster is judged on this many seeded random rows (bounded memory)
# The K picks come from the POOL_FACTOR * K lowest margins: how far from the boundary diversity may reach
# (10 for clusters measured better than 5 on two of three tasks; k-center, outlier-prone, keeps closer).
POOL_FACTOR = {"margin-diverse": 10, "margin-kcenter": 2}
_CHUNK = 2048  # rows per block of the distance computation: bounded memory for large labeled sets


@dataclass
class Pick:
    """One suggested item: its row among the candidates, its margin, and why it was chosen."""

    index: int
    margin: float
    why: str


def margins(proba: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row (1.0 with a single class: nothing to separate)."""
    p = np.asarray(proba, dtype=np.float64)
    if p.shape[1] < 2:
        return np.ones(len(p))
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _row_keys(X: np.ndarray) -> list[bytes]:
    return [r.tobytes() for r in np.ascontiguousarray(X, dtype=np.float32)]


def fresh_candidates(U: np.ndarray, labeled: np.ndarray | None = None) -> np.ndarray:
    """Indices of the candidates that are neither an exact copy of a labeled item nor of an earlier
    candidate (equal embeddings: see the module docstring)."""
    seen = set(_row_keys(labeled)) if labeled is not None and len(labeled) else set()
    keep = []
    for i, key in enumerate(_row_keys(U)):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def nearest_distance(Z: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Cosine distance (1 - cos) from each row of `Z` to its nearest row of `seeds` (rows L2-normalised);
    inf where there are no seeds."""
    out = np.full(len(Z), np.inf)
    for i in range(0, len(seeds), _CHUNK):
        sims = Z @ seeds[i : i + _CHUNK].T
        out = np.minimum(out, 1.0 - sims.max(axis=1))
    return np.maximum(out, 0.0)


def k_center(Z: np.ndarray, seeds: np.ndarray, k: int, first: int = 0) -> tuple[list[int], list[float]]:
    """k-center greedy: `k` rows of `Z` (L2-normalised), each the farthest from `seeds` and the earlier
    picks; (picked rows, each one's distance when picked). With no seeds the first pick is `first`."""
    dist = nearest_distance(Z, seeds)
    picked: list[int] = []
    at: list[float] = []
    for _ in range(k):
        j = first if not picked and not len(seeds) else int(np.argmax(dist))
        picked.append(j)
        at.append(float(dist[j]))
        dist = np.minimum(dist, np.maximum(1.0 - Z @ Z[j], 0.0))
        dist[j] = -1.0  # never again, even where every distance is 0
    return picked, at


def select(
    U: np.ndarray,
    proba: np.ndarray,
    k: int,
    *,
    labeled: np.ndarray | None = None,
    strategy: str = DEFAULT_STRATEGY,
    seed: int = 0,
    pool_factor: int | None = None,
) -> list[Pick]:
    """`k` candidates to label next, best first. `U`: candidate embeddings (n, d); `proba`: the head's
    class probabilities of them (n, classes); `labeled`: embeddings of the labeled items (the diversity
    seeds, and exact copies of them are never picked). Refuses k < 1 and k above the fresh candidates."""
    if strategy not in STRATEGIES:
        raise HeadstartError(f"unknown strategy {strategy!r}", fix=f"use one of {', '.join(STRATEGIES)}")
    if len(U) != len(proba):
        raise ValueError(f"{len(U)} candidate embeddings but {len(proba)} rows of probabilities")
    fresh = fresh_candidates(U, labeled)
    if k < 1 or k > len(fresh):
        raise HeadstartError(
            f"cannot suggest {k} item(s) from {len(fresh)} new candidate(s)",
            fix=f"ask for between 1 and {len(fresh)}"
            if len(fresh)
            else "give unlabeled items not yet labeled",
        )
    m = margins(proba)
    n_labeled = 0 if labeled is None else len(labeled)
    if strategy == "typical-margin" and n_labeled < COLD_START_PER_CLASS * proba.shape[1]:
        return [
            Pick(int(fresh[r]), float(m[fresh[r]]), why) for r, why in typical(U[fresh], labeled, k, seed)
        ]
    if strategy == "badge":
        return [
            Pick(int(fresh[r]), float(m[fresh[r]]), "k-means++ on gradient embeddings")
            for r in badge(U[fresh], proba[fresh], k, seed)
        ]
    strategy = "margin-diverse" if strategy == "typical-margin" else strategy
    if strategy == "random":
        idx = np.random.default_rng(seed).choice(fresh, size=k, replace=False)
        return [Pick(int(i), float(m[i]), "random draw") for i in idx]
    order = fresh[np.argsort(m[fresh], kind="stable")]  # lowest margin first
    rank = {int(i): r + 1 for r, i in enumerate(order)}
    if strategy == "margin":
        return [Pick(int(i), float(m[i]), f"margin rank {rank[int(i)]}") for i in order[:k]]
    pool = order[: max(k, (pool_factor or POOL_FACTOR[strategy]) * k)]
    if strategy == "margin-diverse":
        return [
            Pick(
                int(i),
                float(m[i]),
                f"margin rank {rank[int(i)]} of {len(fresh)}; lowest margin of its cluster",
            )
            for i in cluster_margin(normalise(U[pool]), m[pool], k, seed, pool)
        ]
    seeds = (
        normalise(labeled) if labeled is not None and len(labeled) else np.zeros((0, U.shape[1]), np.float32)
    )
    rows, dist = k_center(normalise(U[pool]), seeds, k)
    return [
        Pick(
            int(pool[r]),
            float(m[pool[r]]),
            f"margin rank {rank[int(pool[r])]} of {len(fresh)}; "
            + (
                "lowest margin"
                if not np.isfinite(d)
                else f"distance {d:.3f} from the labeled and earlier picks"
            ),
        )
        for r, d in zip(rows, dist, strict=True)
    ]


def cluster_margin(Z: np.ndarray, m: np.ndarray, k: int, seed: int, ids: np.ndarray) -> list[int]:
    """k-means `Z` (the pool, L2-normalised) into `k` clusters and take each one's lowest-margin row (as
    its id in `ids`), lowest margin first; a cluster k-means leaves empty is made up by the next
    lowest margins."""
    from sklearn.cluster import KMeans

    if k >= len(Z):
        rows = list(range(len(Z)))
    else:
        label = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(Z)
        rows = [int(idx[np.argmin(m[idx])]) for c in range(k) if len(idx := np.flatnonzero(label == c))]
        rows += [r for r in np.argsort(m, kind="stable").tolist() if r not in set(rows)][: k - len(rows)]
    return [int(ids[r]) for r in sorted(rows, key=lambda r: (m[r], r))]


def typical(U: np.ndarray, labeled: np.ndarray | None, k: int, seed: int) -> list[tuple[int, str]]:
    """TypiClust (Hacohen et al., ICML 2022): k-means the labeled and candidate items (L2-normalised) into
    labeled + `k` clusters (at most MAX_CLUSTERS), then `k` times take the cluster with the fewest labels
    and picks so far (the largest on ties; those under MIN_CLUSTER items last) and its most typical
    candidate (densest: the smallest mean cosine distance to its nearest neighbours in the cluster).
    Returns (row of `U`, why) pairs: each pick stands for a region no label covers yet."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n_lab = 0 if labeled is None else len(labeled)
    Z = normalise(U if labeled is None or not n_lab else np.vstack([labeled, U]))
    n_clusters = min(len(Z), max(k, min(n_lab + k, MAX_CLUSTERS)))
    km = (  # full k-means gets slow with many clusters
        KMeans(n_clusters=n_clusters, n_init=1, random_state=seed)
        if n_clusters <= 50
        else MiniBatchKMeans(n_clusters=n_clusters, n_init=1, random_state=seed, batch_size=4096)
    )
    cluster = km.fit_predict(Z)
    size = np.bincount(cluster, minlength=n_clusters)
    covered = np.bincount(cluster[:n_lab], minlength=n_clusters).astype(np.float64)
    rng = np.random.default_rng(seed)
    picks: list[tuple[int, str]] = []
    taken: set[int] = set()
    while len(picks) < k:
        c = int(np.lexsort((-size, covered, size < min(MIN_CLUSTER, size.max())))[0])
        rows = np.flatnonzero(cluster == c)
        free = np.array([r for r in rows if r >= n_lab and r - n_lab not in taken], dtype=np.int64)
        if not len(free):
            covered[c] = np.inf  # nothing left to pick here (k <= len(U): another cluster has some)
            continue
        if len(rows) > TYPICAL_SAMPLE:  # a large cluster: sampled candidates against sampled neighbours
            rows, free = (
                np.sort(rng.choice(a, min(len(a), TYPICAL_SAMPLE), replace=False)) for a in (rows, free)
            )
        # sorted distances to the cluster; the first is the row itself (0) (a sampled-out neighbour else)
        dist = np.sort(1.0 - Z[free] @ Z[rows].T, axis=1)[:, 1 : TYPICAL_NEIGHBOURS + 1]
        best = int(free[int(np.argmin(dist.mean(axis=1)))] if dist.size else free[0])
        picks.append(
            (
                best - n_lab,
                f"most typical of a cluster of {size[c]} with {int(covered[c])} labeled or picked",
            )
        )
        taken.add(picks[-1][0])
        covered[c] += 1
    return picks


def badge(U: np.ndarray, proba: np.ndarray, k: int, seed: int) -> list[int]:
    """BADGE (Ash et al., ICLR 2020) for a linear head: k-means++ seeding on the gradient of the loss
    wrt the head's weights had the predicted class been right, g = (p - onehot(argmax p)) (x) x (x
    L2-normalised): long where the head is unsure, pointing apart where the items differ, so one batch is
    both uncertain and diverse. Distances come from <g_i, g_j> = <a_i, a_j><x_i, x_j> (g never formed)."""
    X = normalise(U).astype(np.float64)
    A = np.array(proba, dtype=np.float64)
    A[np.arange(len(A)), A.argmax(axis=1)] -= 1.0
    sq = (A * A).sum(axis=1) * (X * X).sum(axis=1)

    def dist2(j: int) -> np.ndarray:
        return np.maximum(sq + sq[j] - 2.0 * (A @ A[j]) * (X @ X[j]), 0.0)

    rng = np.random.default_rng(seed)
    picks = [int(np.argmax(sq))]
    d = dist2(picks[0])
    while len(picks) < k:
        d[picks] = 0.0
        total = d.sum()
        rest = np.setdiff1d(np.arange(len(d)), picks)
        j = int(rng.choice(len(d), p=d / total)) if total > 0 else int(rng.choice(rest))
        picks.append(j)
        d = np.minimum(d, dist2(j))
    return picks


# -- a run's suggestions (`headstart suggest`) ------------------------------------------------------------
def _labeled_embeddings(model: Any, run_dir: Path, backend: str, device: str) -> tuple[np.ndarray, list[str]]:
    """Embeddings of every item the run's split.csv lists (all are labeled: train, val and test), and notes
    on what could not be read."""
    from headstart.runs import SPLIT_FILE, item_sources, read_split_rows

    try:
        rows = read_split_rows(run_dir)
    except HeadstartError as e:
        return np.zeros((0, 0), np.float32), [
            f"{e.message}: labeled items unknown, so not excluded or spread from"
        ]
    sources = item_sources(run_dir, rows, model.run_info)
    E, _, bad = model.embed(sources, backend=backend, device=device)
    notes = []
    if bad:
        notes.append(
            f"{len(bad)} of the {len(rows)} labeled items in {run_dir / SPLIT_FILE} could not be read "
            "(moved or deleted?): their copies are not excluded and diversity ignores them"
        )
    return E, notes


def suggest_for_run(
    run_dir: str | Path,
    unlabeled: str | Path,
    n: int,
    *,
    strategy: str = DEFAULT_STRATEGY,
    seed: int = 0,
    backend: str = "auto",
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """The `n` items of `unlabeled` to label next for the run in `run_dir` (any kind: the candidates and
    the run's labeled items are embedded by the run's own backbone, fine-tuned delta and int8 forward
    included, so the head's probabilities are the run's predictions). Cheap checks (n, strategy, device,
    the unlabeled inputs and their modality) come before any embedding."""
    from headstart.features import forward_device
    from headstart.model import load_model, softmax

    if n < 1:
        raise HeadstartError(f"--n {n} suggests nothing", fix="ask for 1 or more items (--n 20)")
    if strategy not in STRATEGIES:
        raise HeadstartError(f"unknown strategy {strategy!r}", fix=f"use one of {', '.join(STRATEGIES)}")
    forward_device(backend, device)
    model = load_model(run_dir)
    from headstart.data.unlabeled import load_unlabeled

    unl = load_unlabeled(unlabeled, model.modality)
    L, notes = _labeled_embeddings(model, Path(run_dir), backend, device)
    U, kept, bad = model.embed(unl.sources, backend=backend, device=device, progress=progress)
    if not len(kept):
        raise HeadstartError(
            f"none of the {len(unl.sources)} inputs in {unlabeled} could be read", fix="check them"
        )
    L = L if len(L) else None
    proba = softmax(model.head.logits(U) / model.temperature)
    n_fresh = len(fresh_candidates(U, L))
    if n > n_fresh:
        notes.append(
            f"asked for {n} but only {n_fresh} candidate(s) are new (not copies of labeled ones): all listed"
        )
    picks = select(U, proba, min(n, n_fresh), labeled=L, strategy=strategy, seed=seed) if n_fresh else []
    sources = [unl.sources[kept[p.index]] for p in picks]
    return {
        "run": str(run_dir),
        "unlabeled": str(unlabeled),
        "strategy": strategy,
        "n": n,
        "n_candidates": len(kept),
        "n_new": n_fresh,
        "n_labeled": 0 if L is None else len(L),
        "suggestions": [
            {
                "rank": r,
                "source": src,
                "predicted": model.classes[int(np.argmax(proba[p.index]))],
                "probability": float(proba[p.index].max()),
                "margin": p.margin,
                "why": p.why,
            }
            for r, (p, src) in enumerate(zip(picks, sources, strict=True), 1)
        ],
        "skipped": {**unl.skipped, **bad},
        "notes": notes,
    }


SUGGESTION_COLUMNS = ("rank", "source", "predicted", "probability", "margin", "why")


def write_suggestions(result: dict[str, Any], out: str | Path) -> Path:
    """The ranked suggestions as a CSV (`SUGGESTION_COLUMNS`), written atomically."""
    import csv
    import io

    from headstart.fileio import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUGGESTION_COLUMNS)
    w.writeheader()
    w.writerows(result["suggestions"])
    return atomic_write_text(out, buf.getvalue())
