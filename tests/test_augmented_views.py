"""Augmented views, embedded once (`views`, `views:K`): K augmented copies of each training image through
the frozen backbone, cached under their own identity; the head trains on originals + views, and the run
predicts exactly as a probe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import TEST_BACKBONE, make_image_folder

from headstart.backbones import create_backbone
from headstart.errors import HeadstartError
from headstart.feature_cache import FeatureCache
from headstart.recipes import Recipe, get_recipe
from headstart.recipes.schema import Phase

K = 3


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "d", ("red", "blue", "green"), per_class=8)


def _spy_fit_head(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record what the head is fitted on (ProbeClassifier calls headstart.estimator.fit_head)."""
    import headstart.estimator as est

    calls: list[dict[str, Any]] = []
    real = est.fit_head

    def spy(X: np.ndarray, y: np.ndarray, n_classes: int, **kw: Any) -> Any:
        calls.append({"X": np.array(X), "y": np.array(y), "X_val": kw.get("X_val")})
        return real(X, y, n_classes, **kw)

    monkeypatch.setattr(est, "fit_head", spy)
    return calls


def _fit(data: Path, out: Path, strategy: str = f"views:{K}") -> Any:
    from headstart.train import fit

    return fit(data, backbone=TEST_BACKBONE, strategy=strategy, out=out, progress=False)


