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

import csv
import io
import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from headstart.errors import HeadstartError
from headstart.recipes import Phase, Recipe
from headstart.train.loop import Objective, Split, Step, labeled_cross_entropy

if TYPE_CHECKING:
    from headstart.model import TrainedModel
    from headstart.train.loop import Trainer

DEFAULT_TEMPERATURE = 4.0
# Most of the weight on the teacher (Hinton et al. found a "considerably lower weight" on the hard
# labels best), but not all: a small-data teacher is itself wrong on a fair share of items, and the labels
# are the only thing that can correct it there.
DEFAULT_ALPHA = 0.8
DISTILL_FILE = "distill.json"
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
        z, kept, _bad = self.teacher.logits(train.sources, backend=self.backend, progress=self.progress)
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
        return distillation_loss(
            step.logits[keep.to(step.logits.device)], self.targets[idx][keep], self.temperature
        )

    def loss(self, step: Step) -> torch.Tensor:
        hard = labeled_cross_entropy(step.logits, step.y)
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


# -- the teacher's items --------------------------------------------------------------------------------
@dataclass
class TeacherData:
    """The teacher's items as a manifest the student's `fit` reads, with what could not be carried over."""

    manifest: Path
    counts: dict[str, int]
    missing: list[str] = field(default_factory=list)  # files listed in split.csv that are gone
    changed: list[str] = field(default_factory=list)  # files whose sha256 differs from the recorded one


def _split_rows(run_dir: Path) -> list[dict[str, str]]:
    f = run_dir / "split.csv"
    if not f.is_file():
        raise HeadstartError(
            f"{run_dir} has no split.csv, so the teacher's items are unknown",
            fix="distill from a run written by `headstart probe` or `headstart fit`",
        )
    with open(f, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows = [r for r in rows if r.get("split") in ("train", "val", "test")]
    if not any(r["split"] == "train" for r in rows):
        raise HeadstartError(f"{f} lists no training items", fix="the run folder is damaged; re-run it")
    return rows


def teacher_data(teacher: TrainedModel, dest: Path) -> TeacherData:
    """Write the teacher's train/val/test items (its split.csv) as a manifest under `dest`.

    Image and audio runs list file paths, as given when the teacher was trained (relative ones resolve
    against the current folder); files that are gone are left out and listed, and a recorded sha256 that
    no longer matches is listed as changed. Text runs list the texts themselves (or, in older runs, row ids
    that map back to the texts through the teacher's data root)."""
    from headstart.fileio import sha256_file

    assert teacher.path is not None
    rows = _split_rows(teacher.path)
    dest.mkdir(parents=True, exist_ok=True)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    if teacher.modality == "text":
        from headstart.evaluate import _text_sources

        texts = _text_sources(teacher.path, "text")
        manifest = dest / "teacher_split.jsonl"
        lines = [
            json.dumps({"text": texts.get(r["path"], r["path"]), "label": r["label"], "split": r["split"]})
            for r in rows
        ]
        manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return TeacherData(manifest, counts)
    missing: list[str] = []
    changed: list[str] = []
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "split"])
    for r in rows:
        p = Path(r["path"]).expanduser()
        p = p if p.is_absolute() else Path.cwd() / p
        if not p.is_file():
            missing.append(r["path"])
            continue
        if r.get("sha256") and sha256_file(p) != r["sha256"]:
            changed.append(r["path"])
        w.writerow([str(p), r["label"], r["split"]])
    if not any(r["split"] == "train" and r["path"] not in missing for r in rows):
        raise HeadstartError(
            f"none of the training files listed in {teacher.path / 'split.csv'} exist from here "
            f"(e.g. {missing[0]})",
            fix="run distill from the folder the teacher was trained in (relative paths resolve against it)",
        )
    manifest = dest / "teacher_split.csv"
    manifest.write_text(buf.getvalue(), encoding="utf-8")
    counts = {s: sum(r["split"] == s and r["path"] not in missing for r in rows) for s in counts}
    return TeacherData(manifest, counts, missing, changed)


