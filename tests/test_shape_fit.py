"""`fit --task multilabel|regress` with strategies that train the backbone, through the one Trainer
(headstart.shapes.linear_fit, headstart.train.targets_task): the model learns, the run reloads and
predicts what training computed, every verb reads it, and a finished run is never replaced silently."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import TEST_BACKBONE
from headstart.cli import main
from headstart.errors import HeadstartError
from test_shape_regression import value_manifest, write_rows

TOPICS = {
    "animal": ["cat", "dog", "bird", "fish", "horse", "cow", "sheep", "mouse", "lion", "tiger"],
    "vehicle": ["car", "bus", "train", "plane", "ship", "bike", "truck", "road", "engine", "wheel"],
    "colour": ["red", "blue", "green"],
}
FILLER = ["the", "a", "an", "and", "or", "of", "to", "in", "on", "is"]


@pytest.fixture(scope="module")
def values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Colour pictures whose target is a number per colour, with a little spread (a planted target)."""
    return value_manifest(tmp_path_factory.mktemp("values"))


@pytest.fixture(scope="module")
def topics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Texts that mention one to three topics; the label set is the topics mentioned."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(90):
        on = [t for t in TOPICS if rng.random() < 0.5] or [str(rng.choice(list(TOPICS)))]
        words = [str(rng.choice(TOPICS[t])) for t in on for _ in range(2)]
        words += [str(w) for w in rng.choice(FILLER, 4)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "|".join(on)})
    return write_rows(tmp_path_factory.mktemp("topics") / "texts.csv", rows)


