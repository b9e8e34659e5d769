"""`compare`: run the linear probe, a from-scratch baseline and the fine-tuning strategies that suit the data
size under one time budget, and say which one to use.

result = compare("examples/emoji/images", "efficientnet_lite0", budget_s=300, out="runs/compare-emoji")

Every strategy's run is saved under out/<strategy>/ and the table under out/compare.json.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.data.grouped_split import regroup_copies
from headstart.errors import HeadstartError
from headstart.imbalance import ACCURACY, check_mode, item_weights
from headstart.runs import COMPARE_FILE, HEAD_FILE
from headstart.verdicts.cheap_cv import probe_cv
from headstart.verdicts.input_size import fine_tune_size, parse_input_size
from headstart.verdicts.recommend import rule_of_thumb, rule_verdict
from headstart.verdicts.select import (
    PROBE,
    SCRATCH,
    frozen_head,
    head_passes,
    head_strategies,
    overfitting,
    select,
    transfer_verdict,
)

# Below this many validation items, the cheap rows (probe, kNN) are also scored by repeated stratified
# k-fold over train+val on cached embeddings: at 300 items a Wilson interval around 0.75 is +-0.05 wide,
# about the gain a fine-tune buys over a probe; below it one split's noise swamps that gain.
CV_BELOW_VAL_ITEMS = 300
# The budget is a plan, not a stopwatch: each fine-tune gets epochs from measured step times before it
# starts. One whose single epoch needs up to this multiple of its share still runs, on what the rows after
# it would have had (its priced cost comes off the budget, so theirs shrink, and a row whose epoch no
# longer fits what is left is skipped); the wall clock stops a fit only past the same multiple of its
# share (a safety net the row reports).
HARD_CAP = 2.0

# Below this many training examples per class (the median), full fine-tuning of every weight is left out:
# it has too few labels to move millions of weights without overfitting (see verdicts.recommend).
FULL_MIN_PER_CLASS = 20
# No `head` row by default: `fit --strategy head` is the probe's own pipeline, so it would repeat its row.
SMALL_DATA_STRATEGIES = ("partial:2", "lp-ft")
TRANSFER_BASELINE = SCRATCH
# `adapt+lp-ft`: continued pretraining on the training texts, then lp-ft on the adapted backbone.
ADAPT_PREFIX = "adapt+"


def choose_strategies(train_per_class: float, modality: str = "image") -> list[str]:
    """The other frozen heads `modality` can take first (cheapest), then the baseline and the fine-tuning
    strategies that fit `train_per_class` labels per class."""
    tuned = list(SMALL_DATA_STRATEGIES)
    if modality == "text":
        tuned.append("setfit")  # contrastive pairs tune a sentence encoder (headstart.train.setfit)
    if train_per_class >= FULL_MIN_PER_CLASS:
        tuned.append("full")
    return [*head_strategies(modality), TRANSFER_BASELINE, *tuned]


def _dir_name(strategy: str) -> str:
    return strategy.replace(":", "-").replace("+", "-")


def _adapt_on_train(ds: Any, backbone: str, out: Path, cmp: _Comparison) -> str:
    """`headstart adapt` on the texts of the training split; the adapted backbone's folder."""
    import csv

    from headstart.pretrain import adapt

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
    report = adapt(backbone, texts, out=out / "backbone", overwrite=True, **cmp.engine_options())
    return str(report.folder)


def _precision_run(run_dir: Path | None) -> str | None:
    """The precision a fine-tune ran in, as its run.json records it."""
    from headstart.runs import RUN_FILE, read_json

    engine = read_json(run_dir / RUN_FILE).get("engine") if run_dir else None
    return engine.get("precision") if isinstance(engine, dict) else None


