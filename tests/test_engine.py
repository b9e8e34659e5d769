"""Where and how training runs (headstart.train.engine): the --device flag, placement of modules and
batches (on the CPU and the `meta` device, so the placement logic is tested without a GPU), precision
`auto` with a fake timer, bf16 autocast in the training forward only, what run.json records, processes
that agree on when to stop, and the loop's callbacks."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from badinput import assert_refused, run_cli, tree_digest
from conftest import TEST_BACKBONE, make_image_folder
from headstart.errors import HeadstartError
from headstart.recipes import Phase, Recipe
from headstart.train import engine as eng
from headstart.train import precision
from headstart.train.data import Split
from headstart.train.engine import Engine, resolve_device
from headstart.train.loop import Trainer
from headstart.train.objective import Objective

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def _gpus(monkeypatch: pytest.MonkeyPatch, n: int, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "a test GPU")


def _split(bb: Any, folder: Path, n: int) -> Split:
    files = sorted(str(f) for f in folder.rglob("*.png"))[:n]
    labels = [0 if "/red/" in f else 1 for f in files]
    return Split([bb.load_item(f) for f in files], torch.tensor(labels), files)


# -- the device --------------------------------------------------------------------------------------------
def test_auto_is_cuda_when_present_and_named_devices_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_gpu(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    for spec in ("cuda", "cuda:0", "mps"):
        with pytest.raises(HeadstartError, match=f"--device {spec}") as err:
            resolve_device(spec)
        assert err.value.fix and "cpu" in err.value.fix
    with pytest.raises(HeadstartError, match="'tpu' is not a device"):
        resolve_device("tpu")

    _gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(HeadstartError, match="has 2 CUDA device") as err:
        resolve_device("cuda:2")
    assert "cuda:1" in str(err.value.fix)
    # Under torchrun every process takes the GPU of its local rank: a fixed index is refused.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(HeadstartError, match="under torchrun"):
        eng.check_engine("cuda:1", "auto")


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["fit", "{data}", "--device", "tpu"], "tpu"),
        (["fit", "{data}", "--device", "cuda:0"], "cuda:0"),
        (["fit", "{data}", "--device", "cpu", "--precision", "fp16"], "fp16"),
        (["fit", "{data}", "--precision", "fp8"], "fp8"),
        (["adapt", "--backbone", "test_text_encoder", "--unlabeled", "{data}", "--device", "mps"], "mps"),
        (["distill", "{data}", "--student", TEST_BACKBONE, "--device", "cuda"], "cuda"),
    ],
)
def test_a_device_or_precision_this_machine_lacks_is_refused_before_any_work(
    argv: list[str], names: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has the device the case refuses")
    data = make_image_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "out"
    before = tree_digest(tmp_path)
    res = run_cli(capsys, *[a.format(data=data) for a in argv], "--out", out)
    assert_refused(res, names=names, fix="fp8" not in argv)  # argparse's choices list the valid ones
    assert tree_digest(tmp_path) == before and not out.exists()


# -- placement ---------------------------------------------------------------------------------------------
class _WithModule(Objective):
    """An objective that owns a module made in setup (as DANN's domain classifier is)."""

    def setup(self, trainer: Any, train: Split) -> None:
        self.extra = torch.nn.Linear(4, 1)

    def modules(self) -> list[torch.nn.Module]:
        return [self.extra]


def test_placement_moves_every_module_and_each_batch_to_the_device(tmp_path: Path) -> None:
    from headstart.backbones import create_backbone

    bb = create_backbone(TEST_BACKBONE)
    split = _split(bb, make_image_folder(tmp_path / "d", per_class=3), 6)
    recipe = Recipe("r", (Phase("p", train_top=1, epochs=1),))
    tr = Trainer(bb, 2, recipe, device="cpu", objective=_WithModule())
    tr.engine.device = meta = torch.device("meta")
    tr.task.setup(tr, split, split)
    tr.place()
    params = [p for m in tr.task.modules() for p in m.parameters()]
    assert len(params) > len(list(bb.parameters())) and all(p.device == meta for p in params)
    # A training batch: collated on the CPU, handed to the network on the device.
    h, start = tr.inputs("train", split, torch.arange(4), 0, augment=False, gen=torch.Generator())
    assert start == 0 and h.device == meta and tr.net(h, 0).device == meta
    batch = {"ids": torch.zeros(2, 3), "parts": [torch.ones(1)], "name": "kept"}
    placed = tr.engine.place(batch)
    assert placed["ids"].device == placed["parts"][0].device == meta and placed["name"] == "kept"


# -- precision ---------------------------------------------------------------------------------------------
def test_auto_precision_on_a_cpu_is_a_timed_step_remembered_per_backbone_machine_and_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    seconds = {"fp32": 1.0, "bf16": 0.5}
    timed: list[str] = []

    def timer(precision: str) -> float:
        timed.append(precision)
        return seconds[precision]

    def choose(key: str) -> Engine:
        e = Engine(torch.device("cpu"), asked="auto")
        e.choose_precision(timer, key)
        return e

    e = choose("backbone-a")
    assert e.precision == "bf16" and timed == ["fp32", "bf16"] and "500.0 ms in bf16" in e.reason
    seconds["bf16"] = 5.0  # would now lose, but the memo answers without timing again
    assert choose("backbone-a").precision == "bf16" and len(timed) == 2
    assert choose("backbone-b").precision == "fp32" and len(timed) == 4  # another backbone: timed
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # another thread count: timed again
        seconds["bf16"] = 0.95  # faster, but by less than the margin: not worth bf16's rounding
        assert choose("backbone-a").precision == "fp32" and len(timed) == 6
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)  # emulated bf16 is never faster: no timing
    e = choose("backbone-c")
    assert e.precision == "fp32" and "no native bf16" in e.reason and len(timed) == 6


