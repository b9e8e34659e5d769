"""`--device` on every verb that runs a network (issue 14): where each forward runs, tested without a GPU.

A GPU is faked (torch.cuda.is_available / device_count patched) and the moves are spied on (`place`, `pin`),
so the placement decisions are checked here: `auto` resolves to CUDA, the torch backend is chosen over ONNX
Runtime (its CPU build), the backbone goes to the device for the pass and comes back, and batches are pinned
and copied asynchronously. The real CPU path runs end to end (probe, evaluate, predict), and every verb
refuses a device this machine lacks before any work (exit 2, the flag named, the fix given).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from badinput import assert_refused, run_cli, tree_digest, trip_expensive_work
from conftest import TEST_BACKBONE, make_image_folder
from headstart.errors import HeadstartError
from headstart.features import forward_device
from headstart.train import engine as eng

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch reports one CUDA GPU (nothing can run on it: moves must be spied on)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


class _Moves:
    """Spies on engine.place / engine.pin: records (what, device, non_blocking) and moves nothing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.placed: list[tuple[Any, torch.device, bool]] = []
        self.pinned: list[Any] = []
        monkeypatch.setattr(eng, "place", self.place)
        monkeypatch.setattr(eng, "pin", self.pin)

    def place(self, obj: Any, device: torch.device, *, non_blocking: bool = False) -> Any:
        self.placed.append((obj, torch.device(device), non_blocking))
        return obj

    def pin(self, obj: Any) -> Any:
        self.pinned.append(obj)
        return obj

    def modules(self) -> list[tuple[str, str]]:
        return [(type(o).__name__, str(d)) for o, d, _ in self.placed if isinstance(o, torch.nn.Module)]

    def batches(self) -> list[tuple[torch.device, bool]]:
        return [(d, nb) for o, d, nb in self.placed if not isinstance(o, torch.nn.Module)]


# -- which device and backend ------------------------------------------------------------------------------
def test_forward_device_picks_torch_on_a_gpu_and_keeps_onnx_runtime_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for backend in ("auto", "onnx", "torch"):
        assert forward_device(backend, "auto") == forward_device(backend, "cpu") == torch.device("cpu")
    with pytest.raises(HeadstartError, match="--device cuda") as err:
        forward_device("auto", "cuda")
    assert "cpu" in str(err.value.fix)
    with pytest.raises(HeadstartError, match="unknown backend 'tensorrt'"):
        forward_device("tensorrt", "cpu")

    _fake_gpu(monkeypatch)
    assert forward_device("auto", "auto") == torch.device("cuda")
    assert forward_device("torch", "cuda:0") == torch.device("cuda", 0)
    # ONNX Runtime is the CPU build: with `auto` an explicit --backend onnx runs there...
    assert forward_device("onnx", "auto") == torch.device("cpu")
    # ...and with a GPU named explicitly the two flags contradict each other.
    with pytest.raises(HeadstartError, match="--backend onnx with --device cuda") as err:
        forward_device("onnx", "cuda")
    assert "--backend torch" in str(err.value.fix) and "--device cpu" in str(err.value.fix)


def test_placed_moves_a_module_for_the_block_and_back(monkeypatch: pytest.MonkeyPatch) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    meta = torch.device("meta")
    with eng.placed(net, torch.device("cpu")):  # already there: nothing moves
        pass
    moves = _Moves(monkeypatch)  # (a module cannot come back from `meta`: the way back is spied on)
    with pytest.raises(RuntimeError, match="inside"), eng.placed(net, meta) as inside:
        assert inside is net
        raise RuntimeError("inside")
    assert moves.modules() == [("Sequential", "meta"), ("Sequential", "cpu")]  # back even after an error
    monkeypatch.undo()
    eng.place(net, meta)  # the real move: every parameter and buffer
    assert eng.module_device(net) == meta
    assert all(t.device == meta for t in [*net.parameters(), *net.buffers()])
    assert eng.module_device(torch.nn.ReLU()) == torch.device("cpu")  # no weights: the CPU


def test_pin_pins_every_tensor_of_a_batch_and_leaves_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    pinned: list[tuple[int, ...]] = []

    def fake_pin(t: torch.Tensor) -> torch.Tensor:  # pin_memory needs a CUDA driver
        pinned.append(tuple(t.shape))
        return t.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = {"input_ids": torch.zeros(2, 5), "parts": [torch.ones(3), (torch.ones(1), "name")], "n": 2}
    out = eng.pin(batch)
    assert sorted(pinned) == [(1,), (2, 5), (3,)]
    assert out["n"] == 2 and out["parts"][1][1] == "name" and isinstance(out["parts"][1], tuple)
    assert out["input_ids"] is not batch["input_ids"]  # the pinned copy


# -- embedding on a (faked) GPU -------------------------------------------------------------------------
def test_embed_on_a_gpu_runs_torch_there_with_pinned_batches_and_returns_the_backbone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from headstart.backbones import create_backbone
    from headstart.features import embed

    _fake_gpu(monkeypatch)
    moves = _Moves(monkeypatch)

    def no_onnx(*_a: object, **_k: object) -> None:
        raise AssertionError("ONNX Runtime (a CPU build) was chosen for a GPU")

    monkeypatch.setattr("headstart.onnx_forward.OnnxForward", no_onnx)
    bb = create_backbone(TEST_BACKBONE, pretrained=False)
    assert bb.supports_onnx  # on a CPU, `auto` would pick ONNX Runtime for it
    files = sorted(make_image_folder(tmp_path / "d", per_class=3).rglob("*.png"))
    feats = embed(bb, files, cache=False, batch_size=4, progress=False)  # device and backend: auto
    assert feats.X.shape == (6, bb.embed_dim)
    assert feats.stats["backend"] == "torch" and feats.stats["device"] == "cuda"
    # The backbone goes to the GPU for the pass and back to the CPU after it.
    assert moves.modules() == [(type(bb).__name__, "cuda"), (type(bb).__name__, "cpu")]
    # Each batch (6 files in batches of 4, the first a quarter: 1, 4, 1) is pinned on a decode thread and
    # copied asynchronously.
    assert len(moves.pinned) == 3 and moves.batches() == [(torch.device("cuda"), True)] * 3


