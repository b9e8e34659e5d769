"""Domain-adversarial training (DANN): the reversal layer, the schedule, the wiring, and that it adapts.

The adaptation test is Ganin et al.'s toy: two interleaving moons, the target rotated by 40 degrees, a
small MLP backbone (a real `Backbone` whose inputs are "x,y" strings). Source-only training learns a
boundary that the rotation crosses; DANN, with the same recipe and seed, must do clearly better on the
rotated moons. Measured over seeds 0-7 while writing this test: DANN won on every seed, by 0.01-0.31
(mean +0.12); the three seeds used here gain 0.21, 0.15 and 0.10.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TEST_BACKBONE, draw_item, make_image_folder
from headstart.backbones.base import Backbone, BackboneCard, PreprocessConfig
from headstart.errors import HeadstartError
from headstart.recipes import Phase, Recipe
from headstart.train.dann import DomainAdversarial, ganin_lambda, reverse_gradient
from headstart.train.data import Split
from headstart.train.loop import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_gradient_reversal_flips_and_scales_the_gradient() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    (reverse_gradient(x, 0.5) * torch.arange(3.0)).sum().backward()
    assert torch.equal(reverse_gradient(x, 0.5), x)
    assert torch.allclose(x.grad, -0.5 * torch.arange(3.0).expand(4, 3))


def test_ganin_schedule() -> None:
    assert ganin_lambda(0.0) == 0.0
    assert ganin_lambda(0.5) == pytest.approx(0.9866, abs=1e-4)
    assert 0.999 < ganin_lambda(1.0) < 1.0


# -- the toy shift -------------------------------------------------------------------------------------


class VectorBackbone(Backbone):
    """Inputs are "x,y" strings: lets a 2-D toy problem run through the real Trainer."""

    supports_onnx = False

    def load_item(self, source: str, **options: object) -> np.ndarray:
        return np.array([float(v) for v in source.split(",")], dtype=np.float32)

    def item_hash(self, source: str) -> str:
        return source


def mlp_backbone(seed: int, hidden: int = 32) -> Backbone:
    torch.manual_seed(seed)
    groups: list[tuple[str, nn.Module]] = [
        ("input", nn.Identity()),
        ("h1", nn.Sequential(nn.Linear(2, hidden), nn.ReLU())),
        ("h2", nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())),
    ]
    card = BackboneCard(
        name="mlp",
        family="mlp",
        source="test",
        version="0",
        weights_sha256=None,
        license="MIT",
        pretraining_data="none",
        paper="",
        embed_dim=hidden,
    )
    prep = PreprocessConfig(input_size=2, resize=2, mean=(0, 0, 0), std=(1, 1, 1))
    return VectorBackbone(
        name="mlp",
        card=card,
        preprocess=prep,
        embed_dim=hidden,
        groups=groups,
        pool=nn.Identity(),
        modality="vector",
    )


def moons(n: int, rng: np.random.Generator, angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    t = rng.uniform(0, np.pi, n)
    y = rng.integers(0, 2, n)
    x = np.where(y[:, None] == 0, np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    x = x - [0.5, 0.25] + rng.normal(0, 0.1, (n, 2))
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (x @ rot.T).astype(np.float32), y


def _sources(x: np.ndarray) -> list[str]:
    return [f"{a!r},{b!r}" for a, b in x.tolist()]


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(list(x), torch.as_tensor(y, dtype=torch.long), _sources(x))


def _target_accuracy(seed: int, dann: bool) -> float:
    rng = np.random.default_rng(seed)
    xs, ys = moons(200, rng)
    xv, yv = moons(60, rng)
    xt, _ = moons(200, rng, 40)
    xtt, ytt = moons(200, rng, 40)
    bb = mlp_backbone(seed)
    phase = Phase(
        "all",
        train_top="all",
        epochs=40,
        lr=3e-2,
        backbone_lr_ratio=1.0,
        head_init="zeros",
        patience=None,
        weight_decay=0.0,
    )
    objective = DomainAdversarial(_sources(xt), weight=1.0) if dann else None
    # fp32 pinned: `auto` picks bf16 where a timed step says it is faster, and a busy suite can say so
    # for this MLP; in bf16 seed 2 gave DANN 0.695 against 0.755 (fp32: 0.805 against 0.705).
    tr = Trainer(
        bb, 2, Recipe("toy", (phase,)), seed=seed, objective=objective, augment=False, precision="fp32"
    )
    tr.fit(_split(xs, ys), _split(xv, yv))
    z = tr.logits("target-test", _split(xtt, ytt), k=len(bb.groups))
    return float((z.argmax(1) == torch.as_tensor(ytt)).float().mean())


def test_dann_beats_source_only_on_rotated_moons() -> None:
    gains = []
    for seed in (0, 1, 2):
        src, dann = _target_accuracy(seed, False), _target_accuracy(seed, True)
        gains.append(dann - src)
        assert dann > src, (seed, src, dann)
    assert np.mean(gains) > 0.08, gains


# -- the wiring through fit() ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shift(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shift")
    data = make_image_folder(root / "data", ("red", "blue", "green"), per_class=8)
    target = root / "target"
    target.mkdir()
    for i in range(12):  # the same kinds of pictures, colours inverted
        img = draw_item(("red", "blue", "green")[i % 3], 90_000 + i)
        img.point(lambda v: 255 - v).save(target / f"{i:02d}.png")
    (target / "broken.png").write_bytes(b"not an image")
    return data, target


def test_fit_records_the_objective_and_skips_bad_target_files(
    shift: tuple[Path, Path], tmp_path: Path
) -> None:
    from headstart.train import fit

    data, target = shift
    r = fit(
        data,
        backbone=TEST_BACKBONE,
        strategy="partial:1",
        epochs=1,
        out=tmp_path / "run",
        target_unlabeled=target,
        domain_weight=0.5,
        progress=False,
        augment=False,
    )
    obj = json.loads((r.run_dir / "run.json").read_text())["objective"]
    assert obj["name"] == "domain-adversarial" and obj["weight"] == 0.5
    assert obj["n_target"] == 12 and obj["skipped_target"] == 1
    assert 0.0 <= obj["domain_acc"] <= 1.0


def test_strategy_that_trains_no_group_is_refused(shift: tuple[Path, Path]) -> None:
    from headstart.train import fit

    data, target = shift
    with pytest.raises(HeadstartError, match="trains none"):
        fit(
            data, backbone=TEST_BACKBONE, strategy="head", save=False, target_unlabeled=target, progress=False
        )
    with pytest.raises(HeadstartError, match="domain-weight"):
        DomainAdversarial(["a"], weight=-1)
