"""The packaged pretrained weights, for real (a few seconds each; CI runs them too)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from headstart.api import probe
from headstart.backbones import create_backbone
from headstart.fileio import sha256_file

EMOJI = Path(__file__).resolve().parents[1] / "examples" / "emoji" / "images"

pytestmark = pytest.mark.real_weights


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_packaged_weights_load_and_card_hash_matches_the_file(name: str) -> None:
    bb = create_backbone(name)
    assert bb.card.weights_file and sha256_file(bb.card.weights_file) == bb.card.weights_sha256
    assert bb.card.license == "Apache-2.0" and "ImageNet" in bb.card.pretraining_data
    assert bb.embed_dim == 1280 and bb.pretrained_classifier is not None


def test_lite0_separates_two_emoji_groups_far_better_than_chance(tmp_path: Path) -> None:
    data = tmp_path / "two"
    for group in ("flags", "food_drink"):
        shutil.copytree(EMOJI / group, data / group)
    report = probe(data, backbone="efficientnet_lite0", save=False, progress=False, val=0.25, test=0.25)
    test = report.metrics["test"]
    assert test["n"] == 20
    assert test["accuracy"] >= 0.9  # chance is 0.5
    assert report.metrics["embed"]["backend"] == "onnx"


def test_lp_ft_on_emoji_reaches_at_least_the_probe(tmp_path: Path) -> None:
    """LP-FT starts from the probe and keeps the best validation epoch: with real weights on the bundled
    example its test accuracy is at least the probe's, and its fine-tuning epochs ran sane (train-mode
    accuracy near the eval-mode one: BatchNorm statistics and the head's init did not blow up)."""
    from headstart.train import fit

    p = probe(EMOJI, backbone="efficientnet_lite0", save=False, progress=False)
    r = fit(EMOJI, backbone="efficientnet_lite0", strategy="lp-ft", epochs=2, save=False, progress=False)
    assert r.metrics["test"]["accuracy"] >= p.metrics["test"]["accuracy"]
    trained = [h for h in r.history if h["kind"] == "train"]
    assert len(trained) == 2
    assert all(h["train_acc"] > 0.6 and h["train_loss"] < 2.0 for h in trained), trained
