"""Verdicts without fine-tuning: LogME, rank, domain distance, leakage, curve, recommendation."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TEST_BACKBONE, draw_item, make_image_folder
from headstart.data import Dataset, Item, load_dataset
from headstart.data.leakage import dedupe, find_leaks, normalise_text, phash_image
from headstart.verdicts.logme import log_evidence, logme, logme_evidences
from headstart.verdicts.recommend import FAR_DOMAIN, LARGE_PER_CLASS, agree, recommend

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# -- LogME ---------------------------------------------------------------------------------------------


def _direct_log_evidence(F: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> float:
    """log N(t; 0, I/beta + F F^T/alpha): the marginal likelihood written out, with a dense inverse."""
    n = len(t)
    S = np.eye(n) / beta + F @ F.T / alpha
    _, logdet = np.linalg.slogdet(S)
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + t @ np.linalg.inv(S) @ t))


def test_logme_matches_the_marginal_likelihood_at_a_fixed_point() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    F = rng.normal(size=(30, 5))
    F[:, 0] += 2.0 * (y == 0)
    F[:, 1] += 2.0 * (y == 1)
    F[:, 2] += 2.0 * (y == 2)
    evs = logme_evidences(F, y)
    for c, ev in enumerate(evs):
        t = (y == c).astype(float)
        a, b = ev.alpha, ev.beta
        assert ev.iterations < 100  # an interior optimum, reached
        assert ev.log_evidence == pytest.approx(_direct_log_evidence(F, t, a, b), rel=1e-9)
        assert log_evidence(F, t, a, b) == ev.log_evidence
        # MacKay's fixed point, with the posterior mean from a dense inverse.
        A = a * np.eye(5) + b * F.T @ F
        m = b * np.linalg.inv(A) @ F.T @ t
        gamma = np.trace(b * np.linalg.inv(A) @ F.T @ F)
        assert a == pytest.approx(gamma / (m @ m), rel=1e-4)
        assert b == pytest.approx((30 - gamma) / np.sum((F @ m - t) ** 2), rel=1e-4)
        # A maximum: moving alpha or beta by 10 % either way lowers the evidence.
        for da, db in ((1.1, 1), (0.9, 1), (1, 1.1), (1, 0.9)):
            assert _direct_log_evidence(F, t, a * da, b * db) < ev.log_evidence
    assert logme(F, y) == pytest.approx(np.mean([e.log_evidence for e in evs]) / 30)


def test_log_evidence_formula_with_more_features_than_items() -> None:
    rng = np.random.default_rng(1)
    F = rng.normal(size=(7, 20))  # D > n: 13 directions of F^T F are exactly zero
    t = (rng.random(7) > 0.5).astype(float)
    for alpha, beta in ((1.0, 1.0), (0.3, 5.0), (40.0, 0.7)):
        assert log_evidence(F, t, alpha, beta) == pytest.approx(
            _direct_log_evidence(F, t, alpha, beta), rel=1e-9
        )


def test_logme_prefers_features_that_carry_the_labels() -> None:
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 25)
    noise = rng.normal(size=(100, 32))
    informative = noise.copy()
    informative[:, :4] += 3.0 * np.eye(4)[y]
    assert logme(informative, y) > logme(noise, y)


# -- rank ----------------------------------------------------------------------------------------------


def test_rank_returns_finite_sorted_rows(three_class_folder: Path) -> None:
    from headstart.verdicts.rank import knn_loo_accuracy, rank_backbones, ranking_summary

    rows = rank_backbones(three_class_folder, [TEST_BACKBONE], progress=False, backend="torch", probe_folds=2)
    (row,) = rows
    for key in ("logme", "knn_accuracy", "probe_cv_accuracy", "embed_s", "score_s", "finetune_step_s"):
        assert np.isfinite(row[key]), key
    assert row["n"] == 30  # train + val of 36 (test left out)
    assert 0 <= row["knn_accuracy"] <= 1 and 0 <= row["probe_cv_accuracy"] <= 1
    assert row["finetune_estimate_s"] == pytest.approx(row["finetune_step_s"] * row["finetune_steps"])
    assert row["rank_s"] == pytest.approx(row["embed_s"] + row["score_s"] + row["estimate_s"])
    assert ranking_summary(rows)["rank_s"] == pytest.approx(row["rank_s"])
    # kNN leave-one-out never counts an item as its own neighbour: duplicated points of two classes.
    X = np.array([[1.0, 0], [1.0, 0.01], [0, 1.0], [0.01, 1.0]])
    assert knn_loo_accuracy(X, np.array([0, 0, 1, 1]), k=1) == 1.0
    assert knn_loo_accuracy(X, np.array([0, 1, 0, 1]), k=1) == 0.0


def test_step_timing_is_remembered_per_backbone_and_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from headstart.backbones import create_backbone
    from headstart.verdicts.rank import finetune_epochs, finetune_step_seconds

    bb = create_backbone(TEST_BACKBONE)
    first = finetune_step_seconds(bb)
    assert first > 0

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("timed a step again")

    monkeypatch.setattr(torch.optim, "SGD", no_training)
    assert finetune_step_seconds(bb) == first  # from the cache's memo: no step run
    assert finetune_step_seconds(bb, batch_size=64) == pytest.approx(2 * first)
    with pytest.raises(AssertionError, match="timed a step again"):
        finetune_step_seconds(bb, cache=False)
    assert finetune_epochs() == 8  # the `full` recipe the estimate prices


def test_the_timed_step_lays_images_out_as_the_trainer_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Channels-last, as train.classify trains images: a contiguous timing priced a Lite0 step at ~1.9x
    the Trainer's real one (Zen 4), and plans gave fine-tunes half their epochs."""
    import torch

    from headstart.backbones import Backbone, create_backbone
    from headstart.verdicts.rank import train_step_seconds

    seen: list[bool] = []
    forward = Backbone.forward

    def spy(self: Backbone, x: torch.Tensor) -> torch.Tensor:
        seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return forward(self, x)

    monkeypatch.setattr(Backbone, "forward", spy)
    bb = create_backbone(TEST_BACKBONE)
    train_step_seconds(bb, [2, 2])
    assert seen[-2:] == [True, True], seen  # the timed steps' forwards (one micro-batch each)
    w = next(p for p in bb.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert w.is_contiguous()  # the caller's backbone is left as it was (the step ran on a copy)


# -- leakage -------------------------------------------------------------------------------------------


def _texture(seed: int, size: int = 48) -> Image.Image:
    """A distinct picture per seed: a random 6x6 colour grid, smoothly upscaled (pHashes ~32 bits apart;
    plain shapes on flat backgrounds, like conftest's drawings, are too alike for a perceptual hash)."""
    grid = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(grid, "RGB").resize((size, size), Image.Resampling.BICUBIC)


def _split_folder(root: Path) -> Path:
    seed = 0
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        for label in ("red", "blue"):
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                seed += 1
                _texture(seed).save(root / split / label / f"{label}_{i:03d}.png")
    return root


def test_leakage_finds_exact_and_resized_copies_and_dedupe_removes_them(tmp_path: Path) -> None:
    root = _split_folder(tmp_path / "data")
    clean = find_leaks(load_dataset(root))
    assert clean["n_exact"] == 0 and clean["n_near"] == 0
    src_exact = root / "train" / "red" / "red_000.png"
    src_near = root / "train" / "blue" / "blue_001.png"
    shutil.copy(src_exact, root / "test" / "red" / "copied.png")
    big = Image.open(src_near).convert("RGB").resize((75, 75), Image.Resampling.BICUBIC)
    big.save(root / "val" / "blue" / "resized.jpg", quality=80)
    ds = load_dataset(root)
    report = find_leaks(ds)
    assert report["n_exact"] == 1 and report["n_near"] == 1
    assert report["exact"][0] == {
        "a": str(src_exact),
        "b": str(root / "test/red/copied.png"),
        "splits": ["train", "test"],
    }
    near = report["near"][0]
    assert (near["a"], near["b"], near["splits"]) == (
        str(src_near),
        str(root / "val/blue/resized.jpg"),
        ["train", "val"],
    )
    deduped = dedupe(ds, report)
    assert len(deduped.items) == len(ds.items) - 2
    kept = {str(it.path) for it in deduped.items}
    assert str(src_exact) in kept and str(src_near) in kept
    again = find_leaks(deduped)
    assert again["n_exact"] == 0 and again["n_near"] == 0


def test_phash_separates_different_pictures(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    draw_item("red", 0, size=64).save(a)
    draw_item("blue", 1, size=64).transpose(Image.Transpose.ROTATE_90).save(b)
    assert bin(phash_image(str(a)) ^ phash_image(str(b))).count("1") > 6


def test_text_leakage_uses_the_normalised_text() -> None:
    assert normalise_text("  Hello,   World!\n") == normalise_text("hello world")
    items = [
        Item(Path("r1"), "pos", "train", text="Great movie, loved it!"),
        Item(Path("r2"), "pos", "test", text="great   movie loved it"),
        Item(Path("r3"), "neg", "val", text="Great movie, loved it!"),
        Item(Path("r4"), "neg", "test", text="terrible"),
    ]
    ds = Dataset(root=Path("."), items=items, classes=["neg", "pos"], layout="manifest", modality="text")
    report = find_leaks(ds)
    assert [(r["a"], r["b"]) for r in report["exact"]] == [("r1", "r3")]
    assert [(r["a"], r["b"]) for r in report["near"]] == [("r1", "r2")]
    assert [str(it.path) for it in dedupe(ds, report).items] == ["r1", "r4"]


def test_leakage_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from headstart.cli import main

    root = _split_folder(tmp_path / "data")
    shutil.copy(root / "train/red/red_001.png", root / "val/red/dup.png")
    out = tmp_path / "dedup.csv"
    assert main(["leakage", str(root), "--json", "--dedupe", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_exact"] == 1
    assert "dup.png" not in out.read_text() and len(load_dataset(out).items) == 24


# -- curve ---------------------------------------------------------------------------------------------


def test_curve_rises_with_labels_and_writes_json_and_png(tmp_path: Path) -> None:
    from headstart.verdicts.curve import PIXELS, PROBE, label_curve, label_sizes, summarise

    assert label_sizes(60) == [5, 10, 20, 50, 60] and label_sizes(50) == [5, 10, 20, 50]
    root = make_image_folder(tmp_path / "d", classes=("red", "blue", "green"), per_class=24)
    curve = label_curve(
        root,
        TEST_BACKBONE,
        seeds=3,
        sizes=[2, 12],
        baseline="pixels",
        out=tmp_path / "out",
        backend="torch",
        progress=False,
    )
    assert curve["labels_per_class"] == [2, 12]
    assert len(curve["points"]) == 2 * 3 * 2
    assert set(curve["points"][0]) == {"method", "labels_per_class", "seed", "test_accuracy"}
    summ = summarise(curve)
    for method in (PROBE, PIXELS):
        (_, low, _), (_, high, _) = summ[method]
        assert high >= low, method
    saved = json.loads((tmp_path / "out/curve.json").read_text())
    assert saved["points"] == curve["points"]
    assert (tmp_path / "out/curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- recommendation ------------------------------------------------------------------------------------

SMALL, LARGE = LARGE_PER_CLASS // 4, LARGE_PER_CLASS * 2
NEAR, FAR = FAR_DOMAIN / 2, (1 + FAR_DOMAIN) / 2


@pytest.mark.parametrize(
    ("per_class", "distance", "probe", "strategy"),
    [
        (SMALL, NEAR, 0.7, "head"),
        (SMALL, FAR, 0.7, "partial:2"),
        (LARGE, NEAR, 0.7, "full"),
        (LARGE, FAR, 0.7, "full"),
        (LARGE, FAR, 0.99, "head"),  # the probe is already near perfect
        (SMALL, None, None, "head"),
    ],
)
def test_recommend_table(per_class: int, distance: float | None, probe: float | None, strategy: str) -> None:
    rec = recommend(per_class, distance, probe)
    assert rec["strategy"] == strategy
    assert rec["reason"].endswith(".") and rec["reason"].count(". ") == 0  # one sentence


def test_agree_with_compare_rows() -> None:
    rows = [
        {"strategy": "head", "val_accuracy": 0.80},
        {"strategy": "partial:3", "val_accuracy": 0.86},
        {"strategy": "full", "val_accuracy": 0.85},
    ]
    assert agree({"strategy": "full"}, rows)["agrees"] is True
    res = agree({"strategy": "partial:2"}, rows)  # matched by family
    assert res["agrees"] is True and res["recommended_row"] == "partial:3"
    res = agree({"strategy": "head"}, rows)
    assert res["agrees"] is False and res["best"] == "partial:3" and res["gap"] == pytest.approx(0.06)
    assert agree({"strategy": "lp-ft"}, rows)["agrees"] is None


# -- domain distance -----------------------------------------------------------------------------------


def test_domain_distance_without_a_pretrained_classifier_uses_batchnorm(three_class_folder: Path) -> None:
    from headstart.verdicts.domain import domain_distance, semantic_distance

    r = domain_distance(three_class_folder, TEST_BACKBONE, bn_sample=8, backend="torch", progress=False)
    assert r["classifier"] is None and r["terms"]["semantic"] is None
    assert 0 <= r["distance"] <= 1 and r["distance"] == r["terms"]["low_level"]
    # The semantic term: predictions that name the class exactly -> 0; predictions unrelated -> ~1.
    y = np.repeat([0, 1, 2], 20)
    assert semantic_distance(np.eye(5)[y] * 50, y) == pytest.approx(0, abs=1e-6)
    assert semantic_distance(np.zeros((60, 5)), y) == pytest.approx(1)


@pytest.mark.real_weights
def test_domain_emoji_closer_than_digits(tmp_path: Path) -> None:
    from headstart.verdicts.domain import domain_distance

    sys.path.insert(0, str(EXAMPLES))
    from build_digits import build

    build(tmp_path / "digits", per_class=4)
    emoji = sorted((EXAMPLES / "emoji/images").glob("*/*.png"))[::9][:40]
    labels = [p.parent.name for p in emoji]
    kw = {"bn_sample": 16, "backend": "torch", "progress": False}
    near = domain_distance([str(p) for p in emoji], "efficientnet_lite0", labels=labels, **kw)
    far = domain_distance(tmp_path / "digits", "efficientnet_lite0", **kw)
    assert near["n"] == 40 and far["n"] == 40
    assert near["distance"] < far["distance"]
    assert near["terms"]["semantic"] < far["terms"]["semantic"]
    assert near["terms"]["low_level"] < far["terms"]["low_level"]


# -- validation datasets -------------------------------------------------------------------------------


def test_build_digits_and_fashion_mnist(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    import build_digits
    import build_fashion_mnist

    assert build_digits.build(tmp_path / "digits", per_class=2, size=32) == {str(c): 2 for c in range(10)}
    assert Image.open(next((tmp_path / "digits/7").iterdir())).size == (32, 32)
    if not (build_fashion_mnist.SOURCE / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            f"Fashion-MNIST not installed at {build_fashion_mnist.SOURCE} (apt install dataset-fashion-mnist)"
        )
    counts = build_fashion_mnist.build(tmp_path / "fashion", per_class=3)
    assert counts == {c: 3 for c in build_fashion_mnist.CLASSES}
    ds = load_dataset(tmp_path / "fashion")
    assert len(ds.items) == 30 and Image.open(ds.items[0].path).size == (28, 28)


def test_text_steps_are_priced_at_the_length_their_batches_pad_to() -> None:
    """A random batch pads to its longest text: the plan prices a step at the expected longest of a
    batch (exact, by counting draws), never below the timed 64 tokens."""
    import itertools
    import math

    from headstart.verdicts.plan import padded_scale

    assert padded_scale(None, 32) == 1.0 and padded_scale([10] * 50, 32) == 1.0  # short texts: never cheaper
    assert padded_scale([128] * 50, 32) == 2.0
    assert padded_scale([64, 256], 32) == 4.0  # a batch larger than the split holds all of it
    lengths = [70, 80, 100, 130, 200, 260]  # every 3-of-6 draw enumerated
    draws = list(itertools.combinations(lengths, 3))
    expected = sum(max(d) for d in draws) / len(draws)
    assert len(draws) == math.comb(6, 3)
    assert padded_scale(lengths, 3) == pytest.approx(expected / 64)
