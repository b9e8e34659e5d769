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

if TYPE_CHECKING:
    from headstart.model import TrainedModel


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
        from headstart.runs import split_texts

        texts = split_texts(teacher.path, "text")
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
        from headstart.latency import measure_latency

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