def _row(strategy: str, metrics: dict[str, Any], run_dir: Path | None, warnings: list[str]) -> dict[str, Any]:
    def get(split: str, key: str = "accuracy") -> Any:
        m = metrics.get(split)
        return None if not m or m.get(key) is None else m[key]

    balanced = ("balanced_accuracy", "balanced_accuracy_ci")  # what skewed classes are compared on
    return {
        "strategy": strategy,
        "train_accuracy": get("train"),
        "val_accuracy": get("val"),
        "val_accuracy_ci": get("val", "accuracy_ci"),
        "val_macro_f1": get("val", "macro_f1"),
        "val_macro_f1_ci": get("val", "macro_f1_ci"),
        "n_val": get("val", "n"),
        "test_accuracy": get("test"),
        "test_accuracy_ci": get("test", "accuracy_ci"),
        "test_macro_f1": get("test", "macro_f1"),
        "test_macro_f1_ci": get("test", "macro_f1_ci"),
        **{f"{s}_{k}": get(s, k) for s in ("val", "test") for k in balanced},
        "n_test": get("test", "n"),
        "train_s": None,
        "trainable_params": metrics.get("trainable_params"),
        "stored_bytes": metrics.get("stored_bytes"),
        "run_dir": str(run_dir) if run_dir else None,
        "warnings": list(warnings),
    }


def _val_evidence(metrics: dict[str, Any], expected: list[int]) -> tuple[Any, Any]:
    """(per-item correctness, per-item tempered NLL or None) on val, when the run's val items are exactly
    the expected ones (same labels in the same order); (None, None) otherwise (e.g. a run that skipped an
    unreadable file), so nothing is mispaired."""
    import numpy as np

    val = metrics.get("val") or {}
    pred, true = val.get("pred"), val.get("true")
    if pred is None or true is None or list(true) != expected:
        return None, None
    nll = val.get("nll_tempered")
    return np.asarray(pred) == np.asarray(true), (np.asarray(nll) if nll and len(nll) == len(true) else None)


def _epochs_run(history: list[dict[str, Any]]) -> int:
    return sum(1 for h in history if h.get("kind") == "train")


def _budget_stopped(warnings: list[str]) -> bool:
    return any(str(w).startswith("stopped after epoch") for w in warnings)


