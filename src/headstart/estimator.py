"""`ProbeClassifier`: the linear probe as a scikit-learn estimator (on arrays of embeddings, a plain one;
on lists of file paths, through the backbone and its embedding cache). `headstart.api` re-exports it."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from headstart.errors import HeadstartError
from headstart.head import DEFAULT_CS, fit_head

Inputs = Sequence[str | Path] | np.ndarray

ARRAY_FIX = "pass a 2-D array of finite embeddings (n_samples, n_features), or a list of file paths"


class InputError(HeadstartError, ValueError):
    """A bad X or y: a HeadstartError (the CLI's exit 2, the message names the input) that is also the
    ValueError scikit-learn's tools expect (GridSearchCV's error_score, check_estimator)."""


class NotFitted(HeadstartError, NotFittedError):
    """predict before fit: a HeadstartError that is also scikit-learn's NotFittedError."""


def _is_files(X: Any) -> bool:
    """File paths (a list of str / PathLike, not an array) are embedded through the cache; anything else is
    an array of embeddings, validated as scikit-learn validates any estimator's input."""
    if isinstance(X, (str, os.PathLike)):
        raise InputError(f"X is one path ({X}), not a list of inputs", fix="wrap it in a list: [path]")
    if hasattr(X, "__array__") or hasattr(X, "shape") or not isinstance(X, Sequence) or not len(X):
        return False
    return all(isinstance(x, (str, os.PathLike)) for x in X)


