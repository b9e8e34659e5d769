"""The Python API (the CLI is a thin layer over it), scikit-learn shaped.

clf = ProbeClassifier("efficientnet_lite0").fit(paths, labels)
clf.predict_proba(more_paths); clf.save("runs/mine"); ProbeClassifier.load("runs/mine")

report = probe("examples/emoji/images", backbone="efficientnet_lite0")   # split, fit, evaluate, save
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.images import DEFAULT_MAX_PIXELS
from headstart.errors import HeadstartError
from headstart.head import DEFAULT_CS, fit_head
from headstart.metrics import classification_metrics, knn_predict

Inputs = Sequence[str | Path] | np.ndarray


class ProbeClassifier:
    """A linear probe: frozen pretrained backbone + multinomial logistic-regression head.

    `X` is a list of file paths (embedded through the cache) or an array of precomputed embeddings.
    Parameters are stored as given; learned state ends in `_` and exists after `fit`.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        *,
        C: float | None = None,
        Cs: Sequence[float] = DEFAULT_CS,
        seed: int = 0,
        backend: str = "auto",
        cache: bool = True,
        batch_size: int = 32,
        strict: bool = False,
        progress: bool = False,
    ) -> None:
        self.backbone = backbone
        self.C = C
        self.Cs = Cs
        self.seed = seed
        self.backend = backend
        self.cache = cache
        self.batch_size = batch_size
        self.strict = strict
        self.progress = progress

    # -- embedding ---------------------------------------------------------------------------------
    def _backbone(self) -> Any:
        if getattr(self, "backbone_", None) is None:
            from headstart.backbones import create_backbone

            self.backbone_ = create_backbone(self.backbone)
        return self.backbone_

    def embed(self, X: Inputs) -> tuple[np.ndarray, list[int], dict[str, str]]:
        """(embeddings of the usable inputs, their indices into X, {path: reason} for the rest)."""
        if isinstance(X, np.ndarray):
            if X.ndim != 2:
                raise HeadstartError(f"embeddings must be 2-D (n, dim), got shape {X.shape}")
            return X.astype(np.float32, copy=False), list(range(len(X))), {}
        from headstart.features import embed

        paths = [str(p) for p in X]
        feats = embed(
            self._backbone(),
            paths,
            cache=self.cache,
            backend=self.backend,
            batch_size=self.batch_size,
            strict=self.strict,
            progress=self.progress,
        )
        index = {p: i for i, p in enumerate(paths)}
        self.last_embed_stats_ = feats.stats
        return feats.X, [index[p] for p in feats.paths], feats.bad

    # -- estimator contract --------------------------------------------------------------------------
    def fit(
        self, X: Inputs, y: Sequence[Any], *, X_val: Inputs | None = None, y_val: Sequence[Any] | None = None
    ) -> ProbeClassifier:
        y = np.asarray(y)
        if len(y) != len(X):
            raise HeadstartError(f"X has {len(X)} items but y has {len(y)} labels")
        classes = sorted({str(v) for v in y})
        if len(classes) < 2:
            raise HeadstartError(
                f"only one class ({classes[0] if classes else 'none'}) in y",
                fix="a classifier needs examples of at least two classes",
            )
        index = {c: i for i, c in enumerate(classes)}
        E, kept, bad = self.embed(X)
        t = np.array([index[str(v)] for v in y[kept]])
        Ev = tv = None
        if X_val is not None and y_val is not None:
            Ev, kept_v, bad_v = self.embed(X_val)
            bad = {**bad, **bad_v}
            yv = np.asarray(y_val)[kept_v]
            known = np.array([str(v) in index for v in yv], dtype=bool)
            Ev, tv = Ev[known], np.array([index[str(v)] for v in yv[known]])
        t0 = time.perf_counter()
        Cs = (self.C,) if self.C is not None else tuple(self.Cs)
        head, C, scores = fit_head(E, t, len(classes), X_val=Ev, y_val=tv, Cs=Cs, seed=self.seed)
        self.fit_seconds_ = time.perf_counter() - t0
        self.classes_ = classes
        self.head_ = head
        self.C_ = C
        self.selection_scores_ = scores
        self.n_features_in_ = E.shape[1]
        self.skipped_ = bad
        self.train_embeddings_, self.train_targets_ = E, t
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise HeadstartError(
                "this ProbeClassifier is not fitted yet", fix="call fit() first, or load() a run"
            )

    def _embed_all(self, X: Inputs) -> np.ndarray:
        E, _, bad = self.embed(X)
        if bad:
            listed = "; ".join(f"{p}: {r}" for p, r in bad.items())
            raise HeadstartError(f"cannot use {len(bad)} input(s): {listed}", fix="remove or fix those files")
        return E

    def decision_function(self, X: Inputs) -> np.ndarray:
        self._check_fitted()
        return self.head_.logits(self._embed_all(X))

    def predict_proba(self, X: Inputs) -> np.ndarray:
        self._check_fitted()
        return self.head_.proba(self._embed_all(X))

    def predict(self, X: Inputs) -> np.ndarray:
        self._check_fitted()
        return np.asarray(self.classes_)[self.predict_proba(X).argmax(axis=1)]

    def score(self, X: Inputs, y: Sequence[Any]) -> float:
        return float((self.predict(X) == np.asarray([str(v) for v in y])).mean())

    # -- persistence ----------------------------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        self._check_fitted()
        bb = self._backbone()
        return {
            "kind": "probe",
            "backbone": {
                "name": bb.name,
                "key": bb.key,
                "weights_sha256": bb.card.weights_sha256,
                "card": bb.card.to_dict(),
            },
            "preprocess": bb.preprocess.to_dict(),
            "classes": self.classes_,
            "params": {"C": self.C_, "seed": self.seed, "selection_scores": self.selection_scores_},
            "trainable_params": self.head_.num_params,
        }

    def save(
        self,
        path: str | Path,
        *,
        metrics: dict[str, Any] | None = None,
        overwrite: bool = False,
        **extra: Any,
    ) -> Path:
        from headstart.runs import library_versions, write_run

        run = {
            **self.run_info(),
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return write_run(path, run=run, head=self.head_, metrics=metrics or {}, overwrite=overwrite, **extra)

    @classmethod
    def load(cls, path: str | Path) -> ProbeClassifier:
        """Rebuild a fitted probe from a run folder; refuses a base whose weights differ from the run's."""
        from headstart.backbones import create_backbone
        from headstart.runs import check_base, load_run

        run = load_run(path)
        ref = run.info["backbone"]
        clf = cls(ref["name"], C=run.info["params"]["C"], seed=run.info["params"].get("seed", 0))
        bb = create_backbone(ref["name"])
        check_base(run.info, bb, run.path)
        clf.backbone_ = bb
        clf.classes_ = run.classes
        clf.head_ = run.head
        clf.C_ = run.info["params"]["C"]
        clf.selection_scores_ = run.info["params"].get("selection_scores", {})
        clf.n_features_in_ = run.head.weight.shape[1]
        clf.skipped_ = {}
        return clf


@dataclass
class ProbeReport:
    """What `probe` measured, and where it saved the run."""

    run_dir: Path | None
    backbone: str
    classes: list[str]
    metrics: dict[str, Any]
    data: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "backbone": self.backbone,
            "classes": self.classes,
            "metrics": self.metrics,
            "data": self.data,
            "timings": self.timings,
        }


