"""Strategy comparison: compare.json's table, recommendation and flags."""

from __future__ import annotations

from typing import Any

from headstart.report.html import Html, figure, join, not_computed, note, num, size_bytes, table, tag
from headstart.report.loader import RunFiles, ci_text
from headstart.verdicts.select import vs_reference_text


def section(files: RunFiles) -> tuple[Html, bool]:
    c = files.compare
    if not c:
        return not_computed(
            "no strategy comparison in this run folder (compare.json)", "headstart compare DATA"
        ), False
    rows_in = c.get("rows") or []
    rec = c.get("recommendation") or {}
    best = rec.get("strategy")
    flags = c.get("flags") or {}
    tests = (c.get("selection") or {}).get("tests") or {}
    overfit = set(map(str, flags.get("overfitting") or []))
    rows = [_row(r, best, overfit, tests) for r in rows_in]
    classes = ["recommended" if str(r.get("strategy", "?")) == best else None for r in rows_in]
    parts: list[Any] = []
    if best:
        parts.append(note(join(["Recommendation: ", tag("b", best), f". {rec.get('reason', '')}"]), "good"))
    if flags.get("negative_transfer"):
        parts.append(note(f"Negative transfer: {flags.get('transfer', '')}.", "warn"))
    elif flags.get("transfer"):
        parts.append(tag("p", f"Transfer: {flags['transfer']}."))
    leak = c.get("leakage") or {}
    if leak.get("regrouped"):
        raw, grouped = leak.get("probe_raw") or {}, leak.get("probe_grouped") or {}
        parts.append(
            note(
                f"{leak.get('n_exact', 0)} exact and {leak.get('n_near', 0)} near copies across splits: "
                f"{leak.get('moved', 0)} item(s) in {leak.get('groups', 0)} group(s) were moved so each "
                f"group sits in one split. The probe's test accuracy was {num(raw.get('test'))} on the raw "
                f"split and is {num(grouped.get('test'))} on the grouped one.",
                "warn",
            )
        )
    rb = c.get("rule_based") or {}
    if rb.get("untested"):
        parts.append(
            tag(
                "p",
                f"Rule-based recommendation {rb.get('strategy')}: untested ({rb['untested']}).",
                class_="muted",
            )
        )
    from headstart.report import plots  # matplotlib: only when there is a comparison to draw

    parts.append(
        figure(
            plots.accuracy_vs_cost(rows_in, best),
            alt="Accuracy against training time and latency, per strategy",
            caption="Each strategy's score with its 95% interval against what it cost to train (left) and "
            "to serve one item (right, torch eager forward); the ringed point is the recommendation.",
        )
    )
    parts.append(
        table(
            [
                "strategy",
                "val accuracy (95%)",
                "vs probe, paired",
                "test accuracy (95%)",
                "test macro-F1 (95%)",
                "epochs run / planned (of recipe)",
                "train s",
                "latency ms",
                "trainable params",
                "stored",
            ],
            rows,
            numeric=range(1, 10),
            row_class=classes,
        )
    )
    return join(parts), True


def _row(r: dict[str, Any], best: Any, overfit: set[str], tests: dict[str, Any]) -> list[Any]:
    """One strategy's row: its name and marks, scores with intervals, the paired test against the probe."""
    name = str(r.get("strategy", "?"))
    label: Any = name
    marks = []
    if name == best:
        marks.append("recommended")
    if name in overfit:
        marks.append("overfits")
    if marks:
        label = join([name, tag("span", " · " + ", ".join(marks), class_="muted")])
    d = tests.get(name)
    vs = "–" if d is None else vs_reference_text(d)
    ran = r.get("epochs_run")
    return [
        label,
        ci_text(r, "val_accuracy"),
        vs,
        ci_text(r, "test_accuracy"),
        ci_text(r, "test_macro_f1"),
        "–"
        if ran is None
        else f"{ran} / {r.get('epochs_planned')}"
        + (
            f" of {r['recipe_epochs']}"
            if r.get("recipe_epochs") and (r.get("epochs_planned") or 0) < r["recipe_epochs"]
            else ""
        ),
        num(r.get("train_s"), 1),
        num(r.get("latency_ms"), 1),
        num(r.get("trainable_params")),
        size_bytes(r.get("stored_bytes")),
    ]
