"""Distillation's teacher and student side by side: the teacher's train/val/test items carried over as a
manifest for the student's `fit`, and the comparison of the two models on the same test items (accuracy,
agreement, parameters, bytes, latency, throughput)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.errors import HeadstartError
from headstart.intervals import paired_difference, paired_verdict, wilson

if TYPE_CHECKING:
    from headstart.model import TrainedModel
    from headstart.runs import SplitRow


# -- the teacher's items --------------------------------------------------------------------------------
@dataclass
class TeacherData:
    """The teacher's items as a manifest the student's `fit` reads, with what could not be carried over."""

    manifest: Path
    counts: dict[str, int]
    missing: list[str] = field(default_factory=list)  # files listed in split.csv that are gone
    changed: list[str] = field(default_factory=list)  # files whose sha256 differs from the recorded one


def _split_rows(run_dir: Path) -> list[SplitRow]:
    """The teacher's train/val/test rows of split.csv (read by headstart.runs' one reader)."""
    from headstart.runs import SPLIT_FILE, read_split_rows

    fix = "distill from a run written by `headstart probe` or `headstart fit`"
    rows = [r for r in read_split_rows(run_dir, fix=fix) if r.split in ("train", "val", "test")]
    if not any(r.split == "train" for r in rows):
        raise HeadstartError(
            f"{run_dir / SPLIT_FILE} lists no training items", fix="the run folder is damaged; re-run it"
        )
    return rows


def teacher_data(teacher: TrainedModel, dest: Path) -> TeacherData:
    """Write the teacher's train/val/test items (its split.csv) as a manifest under `dest`.

    Image and audio runs list file paths, found by the run folder's one resolver (headstart.runs: under the
    data root the teacher's run.json records; an older run's paths from the current folder, then the run's);
    files that are gone are left out and listed, and a recorded sha256 that no longer matches is listed as
    changed. Text runs list the texts themselves (or, in older runs, row ids that map back to the texts
    through the teacher's data root)."""
    from headstart.fileio import sha256_file
    from headstart.runs import SPLIT_FILE, expected_path, item_sources, resolve_item

    assert teacher.path is not None
    info = teacher.run_info
    rows = _split_rows(teacher.path)
    dest.mkdir(parents=True, exist_ok=True)
    counts = {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    if teacher.modality == "text":
        texts = item_sources(teacher.path, rows, info)
        manifest = dest / "teacher_split.jsonl"
        lines = [
            json.dumps({"text": text, "label": r.label, "split": r.split})
            for text, r in zip(texts, rows, strict=True)
        ]
        manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return TeacherData(manifest, counts)
    missing: set[int] = set()
    changed: list[str] = []
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "split"])
    for i, r in enumerate(rows):
        p = resolve_item(teacher.path, r, info)
        if p is None:
            missing.add(i)
            continue
        if r.sha256 and sha256_file(p) != r.sha256:
            changed.append(str(p))
        w.writerow([str(p.absolute()), r.label, r.split])
    if not any(r.split == "train" and i not in missing for i, r in enumerate(rows)):
        raise HeadstartError(
            f"none of the training files listed in {teacher.path / SPLIT_FILE} exist from here "
            f"(e.g. {expected_path(rows[min(missing)], info)})",
            fix="restore the teacher's data (under the data_root in its run.json; an older run's paths are "
            "relative to the folder it was trained in: run distill from there)",
        )
    manifest = dest / "teacher_split.csv"
    manifest.write_text(buf.getvalue(), encoding="utf-8")
    counts = {s: sum(r.split == s and i not in missing for i, r in enumerate(rows)) for s in counts}
    gone = [expected_path(rows[i], info) for i in sorted(missing)]
    return TeacherData(manifest, counts, gone, changed)


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
        files = model.run_info.stored_files
        stored = sum((model.path / f).stat().st_size for f in files if (model.path / f).is_file())
    return {"params": int(params), "model_bytes": int(tensor_bytes), "stored_bytes": int(stored)}


def _side(
    model: TrainedModel,
    sources: list[str],
    y: np.ndarray,
    *,
    backend: str,
    latency_repeats: int,
    device: str = "auto",
) -> tuple[dict[str, Any], np.ndarray, list[int]]:
    z, kept, bad = model.logits(sources, backend=backend, device=device)
    pred = z.argmax(1) if len(kept) else np.zeros(0, np.int64)
    right = pred == y[kept]
    acc = float(right.mean()) if kept else float("nan")
    out: dict[str, Any] = {
        "run": str(model.path),
        "backbone": model.backbone.name,
        "kind": model.kind,
        "test_accuracy": acc,
        "test_accuracy_ci": list(wilson(int(right.sum()), len(kept))) if kept else [float("nan")] * 2,
        "test_n": len(kept),
        "unreadable": len(bad),
        **model_size(model),
    }
    if latency_repeats > 0 and kept:
        from headstart.latency import measure_latency

        lat = measure_latency(
            model, sources[kept[0]], repeats=latency_repeats, backend=backend, device=device
        )
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
    device: str = "auto",
) -> dict[str, Any]:
    """Test accuracy (same items), agreement, parameters, bytes, latency and throughput of both models,
    each run on `device`."""
    index = {c: i for i, c in enumerate(teacher.classes)}
    y = np.array([index.get(lab, -1) for lab in labels], dtype=np.int64)
    t, tp, tk = _side(teacher, sources, y, backend=backend, latency_repeats=latency_repeats, device=device)
    s, sp, sk = _side(student, sources, y, backend=backend, latency_repeats=latency_repeats, device=device)
    both = sorted(set(tk) & set(sk))
    t_at = dict(zip(tk, tp.tolist(), strict=True))
    s_at = dict(zip(sk, sp.tolist(), strict=True))
    agree = float(np.mean([t_at[i] == s_at[i] for i in both])) if both else float("nan")
    # Student minus teacher on the items both could read: what distillation cost, with its noise.
    diff = paired_difference([s_at[i] == y[i] for i in both], [t_at[i] == y[i] for i in both])
    diff["verdict"] = paired_verdict(diff)
    return {
        "teacher": t,
        "student": s,
        "agreement": agree,
        "n_test": len(sources),
        "student_vs_teacher": diff,
    }
