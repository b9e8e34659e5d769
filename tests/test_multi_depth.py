"""Multi-depth features (`depths:<backbone>`, the `multi-depth` recipe): every group's pooled output from one
forward pass, the plain embedding as its tail, its own cache identity, and a run that reloads the same
forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import TEST_BACKBONE, make_image_folder

from headstart.backbones import create_backbone
from headstart.errors import HeadstartError
from headstart.feature_cache import FeatureCache
from headstart.features import embed
from headstart.recipes import Recipe, get_recipe
from headstart.recipes.schema import Phase


@pytest.mark.parametrize("name", [TEST_BACKBONE, "test_text_encoder"])
def test_all_depths_is_every_group_pooled_with_the_plain_embedding_last(name: str) -> None:
    plain, deep = create_backbone(name).eval(), create_backbone(f"depths:{name}").eval()
    x = (
        plain.example_input(3)
        if name == TEST_BACKBONE
        else plain.collate([plain.load_item(t) for t in ("a b c", "d e", "f")])
    )
    with torch.no_grad():
        z, zz = plain(x), deep(x)
        widths, h = [], x
        for g in plain.groups:
            h = g(h)
            widths.append(plain.pool(h).shape[1])
    assert deep.name == f"depths:{name}" and deep.embed_dim == sum(widths) == zz.shape[1]
    torch.testing.assert_close(zz[:, -plain.embed_dim :], z)  # the probe's features are the tail
    assert deep.key != plain.key and deep.last_key == plain.key  # never mixed in the cache


def test_one_pass_fills_the_plain_backbones_cache_too(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", per_class=3)
    paths = sorted(str(p) for p in data.rglob("*.png"))
    deep = create_backbone(f"depths:{TEST_BACKBONE}")
    first = embed(deep, paths, progress=False, backend="torch")
    assert first.stats["forwards"] == len(paths)
    plain = create_backbone(TEST_BACKBONE)
    again = embed(plain, paths, progress=False, backend="torch")
    assert again.stats["forwards"] == 0 and again.stats["cache_hits"] == len(paths)
    np.testing.assert_allclose(again.X, first.X[:, -plain.embed_dim :])
    assert len(FeatureCache(deep.key)) == len(paths)


def test_the_recipe_runs_a_head_on_every_depth_and_predict_rebuilds_it(tmp_path: Path) -> None:
    from headstart.model import load_model
    from headstart.train import fit

    data = make_image_folder(tmp_path / "d", ("red", "blue", "green"), per_class=8)
    r = fit(data, backbone=TEST_BACKBONE, strategy="multi-depth", out=tmp_path / "run", progress=False)
    assert r.backbone == f"depths:{TEST_BACKBONE}"
    deep = create_backbone(f"depths:{TEST_BACKBONE}")
    assert r.metrics["trainable_params"] == 3 * (deep.embed_dim + 1)  # a head on every depth, nothing else
    m = load_model(tmp_path / "run")
    assert m.backbone.name == deep.name and m.backbone.embed_dim == deep.embed_dim
    files = sorted(str(p) for p in (data / "red").glob("*.png"))[:3]
    proba, _, bad = m.predict_proba(files)
    assert proba.shape == (3, 3) and not bad


def test_all_depths_features_are_refused_for_recipes_that_train_groups() -> None:
    assert get_recipe("multi-depth", 5).pooled == "all-depths"
    with pytest.raises(HeadstartError, match="frozen backbone"):
        Recipe("mine", (Phase("p", train_top=1, epochs=2),), pooled="all-depths").validate()


def _row(name: str, val: float, params: int) -> dict:
    return {"strategy": name, "val_accuracy": val, "trainable_params": params, "stored_bytes": params}


def test_a_frozen_head_that_wins_on_every_item_but_trails_on_val_is_still_chosen() -> None:
    """The k-fold test on every labeled item outweighs a few val items: the winner sets the bar even
    where the probe's val score is higher (this once crashed: the probe became "the best")."""
    from headstart.verdicts.select import select

    val = {"probe": np.array([True] * 30 + [False] * 10), "multi-depth": np.array([True] * 29 + [False] * 11)}
    rows = [_row("probe", 0.75, 100), _row("multi-depth", 0.725, 200)]
    cv = {
        "probe": np.array([True] * 210 + [False] * 90),
        "multi-depth": np.array([True] * 246 + [False] * 54),
    }
    chosen = select(rows, val, cv_correct=cv)
    assert chosen["strategy"] == "multi-depth" and chosen["best"] == "multi-depth" and chosen["separated"]


