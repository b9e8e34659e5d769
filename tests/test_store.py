from __future__ import annotations

import contextlib
import json
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder
from headstart.errors import HeadstartError
from headstart.store import ModelStore

# Kept light at import time (no torch): the concurrency test's spawned workers import this module.


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two runs of the same data with different L2 strengths: same classes, different heads."""
    from headstart.api import probe

    root = tmp_path_factory.mktemp("store")
    data = make_image_folder(root / "data", classes=("red", "blue", "green"), per_class=8)
    out = {"data": data}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        for name, C in (("a", 0.01), ("b", 1.0)):
            probe(data, backbone=TEST_BACKBONE, out=root / name, C=C, backend="torch", progress=False)
            out[name] = root / name
    return out


@pytest.fixture
def probe_files(runs: dict[str, Path]) -> list[str]:
    return sorted(str(p) for p in runs["data"].rglob("*.png"))[:6]


def _proba(model, files: list[str]) -> np.ndarray:
    return model.predict_proba(files, backend="torch")[0]


def test_register_copies_only_the_run_with_card_and_manifest(runs: dict[str, Path], tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.register(runs["a"], "emoji") == 1
    vdir = tmp_path / "models" / "emoji" / "v1"
    names = {p.name for p in vdir.iterdir()}
    assert names == {
        "run.json",
        "head.safetensors",
        "metrics.json",
        "data.json",
        "split.csv",
        "card.json",
        "manifest.json",
    }
    assert not any(p.suffix in (".pth", ".onnx") for p in vdir.iterdir())  # never the base weights
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert set(manifest["files"]) == names - {"manifest.json"}
    card = json.loads((vdir / "card.json").read_text())
    info = json.loads((runs["a"] / "run.json").read_text())
    assert card["base"]["name"] == TEST_BACKBONE
    assert card["base"]["license"] == info["backbone"]["card"]["license"]
    assert card["base"]["sha256"] == info["backbone"]["weights_sha256"]
    assert card["data"]["class_counts"] == {"blue": 8, "green": 8, "red": 8}
    assert card["recipe"]["C"] == 0.01 and card["seed"] == 0 and card["version"] == 1
    assert (
        card["metrics"]["test_accuracy"]
        == json.loads((runs["a"] / "metrics.json").read_text())["test"]["accuracy"]
    )
    assert "torch" in card["versions"]


def test_references_promote_and_rollback_round_trip(
    runs: dict[str, Path], probe_files: list[str], tmp_path: Path
) -> None:
    from headstart.model import load_model

    store = ModelStore(tmp_path / "models")
    store.register(runs["a"], "emoji", alias="production")
    store.register(runs["b"], "emoji")
    want_a = _proba(load_model(runs["a"]), probe_files)
    want_b = _proba(load_model(runs["b"]), probe_files)
    assert not np.allclose(want_a, want_b)  # the two versions really differ

    assert store.resolve("emoji") == ("emoji", 2)  # latest
    assert store.resolve("emoji:v1") == store.resolve("emoji:1") == ("emoji", 1)
    assert store.resolve("emoji@production") == ("emoji", 1)
    for bad, match in (("emoji:v9", "no version v9"), ("emoji@staging", "no alias"), ("nope", "no model")):
        with pytest.raises(HeadstartError, match=match):
            store.resolve(bad)

    store.promote("emoji", "v2")
    np.testing.assert_array_equal(_proba(store.load("emoji@production"), probe_files), want_b)
    assert store.rollback("emoji") == 1
    np.testing.assert_array_equal(_proba(store.load("emoji@production"), probe_files), want_a)
    with pytest.raises(HeadstartError, match="no earlier version"):
        store.rollback("emoji")
    listed = store.list_models()
    assert listed[0]["name"] == "emoji" and listed[0]["aliases"] == {"production": 1}
    assert [v["aliases"] for v in listed[0]["versions"]] == [["production"], []]


def test_diff_and_rm(runs: dict[str, Path], tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.register(runs["a"], "emoji")
    store.register(runs["b"], "emoji", alias="production")
    d = store.diff("emoji", "v1", "v2")
    assert d["recipe"]["C"] == [0.01, 1.0]
    assert "head.safetensors" in d["files"]["changed"] and "card.json" in d["files"]["changed"]
    assert d["base"] == {}  # same base weights
    assert "test_accuracy" in d["metrics"]
    with pytest.raises(HeadstartError, match="@production"):
        store.remove("emoji", 2)
    store.remove("emoji", 1)
    assert store.versions("emoji") == [2]
    store.remove("emoji", 2, force=True)
    assert store.versions("emoji") == [] and store._index("emoji")["aliases"] == {}
    assert store.register(runs["a"], "emoji") == 3  # numbers are never reused


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_tampered_file_is_refused_naming_it(runs: dict[str, Path], tmp_path: Path, damage: str) -> None:
    store = ModelStore(tmp_path / "models")
    store.register(runs["a"], "emoji")
    f = tmp_path / "models" / "emoji" / "v1" / "head.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[:-10]
    f.write_bytes(bytes(data))
    with pytest.raises(HeadstartError, match=r"head\.safetensors does not match its sha256"):
        store.load("emoji")
    with pytest.raises(HeadstartError, match=r"head\.safetensors"):
        store.promote("emoji", 1)  # a damaged version is never promoted


def _promote_many(root: str, version: int, times: int, barrier) -> None:
    barrier.wait()  # both processes start promoting at the same moment
    store = ModelStore(root)
    for _ in range(times):
        store.promote("emoji", version, "production")


def test_concurrent_promotions_leave_a_valid_store(runs: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "models"
    store = ModelStore(root)
    store.register(runs["a"], "emoji")
    store.register(runs["b"], "emoji")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    times = 25
    procs = [ctx.Process(target=_promote_many, args=(str(root), v, times, barrier)) for v in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    index = json.loads((root / "emoji" / "index.json").read_text())
    # Every promotion was recorded: no writer overwrote another's update.
    assert len(index["history"]["production"]) == 2 * times
    assert sorted(index["history"]["production"]) == [1] * times + [2] * times
    assert index["aliases"]["production"] == index["history"]["production"][-1]
    assert not [p for p in (root / "emoji").iterdir() if p.name.startswith(".")]  # no temp leftovers
    store.load("emoji@production")


def test_mlflow_requested_without_mlflow_fails_clearly(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail even where installed
    store = ModelStore(tmp_path / "models")
    with pytest.raises(HeadstartError, match="mlflow package is not installed"):
        store.register(runs["a"], "emoji", mlflow_uri="file:/tmp/mlruns")
    assert store.versions("emoji") == []  # nothing written


class _RecordingMlflow:
    """Stands in for the mlflow module: records what the store logs."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, object]] = []
        self.fail = fail

    def set_tracking_uri(self, uri: str) -> None:
        self.calls.append(("uri", uri))

    def set_experiment(self, name: str) -> None:
        if self.fail:
            raise RuntimeError("tracking server unreachable")
        self.calls.append(("experiment", name))

    def start_run(self, run_name: str) -> contextlib.AbstractContextManager[None]:
        self.calls.append(("run", run_name))
        return contextlib.nullcontext()

    def log_params(self, params: dict[str, object]) -> None:
        self.calls.append(("params", params))

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.calls.append(("metrics", metrics))

    def log_artifacts(self, folder: str) -> None:
        self.calls.append(("artifacts", sorted(p.name for p in Path(folder).iterdir())))


