"""The fine-tuning engine: recipes, the one loop, frozen BatchNorm, rates, resume after a kill, DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TEST_BACKBONE, make_image_folder
from headstart.errors import HeadstartError
from headstart.recipes import Phase, Recipe, get_recipe
from headstart.runs import item_sources, read_split_rows
from headstart.train import fit
from headstart.train.groups import param_groups

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def data3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(
        tmp_path_factory.mktemp("train") / "data", ("red", "blue", "green"), per_class=14
    )


@pytest.fixture(scope="module")
def data3_large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # From-scratch training needs more than a dozen examples per class to generalise at all.
    return make_image_folder(
        tmp_path_factory.mktemp("train") / "large", ("red", "blue", "green"), per_class=40
    )


def _fit(data: Path, strategy: str, out: Path | None = None, **kw):
    kw.setdefault("progress", False)
    return fit(data, backbone=TEST_BACKBONE, strategy=strategy, out=out, save=out is not None, **kw)


@pytest.mark.parametrize(
    ("strategy", "epochs"),
    [("head", None), ("partial:2", 4), ("full", 4), ("gradual", 6), ("lp-ft", 4), ("scratch", 12)],
)
def test_every_builtin_recipe_beats_chance(
    data3: Path, data3_large: Path, strategy: str, epochs: int | None
) -> None:
    r = _fit(data3_large if strategy == "scratch" else data3, strategy, epochs=epochs)
    chance = 1 / 3
    # val+test pooled, so one lucky item cannot pass a chance-level model.
    m = r.metrics
    correct = m["val"]["accuracy"] * m["val"]["n"] + m["test"]["accuracy"] * m["test"]["n"]
    assert correct / (m["val"]["n"] + m["test"]["n"]) > chance + 0.15, (strategy, m["val"], m["test"])
    assert r.metrics["train"]["accuracy"] > chance + 0.15


def test_frozen_batchnorm_statistics_bit_identical(data3: Path, tmp_path: Path) -> None:
    from headstart.backbones import create_backbone
    from headstart.model import load_model

    base = create_backbone(TEST_BACKBONE).state_dict()
    run = _fit(data3, "partial:1", tmp_path / "run", epochs=3).run_dir
    trained = load_model(run).backbone
    n_groups = len(trained.groups)
    after = trained.state_dict()
    frozen = [k for k in base if not k.startswith((f"groups.{n_groups - 1}.", "pool."))]
    moved = [k for k in frozen if not torch.equal(base[k], after[k])]
    assert not moved, moved[:5]
    assert any("running_mean" in k for k in frozen)
    # Only the trained group (and the head) is stored: the rest is referenced by hash.
    info = json.loads((run / "run.json").read_text())
    assert info["trained_groups"] == [trained.group_names[-1]]


def test_set_trainable_freezes_batchnorm_of_frozen_groups_only() -> None:
    from headstart.backbones import create_backbone
    from headstart.train.groups import set_trainable

    bb = create_backbone(TEST_BACKBONE)
    head = torch.nn.Linear(bb.embed_dim, 3)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    set_trainable(bb, head, 1)
    head(bb(torch.randn(8, 3, 32, 32) * 3)).sum().backward()  # a train-mode forward updates running stats
    after = bb.state_dict()
    top = f"groups.{len(bb.groups) - 1}."
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(top) for k in changed), sorted(changed)[:5]
    assert all(p.grad is None for g in bb.groups[:-1] for p in g.parameters())


def test_pretrained_fine_tuning_keeps_batchnorm_statistics_scratch_updates_them(data3: Path) -> None:
    """Trained groups of a pretrained recipe normalise with (and keep) the pretrained running statistics;
    from scratch, BatchNorm learns them."""
    from headstart.backbones import create_backbone
    from headstart.recipes import get_recipe
    from headstart.train.groups import set_trainable
    from headstart.train.loop import Trainer

    bb = create_backbone(TEST_BACKBONE)
    head = torch.nn.Linear(bb.embed_dim, 3)
    before = {k: v.clone() for k, v in bb.state_dict().items() if "running" in k}
    set_trainable(bb, head, len(bb.groups), freeze_batchnorm=True)
    head(bb(torch.randn(8, 3, 32, 32) * 3)).sum().backward()
    assert all(torch.equal(before[k], bb.state_dict()[k]) for k in before)
    assert any(p.grad is not None for n, p in bb.named_parameters() if "bn" in n.lower())  # affine trains
    n = len(bb.groups)
    assert Trainer(bb, 3, get_recipe("full", n))._freeze_bn(get_recipe("full", n).phases[0])
    scratch = get_recipe("scratch", n)
    assert not Trainer(bb, 3, scratch)._freeze_bn(scratch.phases[0])


def test_augmented_frozen_prefix_runs_through_onnx_runtime_and_matches_pytorch(data3: Path) -> None:
    from headstart.backbones import create_backbone
    from headstart.recipes import get_recipe
    from headstart.train.augment import augment_images
    from headstart.train.data import Split
    from headstart.train.groups import set_trainable
    from headstart.train.loop import Trainer

    bb = create_backbone(TEST_BACKBONE)
    k = len(bb.groups) - 1
    trainer = Trainer(bb, 3, get_recipe("partial:1", len(bb.groups)))
    set_trainable(bb, trainer.head, 1, freeze_batchnorm=True)
    files = sorted(str(f) for f in data3.rglob("*.png"))[:6]
    split = Split(examples=[bb.load_item(f) for f in files], y=torch.zeros(6, dtype=torch.long))
    idx = torch.arange(6)
    fast, start = trainer.inputs("train", split, idx, k, augment=True, gen=torch.Generator().manual_seed(3))
    assert start == k and trainer._onnx_prefixes[k] is not None  # ONNX Runtime ran the frozen groups
    x = augment_images(trainer._collate(split, idx.tolist()), bb.preprocess, torch.Generator().manual_seed(3))
    torch.testing.assert_close(fast, trainer._prefix(x, k), atol=1e-4, rtol=1e-4)
    # Once a group below k has trained, the prefix is no longer the exported network: PyTorch runs it.
    trainer.trained_groups.add(0)
    assert trainer._fast_prefix(k - 1) is None


def test_param_groups_follow_the_recipe() -> None:
    from headstart.backbones import create_backbone

    bb = create_backbone(TEST_BACKBONE)
    head = torch.nn.Linear(bb.embed_dim, 3)
    phase = Phase("p", train_top=3, lr=1e-2, backbone_lr_ratio=0.1, lr_decay=0.5)
    groups = param_groups(bb, head, phase)
    lrs = {g["name"].removesuffix(".no_decay"): g["lr"] for g in groups}
    n = len(bb.groups)
    assert lrs["classifier"] == pytest.approx(1e-2)
    for depth in range(3):
        assert lrs[bb.group_names[n - 1 - depth]] == pytest.approx(1e-2 * 0.1 * 0.5**depth)
    assert bb.group_names[n - 4] not in lrs  # frozen: not in the optimizer
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith(".no_decay"))
    # Default rates: pretrained groups learn 10-100x slower than the head.
    for name in ("full", "partial:2", "lp-ft", "gradual"):
        r = get_recipe(name, n)
        for p in r.phases:
            if p.train_top:
                assert 0.01 <= p.backbone_lr_ratio <= 0.1


def test_gradual_unfreezes_in_order(data3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import headstart.train.classify as classify

    seen: list[int] = []
    real = classify.set_trainable

    def spy(backbone, head, n, **kw):  # type: ignore[no-untyped-def]
        seen.append(n)
        real(backbone, head, n, **kw)

    monkeypatch.setattr(classify, "set_trainable", spy)
    r = _fit(data3, "gradual")
    phase_starts = []
    for n in seen:
        if not phase_starts or phase_starts[-1] != n:
            phase_starts.append(n)
    n_groups = len(json.loads(json.dumps(r.recipe))["phases"])
    assert phase_starts == sorted(phase_starts), phase_starts
    assert phase_starts[0] == 0 and phase_starts[1] == 1 and phase_starts[2] == 2
    assert r.history[0]["phase"] == "head"
    assert n_groups == 5


def test_seeded_runs_are_reproducible(data3: Path) -> None:
    a = _fit(data3, "partial:2", epochs=2, seed=3)
    b = _fit(data3, "partial:2", epochs=2, seed=3)
    assert a.metrics["val"]["loss"] == b.metrics["val"]["loss"]
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def test_prefix_cache_same_result_as_full_forwards(data3: Path) -> None:
    a = _fit(data3, "partial:2", epochs=2, augment=False, prefix_cache=True)
    b = _fit(data3, "partial:2", epochs=2, augment=False, prefix_cache=False)
    assert a.metrics["val"]["loss"] == pytest.approx(b.metrics["val"]["loss"], abs=1e-4)


def test_fit_run_loads_and_predicts_like_training(data3: Path, tmp_path: Path) -> None:
    from headstart.model import load_model

    r = _fit(data3, "lp-ft", tmp_path / "run", epochs=2)
    m = load_model(r.run_dir)
    rows = [row for row in read_split_rows(r.run_dir) if row.split == "test"]
    test = list(zip(item_sources(r.run_dir, rows, m.run_info), [row.label for row in rows], strict=True))
    proba, _, bad = m.predict_proba([p for p, _ in test])
    assert not bad
    acc = np.mean([m.classes[i] == lab for i, (_, lab) in zip(proba.argmax(1), test, strict=True)])
    assert acc == pytest.approx(r.metrics["test"]["accuracy"])
    stored = {f.name for f in r.run_dir.iterdir()}
    assert {
        "run.json",
        "head.safetensors",
        "delta.safetensors",
        "history.json",
        "history.csv",
        "recipe.json",
    } <= stored


def test_custom_recipe_file_and_bad_strategy(data3: Path, tmp_path: Path) -> None:
    recipe = Recipe("mine", (Phase("a", train_top=1, epochs=1, head_init="probe"),))
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(recipe.to_dict()))
    assert get_recipe(str(path), 9) == recipe
    r = _fit(data3, str(path))
    assert r.strategy == "mine"
    with pytest.raises(HeadstartError, match="did you mean 'full'"):
        get_recipe("fulll", 9)
    with pytest.raises(HeadstartError, match="only 9 layer groups"):
        get_recipe("partial:12", 9)


def _cli(
    args: list[str], env: dict[str, str] | None = None, *, kill_after_epoch: int | None = None
) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    run = [sys.executable, "-m", "headstart"]
    if kill_after_epoch is not None:  # the CLI with a callback that kills it after that epoch's checkpoint
        run = [sys.executable, str(Path(__file__).parent / "kill_after_epoch.py"), str(kill_after_epoch)]
    return subprocess.run([*run, *args], capture_output=True, text=True, env=e, timeout=300)


def test_resume_after_kill_equals_uninterrupted(data3: Path, tmp_path: Path) -> None:
    # gradual: the kill lands after an unfreeze added parameter groups (Lightning #6891).
    args = [
        "fit",
        str(data3),
        "--backbone",
        TEST_BACKBONE,
        "--strategy",
        "gradual",
        "--epochs",
        "6",
        "--json",
    ]
    whole = _cli([*args, "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    crashed = _cli([*args, "--out", str(out)], kill_after_epoch=3)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert not (out / "run.json").exists()
    resumed = _cli([*args, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    for s in ("val", "test"):
        assert a[s]["loss"] == pytest.approx(b[s]["loss"], abs=1e-6)
        assert a[s]["accuracy"] == b[s]["accuracy"]
    ha = json.loads((tmp_path / "whole" / "history.json").read_text())["epochs"]
    hb = json.loads((out / "history.json").read_text())["epochs"]
    assert [r["train_loss"] for r in ha] == pytest.approx([r["train_loss"] for r in hb], abs=1e-6)


def test_ddp_two_gloo_processes_match_single_process(data3: Path, tmp_path: Path) -> None:
    """torchrun's launcher ships with torch (`python -m torch.distributed.run`), so this runs everywhere.

    The tolerance is float rounding only. A pretrained recipe keeps BatchNorm frozen, there is no
    augmentation, the 30 training items split evenly, and each process takes every other item of the same
    global order: each step's two 16-item gradient means, averaged by DDP, are the single process's 32-item
    mean, and the per-epoch training metrics are summed over both processes. What differs is the order of
    float32 additions (~1e-7 relative; measured: val loss within 8e-7 after 3 epochs). 1e-4 is >100x that,
    and far below what a real divergence gives: stepping on 16-item batches instead of 32 (what a process
    does when its gradients are not averaged with the other's) moves val loss by 0.02 on this data."""
    args = ["fit", str(data3), "--backbone", TEST_BACKBONE, "--strategy", "partial:2", "--epochs", "3"]
    args += ["--no-augment", "--precision", "fp32", "--json"]  # fp32: the comparison is of processes only
    single = _cli([*args, "--out", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    two = subprocess.run(
        [*launch, "-m", "headstart", *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert json.loads((tmp_path / "two" / "run.json").read_text())["engine"]["world_size"] == 2
    assert a["train"]["n"] == 30
    for s in ("train", "val", "test"):
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], abs=1e-4), s
        assert b[s]["accuracy"] == a[s]["accuracy"], s
    ha = json.loads((tmp_path / "one" / "history.json").read_text())["epochs"]
    hb = json.loads((tmp_path / "two" / "history.json").read_text())["epochs"]
    for key in ("train_loss", "val_loss"):
        assert [r[key] for r in hb] == pytest.approx([r[key] for r in ha], abs=1e-4), key
    assert [r["train_acc"] for r in hb] == [r["train_acc"] for r in ha]


def test_head_strategy_runs_the_probe_pipeline(
    data3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fit --strategy head` and `probe` are one pipeline: cached embeddings, nothing decoded, no Trainer,
    one run kind, the same head and the same metrics."""
    import headstart.train.data as train_data
    from headstart.api import probe
    from headstart.train.loop import Trainer

    def tripped(*a: object, **k: object) -> None:
        raise AssertionError("the head recipe decoded its inputs or started the Trainer")

    monkeypatch.setattr(train_data, "decode_all", tripped)
    monkeypatch.setattr(Trainer, "fit", tripped)
    f = _fit(data3, "head", tmp_path / "fit")
    p = probe(data3, backbone=TEST_BACKBONE, out=tmp_path / "probe", progress=False)
    assert f.metrics["C"] == p.metrics["C"]
    for s in ("val", "test"):
        assert f.metrics[s]["pred"] == p.metrics[s]["pred"] and f.metrics[s]["loss"] == p.metrics[s]["loss"]
    runs = [json.loads((tmp_path / k / "run.json").read_text()) for k in ("fit", "probe")]
    assert [(r["kind"], r["strategy"]) for r in runs] == [("probe", "head")] * 2
    assert {x.name for x in (tmp_path / "fit").iterdir()} == {x.name for x in (tmp_path / "probe").iterdir()}
    assert [h["kind"] for h in f.history] == ["init"] and f.metrics["best_epoch"] == 0


def test_verb_configs_give_the_cli_its_options_and_defaults() -> None:
    from headstart.cli import build_parser
    from headstart.config import FitConfig, ProbeConfig, from_args

    parser = build_parser()
    assert from_args(FitConfig, parser.parse_args(["fit", "d"])) == FitConfig(Path("d"))
    assert from_args(ProbeConfig, parser.parse_args(["probe", "d"])) == ProbeConfig(Path("d"))
    argv = ["fit", "d", "--no-augment", "--budget", "5", "--lr", "auto", "--no-prefix-cache", "--lora-r", "4"]
    cfg = from_args(FitConfig, parser.parse_args(argv))
    assert (cfg.augment, cfg.budget_s, cfg.lr, cfg.prefix_cache, cfg.lora_r) == (False, 5.0, "auto", False, 4)
    argv = ["probe", "d", "--no-cache", "--C", "0.5", "--backend", "torch", "--max-pixels", "9"]
    p = from_args(ProbeConfig, parser.parse_args(argv))
    assert (p.cache, p.C, p.backend, p.max_pixels) == (False, 0.5, "torch", 9)
    with pytest.raises(HeadstartError, match="--lr 'fast'"):
        FitConfig("d", lr="fast")


def test_recipe_files_are_checked_against_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from headstart.cli import main

    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nphases:\n  - name: a\n    train_top: 1\n    epoch: 3\n")  # epochs, misspelt
    with pytest.raises(HeadstartError, match=r"mine\.yaml: phases\.0\.epoch: unknown field") as e:
        get_recipe(str(path), 9)
    assert e.value.fix and "--schema" in e.value.fix
    path.write_text("name: mine\nphases:\n  - name: a\n    schedule: linear\n")
    with pytest.raises(HeadstartError, match=r"phases\.0\.schedule: Input should be 'cosine'"):
        get_recipe(str(path), 9)
    assert main(["recipes", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    phase = schema["$defs"]["Phase"]
    assert schema["required"] == ["name", "phases"] and phase["additionalProperties"] is False
    assert set(phase["properties"]) == set(Phase.__dataclass_fields__)
    assert phase["properties"]["schedule"]["enum"] == ["cosine", "onecycle", "constant"]


def test_the_range_test_warns_nothing() -> None:
    """`lr-find` (and `fit --lr auto`) printed torch's "Converting a tensor with requires_grad=True to a
    scalar" warning to every user: it read the loss with float()."""
    import warnings

    from headstart.train.lr_find import lr_find

    rng = np.random.default_rng(0)
    E, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 3, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = lr_find(E, y, 3, steps=20)
    assert 1e-6 <= out["suggestion"] <= 10.0


def test_drop_path_zero_makes_the_trained_forward_the_one_the_probe_head_was_fit_on() -> None:
    """EfficientNet-Lite's drop-connect makes a train-mode forward random; `drop_path: 0` turns it off in
    the trained groups (the probe's head then sees its own features), None restores the network's 0.2."""
    from headstart.backbones import create_backbone
    from headstart.train.groups import set_trainable

    bb = create_backbone("efficientnet_lite0", pretrained=False)
    head = torch.nn.Linear(bb.embed_dim, 3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        eval_out = bb.eval()(x)
        set_trainable(bb, head, len(bb.groups), freeze_batchnorm=True, drop_path=0.0)
        torch.manual_seed(0)
        a, b = bb(x), bb(x)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, eval_out)
        set_trainable(bb, head, len(bb.groups), freeze_batchnorm=True, drop_path=None)
        assert not torch.allclose(bb(x), eval_out)  # the network's own rate is back
    with pytest.raises(HeadstartError, match="drop_path"):
        Phase("full", train_top="all", drop_path=1.0).validate()


def test_drop_path_on_a_backbone_without_stochastic_depth_is_a_listed_skip(tmp_path: Path) -> None:
    from test_text import animal_vehicle_rows, write_csv

    texts = write_csv(tmp_path / "texts.csv", animal_vehicle_rows(12))
    recipe = {"name": "dp", "phases": [{"name": "top", "train_top": 1, "epochs": 1, "drop_path": 0.0}]}
    r = fit(texts, backbone="test_text_encoder", strategy=recipe, save=False, progress=False)
    assert any("drop_path ignored: test_text_encoder" in w for w in r.warnings), r.warnings
    images = make_image_folder(tmp_path / "img", ("red", "blue"), per_class=6)
    assert not any("drop_path" in w for w in _fit(images, recipe).warnings)  # type: ignore[arg-type]