def test_embed_on_the_cpu_moves_and_pins_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from headstart.backbones import create_backbone
    from headstart.features import embed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    moves = _Moves(monkeypatch)
    bb = create_backbone(TEST_BACKBONE, pretrained=False)
    files = sorted(make_image_folder(tmp_path / "d", per_class=2).rglob("*.png"))
    feats = embed(bb, files, cache=False, backend="torch", progress=False, device="cpu")
    assert feats.stats["device"] == "cpu" and not moves.placed and not moves.pinned


def test_serve_on_a_gpu_uses_torch_there_and_reports_the_device(
    monkeypatch: pytest.MonkeyPatch, image_folder: Path, tmp_path: Path
) -> None:
    from headstart.api import probe
    from headstart.model import load_model
    from headstart.serve import Predictor

    run = probe(image_folder, backbone=TEST_BACKBONE, out=tmp_path / "run", backend="torch", progress=False)
    model = load_model(run.run_dir)
    _fake_gpu(monkeypatch)
    moves = _Moves(monkeypatch)

    def no_export(*_a: object) -> None:
        raise AssertionError("looked for an ONNX export (served by the CPU build) on a GPU")

    monkeypatch.setattr("headstart.serve.predictor.matching_export", no_export)
    pred = Predictor(model)  # engine and device: auto
    assert pred.engine == "torch" and pred.device == torch.device("cuda")
    assert moves.modules() == [("Classifier", "cuda")]  # the whole model, once, for the server's life
    example = pred.decode((sorted(image_folder.rglob("*.png"))[0]).read_bytes(), "a.png")
    p = pred.predict([example])
    assert p.shape == (1, 2) and moves.batches() == [(torch.device("cuda"), False)]
    assert pred.card("x")["device"] == "cuda"


# -- every verb refuses a device this machine lacks, before any work ----------------------------------------
VERBS = [
    ["probe", "{data}"],
    ["fit", "{data}"],
    ["compare", "{data}", "--backbone", TEST_BACKBONE],
    ["auto", "{data}", "--backbone", TEST_BACKBONE],
    ["evaluate", "{run}"],
    ["predict", "{run}", "{file}"],
    ["serve", "{run}"],
    ["distill", "{run}", "--student", TEST_BACKBONE],
    ["adapt", "--backbone", "test_text_encoder", "--unlabeled", "{file}"],
    ["lr-find", "{data}", "--backbone", TEST_BACKBONE],
    ["rank", "{data}", "--backbones", TEST_BACKBONE],
    ["curve", "{data}", "--backbone", TEST_BACKBONE],
    ["domain", "{data}", "--backbone", TEST_BACKBONE],
]


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading data or a run, building a backbone, embedding or serving now fails the test."""
    why = "work started before the device was checked"
    trip_expensive_work(monkeypatch, why, "headstart.model.load_model", "uvicorn.run")


@pytest.mark.parametrize("argv", VERBS, ids=[v[0] for v in VERBS])
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_every_verb_refuses_a_gpu_this_machine_lacks_before_any_work(
    argv: list[str], device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], tripwire: None
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has the device the case refuses")
    data = make_image_folder(tmp_path / "data", per_class=2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    file = sorted(data.rglob("*.png"))[0]
    before = tree_digest(tmp_path)
    args = [a.format(data=data, run=run, file=file) for a in argv]
    res = run_cli(capsys, *args, "--device", device)
    assert_refused(res, names=f"--device {device}")
    assert "--device cpu" in res.text  # the fix names the flag's working value
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("argv", VERBS, ids=[v[0] for v in VERBS])
def test_every_verb_refuses_a_device_that_is_no_device_as_a_usage_error(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], tripwire: None
) -> None:
    res = run_cli(
        capsys, *[a.format(data=tmp_path, run=tmp_path, file=tmp_path) for a in argv], "--device", "gpu"
    )
    assert_refused(res, names="'gpu' is not a device")
    assert "cuda:N" in res.err  # the fix lists the devices


# -- the CPU, end to end ----------------------------------------------------------------------------------
def test_probe_evaluate_and_predict_with_device_cpu_record_it(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    res = run_cli(
        capsys,
        "probe",
        image_folder,
        "--backbone",
        TEST_BACKBONE,
        "--out",
        run,
        "--backend",
        "torch",
        "--device",
        "cpu",
    )
    assert res.code == 0, res.text
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["embed"] == {**metrics["embed"], "device": "cpu", "backend": "torch"}

    res = run_cli(capsys, "evaluate", run, "--device", "cpu", "--backend", "torch", "--json")
    assert res.code == 0, res.text
    written = json.loads((run / "evaluation.json").read_text())
    assert written["device"] == "cpu" and written["latency"]["device"] == "cpu"
    assert json.loads(res.out)["device"] == "cpu"

    from headstart.model import load_model

    files = sorted(str(f) for f in image_folder.rglob("*.png"))[:3]
    res = run_cli(capsys, "predict", run, *files, "--device", "cpu", "--json")
    assert res.code == 0, res.text
    got = [r["probability"] for r in json.loads(res.out)]
    proba, kept, _ = load_model(run).predict_proba(files, backend="torch", device="cpu")
    assert kept == [0, 1, 2] and got == pytest.approx(proba.max(axis=1).tolist(), abs=1e-5)
