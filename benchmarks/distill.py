"""Knowledge distillation on the bundled emoji example: a large teacher into a small student.

What is measured (CPU, packaged ImageNet weights, the emoji example's own seeded 70/15/15 split):

- the teacher: `fit` of `--teacher` (default efficientnet_lite2) with `--teacher-strategy` (default head);
- three students of `--student` (default efficientnet_lite0), all through `distill` with the same recipe
  (`--strategy`), epochs and seed, on exactly the teacher's items:
  `labels only` (alpha = 0: the soft term is off, cross-entropy on the labels alone),
  `distilled` (the default T and alpha), and `distilled + unlabeled` (the same, plus a transfer set of
  other emoji rendered from the same font by examples/emoji/build.py, none of them in the example);
- for each: test accuracy on the same test items, agreement with the teacher, parameters, float32 model
  bytes, single-item latency p50 and batch-of-32 throughput (torch eager, this machine's threads).

Run: `OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/distill.py` (a few minutes; needs
fonts-noto-color-emoji and unicode-data for the transfer set, else `--no-unlabeled`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EMOJI_ROOT, REPO, emit_json, machine_load

KEYS = ["teacher_test_acc", "labels_only_test_acc", "distilled_test_acc", "student_params", "teacher_params"]


def transfer_set(dest: Path, per_class: int) -> tuple[Path, int]:
    """Emoji of the same nine groups that are not in the example, rendered the same way (unlabeled)."""
    full = dest / "rendered"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "examples/emoji/build.py"),
            "--out",
            str(full),
            "--per-class",
            str(per_class),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    taken = {p.relative_to(EMOJI_ROOT).as_posix() for p in EMOJI_ROOT.rglob("*.png")}
    out = dest / "unlabeled"
    out.mkdir(parents=True)
    n = 0
    for p in sorted(full.rglob("*.png")):
        if p.relative_to(full).as_posix() not in taken:
            shutil.copy(p, out / f"{p.parent.name}-{p.name}")  # flat: no class folders, no labels
            n += 1
    return out, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="efficientnet_lite2")
    ap.add_argument("--teacher-strategy", default="head")
    ap.add_argument(
        "--teacher-no-augment",
        action="store_true",
        help="train the teacher without augmentation (frozen-prefix caching: much faster on CPU)",
    )
    ap.add_argument("--student", default="efficientnet_lite0")
    ap.add_argument("--strategy", default="head")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--alpha", type=float)
    ap.add_argument(
        "--per-class", type=int, default=100, help="emoji rendered per group for the transfer set"
    )
    ap.add_argument("--no-unlabeled", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-repeats", type=int, default=20)
    args = ap.parse_args()

    from headstart.train import fit
    from headstart.train.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, distill

    load_before = machine_load()
    tmp = Path(tempfile.mkdtemp(prefix="headstart-distill-bench-"))
    try:
        teacher = fit(
            EMOJI_ROOT,
            backbone=args.teacher,
            strategy=args.teacher_strategy,
            out=tmp / "teacher",
            seed=args.seed,
            augment=False if args.teacher_no_augment else None,
            progress=False,
        ).run_dir
        assert teacher is not None
        common: dict[str, Any] = {
            "student": args.student,
            "strategy": args.strategy,
            "epochs": args.epochs,
            "seed": args.seed,
            "temperature": args.temperature or DEFAULT_TEMPERATURE,
            "progress": False,
            "latency_repeats": args.latency_repeats,
        }
        alpha = DEFAULT_ALPHA if args.alpha is None else args.alpha
        runs = {
            "labels only": distill(teacher, alpha=0.0, out=tmp / "labels", **common),
            "distilled": distill(teacher, alpha=alpha, out=tmp / "kd", **common),
        }
        n_unlabeled = 0
        if not args.no_unlabeled:
            unl, n_unlabeled = transfer_set(tmp / "transfer", args.per_class)
            runs["distilled + unlabeled"] = distill(
                teacher, alpha=alpha, unlabeled=unl, out=tmp / "kdu", **common
            )
        t = runs["distilled"].teacher
        rows = [("teacher " + t["backbone"], t, float("nan"))]
        rows += [(f"{name} ({r.student['backbone']})", r.student, r.agreement) for name, r in runs.items()]
        cols = ("test acc", "agree", "params", "MB", "p50 ms", "items/s")
        widths = (8, 6, 11, 6, 7, 8)
        print(f"{'model':42s} " + " ".join(f"{c:>{w}s}" for c, w in zip(cols, widths, strict=True)))
        for name, side, agree in rows:
            lat = side.get("latency") or {}
            print(
                f"{name:42s} {side['test_accuracy']:8.3f} {agree:6.3f} {side['params']:11,d} "
                f"{side['model_bytes'] / 1e6:6.1f} {lat.get('single_p50_ms', float('nan')):7.1f} "
                f"{side.get('throughput_per_s') or float('nan'):8.1f}"
            )
        result = {
            "teacher": args.teacher,
            "teacher_strategy": args.teacher_strategy,
            "student": args.student,
            "strategy": runs["distilled"].fit["strategy"],
            "temperature": common["temperature"],
            "alpha": alpha,
            "n_test": t["test_n"],
            "n_unlabeled": n_unlabeled,
            "teacher_test_acc": t["test_accuracy"],
            "teacher_params": t["params"],
            "teacher_single_p50_ms": (t.get("latency") or {}).get("single_p50_ms"),
            "teacher_throughput_per_s": t.get("throughput_per_s"),
            "load_before": load_before,
            "load_after": machine_load(),
        }
        for name, r in runs.items():
            key = name.replace(" + ", "_").replace(" ", "_")
            result[f"{key}_test_acc"] = r.student["test_accuracy"]
            result[f"{key}_val_acc"] = r.fit["val_accuracy"]
            result[f"{key}_agreement"] = r.agreement
            result[f"{key}_best_epoch"] = r.fit["best_epoch"]
            result[f"{key}_train_s"] = r.fit["train_s"]
        s = runs["distilled"].student
        result.update(
            {
                "student_params": s["params"],
                "student_single_p50_ms": (s.get("latency") or {}).get("single_p50_ms"),
                "student_throughput_per_s": s.get("throughput_per_s"),
            }
        )
        emit_json(result, KEYS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