def test_auto_precision_elsewhere_and_explicit_precisions(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 1, bf16=True)
    assert Engine(torch.device("cuda"), asked="auto").choose_precision() == "bf16"
    _gpus(monkeypatch, 1, bf16=False)
    assert Engine(torch.device("cuda"), asked="auto").choose_precision() == "fp32"
    with pytest.raises(HeadstartError, match="has no bf16"):
        eng.check_engine("cuda", "bf16")
    assert eng.check_engine("cuda", "fp16") == torch.device("cuda")
    assert Engine(torch.device("mps"), asked="auto").choose_precision() == "fp32"
    _no_gpu(monkeypatch)
    with pytest.raises(HeadstartError, match="fp16 on the CPU") as err:
        Engine.create("cpu", "fp16")
    assert "bf16" in str(err.value.fix)
    e = Engine.create("cpu", "bf16")
    assert e.choose_precision(lambda p: 1 / 0) == "bf16" and e.reason == "asked"  # no timing when asked


def test_bf16_runs_the_training_forward_evaluation_stays_fp32_and_the_run_records_it(tmp_path: Path) -> None:
    from headstart.backbones import create_backbone
    from headstart.model import load_model
    from headstart.train import fit

    bb = create_backbone(TEST_BACKBONE)
    split = _split(bb, make_image_folder(tmp_path / "d", per_class=4), 8)
    recipe = Recipe("r", (Phase("p", train_top=2, epochs=1, head_init="zeros"),), batch_size=4)
    tr = Trainer(bb, 2, recipe, precision="bf16", augment=False)
    seen: list[torch.dtype] = []
    tr.head.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    tr.fit(split, split)
    # The micro-batch measurement (one training forward) and 2 training steps under autocast, then
    # validation and the logits in float32.
    assert seen[:3] == [torch.bfloat16] * 3 and set(seen[3:]) == {torch.float32}
    assert tr.logits("val", split).dtype == torch.float32
    assert tr.engine.describe()["precision"] == "bf16"

    data = make_image_folder(tmp_path / "data", per_class=8)
    r = fit(data, backbone=TEST_BACKBONE, strategy="partial:1", epochs=1, out=tmp_path / "r", progress=False)
    info = json.loads((r.run_dir / "run.json").read_text())["engine"]
    assert info["device"] == "cpu" and info["world_size"] == 1 and info["precision_asked"] == "auto"
    assert info["precision"] in ("fp32", "bf16") and info["precision_reason"].startswith("auto")
    proba, _, bad = load_model(r.run_dir).predict_proba([str(next(data.rglob("*.png")))])
    assert not bad and proba.shape == (1, 2)


# -- processes agree ---------------------------------------------------------------------------------------
def _agree_worker(rank: int, port: int, out: str) -> None:
    """One of two gloo processes: each votes, and runs the stop callbacks with its own view."""
    from headstart.train.callbacks import Budget, EarlyStopping

    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
    )
    import time

    e = Engine.create("cpu", "fp32")
    result: dict[str, Any] = {"world": e.world, "rank": e.rank}
    result["votes"] = [e.agree(rank == 1), e.agree(False), e.agree(True)]
    # The budget: only rank 1's clock says it is spent (a slower process).
    trainer = SimpleNamespace(engine=e, step_seconds=0.0, stop_epoch=False)
    trainer.started = time.perf_counter() - (100.0 if rank == 1 else 0.0)
    Budget(10.0).after_step(trainer)
    result["budget_stop"] = trainer.stop_epoch
    # Early stopping: only rank 0 sees no progress.
    task = SimpleNamespace(improved=lambda new, old: rank == 1)
    pos = SimpleNamespace(phase_best=[1.0], bad_epochs=0)
    trainer = SimpleNamespace(engine=e, pos=pos, score=(0.5,), task=task, phase=Phase("p", patience=1))
    EarlyStopping().after_epoch(trainer)
    result["early_stop"] = trainer.stop_phase
    result["sums"] = e.sum_over_processes([1.0, float(rank)])
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def test_two_processes_agree_on_every_stop_decision(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_agree_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, res in enumerate(results):
        assert res["world"] == 2 and res["rank"] == r
        assert res["votes"] == [True, False, True]  # one process's True stops both
        assert res["budget_stop"] is True and res["early_stop"] is True
        assert res["sums"] == [2.0, 1.0]