def _split_metrics(clf: ProbeClassifier, E: np.ndarray, t: np.ndarray, k: int) -> dict[str, Any]:
    pred = clf.head_.proba(E).argmax(axis=1)
    m = classification_metrics(t, pred, clf.classes_, predictions=True)
    knn = knn_predict(clf.train_embeddings_, clf.train_targets_, E, len(clf.classes_), k=k)
    m["knn_accuracy"] = float((knn == t).mean())
    return m


def probe(
    data: str | Path,
    *,
    backbone: str = "efficientnet_lite0",
    out: str | Path | None = None,
    seed: int = 0,
    val: float = 0.15,
    test: float = 0.15,
    C: float | None = None,
    knn_k: int = 5,
    backend: str = "auto",
    batch_size: int = 32,
    cache: bool = True,
    strict: bool = False,
    max_pixels: int | None = None,
    save: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> ProbeReport:
    """Split `data`, embed it once (cached), fit the probe with L2 chosen on val, evaluate, save a run."""
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.features import embed
    from headstart.fileio import ensure_writable_dir
    from headstart.runs import default_run_dir, make_split_rows, to_jsonable

    if save:  # an unusable --out is refused before any embedding work
        target = ensure_writable_dir(out if out else "runs", flag="--out")
        if out and target.is_dir() and any(target.iterdir()) and not overwrite:
            raise HeadstartError(
                f"{target} already exists and is not empty (nothing was changed)",
                fix="choose another --out, or --overwrite to replace it",
            )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ds = load_dataset(data, seed=seed, val=val, test=test)
    timings["load_data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bb = create_backbone(backbone)
    timings["load_backbone_s"] = time.perf_counter() - t0
    if ds.modality != bb.modality:
        raise HeadstartError(
            f"{data} holds {ds.modality} data but {bb.name} is a backbone for {bb.modality}",
            fix=f"pick a {ds.modality} backbone (`headstart backbones` lists them)",
        )
    ds = ds.note_cuts(bb)  # clips longer than the backbone's window: each cut is listed

    feats = embed(
        bb,
        [it.source for it in ds.items],
        cache=cache,
        backend=backend,
        batch_size=batch_size,
        strict=strict,
        progress=progress,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
    )
    timings["hash_and_cache_s"] = feats.stats["hash_s"]
    timings["embed_s"] = feats.stats["embed_s"]
    ds = ds.drop(feats.bad)
    row = {p: i for i, p in enumerate(feats.paths)}
    by_split = {s: [it for it in ds.split(s) if it.source in row] for s in ("train", "val", "test")}
    index = {c: i for i, c in enumerate(ds.classes)}

    def arrays(items: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.array([row[it.source] for it in items], dtype=np.int64)
        return feats.X[rows], np.array([index[it.label] for it in items], dtype=np.int64)

    absent = set(ds.classes) - {it.label for it in by_split["train"]}
    if absent:
        raise HeadstartError(
            f"after skipping {len(feats.bad)} unreadable file(s), the training split of {data} has no "
            f"examples of {sorted(absent)}",
            fix="fix or replace the skipped files (listed in the output), or remove those classes",
        )
    E_tr, t_tr = arrays(by_split["train"])
    E_va, t_va = arrays(by_split["val"])
    clf = ProbeClassifier(backbone, C=C, seed=seed, backend=backend, cache=cache, batch_size=batch_size)
    clf.backbone_ = bb
    clf.fit(
        E_tr,
        np.asarray(ds.classes)[t_tr],
        X_val=E_va if len(t_va) else None,
        y_val=np.asarray(ds.classes)[t_va] if len(t_va) else None,
    )
    timings["fit_head_s"] = clf.fit_seconds_

    t0 = time.perf_counter()
    metrics: dict[str, Any] = {"C": clf.C_, "val_selection": clf.selection_scores_}
    for s in ("train", "val", "test"):
        if by_split[s]:
            E, t = arrays(by_split[s])
            metrics[s] = _split_metrics(clf, E, t, knn_k)
    # Training accuracy is kept only as a score (for the same overfitting check every fine-tune gets).
    metrics["train"] = {k: v for k, v in metrics.get("train", {}).items() if k in ("n", "accuracy")}
    timings["evaluate_s"] = time.perf_counter() - t0
    metrics["trainable_params"] = clf.head_.num_params
    metrics["backbone_params"] = bb.card.num_params
    metrics["embed"] = {k: feats.stats[k] for k in ("n_files", "cache_hits", "forwards", "backend")}
    metrics["timings"] = timings
    summary = ds.summary()

    run_dir = None
    if save:
        run_dir = Path(out) if out else default_run_dir("probe", bb.name)
        hashes = {p: feats.hashes[i] for p, i in row.items()}
        split_rows = make_split_rows([it for s in ("train", "val", "test") for it in by_split[s]], hashes)
        clf.save(
            run_dir,
            metrics=to_jsonable(metrics),
            data=to_jsonable(summary),
            split_rows=split_rows,
            overwrite=overwrite,
        )
    return ProbeReport(
        run_dir=run_dir,
        backbone=bb.name,
        classes=ds.classes,
        metrics=to_jsonable(metrics),
        data=to_jsonable(summary),
        timings=timings,
    )
