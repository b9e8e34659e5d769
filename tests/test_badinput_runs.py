"""Bad-input corpus: run folders and output paths (issue 13, items 3, 5 and 7).

- `fit --resume` checks the run's state: a finished run, another strategy/backbone/data, nothing to resume;
  a rerun without --resume onto an interrupted run; an existing run without --overwrite.
- Loading a run checks the base weights' sha256 recorded in run.json against the backbone loaded.
- An unusable --out/--store (an existing file, a path below a file, a read-only folder) is refused before
  any data is read or model loaded.

Every refusal: exit 2, the message names the input and a fix, no traceback, nothing written changed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from badinput import assert_refused, run_cli, tree_digest, trip_expensive_work
from conftest import TEST_BACKBONE, draw_item, make_image_folder
from headstart.fileio import sha256_file
from headstart.runs import load_run_info

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FIT = ["--backbone", TEST_BACKBONE, "--strategy", "head", "--epochs", "2", "--json"]
FAKE_SHA = hashlib.sha256(b"not the base weights").hexdigest()


class _Killed(BaseException):
    """Stands in for a kill between the last checkpoint and the run's write."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Data, a finished fit run, an interrupted one (checkpoint, no run), probe runs on two bases."""
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import save_file

    from headstart.api import probe
    from headstart.train import fit

    root = tmp_path_factory.mktemp("badruns")
    classes = ("red", "blue", "green")
    w: dict[str, Any] = {
        "root": root,
        "data": make_image_folder(root / "data", classes, per_class=8),
        "other": make_image_folder(root / "other", classes, per_class=7, seed=1),
    }
    # A base with a real weights file, so run.json records a real sha256 (the test model has none).
    net = EfficientNet.from_name(
        "efficientnet-lite0", width_coefficient=0.5, depth_coefficient=0.25, image_size=32
    )
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, root / "w.safetensors")
    w["weighted"] = f"{TEST_BACKBONE}@{root / 'w.safetensors'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        kw: dict[str, Any] = {"backbone": TEST_BACKBONE, "strategy": "head", "epochs": 2, "progress": False}
        fit(w["data"], out=root / "finished", **kw)

        def killed(*a: Any, **k: Any) -> None:
            raise _Killed

        with pytest.MonkeyPatch.context() as kill:
            kill.setattr("headstart.runs.write_run", killed)
            with pytest.raises(_Killed):
                fit(w["data"], out=root / "interrupted", **kw)
        probe(w["data"], backbone=w["weighted"], out=root / "probe_w", backend="torch", progress=False)
        probe(w["data"], backbone=TEST_BACKBONE, out=root / "probe", backend="torch", progress=False)
    for name in ("finished", "interrupted", "probe_w", "probe"):
        w[name] = root / name
    assert (w["finished"] / "run.json").is_file()
    assert not w["interrupted"].exists() and (root / ".interrupted.training" / "checkpoint.pt").is_file()
    return w


def _copy(world: dict[str, Any], name: str, dest: Path) -> Path:
    """A private copy of run `name` (and its work folder, if any) under `dest`: tests may damage it."""
    dest.mkdir(parents=True, exist_ok=True)
    if world[name].exists():
        shutil.copytree(world[name], dest / name)
    work = world["root"] / f".{name}.training"
    if work.exists():
        shutil.copytree(work, dest / f".{name}.training")
    return dest / name


