"""Knowledge distillation: the soft loss, learning a teacher's decisions from unlabeled inputs alone, the
distill verb (same test items, the teacher recorded in the run), text teachers, and bad teacher paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import TEST_BACKBONE, make_image_folder
from headstart.errors import HeadstartError
from headstart.recipes import Phase, Recipe
from headstart.runs import item_sources, load_run_info, read_split_rows
from headstart.train.data import Split
from headstart.train.distill import Distillation, distill, distillation_loss
from headstart.train.loop import Trainer
from headstart.train.objective import Step

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A head-only fit of the tiny backbone on three easy classes: a teacher with real decisions."""
    from headstart.train import fit

    root = tmp_path_factory.mktemp("teacher")
    data = make_image_folder(root / "data", ("red", "blue", "green"), per_class=40)
    out = root / "run"
    fit(data, backbone=TEST_BACKBONE, strategy="head", out=out, progress=False)
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_soft_loss_is_t_squared_times_the_kl_computed_by_hand() -> None:
    s = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    t = np.array([[3.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    T = 2.5
    p, q = _softmax(t / T), _softmax(s / T)
    by_hand = T * T * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    got = distillation_loss(torch.tensor(s), torch.tensor(t), T)
    assert float(got) == pytest.approx(by_hand, rel=1e-5)
    assert float(distillation_loss(torch.tensor(t), torch.tensor(t), T)) == pytest.approx(0.0, abs=1e-6)


class _FakeTeacher:
    """Fixed logits per source; one source it cannot read."""

    path = None
    kind = "probe"

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.classes = ["a", "b", "c"]
        self.table = table
        self.backbone = type("B", (), {"key": "k", "name": "fake"})()

    def logits(self, sources: list[str], **_: Any) -> tuple[np.ndarray, list[int], dict[str, str]]:
        kept = [i for i, s in enumerate(sources) if s in self.table]
        z = np.array([self.table[sources[i]] for i in kept], np.float32)
        return z, kept, {s: "unreadable" for s in sources if s not in self.table}


def test_loss_mixes_soft_over_all_rows_and_hard_over_labeled_ones() -> None:
    table = {"x0": [2.0, 0.0, 0.0], "x1": [0.0, 3.0, 0.0], "x2": [0.0, 0.0, 1.0]}
    obj = Distillation(_FakeTeacher(table), temperature=3.0, alpha=0.7)  # type: ignore[arg-type]
    train = Split(examples=[0, 1, 2, 3], y=torch.tensor([0, -1, 2, -1]), sources=["x0", "x1", "x2", "gone"])
    trainer = type("T", (), {"head": torch.nn.Linear(4, 3)})()
    obj.setup(trainer, train)  # type: ignore[arg-type]
    assert obj.n_unlabeled == 2 and obj.n_without_teacher == 1
    z = torch.tensor([[0.1, 0.2, 0.3], [1.0, -1.0, 0.0], [0.0, 0.5, 0.5], [9.0, 0.0, 0.0]])
    idx = torch.tensor([0, 1, 2, 3])
    step = Step(None, train, z, None, train.y, idx, 0, False, torch.Generator(), 0.0)  # type: ignore[arg-type]
    soft = distillation_loss(z[:3], torch.tensor([table[s] for s in ("x0", "x1", "x2")]), 3.0)
    hard = torch.nn.functional.cross_entropy(z[[0, 2]], torch.tensor([0, 2]))
    assert float(obj.loss(step)) == pytest.approx(float(0.7 * soft + 0.3 * hard), rel=1e-5)
    d = obj.describe()
    assert d["name"] == "distillation" and d["temperature"] == 3.0 and d["alpha"] == 0.7
    assert d["n_unlabeled"] == 2 and d["teacher"]["key"] == "k"


def _agreement_after(teacher_run: Path, tmp_path: Path, alpha: float) -> float:
    """A zero-initialised student head trained with `alpha` on unlabeled images only (no human label
    anywhere: the epoch is chosen by agreement with the teacher on other images); returns its agreement with
    the teacher on a third set of images it never saw."""
    from headstart.backbones import create_backbone
    from headstart.model import load_model
    from headstart.train.data import decode_all

    teacher = load_model(teacher_run)
    pool = make_image_folder(tmp_path / f"pool{alpha}", ("red", "blue", "green"), per_class=36, seed=7)
    files = sorted(str(p) for p in pool.rglob("*.png"))
    fit_src, val_src, held = files[0::3], files[1::3], files[2::3]
    student = create_backbone(TEST_BACKBONE)
    good, _ = decode_all(student, files)

    def split(srcs: list[str], y: torch.Tensor) -> Split:
        return Split([good[s] for s in srcs], y, srcs)

    z_val, _, _ = teacher.logits(val_src)
    train = split(fit_src, torch.full((len(fit_src),), -1))
    val = split(val_src, torch.from_numpy(z_val.argmax(1)))
    phase = Phase("head", train_top=0, epochs=20, lr=1e-2, patience=None, head_init="zeros")
    obj = Distillation(teacher, temperature=2.0, alpha=alpha)
    recipe = Recipe("unlabeled-only", (phase,), batch_size=8)
    # fp32 pinned: `auto` times a step and may pick bf16, which would make the threshold a timing's call.
    tr = Trainer(student, 3, recipe, objective=obj, precision="fp32").fit(train, val)
    with torch.no_grad():
        pred_s = tr.net(student.collate([good[s] for s in held])).argmax(1).numpy()
    z_t, kept, _ = teacher.logits(held)
    assert kept == list(range(len(held)))
    return float((pred_s == z_t.argmax(1)).mean())


def test_student_learns_the_teachers_decisions_from_unlabeled_inputs_alone(
    teacher_run: Path, tmp_path: Path
) -> None:
    learned = _agreement_after(teacher_run, tmp_path, alpha=1.0)
    untaught = _agreement_after(teacher_run, tmp_path, alpha=0.0)  # no labels, no teacher: nothing to learn
    assert learned >= 0.8, learned  # chance is ~1/3
    assert learned > untaught + 0.3, (learned, untaught)


def test_distill_trains_on_the_teachers_items_and_records_the_teacher(
    teacher_run: Path, tmp_path: Path
) -> None:
    unlabeled = make_image_folder(tmp_path / "unlabeled", ("red", "blue", "green"), per_class=5, seed=3)
    out = tmp_path / "student"
    rep = distill(
        teacher_run,
        student=TEST_BACKBONE,
        strategy="head",
        unlabeled=unlabeled,
        out=out,
        epochs=6,
        progress=False,
        latency_repeats=2,
    )
    info = json.loads((out / "run.json").read_text())
    assert info["objective"]["name"] == "distillation"
    assert info["objective"]["teacher"]["run"] == str(teacher_run)
    assert info["objective"]["teacher"]["key"] == rep.objective["teacher"]["key"]
    assert info["objective"]["n_unlabeled"] == 15
    assert rep.fit["strategy"] == "head+distill"

    def test_items(run: Path) -> list[str]:
        rows = [r for r in read_split_rows(run) if r.split == "test"]
        return sorted(str(Path(p).resolve()) for p in item_sources(run, rows, load_run_info(run)))

    assert test_items(out) == test_items(teacher_run)
    saved = json.loads((out / "distill.json").read_text())
    for side in ("teacher", "student"):
        assert saved[side]["test_n"] == len(test_items(teacher_run))
        assert saved[side]["params"] > 0 and saved[side]["latency"]["single_p50_ms"] > 0
    assert 0.0 <= saved["agreement"] <= 1.0
    assert saved["student"]["test_accuracy"] == pytest.approx(rep.fit["test_accuracy"])
    for side in ("teacher", "student"):  # every accuracy with its interval
        lo, hi = saved[side]["test_accuracy_ci"]
        assert lo <= saved[side]["test_accuracy"] <= hi
    d = saved["student_vs_teacher"]  # the paired difference on the same items, student minus teacher
    assert d["n"] == saved["teacher"]["test_n"]
    assert d["diff"] == pytest.approx(saved["student"]["test_accuracy"] - saved["teacher"]["test_accuracy"])
    assert d["only_a"] - d["only_b"] == round(d["diff"] * d["n"])
    assert d["verdict"] == ("tie" if d["p"] >= 0.05 else "better" if d["diff"] > 0 else "worse")


def test_text_teacher_is_distilled_on_its_own_texts(tmp_path: Path) -> None:
    from headstart.api import probe
    from test_text import animal_vehicle_rows, write_csv

    data = write_csv(tmp_path / "av.csv", animal_vehicle_rows(20))
    probe(data, backbone="test_text_encoder", out=tmp_path / "teacher", progress=False)
    rep = distill(
        tmp_path / "teacher",
        student="test_text_encoder",
        strategy="head",
        out=tmp_path / "student",
        epochs=3,
        progress=False,
        latency_repeats=0,
    )
    assert rep.teacher["test_n"] == rep.student["test_n"] == 6
    assert rep.student["test_accuracy"] >= 0.5


def test_bad_teacher_paths_are_clear_errors(tmp_path: Path, teacher_run: Path) -> None:
    from headstart.cli import main

    with pytest.raises(HeadstartError, match="does not exist"):
        distill(tmp_path / "nope", student=TEST_BACKBONE, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeadstartError, match="not a headstart run"):
        distill(tmp_path / "empty", student=TEST_BACKBONE, progress=False)
    with pytest.raises(HeadstartError, match="reads image inputs"):
        distill(teacher_run, student="test_text_encoder", progress=False)
    assert main(["distill", str(tmp_path / "nope"), "--student", TEST_BACKBONE, "--json"]) == 2
