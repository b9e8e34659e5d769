"""`compare`: run the linear probe, a from-scratch baseline and the fine-tuning strategies that suit the data
size under one time budget, and say which one to use.

result = compare("examples/emoji/images", "efficientnet_lite0", budget_s=300, out="runs/compare-emoji")

Every strategy's run is saved under out/<strategy>/ and the table under out/compare.json.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError

# Below this many training examples per class (the median), full fine-tuning of every weight is left out:
# it has too few labels to move millions of weights without overfitting (see verdicts.recommend).
FULL_MIN_PER_CLASS = 20
SMALL_DATA_STRATEGIES = ("head", "partial:2", "lp-ft")
# Final train-minus-val accuracy above which a strategy is flagged as overfitting.
OVERFIT_GAP = 0.2
TRANSFER_BASELINE = "scratch"
# `adapt+lp-ft`: continued pretraining on the training texts, then lp-ft on the adapted backbone.
ADAPT_PREFIX = "adapt+"
PROBE = "probe"


def choose_strategies(train_per_class: float) -> list[str]:
    """The baseline first, then the fine-tuning strategies that fit `train_per_class` labels per class."""
    tuned = list(SMALL_DATA_STRATEGIES)
    if train_per_class >= FULL_MIN_PER_CLASS:
        tuned.append("full")
    return [TRANSFER_BASELINE, *tuned]


def _dir_name(strategy: str) -> str:
    return strategy.replace(":", "-").replace("+", "-")


def _adapt_on_train(ds: Any, backbone: str, out: Path, seed: int, progress: bool) -> str:
    """`headstart adapt` on the texts of the training split; the adapted backbone's folder."""
    import csv

    from headstart.adapt import adapt

    if ds.modality != "text":
        raise HeadstartError(
            f"{ADAPT_PREFIX}<strategy> continues a text backbone's pretraining; this data is {ds.modality}",
            fix="drop the adapt+ strategies",
        )
    out.mkdir(parents=True, exist_ok=True)
    texts = out / "adapt-train-texts.csv"
    with open(texts, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([it.text] for it in ds.split("train"))
    report = adapt(backbone, texts, out=out / "backbone", seed=seed, overwrite=True, progress=progress)
    return str(report.folder)


def overfitting(row: dict[str, Any]) -> bool:
    """A widening train-val gap during training (the trainer's warning) or a final gap above OVERFIT_GAP."""
    if any(str(w).startswith("overfitting") for w in row.get("warnings") or []):
        return True
    tr, va = row.get("train_accuracy"), row.get("val_accuracy")
    return tr is not None and va is not None and tr - va > OVERFIT_GAP


def negative_transfer(rows: list[dict[str, Any]]) -> bool:
    """Does training from scratch do at least as well on val as the best use of the pretrained weights?

    A tie at 100% is not counted: when every method is perfect, the data cannot tell them apart.
    """
    scratch = [r for r in rows if r["strategy"] == TRANSFER_BASELINE and r.get("val_accuracy") is not None]
    transfer = [r for r in rows if r["strategy"] != TRANSFER_BASELINE and r.get("val_accuracy") is not None]
    if not scratch or not transfer:
        return False
    best = max(r["val_accuracy"] for r in transfer)
    return scratch[0]["val_accuracy"] >= best and best < 1.0


def recommend_measured(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best val accuracy; ties go to fewer trainable parameters (cheaper to train and store)."""
    scored = [r for r in rows if r.get("val_accuracy") is not None]
    if not scored:
        return {"strategy": None, "reason": "no strategy finished within the budget"}
    best = max(scored, key=lambda r: (r["val_accuracy"], -(r.get("trainable_params") or 0)))
    tied = [r for r in scored if r is not best and r["val_accuracy"] == best["val_accuracy"]]
    reason = f"{best['strategy']} has the best validation accuracy ({best['val_accuracy']:.1%})"
    if tied:
        reason += (
            f", tied with {', '.join(r['strategy'] for r in tied)}, and the fewest trainable parameters "
            f"({best.get('trainable_params') or 0:,})"
        )
    else:
        runner = max((r for r in scored if r is not best), key=lambda r: r["val_accuracy"], default=None)
        if runner is not None:
            reason += f", ahead of {runner['strategy']} ({runner['val_accuracy']:.1%})"
    return {"strategy": best["strategy"], "reason": reason + "."}


def flags(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "negative_transfer": negative_transfer(rows),
        "overfitting": [r["strategy"] for r in rows if overfitting(r)],
    }


def _row(strategy: str, metrics: dict[str, Any], run_dir: Path | None, warnings: list[str]) -> dict[str, Any]:
    def acc(split: str, key: str = "accuracy") -> float | None:
        m = metrics.get(split)
        return None if not m else float(m[key])

    return {
        "strategy": strategy,
        "train_accuracy": acc("train"),
        "val_accuracy": acc("val"),
        "val_macro_f1": acc("val", "macro_f1"),
        "test_accuracy": acc("test"),
        "test_macro_f1": acc("test", "macro_f1"),
        "train_s": None,
        "trainable_params": metrics.get("trainable_params"),
        "stored_bytes": metrics.get("stored_bytes"),
        "run_dir": str(run_dir) if run_dir else None,
        "warnings": list(warnings),
    }


def _rule(
    data: str | Path, backbone: str, per_class: float, probe_acc: float | None, seed: int, progress: bool
) -> dict[str, Any]:
    """The recommendation from data size, domain distance and probe accuracy, before any fine-tune."""
    from headstart.verdicts.domain import domain_distance
    from headstart.verdicts.recommend import recommend

    try:
        distance = domain_distance(data, backbone, seed=seed, progress=progress)["distance"]
    except HeadstartError:
        distance = None
    return {**recommend(per_class, distance, probe_acc), "domain_distance": distance}


def _rule_verdict(rule: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule's recommendation and whether the measured rows held it up."""
    from headstart.verdicts.recommend import agree

    rec = {k: v for k, v in rule.items() if k != "domain_distance"}
    # The rule's "head" is a linear head on frozen features: the probe stands in when "head" was not run.
    stand_in = not any(r["strategy"] == "head" for r in rows)
    if stand_in:
        measured = [dict(r, strategy="head") if r["strategy"] == PROBE else r for r in rows]
    else:
        measured = [r for r in rows if r["strategy"] != PROBE]
    verdict = agree(rec, measured)
    if stand_in:  # name the probe as the probe again
        for k in ("best", "recommended_row"):
            verdict[k] = PROBE if verdict[k] == "head" else verdict[k]
    return {**rule, **verdict}


def compare(
    data: str | Path,
    backbone: str,
    *,
    budget_s: float = 600,
    strategies: list[str] | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Probe, then the scratch baseline and fine-tuning strategies, each with an even share of what is left
    of `budget_s`. Strategies not started because the budget ran out are listed under "skipped"."""
    from headstart.api import probe
    from headstart.data import load_dataset
    from headstart.fileio import atomic_write_json
    from headstart.runs import to_jsonable
    from headstart.train import fit

    if budget_s <= 0:
        raise HeadstartError(f"budget {budget_s} s: must be positive", fix="give e.g. --budget 10m")
    t_start = time.perf_counter()
    out_dir = Path(out) if out else Path("runs") / f"compare-{Path(data).name}-{_dir_name(backbone)}"
    ds = load_dataset(data, seed=seed)
    counts = [sum(1 for it in ds.split("train") if it.label == c) for c in ds.classes]
    per_class = float(statistics.median(counts)) if counts else 0.0
    # The probe always runs first, as the reference every other row is read against.
    todo = [s for s in strategies if s != PROBE] if strategies else choose_strategies(per_class)

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    p = probe(data, backbone=backbone, out=out_dir / PROBE, seed=seed, overwrite=True, progress=progress)
    row = _row(PROBE, p.metrics, p.run_dir, [])
    row["train_s"] = time.perf_counter() - t0
    row["stored_bytes"] = (p.run_dir / "head.safetensors").stat().st_size if p.run_dir else None
    rows.append(row)
    # The rule-based recommendation needs only the probe: worked out now, inside the budget.
    rule = _rule(data, backbone, per_class, row["val_accuracy"], seed, progress)

    skipped: list[str] = []
    # Seconds a fit spends outside its training loop (decode, embed, evaluate, save), measured per kind:
    # from-scratch runs evaluate the whole network, transfer runs reuse cached frozen features.
    overhead: dict[bool, float] = {}
    for i, strategy in enumerate(todo):
        left = budget_s - (time.perf_counter() - t_start)
        if left <= 0:
            skipped.extend(todo[i:])
            break
        share = left / (len(todo) - i)
        from_scratch = strategy == TRANSFER_BASELINE
        t0 = time.perf_counter()
        fit_backbone, fit_strategy = backbone, strategy
        if strategy.startswith(ADAPT_PREFIX):
            # Continued pretraining on the training split's own texts (never val/test), then the strategy
            # on the adapted backbone; the row's time counts both.
            fit_strategy = strategy[len(ADAPT_PREFIX) :]
            adapted = out_dir / "adapted-backbones" / _dir_name(strategy)  # outside the run folder
            fit_backbone = _adapt_on_train(ds, backbone, adapted, seed, progress)
        r = fit(
            data,
            backbone=fit_backbone,
            strategy=fit_strategy,
            out=out_dir / _dir_name(strategy),
            seed=seed,
            # At least a quarter of the share trains, so an overhead estimate cannot starve a strategy.
            budget_s=max(share - overhead.get(from_scratch, 0.0), share / 4),
            overwrite=True,
            progress=progress,
        )
        wall = time.perf_counter() - t0
        overhead[from_scratch] = max(
            overhead.get(from_scratch, 0.0), wall - float(r.metrics.get("train_s") or 0.0)
        )
        row = _row(strategy, r.metrics, r.run_dir, r.warnings)
        row["train_s"] = wall
        rows.append(row)

    result: dict[str, Any] = {
        "data": str(data),
        "backbone": backbone,
        "train_per_class": per_class,
        "budget_s": budget_s,
        "rows": rows,
        "skipped": skipped,
        "flags": flags(rows),
        "recommendation": recommend_measured(rows),
    }
    result["rule_based"] = _rule_verdict(rule, rows)
    result["elapsed_s"] = time.perf_counter() - t_start
    result["out"] = str(out_dir)
    atomic_write_json(out_dir / "compare.json", to_jsonable(result))
    return result
