"""Label smoothing and mixup (recipe phase fields): the loss they define, and where they are refused.

The loss: smoothing s gives cross-entropy against (1 - s) on the label plus s spread over the classes;
a mixed batch's loss is lam x CE(own labels) + (1 - lam) x CE(partners' labels), and the inputs were
mixed with the same weights. A fit with them trains (its history differs from the plain recipe's under
the same seed) and is refused before any decoding for text data, with another objective, and in task
shapes that have no class labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import TEST_BACKBONE, make_image_folder
from headstart.errors import HeadstartError
from headstart.recipes import Phase
from headstart.train.objective import Mix, Step, mix_batch, step_cross_entropy


def _step(z: torch.Tensor, y: torch.Tensor, **kw: object) -> Step:
    g = torch.Generator().manual_seed(0)
    return Step(None, None, z, None, y, torch.arange(len(y)), 0, False, g, 0.0, **kw)  # type: ignore[arg-type]


def test_smoothing_is_cross_entropy_against_smoothed_targets() -> None:
    z, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    s = 0.2
    target = torch.full((6, 4), s / 4) + (1 - s) * F.one_hot(y, 4)
    want = -(target * z.log_softmax(1)).sum(1).mean()
    assert torch.allclose(step_cross_entropy(_step(z, y, label_smoothing=s)), want, atol=1e-6)
    assert not torch.allclose(step_cross_entropy(_step(z, y)), want)  # smoothing changed it


def test_mixup_mixes_inputs_and_labels_alike() -> None:
    g = torch.Generator().manual_seed(3)
    h = torch.randn(8, 3, 4, 4)
    mixed, mix = mix_batch(h, 0.4, g)
    assert 0.0 < mix.lam < 1.0 and sorted(mix.perm.tolist()) == list(range(8))
    assert torch.allclose(mixed, mix.lam * h + (1 - mix.lam) * h[mix.perm])
    z, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    got = step_cross_entropy(_step(z, y, mix=mix))
    want = mix.lam * F.cross_entropy(z, y) + (1 - mix.lam) * F.cross_entropy(z, y[mix.perm])
    assert torch.allclose(got, want, atol=1e-6)
    again, mix2 = mix_batch(h, 0.4, torch.Generator().manual_seed(3))  # a seed repeats the draw
    assert mix2.lam == mix.lam and torch.equal(again, mixed)
    assert step_cross_entropy(_step(z, y, mix=Mix(torch.arange(8), 0.3))).item() == pytest.approx(
        F.cross_entropy(z, y).item(), abs=1e-6
    )  # mixed with itself: the plain loss


def test_out_of_range_values_are_refused() -> None:
    for kw in ({"label_smoothing": 1.0}, {"label_smoothing": -0.1}, {"mixup": -1.0}):
        with pytest.raises(HeadstartError, match="label_smoothing and ema must be in"):
            Phase("p", **kw).validate()  # type: ignore[arg-type]


def _recipe(folder: Path, **phase: object) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    p = {"name": "ft", "train_top": 1, "epochs": 2, "head_init": "probe", "augment": False, **phase}
    (folder / "recipe.json").write_text(json.dumps({"name": "regularised", "phases": [p]}))
    return str(folder / "recipe.json")


def test_a_fit_with_them_trains_and_differs_from_the_plain_one(tmp_path: Path) -> None:
    from headstart.train import fit

    data = make_image_folder(tmp_path / "data", ("red", "blue", "green"), per_class=10)
    losses = {}
    for name, kw in (("plain", {}), ("both", {"label_smoothing": 0.1, "mixup": 0.4})):
        out = tmp_path / f"run-{name}"
        rep = fit(
            data, backbone=TEST_BACKBONE, strategy=_recipe(tmp_path / name, **kw), out=out, progress=False
        )
        losses[name] = [round(r["train_loss"], 6) for r in rep.history if "train_loss" in r]
        run = json.loads((out / "run.json").read_text())
        assert run["recipe"]["phases"][0]["mixup"] == kw.get("mixup", 0.0)
    assert len(losses["both"]) == len(losses["plain"]) > 0 and losses["both"] != losses["plain"]


def test_refused_before_decoding_where_they_cannot_apply(tmp_path: Path) -> None:
    from headstart.train import fit

    texts = tmp_path / "t.csv"
    texts.write_text("text,label\n" + "".join(f"item {i},{'ab'[i % 2]}\n" for i in range(12)))
    with pytest.raises(HeadstartError, match="mixup applies to image data"):
        fit(
            texts,
            backbone="test_text_encoder",
            strategy=_recipe(tmp_path / "m", mixup=0.2),
            out=tmp_path / "r",
        )
    assert not (tmp_path / "r" / "run.json").exists()
    images = make_image_folder(tmp_path / "data", ("red", "blue"), per_class=6)
    with pytest.raises(HeadstartError, match="no class labels for label_smoothing"):
        fit(
            images,
            backbone=TEST_BACKBONE,
            task="regress",
            strategy=_recipe(tmp_path / "s", label_smoothing=0.1),
            out=tmp_path / "r2",
        )