@dataclass
class _Comparison:
    """The state one comparison builds up: its rows, each row's per-item val correctness (for the paired
    tests), what was not run and why, and the measured time a fit spends outside its loop."""

    data: str | Path
    backbone: str
    seed: int
    out_dir: Path
    progress: bool
    device: str = "auto"  # where every row's network runs (--device)
    precision: str = "auto"  # what every fine-tune trains in (--precision; the probe runs in float32)
    imbalance: str = "auto"  # --imbalance: every row's, and what the rows are compared on
    rows: list[dict[str, Any]] = field(default_factory=list)
    correct: dict[str, Any] = field(default_factory=dict)
    nll: dict[str, Any] = field(default_factory=dict)  # each row's per-item tempered NLL on val
    expected: list[int] = field(default_factory=list)  # the probe's val labels: what every row pairs on
    skipped: list[str] = field(default_factory=list)
    skip_reasons: dict[str, str] = field(default_factory=dict)
    input_size: int | None = None  # the trained rows' input pixels (None: the backbone's own)
    cv_correct: dict[str, Any] = field(default_factory=dict)  # the frozen heads' k-fold hits (select)
    cv_nll: dict[str, Any] = field(default_factory=dict)  # and their k-fold tempered NLLs
    balance: dict[str, Any] = field(default_factory=dict)  # the probe's metrics["imbalance"]
    train_lengths: list[int] | None = None  # the training texts' token counts: they price text steps

    def engine_options(self) -> dict[str, Any]:
        """What every training row (fit, adapt) is run with besides its own options."""
        return {k: getattr(self, k) for k in ("seed", "progress", "device", "precision")}

    def add(self, row: dict[str, Any], metrics: dict[str, Any]) -> None:
        c, nll = _val_evidence(metrics, self.expected)
        if c is None:
            if row["strategy"] != PROBE:
                row["warnings"].append(
                    "not paired with the probe: its validation items differ (skipped files?)"
                )
        else:
            self.correct[row["strategy"]] = c
            if nll is not None:
                self.nll[row["strategy"]] = nll
        self.rows.append(row)

    def run_probe(self, leakage: dict[str, Any], raw_data: str | Path) -> dict[str, Any]:
        from headstart.api import probe

        t0 = time.perf_counter()
        if leakage["regrouped"]:  # how much the copies inflated the probe: the same probe on the raw split
            raw = probe(
                raw_data,
                backbone=self.backbone,
                seed=self.seed,
                save=False,
                progress=self.progress,
                device=self.device,
                imbalance=self.imbalance,
            )
            leakage["probe_raw"] = {s: (raw.metrics.get(s) or {}).get("accuracy") for s in ("val", "test")}
        p = probe(
            self.data,
            backbone=self.backbone,
            out=self.out_dir / PROBE,
            seed=self.seed,
            overwrite=True,
            progress=self.progress,
            device=self.device,
            imbalance=self.imbalance,
        )
        self.balance = p.metrics.get("imbalance") or {}  # what the probe's training counts said
        row = _row(PROBE, p.metrics, p.run_dir, [])
        row["train_s"] = time.perf_counter() - t0
        row["stored_bytes"] = (p.run_dir / HEAD_FILE).stat().st_size if p.run_dir else None
        self.expected = list((p.metrics.get("val") or {}).get("true") or [])
        if leakage["regrouped"]:
            leakage["probe_grouped"] = {"val": row["val_accuracy"], "test": row["test_accuracy"]}
        if (row.get("n_val") or 0) < CV_BELOW_VAL_ITEMS:
            row["cv"] = probe_cv(p, self.data, self.backbone, self.seed, self.device)
        self.add(row, p.metrics)
        return row

    def run_strategy(self, strategy: str, share: float, bb: Any, ds: Any, left: float | None = None) -> float:
        """One fine-tune (or scratch) with the epochs its share buys; skipped when one epoch cannot fit
        `HARD_CAP` shares, or `left` (the priced seconds the budget has left). Returns the row's priced
        seconds (0 when skipped; the share itself when the family has no timed step)."""
        from headstart.train import fit
        from headstart.verdicts.plan import epoch_plan

        t0 = time.perf_counter()
        fit_backbone, fit_strategy = self.backbone, strategy
        if strategy.startswith(ADAPT_PREFIX):
            # Continued pretraining on the training split's own texts (never val/test), then the strategy
            # on the adapted backbone; the row's time counts both.
            fit_strategy = strategy[len(ADAPT_PREFIX) :]
            adapted = self.out_dir / "adapted-backbones" / _dir_name(strategy)  # outside the run folder
            fit_backbone = _adapt_on_train(ds, self.backbone, adapted, self)
        plan = epoch_plan(
            bb,
            fit_strategy,
            n_train=len(ds.split("train")),
            n_eval=len(ds.split("val")),
            n_test=len(ds.split("test")),
            share_s=share,
            device=self.device,
            train_lengths=self.train_lengths,
        )
        one_epoch = plan.get("one_epoch_s", 0.0)
        if one_epoch > HARD_CAP * share or (left is not None and one_epoch > left):
            self.skipped.append(strategy)
            self.skip_reasons[strategy] = f"one epoch needs about {one_epoch:.0f} s; " + (
                f"its share of the budget is {share:.0f} s"
                if one_epoch > HARD_CAP * share
                else f"the budget has {left:.0f} s left after the rows before it"
            )
            return 0.0
        r = fit(
            self.data,
            backbone=fit_backbone,
            strategy=fit_strategy,
            out=self.out_dir / _dir_name(strategy),
            epochs=plan["epochs"] or None,
            # With a plan the clock is only a safety net; without one (no timed step) it is the budget.
            budget_s=HARD_CAP * share if plan["epochs"] else share,
            overwrite=True,
            imbalance=self.imbalance,
            input_size=None if frozen_head(strategy) else self.input_size,  # the heads read native features
            **self.engine_options(),
        )
        wall = time.perf_counter() - t0
        row = _row(strategy, r.metrics, r.run_dir, r.warnings)
        planned = plan["epochs"] if plan["epochs"] is not None else plan["recipe_epochs"]
        row.update(
            train_s=wall,
            epochs_planned=planned,
            recipe_epochs=plan["recipe_epochs"],
            epochs_run=_epochs_run(r.history),
            budget_stopped=_budget_stopped(r.warnings),
            plan=plan["why"],
            precision=_precision_run(r.run_dir),
        )
        row["cut_short"] = row["budget_stopped"] or planned < plan["recipe_epochs"]
        self.add(row, r.metrics)
        if not plan["epochs"]:
            return share
        return one_epoch + (plan["epochs"] - 1) * plan["epoch_s"]

    def verdicts(self, n_classes: int, rule: dict[str, Any]) -> dict[str, Any]:
        for row in self.rows:
            row["overfitting"] = overfitting(row)
        metric = self.balance.get("metric") or ACCURACY
        weights = item_weights(self.expected) if metric != ACCURACY else None
        selection = select(
            self.rows,
            self.correct,
            n_classes=n_classes,
            metric=metric,
            weights=weights,
            cv_correct=self.cv_correct,
            nll=self.nll,
            cv_nll=self.cv_nll,
        )
        transfer = transfer_verdict(self.rows, self.correct, metric=metric, weights=weights, nll=self.nll)
        return {
            "rows": self.rows,
            "skipped": self.skipped,
            "skip_reasons": self.skip_reasons,
            "flags": {
                "negative_transfer": transfer["negative_transfer"],
                "transfer": transfer["reason"],
                "overfitting": [r["strategy"] for r in self.rows if r["overfitting"]],
            },
            "recommendation": {
                k: selection[k] for k in ("strategy", "reason", "separated") if k in selection
            },
            "selection": {k: v for k, v in selection.items() if k not in ("strategy", "reason")},
            "imbalance": self.balance or None,
            "rule_based": rule_verdict(rule, self.rows, bool(selection.get("separated"))),
        }


