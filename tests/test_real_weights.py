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