class ProbeClassifier(ClassifierMixin, BaseEstimator):
    """A linear probe: frozen pretrained backbone + multinomial logistic-regression head.

    `X` is a list of file paths (embedded through the cache) or a 2-D array of precomputed embeddings. On
    arrays it is a plain scikit-learn classifier: clone, get_params/set_params, GridSearchCV, Pipeline
    (tests/test_sklearn_contract.py runs check_estimator and lists the checks that do not apply).
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
        device: str = "auto",
        imbalance: str = "auto",
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
        self.device = device
        self.imbalance = imbalance

    # -- embedding ---------------------------------------------------------------------------------
    def _backbone(self) -> Any:
        if getattr(self, "backbone_", None) is None:
            from headstart.backbones import create_backbone

            self.backbone_ = create_backbone(self.backbone)
        return self.backbone_

    def _validated(self, X: Any, y: Any = "no_validation", *, reset: bool) -> Any:
        """scikit-learn's checks of an array input (and y); their ValueErrors become InputErrors."""
        from sklearn.utils.validation import validate_data

        try:
            return validate_data(self, X, y, reset=reset, dtype=(np.float32, np.float64))
        except ValueError as e:
            raise InputError(str(e), fix=ARRAY_FIX) from e

    def embed(self, X: Inputs) -> tuple[np.ndarray, list[int], dict[str, str]]:
        """(embeddings of the usable inputs, their indices into X, {path: reason} for the rest)."""
        if not _is_files(X):
            E = self._validated(X, reset=False)
            return np.asarray(E, dtype=np.float32), list(range(len(E))), {}
        from headstart.features import embed, embed_options

        paths = [str(p) for p in X]
        # A loaded int8 run embeds as it was trained.
        feats = embed(self._backbone(), paths, **embed_options(self, int8=getattr(self, "int8_", None)))
        index = {p: i for i, p in enumerate(paths)}
        self.last_embed_stats_ = feats.stats
        return feats.X, [index[p] for p in feats.paths], feats.bad

    # -- estimator contract --------------------------------------------------------------------------
    def _inputs(self, X: Inputs, y: Any) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        """(embeddings, their labels, {path: reason} for the unusable files) of a training set."""
        if _is_files(X):
            y = np.asarray(y)
            if len(y) != len(X):
                raise InputError(
                    f"X has {len(X)} items but y has {len(y)} labels", fix="give one label per X"
                )
            E, kept, bad = self.embed(X)
            return E, y[kept], bad
        E, y = self._validated(X, y, reset=True)
        return np.asarray(E, dtype=np.float32), y, {}

    def fit(
        self, X: Inputs, y: Sequence[Any], *, X_val: Inputs | None = None, y_val: Sequence[Any] | None = None
    ) -> ProbeClassifier:
        """Fit the head on X; its L2 strength (when C is None) is chosen on (X_val, y_val), or by CV.
        Skewed classes (headstart.imbalance, imbalance="auto"): class-weighted loss, C by balanced
        accuracy."""
        from sklearn.utils.multiclass import check_classification_targets

        from headstart.imbalance import check_mode, detect

        check_mode(self.imbalance)  # before any embedding

        E, y, bad = self._inputs(X, y)
        try:
            check_classification_targets(y)
        except ValueError as e:
            raise InputError(f"y: {e}", fix="give one class label per input") from e
        classes = np.unique(y)
        if len(classes) < 2:
            raise InputError(
                f"only one class ({classes[0] if len(classes) else 'none'}) in y",
                fix="a classifier needs examples of at least two classes",
            )
        self.n_features_in_ = E.shape[1]
        Ev = tv = None
        if X_val is not None and y_val is not None:
            Ev, kept_v, bad_v = self.embed(X_val)
            bad = {**bad, **bad_v}
            yv = np.asarray(y_val)[kept_v]
            known = np.isin(yv, classes)
            Ev, tv = Ev[known], np.searchsorted(classes, yv[known])
        t0 = time.perf_counter()
        Cs = (self.C,) if self.C is not None else tuple(self.Cs)
        t = np.searchsorted(classes, y)
        imb = detect(np.bincount(t, minlength=len(classes)), self.imbalance)
        head, C, scores = fit_head(
            E,
            t,
            len(classes),
            X_val=Ev,
            y_val=tv,
            Cs=Cs,
            seed=self.seed,
            class_weight=imb.class_weight(),
            metric=imb.metric,
        )
        self.imbalance_ = imb
        self.fit_seconds_ = time.perf_counter() - t0
        self.classes_ = classes
        self.head_ = head
        self.C_ = C
        self.selection_scores_ = scores
        self.skipped_ = bad
        self.train_embeddings_, self.train_targets_ = E, t
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "head_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise NotFitted("this ProbeClassifier is not fitted yet", fix="call fit() first, or load() a run")

    def _embed_all(self, X: Inputs) -> np.ndarray:
        E, _, bad = self.embed(X)
        if bad:
            listed = "; ".join(f"{p}: {r}" for p, r in bad.items())
            raise InputError(f"cannot use {len(bad)} input(s): {listed}", fix="remove or fix those files")
        return E

    def decision_function(self, X: Inputs) -> np.ndarray:
        """Logits (n, K); with two classes the log-odds of classes_[1] (n,), as scikit-learn's classifiers."""
        self._check_fitted()
        z = self.head_.logits(self._embed_all(X))
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X: Inputs) -> np.ndarray:
        self._check_fitted()
        return self.head_.proba(self._embed_all(X))

    def predict(self, X: Inputs) -> np.ndarray:
        self._check_fitted()
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    # -- persistence ----------------------------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        """run.json of a probe (kind "probe"): the head on a frozen, referenced base."""
        from headstart.runs import BackboneRef

        self._check_fitted()
        bb = self._backbone()
        return {
            "kind": "probe",
            "pretrained": True,
            "backbone": BackboneRef.of(bb).to_dict(),
            "preprocess": bb.preprocess.to_dict(),
            "modality": bb.modality,
            "classes": [str(c) for c in self.classes_],
            "params": {
                "C": self.C_,
                "seed": self.seed,
                "selection_scores": self.selection_scores_,
                **({"imbalance": self.imbalance_.to_dict()} if hasattr(self, "imbalance_") else {}),
            },
            "trained_groups": [],
            "trainable_params": self.head_.num_params,
        }

    def save(
        self,
        path: str | Path,
        *,
        metrics: dict[str, Any] | None = None,
        overwrite: bool = False,
        info: dict[str, Any] | None = None,
        **extra: Any,
    ) -> Path:
        """Write the run folder; `info` adds to run.json (the recipe of a pipeline run), `extra` goes to
        headstart.runs.write_run (data summary, split rows)."""
        from headstart.runs import library_versions, write_run

        run = {
            **self.run_info(),
            **(info or {}),
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
        info, params = run.info, run.info.params
        if info.delta is not None or info.adapter is not None or not info.pretrained:
            # A head-only run of any kind loads (probe, or fit --strategy head from before they were one);
            # on the untouched base, a fine-tuned run's head would answer wrongly without a word.
            raise HeadstartError(
                f"{run.path} is a fine-tuned run (its backbone's weights changed), not a probe",
                fix="load it with headstart.model.load_model (or `headstart predict`)",
            )
        clf = cls(info.backbone.name, C=params.get("C"), seed=params.get("seed", 0))
        bb = create_backbone(info.backbone.name)
        check_base(info, bb, run.path)
        clf.backbone_ = bb
        from headstart.frozen_precision import run_forward

        clf.int8_ = run_forward(run.path, info, bb)  # None: float features, as most runs
        clf.classes_ = np.asarray(run.classes)
        clf.head_ = run.head
        clf.C_ = params.get("C")
        clf.selection_scores_ = params.get("selection_scores", {})
        clf.n_features_in_ = run.head.weight.shape[1]
        clf.skipped_ = {}
        return clf