def compare(
    data: str | Path,
    backbone: str,
    *,
    budget_s: float = 600,
    strategies: list[str] | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    keep_duplicates: bool = False,
    progress: bool = True,
    device: str = "auto",
    precision: str = "auto",
    imbalance: str = "auto",
    input_size: str = "native",
) -> dict[str, Any]:
    """Probe, then the scratch baseline and fine-tuning strategies, each with an epoch plan fitted to an
    even share of what is left of `budget_s`; strategies not started (budget spent, or one epoch would not
    fit their share) are listed under "skipped" with "skip_reasons". Copies across splits are first
    regrouped into one split (unless `keep_duplicates`); the recommendation follows verdicts.select.
    `device`: where every row runs, and where the plans' step is timed (recorded as `device`); `precision`:
    what every fine-tune trains in; `imbalance` as for `fit` (skewed: rows compared by balanced accuracy);
    `input_size`: native, N pixels or auto (verdicts.input_size) for the trained rows."""
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.fileio import atomic_write_json
    from headstart.latency import run_latency_ms
    from headstart.recipes import get_recipe
    from headstart.runs import to_jsonable
    from headstart.train.engine import check_engine
    from headstart.verdicts.cheap_cv import frozen_head_hits
    from headstart.verdicts.plan import probe_seconds, text_lengths
    from headstart.views import check_views

    if budget_s <= 0:
        raise HeadstartError(f"budget {budget_s} s: must be positive", fix="give e.g. --budget 10m")
    check_mode(imbalance)
    parse_input_size(input_size)
    used = check_engine(device, precision)  # an absent device, or one without the precision: refused now
    t_start = time.perf_counter()
    out_dir = Path(out) if out else Path("runs") / f"compare-{Path(data).name}-{_dir_name(backbone)}"
    ds = load_dataset(data, seed=seed)
    data_used, ds, leakage = regroup_copies(ds, data, out_dir, keep_duplicates)
    counts = [sum(1 for it in ds.split("train") if it.label == c) for c in ds.classes]
    per_class = float(statistics.median(counts)) if counts else 0.0
    # The probe always runs first, as the reference every other row is read against.
    todo = [s for s in strategies if s != PROBE] if strategies else choose_strategies(per_class, ds.modality)
    for s in filter(frozen_head, todo):  # a head the data cannot take is refused now, before the probe
        check_views(get_recipe(s, 1).views, ds.modality, data)
    cmp = _Comparison(data_used, backbone, seed, out_dir, progress, device, precision, imbalance)
    probe_row = cmp.run_probe(leakage, data)
    # The rule-based recommendation needs only the probe: worked out now, inside the budget.
    rule = rule_of_thumb(data_used, backbone, per_class, probe_row["val_accuracy"], seed, progress, device)
    bb = create_backbone(backbone) if todo else None
    cmp.train_lengths = text_lengths(bb, [it.source for it in ds.split("train")]) if bb else None
    cmp.input_size, sizing = fine_tune_size(input_size, data_used, backbone, seed, device, progress)
    tuned_bb = create_backbone(f"size:{cmp.input_size}:{backbone}") if todo and cmp.input_size else bb
    # Shares are worked out once, from the budget and the priced probe, never from the clock, so the same
    # data, seed, budget and machine give the same plans (see verdicts.plan).
    # The frozen heads cost `head_passes` probe passes each; each trained row gets an even share of the
    # priced seconds still left, never more than the even share of the start (prices run short, so what a
    # row leaves unspent is slack, not more epochs for the next), and its own priced cost comes off them
    # (HARD_CAP).
    pass_s = probe_seconds(bb, len(ds.items), device)
    heads = {s: pass_s * head_passes(s) for s in todo if frozen_head(s)}
    trained = len(todo) - len(heads)
    left = budget_s - pass_s - sum(heads.values()) if trained else budget_s - pass_s
    even = left / trained if trained else left
    for i, strategy in enumerate(todo):
        over = time.perf_counter() - t_start > HARD_CAP * budget_s
        if left <= 0 or over:
            why = "the safety cap (twice the budget) was reached" if over else "the budget is spent"
            cmp.skipped.extend(todo[i:])
            cmp.skip_reasons.update({s: why for s in todo[i:]})
            break
        if strategy in heads:
            cmp.run_strategy(strategy, max(heads[strategy], 1.0), bb, ds)
        else:
            left -= cmp.run_strategy(strategy, min(even, left / trained), tuned_bb, ds, left=left)
            trained -= 1
    cv = frozen_head_hits(cmp.rows, data_used, seed, device)
    cmp.cv_correct = {k: v["correct"] for k, v in cv.items()}
    cmp.cv_nll = {k: v["nll"] for k, v in cv.items()}
    for row in cmp.rows:  # what each row costs to serve, set against its accuracy in the report
        row["latency_ms"] = run_latency_ms(row["run_dir"]) if row.get("run_dir") else None
    result: dict[str, Any] = {
        "data": str(data),
        "data_used": str(data_used),
        "backbone": backbone,
        "train_per_class": per_class,
        "n_val": len(cmp.expected),
        "budget_s": budget_s,
        "device": str(used),
        "precision": precision,
        "leakage": leakage,
        "input_size": sizing,
        **cmp.verdicts(len(ds.classes), rule),
        "elapsed_s": time.perf_counter() - t_start,
        "out": str(out_dir),
    }
    atomic_write_json(out_dir / COMPARE_FILE, to_jsonable(result))
    return result