def info_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "run.json").read_text())


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    code = main([*argv, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    return json.loads(out.out)


def test_regress_full_learns_and_the_run_predicts_what_training_computed(
    values: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.backbones import create_backbone
    from headstart.model import load_model
    from headstart.runs import item_sources, load_tensors, read_split_rows
    from headstart.shapes.regression_fit import conformal_halfwidth

    run = tmp_path / "run"
    args = ["fit", str(values), "--task", "regress", "--strategy", "full", "--backbone", TEST_BACKBONE]
    report = run_json(capsys, *args, "--epochs", "5", "--lr", "3e-4", "--out", str(run))
    history = json.loads((run / "history.json").read_text())["epochs"]
    trained = [r for r in history if r["kind"] == "train"]
    assert trained[-1]["train_loss"] < trained[0]["train_loss"]
    assert "train_acc" not in trained[0] and "val_rmse" in trained[0]  # no accuracy of floats
    # An epoch beat the probe it started from on val (so the kept weights are fine-tuned ones); the run
    # is augmentation-free by default (a crop or a colour jitter can change a number read off a picture).
    assert report["metrics"]["best_epoch"] > 0 and info_of(run)["params"]["augment"] is False
    info = json.loads((run / "run.json").read_text())
    assert (info["kind"], info["task"], info["strategy"], info["classes"]) == (
        "fit",
        "regress",
        "full",
        ["value"],
    )
    assert info["objective"]["name"] == "huber"
    # The backbone's weights moved, and only they are stored (the base by reference).
    delta = load_tensors(run / "delta.safetensors")
    base = create_backbone(TEST_BACKBONE).state_dict()
    moved = [
        k for k, v in delta.items() if "running" not in k and not np.allclose(v.numpy(), base[k].numpy())
    ]
    assert moved
    # The conformal half-width is re-tuned on the fine-tuned model's val errors, not kept from the probe.
    state = json.loads((run / "shape.json").read_text())
    val = report["metrics"]["val"]
    q, _ = conformal_halfwidth(np.subtract(val["true"], val["pred"]))
    assert state["halfwidth"] == pytest.approx(q)
    assert state["halfwidth"] != pytest.approx(report["metrics"]["probe_val"]["coverage"]["halfwidth"])
    # Reloaded, the run gives the trained module's outputs (the standardisation folded into the head).
    m = load_model(run)
    rows = [r for r in read_split_rows(run) if r.split == "test"]
    Z, kept, bad = m.logits(item_sources(run, rows, m.run_info), backend="torch")
    assert not bad and len(kept) == len(rows)
    np.testing.assert_allclose(Z[:, 0], report["metrics"]["test"]["pred"], rtol=1e-5, atol=1e-5)
    evaluated = run_json(capsys, "evaluate", str(run))
    assert evaluated["metrics"]["mae"] == pytest.approx(report["metrics"]["test"]["mae"], rel=1e-5)


def test_multilabel_lora_end_to_end(topics: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    args = [
        "fit",
        str(topics),
        "--task",
        "multilabel",
        "--strategy",
        "lora",
        "--backbone",
        "test_text_encoder",
    ]
    report = run_json(capsys, *args, "--epochs", "2", "--out", str(run))
    info = json.loads((run / "run.json").read_text())
    assert (info["kind"], info["task"], info["classes"]) == ("fit", "multilabel", sorted(TOPICS))
    assert info["adapter"]["file"] == "adapter.safetensors" and "delta" not in info
    assert info["objective"]["name"] == "bce-with-logits"
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert [r["kind"] for r in history] == ["init", "train", "train"] and "val_map" in history[-1]
    state = json.loads((run / "shape.json").read_text())
    assert len(state["thresholds"]) == len(TOPICS) and state["rule"]
    test = report["metrics"]["test"]
    assert 0 <= test["map_ci"][0] <= test["map"] <= test["map_ci"][1] <= 1
    evaluated = run_json(capsys, "evaluate", str(run))
    assert evaluated["metrics"]["map"] == pytest.approx(test["map"], abs=1e-6)
    answers = run_json(capsys, "predict", str(run), "--text", "cat dog the car bus")
    assert set(answers[0]["labels"]) <= set(TOPICS) and set(answers[0]["scores"]) == set(TOPICS)


def test_a_finished_run_is_kept_without_overwrite_and_head_is_the_probe(
    values: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.config import FitConfig
    from headstart.shapes import shape_of_task

    shape = shape_of_task("regress")
    assert shape is not None
    out = tmp_path / "run"
    common = {"data": values, "backbone": TEST_BACKBONE, "task": "regress", "out": out, "progress": False}
    probe = shape.fit(FitConfig(**common, strategy="head"))  # no group trains: the shape's probe
    assert json.loads((out / "run.json").read_text())["kind"] == "probe" and probe.strategy == "head"
    before = (out / "run.json").read_bytes()
    with pytest.raises(HeadstartError, match="finished run"):
        shape.fit(FitConfig(**common, strategy="partial:1", epochs=1))
    with pytest.raises(HeadstartError, match="nothing to resume"):
        shape.fit(FitConfig(**common, strategy="partial:1", epochs=1, resume=True))
    assert (out / "run.json").read_bytes() == before
    shape.fit(FitConfig(**common, strategy="partial:1", epochs=1, overwrite=True, loss="mse"))
    info = info_of(out)
    assert (info["kind"], info["objective"]["name"]) == ("fit", "mse")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task": "regress", "strategy": "setfit"}, "does not run strategy 'setfit'"),
        ({"task": "regress", "strategy": "scratch"}, "starts from no probe"),
        ({"task": "multilabel", "lr": "auto"}, "--lr auto"),
        ({"task": "multilabel", "loss": "mse"}, "--loss mse is for --task regress"),
    ],
)
def test_what_the_pipeline_does_not_run_is_refused_before_any_work(
    values: Path, tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    from headstart.train.api import fit

    with pytest.raises(HeadstartError, match=message):
        fit(tmp_path / "no-such-data", backbone=TEST_BACKBONE, out=tmp_path / "r", progress=False, **options)
    assert not (tmp_path / "r").exists()


def test_resume_after_a_kill_equals_the_uninterrupted_run(values: Path, tmp_path: Path) -> None:
    """The probe's read-out (the conformal half-width's base, the target mean) rides in the checkpoint,
    so a run killed after an epoch and resumed ends where the uninterrupted one does."""
    import os
    import subprocess
    import sys

    def cli(args: list[str], kill_after: int | None = None) -> subprocess.CompletedProcess[str]:
        run = [sys.executable, "-m", "headstart"]
        if kill_after is not None:
            run = [sys.executable, str(Path(__file__).parent / "kill_after_epoch.py"), str(kill_after)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([*run, *args], capture_output=True, text=True, env=env, timeout=300)

    args = ["fit", str(values), "--task", "regress", "--strategy", "lp-ft", "--backbone", TEST_BACKBONE]
    args += ["--epochs", "3", "--json"]
    whole = cli([*args, "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    assert cli([*args, "--out", str(out)], kill_after=2).returncode == -9
    assert not (out / "run.json").exists()
    resumed = cli([*args, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    assert b["test"]["rmse"] == pytest.approx(a["test"]["rmse"], abs=1e-6)
    for key in ("halfwidth", "target_mean", "lambda"):
        assert b["readout"][key] == pytest.approx(a["readout"][key], rel=1e-9), key
