"""Knowledge distillation (Hinton, Vinyals & Dean 2015) from a trained run into another backbone.

The teacher is any run folder (probe or fit). The student trains through the one training loop with the
`Distillation` objective, on exactly the teacher's train/val/test items (read back from its split.csv, so
the two test accuracies are over the same items), plus optional unlabeled inputs (a transfer set) that
only the soft loss learns from:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))    over every example
         + (1 - alpha) * cross-entropy(student, label)                       over the labeled ones

T^2 keeps the soft term's gradients on the scale of the hard term's as T changes (Hinton et al., sec. 2).

Teacher logits are computed once, before training, through the teacher's feature cache, on the
*unaugmented* inputs. When a phase augments, the student sees a crop/flip/jitter of an item while its
target is the teacher's view of the whole item: a "fixed teacher" in the terms of Beyer et al. 2022 (who
find that a teacher looking at the same augmented view does better, given many epochs). On small data
and few epochs this is the affordable choice (one teacher pass instead of one per step); pass
`augment=False` to make targets and inputs match exactly (it also enables frozen-prefix caching).

    report = distill("runs/teacher", student="efficientnet_lite0", unlabeled="more_images/")
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from headstart.errors import HeadstartError
from headstart.fileio import report_dict
from headstart.recipes import Phase, Recipe
from headstart.runs import DISTILL_FILE
from headstart.train.data import Split
from headstart.train.objective import Objective, Step, step_cross_entropy
from headstart.train.teacher import compare, teacher_data

if TYPE_CHECKING:
    from headstart.model import TrainedModel
    from headstart.train.loop import Trainer

DEFAULT_TEMPERATURE = 4.0
# Most of the weight on the teacher (Hinton et al. found a "considerably lower weight" on the hard
# labels best), but not all: a small-data teacher is itself wrong on a fair share of items, and the labels
# are the only thing that can correct it there.
DEFAULT_ALPHA = 0.8
# A recipe that trains nothing by gradient (`head`: a closed-form probe) cannot learn from soft targets;
# distillation then trains the head by gradient on the cached embeddings, starting from the probe.
HEAD_DISTILL_PHASE = Phase("head-distill", train_top=0, epochs=30, lr=3e-3, patience=8, head_init="probe")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 x KL(softmax(teacher / T) || softmax(student / T)), averaged over the rows."""
    if student.shape[0] == 0:
        return student.sum() * 0.0
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * (t * t)


class Distillation(Objective):
    """alpha x soft loss against the teacher's logits (all examples) + (1 - alpha) x labeled cross-entropy.

    `teacher`: a TrainedModel (or a run folder). Its logits for every training source are computed once in
    `setup`, ordered like the training split; sources the teacher cannot read are left out of the soft loss
    (counted in `n_without_teacher`) and still count in the hard loss when labeled.
    """

    def __init__(
        self,
        teacher: TrainedModel | str | Path,
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        alpha: float = DEFAULT_ALPHA,
        backend: str = "auto",
        progress: bool = False,
        device: str = "auto",
    ) -> None:
        if temperature <= 0:
            raise HeadstartError(f"--temperature {temperature}: must be > 0", fix="use e.g. 2 .. 8")
        if not 0.0 <= alpha <= 1.0:
            raise HeadstartError(f"--alpha {alpha}: must be in [0, 1]", fix="use e.g. 0.5 .. 0.9")
        if not hasattr(teacher, "logits"):
            from headstart.model import load_model

            teacher = load_model(teacher)  # type: ignore[arg-type]
        self.teacher: TrainedModel = teacher  # type: ignore[assignment]
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.backend = backend
        self.device = device  # where the teacher's forward runs (the student's training device)
        self.progress = progress
        self.n_unlabeled = 0
        self.n_without_teacher = 0
        self.teacher_seconds = 0.0
        self.targets: torch.Tensor | None = None
        self.has_target: torch.Tensor | None = None

    def setup(self, trainer: Trainer, train: Split) -> None:
        k = trainer.head.out_features
        if len(self.teacher.classes) != k:
            raise HeadstartError(
                f"the teacher has {len(self.teacher.classes)} classes, the student {k}",
                fix="train the student on the teacher's classes (distill reads them from its split.csv)",
            )
        t0 = time.perf_counter()
        z, kept, _bad = self.teacher.logits(
            train.sources, backend=self.backend, progress=self.progress, device=self.device
        )
        self.teacher_seconds = time.perf_counter() - t0
        targets = torch.zeros(len(train), k)
        has = torch.zeros(len(train), dtype=torch.bool)
        if kept:
            targets[kept] = torch.from_numpy(np.asarray(z, np.float32))
            has[kept] = True
        self.targets, self.has_target = targets, has
        self.n_unlabeled = int((train.y < 0).sum())
        self.n_without_teacher = int((~has).sum())

    def soft_loss(self, step: Step) -> torch.Tensor:
        assert self.targets is not None and self.has_target is not None, "setup() was not called"
        idx = step.idx.to(self.targets.device)
        keep = self.has_target[idx]
        device = step.logits.device  # the targets stay on the CPU; the batch's rows go to the logits
        return distillation_loss(
            step.logits[keep.to(device)], self.targets[idx][keep].to(device), self.temperature
        )

    def loss(self, step: Step) -> torch.Tensor:
        hard = step_cross_entropy(step)
        if self.alpha == 0.0:
            return hard
        return self.alpha * self.soft_loss(step) + (1.0 - self.alpha) * hard

    def describe(self) -> dict[str, Any]:
        t = self.teacher
        return {
            "name": "distillation",
            "teacher": {
                "run": str(t.path) if t.path else None,
                "key": t.backbone.key,
                "backbone": t.backbone.name,
                "kind": t.kind,
            },
            "temperature": self.temperature,
            "alpha": self.alpha,
            "n_unlabeled": self.n_unlabeled,
            "n_without_teacher": self.n_without_teacher,
        }


