"""Domain-adversarial training (DANN) against source-only fine-tuning on an offline domain shift.

Data (examples/build_shift.py): Fashion-MNIST, source = the original grey items, target = other items
inverted, recoloured and blurred. Both arms run the same recipe, epochs and seed on the same labeled source
data (`headstart.train.fit`, frozen-prefix cache on, no augmentation); the DANN arm adds the unlabeled
target folder (`target_unlabeled=`). Each run is then scored on the held-out *labeled* target test set
(`load_model(run).predict_proba`), which training never sees, and on the source test split.

Figures: `dann_target_acc_mean` vs `source_only_target_acc_mean` (and per seed), the source test accuracy
of both (DANN should not cost much there), the epoch early stopping kept (selection is on *source*
validation accuracy), and the domain classifier's accuracy at the end (0.5: the domains look alike).

    .venv/bin/python benchmarks/dann.py [--quick] [--strategy partial:2] [--seeds 3] [--epochs 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _common import emit_json, isolated_cache, machine_load, rnd

KEYS = [
    "dann_target_acc_mean",
    "source_only_target_acc_mean",
    "dann_target_acc",
    "source_only_target_acc",
    "dann_source_test_acc_mean",
    "source_only_source_test_acc_mean",
    "seeds",
    "strategy",
    "epochs",
    "backbone",
]


def target_accuracy(run_dir: Path, test_root: Path) -> float:
    from headstart.model import load_model

    m = load_model(run_dir)
    files = sorted(p for p in test_root.rglob("*.png"))
    proba, kept, bad = m.predict_proba([str(p) for p in files])
    if bad:
        raise SystemExit(f"unreadable target test files: {list(bad)[:3]}")
    truth = [files[i].parent.name for i in kept]
    return float(np.mean([m.classes[j] == t for j, t in zip(proba.argmax(1), truth, strict=True)]))


def one_run(data: Path, out: Path, *, dann: bool, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from dataclasses import replace

    from headstart.backbones import create_backbone
    from headstart.recipes import get_recipe
    from headstart.train import fit

    strategy: Any = args.strategy
    if args.no_probe_candidate:
        # The probe (epoch 0) competes in early stopping on *source* validation accuracy and usually wins
        # there, which throws away whatever the adaptation learned: start from a zero head instead.
        rec = get_recipe(args.strategy, len(create_backbone(args.backbone).groups))
        phases = tuple(
            replace(p, head_init="keep", patience=None, lr=args.lr) for p in rec.phases if p.epochs > 0
        )
        strategy = replace(rec, name=f"{rec.name}-no-probe", phases=phases)
    t0 = time.perf_counter()
    r = fit(
        data / "source",
        backbone=args.backbone,
        strategy=strategy,
        out=out,
        seed=seed,
        epochs=args.epochs,
        augment=False,
        progress=False,
        target_unlabeled=data / "target_unlabeled" if dann else None,
        domain_weight=args.weight,
    )
    assert r.run_dir is not None
    row = {
        "arm": "dann" if dann else "source_only",
        "seed": seed,
        "target_acc": target_accuracy(r.run_dir, data / "target_test"),
        "source_test_acc": r.metrics["test"]["accuracy"],
        "source_val_acc": r.metrics["val"]["accuracy"],
        "best_epoch": r.metrics["best_epoch"],
        "domain_acc": r.metrics["objective"].get("domain_acc"),
        "seconds": time.perf_counter() - t0,
    }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, 10 items per class per part")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--strategy", default="partial:2")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--weight", type=float, default=1.0, help="--domain-weight of the DANN arm")
    ap.add_argument(
        "--no-probe-candidate",
        action="store_true",
        help="start from a zero head (lr --lr, no early stop) so the probe cannot win model selection",
    )
    ap.add_argument("--lr", type=float, default=3e-3, help="head lr with --no-probe-candidate")
    ap.add_argument("--data", type=Path, help="an existing examples/build_shift.py folder")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.per_class, args.epochs = 1, 10, min(args.epochs, 4)
    from build_shift import build

    print(f"# {machine_load()}", flush=True)
    rows: list[dict[str, Any]] = []
    with isolated_cache("headstart-dann-") as tmp:
        data = args.data
        if data is None:
            data = tmp / "shift"
            counts = build(
                data, per_class=args.per_class, target_per_class=args.per_class, test_per_class=args.per_class
            )
            print(f"# shift: {counts}", flush=True)
        for seed in range(args.seeds):
            for dann in (False, True):
                row = one_run(data, tmp / f"run-{seed}-{int(dann)}", dann=dann, args=args, seed=seed)
                rows.append(row)
                print(
                    f"seed {seed} {row['arm']:>11}: target acc {row['target_acc']:.3f}  source test acc "
                    f"{row['source_test_acc']:.3f}  best epoch {row['best_epoch']}  domain acc "
                    f"{row['domain_acc'] if row['domain_acc'] is not None else '-'}  {row['seconds']:.0f} s",
                    flush=True,
                )

    def col(arm: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["arm"] == arm]

    result = {
        "dann_target_acc_mean": rnd(statistics.mean(col("dann", "target_acc"))),
        "source_only_target_acc_mean": rnd(statistics.mean(col("source_only", "target_acc"))),
        "dann_target_acc": [rnd(v) for v in col("dann", "target_acc")],
        "source_only_target_acc": [rnd(v) for v in col("source_only", "target_acc")],
        "dann_source_test_acc_mean": rnd(statistics.mean(col("dann", "source_test_acc"))),
        "source_only_source_test_acc_mean": rnd(statistics.mean(col("source_only", "source_test_acc"))),
        "dann_best_epoch": col("dann", "best_epoch"),
        "source_only_best_epoch": col("source_only", "best_epoch"),
        "dann_domain_acc": col("dann", "domain_acc"),
        "seeds": args.seeds,
        "strategy": args.strategy,
        "epochs": args.epochs,
        "backbone": args.backbone,
        "domain_weight": args.weight,
        "per_class": args.per_class,
        "no_probe_candidate": args.no_probe_candidate,
        "seconds": rnd(sum(r["seconds"] for r in rows), 1),
    }
    emit_json(result, KEYS)


if __name__ == "__main__":
    main()
