"""`headstart suggest`: the selector's guarantees, and the verb end to end on a tiny probe run."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder
from headstart.errors import HeadstartError
from headstart.explore.suggest import (
    COLD_START_PER_CLASS,
    STRATEGIES,
    k_center,
    margins,
    normalise,
    select,
    typical,
)


def _two_blobs(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points around (-2, 0) and (2, 0), and a head's probabilities with its boundary at x = 0."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(n, 2)) + np.where(np.arange(n)[:, None] % 2 == 0, [-2.0, 0.0], [2.0, 0.0])
    p1 = 1 / (1 + np.exp(-3 * U[:, 0]))
    return U.astype(np.float32), np.stack([1 - p1, p1], axis=1)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exactly_k_new_distinct_items_never_a_labeled_one_or_a_copy(strategy: str) -> None:
    U, P = _two_blobs()
    labeled = U[:5].copy()  # the first 5 candidates are already labeled
    U[10:20] = U[20]  # ten copies of candidate 20 (equal embeddings: the same content)
    P[10:20] = P[20]
    P[:5] = 0.5  # the labeled copies look the most uncertain of all: still never picked
    P[10:21] = 0.5
    picks = select(U, P, 30, labeled=labeled, strategy=strategy, seed=1)
    idx = [p.index for p in picks]
    assert len(idx) == 30 and len(set(idx)) == 30
    assert not set(idx) & set(range(5)), "suggested an item that is already labeled"
    assert len(set(idx) & set(range(10, 21))) <= 1, "suggested two copies of the same item"
    n_new = len(U) - 5 - 10
    with pytest.raises(HeadstartError, match=f"from {n_new} new candidate"):
        select(U, P, n_new + 1, labeled=labeled, strategy=strategy)
    with pytest.raises(HeadstartError, match="cannot suggest 0"):
        select(U, P, 0, labeled=labeled, strategy=strategy)


def test_margin_picks_the_items_nearest_the_boundary() -> None:
    U, P = _two_blobs()
    picks = select(U, P, 10, strategy="margin")
    nearest = np.argsort(np.abs(U[:, 0]))[:10]
    assert {p.index for p in picks} == set(nearest.tolist())
    np.testing.assert_allclose(margins(P)[[p.index for p in picks]], [p.margin for p in picks])


def test_margin_diverse_spreads_a_batch_over_different_confusions() -> None:
    """Three tight groups on the boundary, one much larger: margin alone asks about the large group only
    (its items are a hair more uncertain); the default spreads its 3 picks over the 3 groups."""
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    group = np.repeat([0, 1, 2], [40, 5, 5])
    U = (centres[group] + 0.01 * rng.normal(size=(50, 3))).astype(np.float32)
    m = np.where(group == 0, 0.01, 0.02) + 0.001 * rng.random(50)
    P = np.stack([(1 + m) / 2, (1 - m) / 2], axis=1)
    assert set(group[[p.index for p in select(U, P, 3, strategy="margin")]]) == {0}
    for strategy in ("margin-diverse", "margin-kcenter", "badge"):
        assert set(group[[p.index for p in select(U, P, 3, strategy=strategy, pool_factor=20)]]) == {0, 1, 2}


def test_badge_asks_where_the_head_is_unsure() -> None:
    """Gradient embeddings are long near the boundary: though k-means++ samples rather than sorts, at
    least 3/4 of BADGE's picks lie in the lowest-margin quarter (a random draw: about 1/4)."""
    U, P = _two_blobs(400)
    m = margins(P)
    picked = [p.index for p in select(U, P, 20, strategy="badge", seed=3)]
    assert np.mean(m[picked] <= np.quantile(m, 0.25)) >= 0.75