# -- the verb ----------------------------------------------------------------------------------------------
@dataclass
class DistillReport:
    run_dir: Path | None
    teacher: dict[str, Any]
    student: dict[str, Any]
    agreement: float
    objective: dict[str, Any]
    #: student minus teacher test accuracy on the same items (intervals.paired_difference + its verdict)
    student_vs_teacher: dict[str, Any]
    data: dict[str, Any]
    fit: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return report_dict(self)


def student_recipe(strategy: str | Recipe | dict[str, Any], n_groups: int) -> Recipe:
    """The strategy's recipe; one that trains nothing by gradient gets a head phase that does."""
    from headstart.recipes import get_recipe

    recipe = get_recipe(strategy, n_groups)
    if not any(p.epochs > 0 for p in recipe.phases):
        recipe = replace(recipe, name=f"{recipe.name}+distill", phases=(HEAD_DISTILL_PHASE,))
    return recipe


def distill(
    teacher_run: str | Path,
    *,
    student: str = "efficientnet_lite0",
    strategy: str | Recipe | dict[str, Any] = "lp-ft",
    unlabeled: str | Path | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    alpha: float = DEFAULT_ALPHA,
    out: str | Path | None = None,
    seed: int = 0,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    augment: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
    backend: str = "auto",
    latency_repeats: int = 20,
    device: str = "auto",
    precision: str = "auto",
) -> DistillReport:
    """Train `student` on the teacher run's items (and `unlabeled` inputs) against its softened outputs.

    Writes a fit run (its run.json and metrics.json record the objective and the teacher) with distill.json
    beside them: teacher vs student test accuracy on the same items, agreement, size, latency, throughput.
    `device` and `precision` are the student's training's, as for `fit`; the teacher's forward and both
    models' test pass and latency run on the same device.
    """
    from headstart.backbones import create_backbone
    from headstart.features import forward_device
    from headstart.fileio import atomic_write_json
    from headstart.model import load_model
    from headstart.runs import default_run_dir, to_jsonable
    from headstart.train.api import fit
    from headstart.train.engine import check_engine

    check_engine(device, precision)
    forward_device(backend, device)  # e.g. --backend onnx with a GPU named: refused before any work
    teacher_dir = Path(teacher_run).expanduser()
    if not teacher_dir.is_dir():
        raise HeadstartError(
            f"teacher run {teacher_dir} does not exist", fix="give a run folder written by probe or fit"
        )
    teacher = load_model(teacher_dir)
    bb = create_backbone(student)
    if bb.modality != teacher.modality:
        raise HeadstartError(
            f"the teacher reads {teacher.modality} inputs, the student {student} reads {bb.modality}",
            fix=f"choose a {teacher.modality} student backbone",
        )
    recipe = student_recipe(strategy, len(bb.groups))
    del bb
    objective = Distillation(
        teacher, temperature=temperature, alpha=alpha, backend=backend, progress=progress, device=device
    )
    run_dir = Path(out) if out else default_run_dir("distill", student)
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="headstart-distill-") as tmp:
        td = teacher_data(teacher, Path(tmp))
        if td.missing:
            warnings.append(
                f"{len(td.missing)} file(s) of the teacher's split.csv no longer exist and were left out "
                f"(e.g. {td.missing[0]})"
            )
        if td.changed:
            warnings.append(
                f"{len(td.changed)} file(s) changed since the teacher was trained (e.g. {td.changed[0]})"
            )
        report = fit(
            td.manifest,
            backbone=student,
            strategy=recipe,
            out=run_dir,
            seed=seed,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            augment=augment,
            overwrite=overwrite,
            progress=progress,
            objective=objective,
            unlabeled=unlabeled,
            device=device,
            precision=precision,
        )
    assert report.run_dir is not None
    student_model = load_model(report.run_dir)
    from headstart.runs import item_sources, read_split_rows

    test = [r for r in read_split_rows(report.run_dir) if r.split == "test"]
    if not test:
        warnings.append("the teacher's run has no test split: accuracies compare nothing")
    cmp = compare(
        teacher,
        student_model,
        item_sources(report.run_dir, test, student_model.run_info),
        [r.label for r in test],
        backend=backend,
        latency_repeats=latency_repeats,
        device=device,
    )
    fit_summary = {
        "strategy": report.strategy,
        "recipe": report.recipe,
        "best_epoch": report.metrics.get("best_epoch"),
        "train_s": report.metrics.get("train_s"),
        "teacher_logits_s": objective.teacher_seconds,
        "val_accuracy": report.metrics.get("val", {}).get("accuracy"),
        "test_accuracy": report.metrics.get("test", {}).get("accuracy"),
        "unlabeled": report.metrics.get("unlabeled"),
    }
    out_report = DistillReport(
        run_dir=report.run_dir,
        teacher=cmp["teacher"],
        student=cmp["student"],
        agreement=cmp["agreement"],
        objective=objective.describe(),
        student_vs_teacher=cmp["student_vs_teacher"],
        data={"teacher_counts": td.counts, "missing": len(td.missing), "changed": len(td.changed)},
        fit=fit_summary,
        warnings=warnings + list(report.warnings),
    )
    atomic_write_json(report.run_dir / DISTILL_FILE, to_jsonable(out_report.to_dict()))
    return out_report