def test_the_holm_level_goes_to_each_test_by_the_items_it_reads() -> None:
    """A frozen head's k-fold test on 300 items and two fine-tunes' on 50 val items: weighted Holm spends
    the level where the evidence is. 6 items all the head's way (McNemar p 0.031) win at weights
    300:50:50 (0.031 x 400/300 = 0.042) and would not at equal ones (0.031 x 3 = 0.094)."""
    from headstart.verdicts.select import select

    base = np.array([True] * 30 + [False] * 20)
    val = {"probe": base, "multi-depth": base.copy()}
    rows = [_row("probe", 0.6, 100), _row("multi-depth", 0.6, 200)]
    for name, shift in (("lp-ft", 1), ("full", 2)):  # one item either way: a tie, still a test
        c = base.copy()
        c[29], c[30 + shift] = False, True
        val[name] = c
        rows.append(_row(name, 0.6, 10_000))
    head = np.array([True] * 200 + [False] * 100)
    cv = {"probe": head, "multi-depth": head.copy()}
    cv["multi-depth"][200:206] = True
    chosen = select(rows, val, cv_correct=cv)
    t = chosen["tests"]["multi-depth"]
    assert t["n"] == 300 and t["p"] == pytest.approx(2 * 0.5**6)
    assert t["p_holm"] == pytest.approx(t["p"] * 400 / 300) and chosen["strategy"] == "multi-depth"
    assert 3 * t["p"] > 0.05  # plain Holm over the three would have kept the probe


def test_a_frozen_head_is_tested_against_the_probe_on_every_labeled_item() -> None:
    from headstart.verdicts.select import select

    # On 40 val items the two heads differ by 3 items: noise. On 300 train+val items, k-fold, by 36.
    val = {"probe": np.array([True] * 30 + [False] * 10), "multi-depth": np.array([True] * 33 + [False] * 7)}
    rows = [_row("probe", 0.75, 100), _row("multi-depth", 0.825, 200)]
    assert select(rows, val)["strategy"] == "probe"
    cv = {
        "probe": np.array([True] * 210 + [False] * 90),
        "multi-depth": np.array([True] * 246 + [False] * 54),
    }
    chosen = select(rows, val, cv_correct=cv)
    assert chosen["strategy"] == "multi-depth" and chosen["separated"]
    assert "300 train+val items" in chosen["reason"]
    # A tie on every labeled item stays a tie, and the probe (cheaper) is kept.
    tie = {"probe": cv["probe"], "multi-depth": np.roll(cv["probe"], 1)}
    kept = select(rows, val, cv_correct=tie)
    assert kept["strategy"] == "probe" and "train+val" in kept["reason"]


def test_the_frozen_heads_likelihood_test_reads_each_items_mean_over_the_same_fold_draws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each item's NLL in the frozen heads' k-fold test is its mean over TEST_PASSES fold draws, the same
    draws for every head (so the test stays paired item by item, and one draw's luck averages out: the
    measurement is in docs/compare.md); the accuracy check reads the first draw, the folds of before."""
    from headstart.calibration import tempered_nll
    from headstart.verdicts import cheap_cv
    from headstart.verdicts.select import TEST_PASSES

    data = make_image_folder(tmp_path / "d", ("red", "blue", "green"), per_class=10)
    heads = {"probe": (TEST_BACKBONE, 1.0, 0), "multi-depth": (f"depths:{TEST_BACKBONE}", 1.0, 0)}
    calls: dict[int, list[tuple[int, np.ndarray, dict]]] = {}  # feature width -> (seed, labels, hits)
    real = cheap_cv.cv_hits

    def spy(X, y, n_classes, **kw):
        hit = real(X, y, n_classes, **kw)
        calls.setdefault(X.shape[1], []).append((kw["seed"], y, hit))
        return hit

    monkeypatch.setattr(cheap_cv, "cv_hits", spy)
    hits = cheap_cv.paired_head_hits(data, heads, seed=7, device="cpu")
    assert TEST_PASSES >= 3 and len(calls) == 2  # the two heads' widths differ
    seeds = [[s for s, _, _ in c] for c in calls.values()]
    assert seeds[0] == seeds[1] and len(set(seeds[0])) == TEST_PASSES and seeds[0][0] == 7
    for k, passes in zip(hits, calls.values(), strict=True):
        y = passes[0][1]
        assert len({h["probe_logits"].tobytes() for _, _, h in passes}) > 1  # the draws differ
        mean = np.mean([tempered_nll(h["probe_logits"], y)[1] for _, _, h in passes], axis=0)
        assert np.allclose(hits[k]["nll"], mean), k
        assert np.array_equal(hits[k]["correct"], passes[0][2]["probe"]), k
