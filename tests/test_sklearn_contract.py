"""ProbeClassifier is a scikit-learn estimator on arrays of embeddings: clone, get/set_params, GridSearchCV,
Pipeline, and scikit-learn's own conformance suite.

`check_estimator` runs in full on numeric arrays: no check is expected to fail. What it cannot reach is the
other kind of X, a list of file paths embedded through the backbone (the checks only build arrays); that
path is tested in tests/test_probe.py (fit/predict/score/save/load on image files). Two checks skip
themselves by environment, not by choice: check_array_api_input (needs SCIPY_ARRAY_API=1) and
check_classifier_data_not_an_array (needs pandas).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from headstart.api import ProbeClassifier
from headstart.errors import HeadstartError

# The checks expected to fail, with the reason (scikit-learn's `expected_failed_checks`): none.
EXPECTED_FAILED: dict[str, str] = {}


@parametrize_with_checks([ProbeClassifier()], expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_check_estimator(estimator: Any, check: Any) -> None:
    check(estimator)


def _blobs(n: int = 90, dim: int = 8, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n // k)
    X = rng.normal(size=(len(y), dim)).astype(np.float32)
    X[:, 0] += 4.0 * y  # one informative direction among noise
    return X, np.array(["cat", "dog", "eel"])[y]


def test_clone_copies_parameters_not_fitted_state() -> None:
    X, y = _blobs()
    clf = ProbeClassifier("test_efficientnet_lite", C=0.3, Cs=(0.1, 1.0), seed=4, backend="torch").fit(X, y)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params()
    assert not hasattr(twin, "head_") and not hasattr(twin, "classes_")
    with pytest.raises(NotFittedError):
        twin.predict(X)


def test_get_set_params_round_trip() -> None:
    clf = ProbeClassifier()
    params = clf.get_params()
    names = {"backbone", "C", "Cs", "seed", "backend", "cache", "batch_size", "strict", "progress", "device"}
    names.add("imbalance")  # headstart.imbalance: "auto" weighs skewed classes, "off" does not
    assert set(params) == names
    assert clf.set_params(C=0.5, seed=7) is clf
    assert clf.get_params()["C"] == 0.5 and clf.seed == 7
    assert ProbeClassifier(**clf.get_params()).get_params() == clf.get_params()
    with pytest.raises(ValueError, match="Invalid parameter"):
        clf.set_params(no_such_option=1)


def test_grid_search_over_c_on_embeddings() -> None:
    X, y = _blobs()
    search = GridSearchCV(ProbeClassifier(), {"C": [0.001, 1.0]}, cv=3, error_score="raise").fit(X, y)
    best = search.best_params_["C"]
    assert best in (0.001, 1.0) and best == search.best_estimator_.C_
    assert search.best_score_ > 0.8
    # The fixed C is what each candidate used: the two candidates really differ.
    heads = [clone(search.estimator).set_params(C=c).fit(X, y).head_.weight for c in (0.001, 1.0)]
    assert np.abs(heads[1]).max() > 2 * np.abs(heads[0]).max()


def test_pipeline_and_cross_validation() -> None:
    X, y = _blobs(seed=1)
    pipe = make_pipeline(StandardScaler(), ProbeClassifier(C=1.0))
    assert pipe.fit(X, y).score(X, y) > 0.8
    assert cross_val_score(pipe, X, y, cv=3).mean() > 0.8
    pipe.set_params(probeclassifier__C=0.01).fit(X, y)  # parameters route through the pipeline
    assert pipe.named_steps["probeclassifier"].C_ == 0.01


def test_labels_keep_their_type_and_binary_decision_is_one_column() -> None:
    X, names = _blobs(k=2, n=60)
    y = (names == "dog").astype(int) * 10  # labels 0 and 10: predictions are those ints, not strings
    clf = ProbeClassifier(C=1.0).fit(X, y)
    assert clf.classes_.tolist() == [0, 10] and set(clf.predict(X).tolist()) <= {0, 10}
    d = clf.decision_function(X)
    assert d.shape == (len(X),)
    np.testing.assert_array_equal(clf.classes_[(d > 0).astype(int)], clf.predict(X))


def test_bad_arrays_are_headstart_errors_and_value_errors() -> None:
    X, y = _blobs()
    X_nan = X.copy()
    X_nan[3, 2] = np.nan
    for bad_X, bad_y, says in [
        (X_nan, y, "NaN"),
        (X, np.full(len(y), "cat"), "one class"),
        (X[:, 0], y, "2D array"),
        (X, np.linspace(0, 1, len(y)), "continuous"),
    ]:
        with pytest.raises(HeadstartError, match=says) as e:
            ProbeClassifier().fit(bad_X, bad_y)
        assert isinstance(e.value, ValueError) and e.value.fix
    clf = ProbeClassifier(C=1.0).fit(X, y)
    with pytest.raises(HeadstartError, match="8 features"):
        clf.predict(X[:, :5])
    with pytest.raises(HeadstartError, match="not fitted"):
        ProbeClassifier().predict(X)
