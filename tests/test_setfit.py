"""The setfit strategy: balanced, seeded pairs of training items, SetFit's cosine-similarity loss, a fit whose
run predicts like any fine-tuned text run, and the refusals (not a text encoder, a class without a pair)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import TEST_BACKBONE

from headstart.errors import HeadstartError
from headstart.recipes import Phase, Recipe, get_recipe
from headstart.train.setfit import PairSampler, cosine_pair_loss
from test_text import animal_vehicle_rows, write_csv


def test_pairs_are_balanced_same_and_other_class_training_items_and_seeded() -> None:
    y = torch.tensor([0, 1, 0, 2, 1, -1, 0, 1, 2, 1, 1, -1])  # -1: unlabeled, never a partner
    anchors = torch.nonzero(y >= 0).squeeze(1)
    sampler = PairSampler(y, 3)
    seen: dict[int, set[int]] = {int(a): set() for a in anchors}
    for seed in range(200):
        pos, neg = sampler.partners(anchors, torch.Generator().manual_seed(seed))
        assert len(pos) == len(neg) == len(anchors)  # one positive and one negative per anchor: balanced
        assert bool((y[pos] == y[anchors]).all()) and bool((pos != anchors).all())
        assert bool((y[neg] != y[anchors]).all()) and bool((y[neg] >= 0).all())
        for a, p in zip(anchors.tolist(), pos.tolist(), strict=True):
            seen[a].add(p)
    # Every other item of the anchor's class is drawn (uniform over the others, the anchor itself never).
    for a, partners in seen.items():
        assert partners == {int(i) for i in torch.nonzero(y == y[a]).squeeze(1)} - {a}
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a1, a2, b = (
        sampler.partners(anchors, g(7)),
        sampler.partners(anchors, g(7)),
        sampler.partners(anchors, g(8)),
    )
    assert all(torch.equal(x, z) for x, z in zip(a1, a2, strict=True))
    assert not all(torch.equal(x, z) for x, z in zip(a1, b, strict=True))


def test_cosine_pair_loss_on_a_hand_case() -> None:
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    v = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
    # cos = 0, 1, 1/sqrt(2); targets 1, 1, 0: squared errors 1, 0, 1/2.
    loss = cosine_pair_loss(u, v, torch.tensor([1.0, 1.0, 0.0]))
    assert float(loss) == pytest.approx(0.5, abs=1e-6)


def test_a_contrastive_recipe_must_end_with_a_probe_head() -> None:
    assert get_recipe("setfit", 3).objective == "contrastive"
    bad = {"name": "c", "objective": "contrastive", "phases": [{"name": "t", "train_top": "all"}]}
    with pytest.raises(HeadstartError, match="trains no usable head") as e:
        get_recipe(bad, 3)
    assert "head_init: probe" in (e.value.fix or "")


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("setfit") / "animals_vehicles.csv", animal_vehicle_rows(20))


def _pair_gap(embed: np.ndarray, y: np.ndarray) -> float:
    """Mean cosine of same-class pairs minus that of other-class pairs."""
    e = embed / np.linalg.norm(embed, axis=1, keepdims=True)
    cos, same = e @ e.T, y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    return float(cos[same & off].mean() - cos[~same].mean())


def test_setfit_fit_tunes_the_encoder_and_its_run_predicts_like_training(
    text_csv: Path, tmp_path: Path
) -> None:
    from headstart.backbones import create_backbone
    from headstart.features import embed
    from headstart.model import load_model
    from headstart.runs import read_split_rows
    from headstart.runs.items import item_sources
    from headstart.train import fit

    r = fit(
        text_csv,
        backbone="test_text_encoder",
        strategy="setfit",
        out=tmp_path / "run",
        epochs=3,
        lr=0.05,  # the tiny random encoder needs a larger rate than a pretrained one (body: 0.02 x this)
        batch_size=8,
        progress=False,
    )
    phases = [(h["phase"], h["kind"]) for h in r.history]
    assert phases[0] == ("contrastive", "init") and phases[-1] == ("probe", "init")
    assert sum(k == "train" for _, k in phases) == 3
    assert r.metrics["objective"]["name"] == "setfit-contrastive"
    assert (r.run_dir / "delta.safetensors").is_file()  # the tuned groups, as any fine-tuned run stores

    m = load_model(r.run_dir)
    rows = read_split_rows(r.run_dir)
    test = [row for row in rows if row.split == "test"]
    proba, _, bad = m.predict_proba(item_sources(r.run_dir, test, m.run_info))
    assert not bad
    acc = np.mean([m.classes[i] == row.label for i, row in zip(proba.argmax(1), test, strict=True)])
    assert acc == pytest.approx(r.metrics["test"]["accuracy"])

    # The contrastive phase pulled training items of a class together relative to other classes.
    train = [row for row in rows if row.split == "train"]
    texts = item_sources(r.run_dir, train, m.run_info)
    y = np.array([row.label for row in train])
    tuned, kept, _ = m.embed(texts)  # the loaded run's own encoder (base + stored delta)
    assert kept == list(range(len(texts)))
    pristine = embed(create_backbone("test_text_encoder"), texts).X
    assert _pair_gap(np.asarray(tuned), y) > _pair_gap(pristine, y) + 0.02


def test_setfit_is_refused_for_an_image_backbone_and_for_a_class_without_a_pair(
    image_folder: Path, tmp_path: Path
) -> None:
    from headstart.train import fit

    with pytest.raises(HeadstartError, match="tunes a sentence encoder") as e:
        fit(image_folder, backbone=TEST_BACKBONE, strategy="setfit", out=tmp_path / "img", progress=False)
    assert "lp-ft" in (e.value.fix or "")
    assert not (tmp_path / "img" / "run.json").exists()
    rows = [{**row, "split": "train"} for row in animal_vehicle_rows(6)]
    rows += [{"text": "a lonely boat", "label": "boat", "split": "train"}]
    rows += [{**row, "split": s} for s in ("val", "test") for row in animal_vehicle_rows(2, seed=1)]
    data = write_csv(tmp_path / "one_boat.csv", rows, ("text", "label", "split"))
    with pytest.raises(HeadstartError, match=r"two training items of every class.*\['boat'\]") as e:
        fit(data, backbone="test_text_encoder", strategy="setfit", out=tmp_path / "txt", progress=False)
    assert e.value.fix
    assert Recipe("x", (Phase("p", epochs=0, head_init="probe"),)).objective == "cross-entropy"


def test_compare_chooses_setfit_for_text_only_and_prices_its_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart.backbones import create_backbone
    from headstart.verdicts import rank
    from headstart.verdicts.compare import choose_strategies
    from headstart.verdicts.plan import epoch_plan

    assert "setfit" in choose_strategies(8, "text") and "setfit" not in choose_strategies(8, "image")
    monkeypatch.setattr(rank, "finetune_step_seconds", lambda bb, device="auto": 1.0)
    bb = create_backbone("test_text_encoder")
    plans = {s: epoch_plan(bb, s, n_train=320, n_eval=0, share_s=1e6)["epoch_s"] for s in ("setfit", "lp-ft")}
    # An item and its two partners per step: three times the training passes of a cross-entropy epoch.
    assert plans["setfit"] == pytest.approx(3 * plans["lp-ft"])


def test_a_killed_setfit_run_resumes_to_the_same_result(text_csv: Path, tmp_path: Path) -> None:
    """The pairs come from the epoch's seeded generator, so a resumed run draws the same ones."""
    from test_train import _cli

    args = ["fit", str(text_csv), "--backbone", "test_text_encoder", "--strategy", "setfit"]
    args += ["--epochs", "3", "--lr", "0.05", "--batch-size", "8", "--json"]
    whole = _cli([*args, "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    crashed = _cli([*args, "--out", str(out)], kill_after_epoch=2)
    assert crashed.returncode == -9 and not (out / "run.json").exists(), crashed.stderr[-2000:]
    resumed = _cli([*args, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ha = json.loads((tmp_path / "whole" / "history.json").read_text())["epochs"]
    hb = json.loads((out / "history.json").read_text())["epochs"]
    assert len(ha) == len(hb) == 5  # the probe start, 3 contrastive epochs, the tuned probe
    assert [r["train_loss"] for r in ha] == pytest.approx([r["train_loss"] for r in hb], abs=1e-6)
    assert [r["val_loss"] for r in ha] == pytest.approx([r["val_loss"] for r in hb], abs=1e-6)


def test_restoring_the_best_weights_drops_embeddings_cached_with_later_ones() -> None:
    """setfit's last phase caches embeddings of the tuned encoder; when the best weights are an earlier
    state (the probe start), the run's metrics must be computed with *those* weights, not the cached ones."""
    from headstart.backbones import create_backbone
    from headstart.train.classify import Classification
    from headstart.train.data import streamed_split

    bb = create_backbone("test_text_encoder")
    texts = ["a cat on a mat", "the car drives home", "a dog and a paw", "ride the bus"]
    split = streamed_split(bb, texts, torch.tensor([0, 1, 0, 1]), max_pixels=1)
    task = Classification(bb, 2, pretrained=False)
    n = task.n_groups
    start = {k: v.clone() for k, v in task.state_dict().items()}
    first = task.states("val", split, n).clone()
    task.trained_groups, task.pristine = {n - 1}, False  # as after an epoch that trained the top group
    with torch.no_grad():
        for p in bb.groups[-1].parameters():
            p.add_(0.5)
    task._forget_states(n - 1)
    assert not torch.allclose(task.states("val", split, n), first)  # cached: the moved weights'
    task.load_state_dict(start)  # BestWeights restoring the start
    assert torch.allclose(task.states("val", split, n), first, atol=1e-6)