def test_the_head_trains_on_originals_and_views_and_val_test_stay_plain(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headstart.views as views

    calls = _spy_fit_head(monkeypatch)
    viewed: list[str] = []
    real_embed_views = views.embed_views

    def spy_views(bb: Any, sources: list[str], *a: Any, **kw: Any) -> Any:
        viewed.extend(sources)
        return real_embed_views(bb, sources, *a, **kw)

    monkeypatch.setattr(views, "embed_views", spy_views)
    r = _fit(data, tmp_path / "run")
    split = {row["path"]: row["split"] for row in _split_rows(tmp_path / "run")}
    n_train = sum(s == "train" for s in split.values())
    n_val = sum(s == "val" for s in split.values())
    # Views were made of training items only, K each, and the head saw (1 + K) x n_train rows.
    assert sorted(Path(p).name for p in viewed) == sorted(
        Path(p).name for p, s in split.items() if s == "train"
    )
    (call,) = calls
    assert call["X"].shape[0] == (1 + K) * n_train == r.metrics["views"]["train_rows"]
    originals, extra = call["X"][:n_train], call["X"][n_train:]
    assert not any(np.allclose(v, o) for v in extra for o in originals)  # views are not copies
    np.testing.assert_array_equal(call["y"][n_train:], np.repeat(call["y"][:n_train], K))
    assert call["X_val"].shape[0] == n_val  # C is chosen on the val originals
    assert r.metrics["val"]["n"] == n_val and r.metrics["test"]["n"] == len(split) - n_train - n_val


def _texts(tmp_path: Path) -> Path:
    texts = tmp_path / "t.csv"
    texts.write_text("text,label\n" + "".join(f"item {i},{'ab'[i % 2]}\n" for i in range(12)))
    return texts


def _split_rows(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "split.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_views_are_cached_apart_from_plain_features_and_a_rerun_embeds_nothing(
    data: Path, tmp_path: Path
) -> None:
    first = _fit(data, tmp_path / "a")
    n_train = first.metrics["views"]["images"]
    assert first.metrics["views"]["forwards"] == K * n_train
    plain = create_backbone(TEST_BACKBONE)
    n_items = len(list(data.rglob("*.png")))
    assert len(FeatureCache(plain.key)) == n_items  # no view entered the plain cache
    again = _fit(data, tmp_path / "b")
    assert again.metrics["views"]["forwards"] == 0 and again.metrics["views"]["cache_hits"] == K * n_train
    assert again.metrics["embed"]["forwards"] == 0
    # More views reuse the ones already drawn: view i of an image does not depend on K.
    more = _fit(data, tmp_path / "c", strategy=f"views:{K + 1}")
    assert more.metrics["views"]["forwards"] == n_train


def test_the_run_predicts_as_a_probe_does(data: Path, tmp_path: Path) -> None:
    from headstart.features import embed
    from headstart.model import load_model

    r = _fit(data, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["kind"] == "probe" and info["backbone"]["name"] == TEST_BACKBONE
    assert info["recipe"]["views"] == K and r.strategy == f"views:{K}"
    plain = create_backbone(TEST_BACKBONE)
    m = load_model(tmp_path / "run")
    files = sorted(str(p) for p in (data / "red").glob("*.png"))[:4]
    proba, _, bad = m.predict_proba(files)
    assert not bad and proba.shape == (4, 3)
    from headstart.runs import load_run

    head = load_run(tmp_path / "run").head
    assert head.weight.shape == (3, plain.embed_dim)
    expected = head.proba(embed(plain, files, progress=False, backend="torch").X)
    np.testing.assert_allclose(proba, expected, atol=1e-4)  # the plain forward, the stored head


def test_cv_folds_train_on_their_items_views_and_predict_plain_originals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import headstart.verdicts.cheap_cv as cv

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    X = rng.normal(size=(30, 8)).astype(np.float32) + y[:, None]
    V = X[:, None, :] + rng.normal(scale=0.1, size=(30, 2, 8)).astype(np.float32)
    sizes: list[int] = []
    real = cv.fit_path

    def spy(Xf: np.ndarray, *a: Any, **kw: Any) -> Any:
        sizes.append(len(Xf))
        return real(Xf, *a, **kw)

    monkeypatch.setattr(cv, "fit_path", spy)
    plain = cv.cv_hits(X, y, 3, C=1.0, n_folds=5, seed=0, knn=False)
    viewed = cv.cv_hits(X, y, 3, C=1.0, n_folds=5, seed=0, knn=False, views=V)
    assert sizes == [24] * 5 + [24 * 3] * 5  # each fold: its 24 items, then those and their 2 views each
    assert plain["probe"].shape == viewed["probe"].shape == (30,)


def test_views_are_refused_for_training_recipes_text_data_and_bad_counts(tmp_path: Path) -> None:
    assert get_recipe("views", 5).views == 4 and get_recipe("views:8", 5).name == "views:8"
    with pytest.raises(HeadstartError, match="frozen backbone"):
        Recipe("mine", (Phase("p", train_top=1, epochs=2),), views=4).validate()
    for bad in ("views:0", "views:x", "views:1000"):
        with pytest.raises(HeadstartError, match="views:K"):
            get_recipe(bad, 5)
    with pytest.raises(HeadstartError, match="views must be an integer"):
        Recipe.from_dict({"name": "r", "phases": [{"name": "h", "head_init": "probe"}], "views": -1})
    texts = _texts(tmp_path)
    from headstart.train import fit

    with pytest.raises(HeadstartError, match="image augmentations") as e:
        fit(texts, backbone="test_text_encoder", strategy="views", save=False, progress=False)
    assert str(texts) in str(e.value)


def test_compare_tests_views_on_every_labeled_item_and_prices_its_passes(data: Path, tmp_path: Path) -> None:
    from headstart.api import probe
    from headstart.verdicts.cheap_cv import frozen_head_hits
    from headstart.verdicts.select import frozen_head, head_passes

    assert frozen_head(f"views:{K}") and frozen_head("multi-depth") and not frozen_head("lp-ft")
    assert head_passes(f"views:{K}") == 1 + K and head_passes("multi-depth") == 1
    p = probe(data, backbone=TEST_BACKBONE, out=tmp_path / "probe", progress=False)
    _fit(data, tmp_path / "views")
    rows = [
        {"strategy": "probe", "run_dir": str(p.run_dir)},
        {"strategy": f"views:{K}", "run_dir": str(tmp_path / "views")},
    ]
    hits = frozen_head_hits(rows, data, seed=0, device="cpu")
    n_labeled = sum(1 for r in _split_rows(tmp_path / "views") if r["split"] != "test")
    assert set(hits) == {"probe", f"views:{K}"}
    for evidence in hits.values():  # every labeled item's k-fold correctness and tempered NLL
        assert len(evidence["correct"]) == len(evidence["nll"]) == n_labeled
        assert (evidence["nll"] > 0).all()
    from headstart.views import views_key

    # Each fold trained on its items' views: the val items' views were embedded too (test items' never).
    assert len(FeatureCache(views_key(create_backbone(TEST_BACKBONE), 0))) == K * n_labeled


def test_compare_refuses_views_on_text_before_the_probe_runs(tmp_path: Path) -> None:
    from headstart.verdicts.compare import compare

    texts = _texts(tmp_path)
    with pytest.raises(HeadstartError, match="image augmentations"):
        compare(texts, "test_text_encoder", strategies=["views"], out=tmp_path / "cmp", progress=False)
    assert not (tmp_path / "cmp" / "probe").exists()