def _blobs(sizes: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs of these sizes in 8-D (blob i around 4 * e_i), and each row's blob."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(len(sizes)), sizes)
    U = 4.0 * np.eye(8)[group] + 0.5 * rng.normal(size=(len(group), 8))
    return U.astype(np.float32), group


@pytest.mark.parametrize("sample", [2000, 15])  # 15: large clusters judged on samples
def test_typical_covers_unlabeled_regions_with_their_densest_items(
    sample: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three blobs, the largest already labeled: the two picks are one per uncovered blob, each among
    the most central items of its blob (an outlier is never "typical")."""
    import headstart.explore.suggest as suggest

    monkeypatch.setattr(suggest, "TYPICAL_SAMPLE", sample)
    U, group = _blobs((60, 40, 20))
    labeled, cand, cand_group = U[:1], U[1:], group[1:]
    picks = [r for r, _ in typical(cand, labeled, 2, seed=0)]
    assert sorted(cand_group[picks].tolist()) == [1, 2]
    for r in picks:
        members = np.flatnonzero(cand_group == cand_group[r])
        centre = normalise(cand[members]).mean(axis=0)
        closeness = normalise(cand[members]) @ centre
        assert closeness[list(members).index(r)] >= np.quantile(closeness, 0.75)


def test_typical_margin_is_typical_at_cold_start_then_margin_diverse() -> None:
    U, P = _two_blobs(300)
    few, many = U[:2], U[: 2 * COLD_START_PER_CLASS]  # 2 classes: 1 and COLD_START_PER_CLASS per class
    cand, Pc = U[20:], P[20:]

    def picked(labeled: np.ndarray, strategy: str) -> list[int]:
        return [p.index for p in select(cand, Pc, 6, labeled=labeled, strategy=strategy, seed=2)]

    assert picked(few, "typical-margin") == [r for r, _ in typical(cand, few, 6, seed=2)]
    assert picked(few, "typical-margin") != picked(few, "margin-diverse")
    assert picked(many, "typical-margin") == picked(many, "margin-diverse")


def test_k_center_picks_lie_farther_apart_than_random_ones() -> None:
    rng = np.random.default_rng(0)
    Z = normalise(rng.normal(size=(300, 8)))

    def closest_pair(rows: list[int]) -> float:
        return min(float(1 - Z[a] @ Z[b]) for a, b in itertools.combinations(rows, 2))

    picked, _ = k_center(Z, np.zeros((0, 8), np.float32), 12)
    randoms = [closest_pair(rng.choice(300, 12, replace=False).tolist()) for _ in range(50)]
    assert closest_pair(picked) > max(randoms)
    # Seeded with labeled items, no pick lands on one of them.
    seeds = Z[:20]
    picked, at = k_center(Z[20:], seeds, 5)
    assert min(at) > 0 and all(float((1 - seeds @ Z[20 + j]).min()) >= at[-1] - 1e-6 for j in picked)


def test_cli_strategies_match_the_selector() -> None:
    import dataclasses

    from headstart.commands.suggest import _STRATEGIES, SuggestOptions
    from headstart.explore.suggest import DEFAULT_STRATEGY

    assert _STRATEGIES == STRATEGIES
    # typical-margin needed the fewest labels in benchmarks/suggest.py (docs/suggest.md); the verb and the
    # selector must agree on it.
    default = {f.name: f.default for f in dataclasses.fields(SuggestOptions)}["strategy"]
    assert default == DEFAULT_STRATEGY == "typical-margin"


# -- the verb ---------------------------------------------------------------------------------------------


@pytest.fixture
def probe_run(image_folder: Path, tmp_path: Path) -> Path:
    from headstart.api import probe

    probe(image_folder, backbone=TEST_BACKBONE, out=tmp_path / "run", backend="torch", progress=False)
    return tmp_path / "run"


def test_cli_suggests_new_items_as_json_and_csv(
    probe_run: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.cli import main

    unl = make_image_folder(tmp_path / "unlabeled", per_class=4, seed=7)
    copy = unl / "red" / "already_labeled.png"
    shutil.copy(image_folder / "red" / "red_000.png", copy)  # one the run has a label for
    out = tmp_path / "next.csv"
    argv = [
        "suggest",
        str(probe_run),
        str(unl),
        "--n",
        "3",
        "--json",
        "--backend",
        "torch",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout (no progress)
    assert [s["rank"] for s in res["suggestions"]] == [1, 2, 3]
    assert res["n_candidates"] == 9 and res["n_new"] == 8 and res["n_labeled"] == 20
    assert str(copy) not in {s["source"] for s in res["suggestions"]}
    assert all(s["predicted"] in ("red", "blue") and 0 <= s["margin"] <= 1 for s in res["suggestions"])
    margins_ = [s["margin"] for s in res["suggestions"]]
    assert margins_ == sorted(margins_)
    rows = list(csv.DictReader(out.open()))
    assert [r["source"] for r in rows] == [s["source"] for s in res["suggestions"]]
    # Asking for more than there is lists every new candidate, and says so.
    assert main([*argv[:3], "--n", "50", "--json", "--backend", "torch"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["suggestions"]) == 8 and "only 8" in res["notes"][0]
    assert main([*argv[:3], "--n", "2", "--backend", "torch"]) == 0  # the table
    shown = capsys.readouterr().out
    assert "Label these next: 2 of 9 candidates" in shown and res["suggestions"][0]["why"] in shown


def test_cli_refuses_bad_input_before_any_embedding(
    probe_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import headstart.features
    from headstart.cli import main

    def no_embedding(*a: object, **k: object) -> None:
        raise AssertionError("embedded before refusing the input")

    monkeypatch.setattr(headstart.features, "embed", no_embedding)
    unl = make_image_folder(tmp_path / "unlabeled", per_class=2)
    assert main(["suggest", "no/such/run", str(unl), "--n", "0"]) == 2
    assert "--n 0" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["suggest", str(probe_run), str(empty), "--n", "2"]) == 2
    assert f"no usable unlabeled image inputs in {empty}" in capsys.readouterr().err
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(3):
        (texts / f"{i}.txt").write_text("a sentence")
    assert main(["suggest", str(probe_run), str(texts), "--n", "2"]) == 2
    assert f"{texts} holds text inputs" in capsys.readouterr().err
