"""The command line's training flags (issue 14): `--precision` on compare and auto reaches every fine-tune;
`adapt --budget` and `adapt --resume`; and a `--resume` refused, before any work and changing nothing, when
the checkpoint was written on another device type or in another precision than would run now."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from badinput import assert_refused, run_cli, tree_digest, trip_expensive_work
from conftest import TEST_BACKBONE, make_image_folder
from headstart.errors import HeadstartError
from headstart.runs import load_run_info

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# A strategy the Trainer runs (`head` is closed-form: no Trainer, no precision to resume in).
FIT = ["--backbone", TEST_BACKBONE, "--strategy", "partial:1", "--epochs", "2", "--json"]
DOMAIN = [
    "the cat is on the farm with a dog",
    "a red bus and a blue car drive on the road",
    "the old horse has a big tail",
    "two fast planes fly to the zoo",
]
ADAPT = {"epochs": 3, "head_epochs": 1, "lr": 1e-3, "precision": "fp32", "progress": False}


class _Killed(BaseException):
    """Stands in for a kill (a BaseException: nothing on the way catches it)."""


def _kill(*_a: Any, **_k: Any) -> None:
    raise _Killed


@pytest.fixture
def backbones_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "backbones"
    monkeypatch.setenv("HEADSTART_BACKBONES", str(home))
    return home


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "domain.txt"
    path.write_text("\n".join(DOMAIN[i % 4] for i in range(120)) + "\n", encoding="utf-8")
    return path


def _interrupted_fit(root: Path, precision: str) -> tuple[Path, Path]:
    """(data, run folder) of a fit in `precision` killed after its last checkpoint, before its run was
    written: the checkpoint is in the work folder, the run folder does not exist."""
    from headstart.train import fit

    data = make_image_folder(root / "data", ("red", "blue", "green"), per_class=8)
    run = root / "runs" / "cut"
    with pytest.MonkeyPatch.context() as m:
        m.setattr("headstart.runs.write_run", _kill)
        with pytest.raises(_Killed):
            fit(data, out=run, backbone=TEST_BACKBONE, strategy="partial:1", epochs=2, precision=precision)
    assert not run.exists() and (root / "runs" / ".cut.training" / "checkpoint.pt").is_file()
    return data, run


# -- --precision on compare and auto ------------------------------------------------------------------------
def test_compare_trains_every_fine_tune_in_the_precision_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_image_folder(tmp_path / "data", ("red", "blue", "green"), per_class=12)
    argv = ["compare", data, "--backbone", TEST_BACKBONE, "--strategies", "partial:1", "--budget", "40s"]
    res = run_cli(capsys, *argv, "--out", tmp_path / "cmp", "--precision", "bf16", "--json")
    assert res.code == 0, res.text
    result = json.loads(res.out)
    row = result["rows"][1]
    assert result["precision"] == "bf16" and row["strategy"] == "partial:1" and row["precision"] == "bf16"
    engine = load_run_info(Path(row["run_dir"])).engine or {}
    assert engine["precision"] == engine["precision_asked"] == "bf16"  # asked, not what auto chose here


def test_auto_hands_the_precision_to_its_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def compare(data: Any, backbone: str, **kw: Any) -> None:
        seen.update(kw)
        raise HeadstartError("the comparison stops here", fix="nothing to fix")

    monkeypatch.setattr("headstart.verdicts.compare.compare", compare)
    data = make_image_folder(tmp_path / "data", ("red", "blue"), per_class=10)
    out = ["--out", tmp_path / "auto", "--store", tmp_path / "store", "--no-curve"]
    res = run_cli(capsys, "auto", data, "--backbone", TEST_BACKBONE, *out, "--precision", "bf16")
    assert res.code == 2 and "the comparison stops here" in res.text
    assert seen["precision"] == "bf16" and seen["device"] == "auto"


@pytest.mark.parametrize("verb", ["compare", "auto"])
def test_a_precision_the_device_cannot_run_is_refused_before_any_work(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_image_folder(tmp_path / "data", ("red", "blue"), per_class=4)
    trip_expensive_work(monkeypatch, "the precision must be checked before any data is read")
    argv = [verb, data, "--backbone", TEST_BACKBONE, "--out", tmp_path / "out", "--device", "cpu"]
    assert_refused(run_cli(capsys, *argv, "--precision", "fp16"), names="fp16")  # no fp16 on a CPU
    res = run_cli(capsys, *argv, "--precision", "fp8")
    assert res.code == 2 and "fp8" in res.err and "bf16" in res.err  # argparse names the choices
    assert not (tmp_path / "out").exists()


# -- adapt --budget and --resume ----------------------------------------------------------------------------
def test_adapt_budget_stops_the_adaptation_and_the_control_replays_its_steps(
    texts: Path, backbones_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 200 epochs take a minute on this tiny model: the budget stops the adaptation within seconds.
    argv = ["adapt", "--backbone", "test_text_encoder", "--unlabeled", texts, "--name", "quick"]
    res = run_cli(
        capsys, *argv, "--epochs", "200", "--head-epochs", "1", "--lr", "1e-3", "--budget", "2s", "--json"
    )
    assert res.code == 0, res.text
    out = json.loads(res.out)
    adapted = [h for h in out["history"] if h["phase"] == "adapt"]
    control = [h for h in out["history"] if h["phase"] == "control"]
    assert 0 < len(adapted) < 200 and any("time budget" in w for w in out["warnings"]), out["warnings"]
    # However early it stopped, the head-only control took exactly the adaptation's steps (in total: a
    # budget that stops the adaptation inside an epoch may split its last steps over two history rows).
    assert sum(h["steps"] for h in control) == sum(h["steps"] for h in adapted) == out["steps"]
    assert out["steps"] == sum(h["steps"] for h in adapted)
    assert (backbones_home / "quick").is_dir() and not (backbones_home / ".quick.training").exists()


def test_adapt_resume_goes_on_as_if_never_stopped_and_refuses_what_it_cannot_resume(
    texts: Path,
    backbones_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from headstart.pretrain import adapt
    from headstart.train.loop import Trainer

    whole = adapt("test_text_encoder", texts, name="whole", **ADAPT)
    emit = Trainer._emit

    def killed_after_two_epochs_of_adaptation(self: Trainer, hook: str) -> None:
        emit(self, hook)  # the epoch's checkpoint is written first
        if hook == "after_epoch" and self.recipe.name == "adapt-adapt" and self.pos.epoch == 2:
            raise _Killed

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_emit", killed_after_two_epochs_of_adaptation)
        with pytest.raises(_Killed):
            adapt("test_text_encoder", texts, name="cut", **ADAPT)
    work = backbones_home / ".cut.training"
    assert not (backbones_home / "cut").exists() and (work / "adapt" / "checkpoint.pt").is_file()

    argv = [
        "adapt",
        "--backbone",
        "test_text_encoder",
        "--unlabeled",
        texts,
        "--name",
        "cut",
        "--epochs",
        "3",
    ]
    argv += ["--head-epochs", "1", "--lr", "1e-3"]
    before = tree_digest(backbones_home)
    res = run_cli(capsys, *argv)  # not without --resume (or --overwrite)
    assert_refused(res, names=backbones_home / "cut")
    assert "--resume" in res.text
    res = run_cli(capsys, *argv, "--resume", "--precision", "bf16")  # the checkpoints are fp32
    assert_refused(res, names="bf16")
    assert "--device cpu --precision fp32" in res.text
    res = run_cli(capsys, *argv[:-2], "--lr", "2e-3", "--resume", "--precision", "fp32")
    assert_refused(res, names="0.002")  # another --lr than it was started with
    assert tree_digest(backbones_home) == before

    resumed = adapt("test_text_encoder", texts, name="cut", resume=True, **ADAPT)
    assert resumed.perplexity["domain"] == pytest.approx(whole.perplexity["domain"], rel=1e-5)
    assert [h["steps"] for h in resumed.history] == [h["steps"] for h in whole.history]
    assert (backbones_home / "cut").is_dir() and not work.exists()  # the checkpoints go once it is in

    before = tree_digest(backbones_home)
    res = run_cli(capsys, *argv, "--resume")
    assert_refused(res, names=backbones_home / "cut")
    assert "finished" in res.text and tree_digest(backbones_home) == before


# -- --resume on another device type or precision -----------------------------------------------------------
def test_fit_resume_in_another_precision_is_refused_before_any_work_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, run = _interrupted_fit(tmp_path, "fp32")
    before = tree_digest(tmp_path / "runs")
    trip_expensive_work(monkeypatch, "the checkpoint's engine must be checked before the data is read")
    res = run_cli(capsys, "fit", data, *FIT, "--out", run, "--resume", "--precision", "bf16")
    assert_refused(res, names="bf16")
    assert "fp32" in res.text and "--device cpu --precision fp32" in res.text and "--overwrite" in res.text
    assert tree_digest(tmp_path / "runs") == before


def test_fit_resume_on_another_device_type_is_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = _interrupted_fit(tmp_path, "fp32")
    checkpoint = tmp_path / "runs" / ".cut.training" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["engine"] = {"device": "cuda", "precision": "bf16"}  # as a GPU machine would have written it
    torch.save(state, checkpoint)
    before = tree_digest(tmp_path / "runs")
    res = run_cli(capsys, "fit", data, *FIT, "--out", run, "--resume", "--device", "cpu")
    assert_refused(res, names="cuda")
    assert "on cpu" in res.text and "--device cuda --precision bf16" in res.text
    assert tree_digest(tmp_path / "runs") == before


def test_fit_resume_with_precision_auto_goes_on_in_the_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = _interrupted_fit(tmp_path, "bf16")
    res = run_cli(capsys, "fit", data, *FIT, "--out", run, "--resume")
    assert res.code == 0, res.text
    engine = load_run_info(run).engine or {}
    assert engine["precision"] == "bf16" and engine["precision_asked"] == "auto"
    assert "resumed" in engine["precision_reason"]


def test_the_trainer_itself_refuses_a_checkpoint_of_another_precision(tmp_path: Path) -> None:
    """The check every Trainer makes on resume (the verbs make it earlier, before any work)."""
    from headstart.train.callbacks import Checkpoint
    from headstart.train.checkpoint import engine_record, save_checkpoint
    from headstart.train.engine import Engine

    save_checkpoint(tmp_path, {"engine": engine_record(torch.device("cpu"), "bf16")})
    checkpoint = Checkpoint(tmp_path, resume=True)
    assert checkpoint.resumed_precision(Engine(torch.device("cpu"), asked="auto")) == "bf16"
    assert checkpoint.resumed_precision(Engine(torch.device("cpu"), asked="bf16")) == "bf16"
    with pytest.raises(HeadstartError, match=r"written on cpu in bf16.*--precision fp32"):
        checkpoint.resumed_precision(Engine(torch.device("cpu"), asked="fp32"))
    assert Checkpoint(tmp_path, resume=False).resumed_precision(Engine(torch.device("cpu"))) is None