def test_mlflow_mirror_logs_card_metrics_and_files(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _RecordingMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    store = ModelStore(tmp_path / "models")
    assert store.register(runs["a"], "emoji", mlflow_uri="sqlite:///x.db") == 1
    calls = dict(fake.calls)
    assert calls["uri"] == "sqlite:///x.db" and calls["run"] == "emoji:v1"
    assert calls["params"]["kind"] == "probe"
    metrics = json.loads((runs["a"] / "metrics.json").read_text())
    assert calls["metrics"]["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert {"head.safetensors", "card.json", "manifest.json"} <= set(calls["artifacts"])

    monkeypatch.setitem(sys.modules, "mlflow", _RecordingMlflow(fail=True))
    with pytest.raises(HeadstartError, match="registered emoji:v2, but logging it to MLflow"):
        store.register(runs["a"], "emoji", mlflow_uri="http://nowhere:5000")
    assert store.versions("emoji") == [1, 2]  # the failed mirror lost nothing


def test_mlflow_real_package(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow", reason="mlflow is an optional extra")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    ModelStore(tmp_path / "models").register(runs["a"], "emoji", mlflow_uri=uri)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("headstart/emoji")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["kind"] == "probe"
    assert "head.safetensors" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_models_cli(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from headstart.cli import main

    s = ["--store", str(tmp_path / "models")]

    def run_json(*argv: str) -> dict:
        assert main(["models", *argv, *s, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert run_json("register", str(runs["a"]), "--name", "emoji", "--alias", "production")["version"] == 1
    assert run_json("register", str(runs["b"]), "--name", "emoji")["ref"] == "emoji:v2"
    assert run_json("promote", "emoji", "v2")["version"] == 2
    assert run_json("rollback", "emoji")["version"] == 1
    assert run_json("show", "emoji@production")["card"]["version"] == 1
    assert run_json("diff", "emoji", "1", "2")["recipe"]["C"] == [0.01, 1.0]
    assert run_json("list")["models"][0]["latest"] == 2
    assert main(["models", "rm", "emoji", "1", *s]) == 2  # production points to it
    assert "production" in capsys.readouterr().err
    for argv in (["list"], ["show", "emoji"], ["diff", "emoji", "v1", "v2"]):
        assert main(["models", *argv, *s]) == 0
    assert "emoji" in capsys.readouterr().out
    # A stored version can be evaluated by reference; it is read, never written to.
    assert main(["evaluate", "emoji@production", *s, "--no-latency", "--backend", "torch", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3
    assert not (tmp_path / "models" / "emoji" / "v1" / "evaluation.json").exists()
    ModelStore(tmp_path / "models").verify("emoji", 1)