# -- comparing teacher and student ---------------------------------------------------------------------
def model_size(model: TrainedModel) -> dict[str, int]:
    """Parameters and float bytes of the whole deployable model (backbone + head), and what its run stores."""
    params = (
        sum(p.numel() for p in model.backbone.parameters()) + model.head.weight.size + model.head.bias.size
    )
    tensor_bytes = sum(v.numel() * v.element_size() for v in model.backbone.state_dict().values())
    tensor_bytes += model.head.weight.nbytes + model.head.bias.nbytes
    stored = 0
    if model.path is not None:
        files = [model.info["head"]["file"], *model.info.get("files", {})]
        stored = sum((model.path / f).stat().st_size for f in files if (model.path / f).is_file())
    return {"params": int(params), "model_bytes": int(tensor_bytes), "stored_bytes": int(stored)}


def _side(
    model: TrainedModel,
    sources: list[str],
    y: np.ndarray,
    *,
    backend: str,
    latency_repeats: int,
) -> tuple[dict[str, Any], np.ndarray, list[int]]:
    z, kept, bad = model.logits(sources, backend=backend)
    pred = z.argmax(1) if len(kept) else np.zeros(0, np.int64)
    acc = float((pred == y[kept]).mean()) if kept else float("nan")
    out: dict[str, Any] = {
        "run": str(model.path),
        "backbone": model.backbone.name,
        "kind": model.kind,
        "test_accuracy": acc,
        "test_n": len(kept),
        "unreadable": len(bad),
        **model_size(model),
    }
    if latency_repeats > 0 and kept:
        from headstart.evaluate import measure_latency

        lat = measure_latency(model, sources[kept[0]], repeats=latency_repeats, backend=backend)
        out["latency"] = lat
        per_item = lat.get("batch32_per_item_ms")
        out["throughput_per_s"] = 1000.0 / per_item if per_item else None
    return out, pred, kept


def compare(
    teacher: TrainedModel,
    student: TrainedModel,
    sources: list[str],
    labels: list[str],
    *,
    backend: str = "auto",
    latency_repeats: int = 20,
) -> dict[str, Any]:
    """Test accuracy (same items), agreement, parameters, bytes, latency and throughput of both models."""
    index = {c: i for i, c in enumerate(teacher.classes)}
    y = np.array([index.get(lab, -1) for lab in labels], dtype=np.int64)
    t, tp, tk = _side(teacher, sources, y, backend=backend, latency_repeats=latency_repeats)
    s, sp, sk = _side(student, sources, y, backend=backend, latency_repeats=latency_repeats)
    both = sorted(set(tk) & set(sk))
    t_at = dict(zip(tk, tp.tolist(), strict=True))
    s_at = dict(zip(sk, sp.tolist(), strict=True))
    agree = float(np.mean([t_at[i] == s_at[i] for i in both])) if both else float("nan")
    return {"teacher": t, "student": s, "agreement": agree, "n_test": len(sources)}


# -- the verb ----------------------------------------------------------------------------------------------
@dataclass
class DistillReport:
    run_dir: Path | None
    teacher: dict[str, Any]
    student: dict[str, Any]
    agreement: float
    objective: dict[str, Any]
    data: dict[str, Any]
    fit: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "teacher": self.teacher,
            "student": self.student,
            "agreement": self.agreement,
            "objective": self.objective,
            "data": self.data,
            "fit": self.fit,
            "warnings": self.warnings,
        }


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
) -> DistillReport:
    """Train `student` on the teacher run's items (and `unlabeled` inputs) against its softened outputs.

    Writes a fit run (its run.json and metrics.json record the objective and the teacher) with distill.json
    beside them: teacher vs student test accuracy on the same items, agreement, size, latency, throughput.
    """
    from headstart.backbones import create_backbone
    from headstart.fileio import atomic_write_json
    from headstart.model import load_model
    from headstart.runs import default_run_dir, to_jsonable
    from headstart.train.api import fit

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
        teacher, temperature=temperature, alpha=alpha, backend=backend, progress=progress
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
        )
    assert report.run_dir is not None
    student_model = load_model(report.run_dir)
    from headstart.evaluate import read_split_csv

    test = [r for r in read_split_csv(report.run_dir) if r["split"] == "test"]
    if not test:
        warnings.append("the teacher's run has no test split: accuracies compare nothing")
    cmp = compare(
        teacher,
        student_model,
        [r["path"] for r in test],
        [r["label"] for r in test],
        backend=backend,
        latency_repeats=latency_repeats,
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
        data={"teacher_counts": td.counts, "missing": len(td.missing), "changed": len(td.changed)},
        fit=fit_summary,
        warnings=warnings + list(report.warnings),
    )
    atomic_write_json(report.run_dir / DISTILL_FILE, to_jsonable(out_report.to_dict()))
    return out_report