# -- item 3: fit --resume / --overwrite and the run's state ----------------------------------------------
def test_resume_of_a_finished_run_is_refused_and_deletes_nothing(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(world, "finished", tmp_path)
    # What other verbs add to a finished run must survive, whatever the strategy asked for.
    (run / "evaluation.json").write_text('{"accuracy": 1.0}\n')
    (run / "calibration.json").write_text('{"temperature": 1.5}\n')
    before = tree_digest(tmp_path)
    for strategy in ("head", "full"):
        args = [*FIT, "--strategy", strategy]
        res = run_cli(capsys, "fit", world["data"], *args, "--out", run, "--resume")
        assert_refused(res, names=run)
        assert "finished" in res.text and "--overwrite" in res.text
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize(
    ("option", "value", "differs"),
    [
        ("--strategy", "full", "strategy"),
        ("--backbone", "weighted", "backbone"),
        ("data", "other", "data"),
        ("--seed", "3", "seed"),
    ],
)
def test_resume_with_other_options_or_data_is_refused_naming_what_differs(
    world: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    differs: str,
) -> None:
    run = _copy(world, "interrupted", tmp_path)
    before = tree_digest(tmp_path)
    data = world["data"]
    args = list(FIT)
    if option == "data":
        data = world[value]
    else:
        args += [option, world.get(value, value)]
    res = run_cli(capsys, "fit", data, *args, "--out", run, "--resume")
    assert_refused(res, names=run)
    assert f"{differs}:" in res.text, res.text
    if option == "data":
        assert str(world["other"]) in res.text and str(world["data"]) in res.text
    assert tree_digest(tmp_path) == before


def test_resume_with_data_that_now_splits_differently_is_refused(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.data import load_dataset
    from headstart.train.resume import split_digest as _split_digest

    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    run = _copy(world, "interrupted", tmp_path / "runs")
    started = run.parent / ".interrupted.training" / "started.json"
    info = json.loads(started.read_text())
    # The run was started on this folder (as it is now)...
    ds = load_dataset(data, seed=info["seed"], val=info["val"], test=info["test"])
    info["data"] = str(data.resolve())
    info["split_sha256"], info["n_items"] = _split_digest(ds.items)
    started.write_text(json.dumps(info))
    draw_item("red", 999).save(data / "red" / "red_new.png")  # ...which changed since
    before = tree_digest(tmp_path / "runs")
    res = run_cli(capsys, "fit", data, *FIT, "--out", run, "--resume")
    assert_refused(res, names=run)
    assert "another split" in res.text and "24 items then, 25 now" in res.text
    assert tree_digest(tmp_path / "runs") == before


def test_rerun_without_resume_onto_an_interrupted_run_is_refused(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(world, "interrupted", tmp_path)
    before = tree_digest(tmp_path)
    res = run_cli(capsys, "fit", world["data"], *FIT, "--out", run)
    assert_refused(res, names=run)
    assert "an interrupted run is there" in res.text
    assert "add --resume to continue it or --overwrite to start over" in res.text
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("strategy", ["head", "full"])
def test_fit_onto_an_existing_run_without_overwrite_is_refused(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], strategy: str
) -> None:
    run = _copy(world, "finished", tmp_path)
    before = tree_digest(tmp_path)
    res = run_cli(capsys, "fit", world["data"], *FIT, "--strategy", strategy, "--out", run)
    assert_refused(res, names=run)
    assert "--overwrite" in res.text
    assert tree_digest(tmp_path) == before


def test_probe_onto_an_existing_run_without_overwrite_is_refused_before_embedding(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], tripwire: None
) -> None:
    run = _copy(world, "probe", tmp_path)
    before = tree_digest(tmp_path)
    res = run_cli(capsys, "probe", world["data"], "--backbone", TEST_BACKBONE, "--out", run)
    assert_refused(res, names=run)
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("where", ["no --out", "empty folder"])
def test_resume_with_nothing_to_resume_is_refused(
    world: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tripwire: None,
    where: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    out = [] if where == "no --out" else ["--out", tmp_path / "fresh"]
    res = run_cli(capsys, "fit", world["data"], *FIT, *out, "--resume")
    assert_refused(res, names="--out" if where == "no --out" else tmp_path / "fresh")
    assert tree_digest(tmp_path) == {}


def test_resume_with_the_same_options_finishes_the_run(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(world, "interrupted", tmp_path)
    res = run_cli(capsys, "fit", world["data"], *FIT, "--out", run, "--resume")
    assert res.code == 0, res.text
    assert (run / "run.json").is_file() and not (tmp_path / ".interrupted.training").exists()


def test_overwrite_starts_an_interrupted_run_over(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(world, "interrupted", tmp_path)
    res = run_cli(capsys, "fit", world["data"], *FIT, "--out", run, "--overwrite")
    assert res.code == 0, res.text
    assert (run / "run.json").is_file() and not (tmp_path / ".interrupted.training").exists()


# -- item 5: the base weights recorded in run.json are the ones loaded -------------------------------------
def _tamper(run: Path, **backbone: Any) -> dict[str, Any]:
    info = json.loads((run / "run.json").read_text())
    original = dict(info["backbone"])
    info["backbone"].update(backbone)
    (run / "run.json").write_text(json.dumps(info, indent=2))
    return original


def _verb(verb: str, run: Path, world: dict[str, Any], tmp_path: Path) -> list[object]:
    some_file = next(iter(sorted(world["data"].rglob("*.png"))))
    return {
        "predict": ["predict", run, some_file],
        "export": ["export", run, "--onnx", "--out", tmp_path / "out" / "m.onnx"],
        "register": ["models", "register", run, "--store", tmp_path / "store"],
        "evaluate": ["evaluate", run, "--no-latency"],
    }[verb]


@pytest.mark.parametrize("verb", ["predict", "export", "register", "evaluate"])
def test_a_wrong_base_weights_hash_in_run_json_is_refused(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    run = _copy(world, "probe_w", tmp_path / "runs")
    real = _tamper(run, weights_sha256=FAKE_SHA)["weights_sha256"]
    assert real and real != FAKE_SHA
    before = tree_digest(run)
    res = run_cli(capsys, *_verb(verb, run, world, tmp_path))
    assert_refused(res, names=run / "run.json")
    assert FAKE_SHA in res.text and real in res.text  # recorded and loaded: two different values
    assert tree_digest(run) == before
    assert not (tmp_path / "out").exists() and tree_digest(tmp_path / "store") == {}


def test_a_hash_recorded_for_a_base_without_weights_file_is_refused(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(world, "probe", tmp_path)
    assert _tamper(run, weights_sha256=FAKE_SHA)["weights_sha256"] is None
    res = run_cli(capsys, *_verb("predict", run, world, tmp_path))
    assert_refused(res, names=run / "run.json")
    assert FAKE_SHA in res.text and "none (random init" in res.text


def test_an_edited_backbone_key_shows_both_keys(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(world, "probe_w", tmp_path)
    real_key = _tamper(run, key="0123456789abcdef01234567")["key"]
    res = run_cli(capsys, *_verb("predict", run, world, tmp_path))
    assert_refused(res, names=run / "run.json")
    assert "0123456789abcdef01234567" in res.text and real_key in res.text


def test_probe_classifier_load_checks_the_base_hash(world: dict[str, Any], tmp_path: Path) -> None:
    from headstart.api import ProbeClassifier
    from headstart.errors import HeadstartError

    run = _copy(world, "probe_w", tmp_path)
    real = _tamper(run, weights_sha256=FAKE_SHA)["weights_sha256"]
    with pytest.raises(HeadstartError) as e:
        ProbeClassifier.load(run)
    assert FAKE_SHA in str(e.value) and real in str(e.value)


def test_fit_records_each_items_sha256_in_split_csv(world: dict[str, Any]) -> None:
    with open(world["finished"] / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["split"] for r in rows} == {"train", "val", "test"}
    root = Path(load_run_info(world["finished"]).data_root or "")  # paths are relative to the data root
    for r in rows:
        assert r["sha256"] == sha256_file(root / r["path"]), r


# -- item 7: an unusable --out / --store is refused before any work ----------------------------------------
@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading data, building a backbone or embedding now fails the test: the refusal must come first."""
    trip_expensive_work(monkeypatch, "expensive work started before the output was checked")


def _bad_out(kind: str, verb: str, tmp_path: Path) -> Path:
    """'file': an existing file where a folder is wanted (a folder, for export's file); 'below_file'."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    if kind == "file":
        if verb == "export":
            (tmp_path / "taken.onnx").mkdir()
            return tmp_path / "taken.onnx"
        return blocker
    return blocker / ("m.onnx" if verb == "export" else "run")


def _writer(verb: str, out: Path, world: dict[str, Any]) -> list[object]:
    return {
        "probe": ["probe", world["data"], "--backbone", TEST_BACKBONE, "--out", out],
        "fit": ["fit", world["data"], *FIT, "--out", out],
        "export": ["export", world["probe"], "--onnx", "--out", out],
        "register": ["models", "register", world["probe"], "--store", out],
    }[verb]


@pytest.mark.parametrize("verb", ["probe", "fit", "export", "register"])
@pytest.mark.parametrize("kind", ["file", "below_file", "read_only"])
def test_an_unusable_output_is_refused_before_any_work(
    world: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tripwire: None,
    isolated_cache: Path,
    verb: str,
    kind: str,
) -> None:
    if kind == "read_only":
        # As root, chmod does not stop writes: make creating a file in tmp_path fail as a read-only
        # mount would (the check must try a write, not trust os.access).
        out = tmp_path / "ro" / ("m.onnx" if verb == "export" else "run")
        real = tempfile.mkstemp

        def read_only(*a: Any, **k: Any) -> Any:
            if k.get("dir") is not None and Path(k["dir"]).resolve() == tmp_path.resolve():
                raise PermissionError(30, "Read-only file system")
            return real(*a, **k)

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    else:
        out = _bad_out(kind, verb, tmp_path)
    before = tree_digest(tmp_path), tree_digest(world["probe"])
    res = run_cli(capsys, *_writer(verb, out, world))
    assert_refused(res, names=out)
    if kind == "read_only":
        assert "cannot write in" in res.text
    assert (tree_digest(tmp_path), tree_digest(world["probe"])) == before
    assert tree_digest(isolated_cache) == {}  # nothing embedded or cached
