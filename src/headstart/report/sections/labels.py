"""Labels (a multi-label run): the overall scores, one row per label with intervals, its threshold and
calibration, and a bar chart of each label's AP and F1 with their intervals."""

from __future__ import annotations

from typing import Any

from headstart.intervals import fmt_ci
from headstart.report import plots
from headstart.report.html import Html, figure, join, key_value, not_computed, note, num, table
from headstart.report.loader import RunFiles, eval_cmd

#: Labels the chart draws at most (the table lists them all).
CHART_LABELS = 40


@plots._styled
def label_bars(per_label: dict[str, dict[str, Any]]) -> str:
    """Horizontal bars per label: AP and F1 side by side, each with its 95% interval as an error bar."""
    names = [lab for lab, v in per_label.items() if v.get("ap") is not None][:CHART_LABELS]
    n = len(names)
    fig, (ax,) = plots._figure(5.6, min(1.2 + 0.34 * n, 14.0))
    ys = list(range(n))[::-1]
    for j, (key, colour) in enumerate((("ap", plots.SERIES[0]), ("f1", plots.SERIES[1]))):
        vals = [plots._num(per_label[lab].get(key)) for lab in names]
        cis = [per_label[lab].get(f"{key}_ci") or [v, v] for lab, v in zip(names, vals, strict=True)]
        lo = [max(0.0, v - plots._num(c[0])) for v, c in zip(vals, cis, strict=True)]
        hi = [max(0.0, plots._num(c[1]) - v) for v, c in zip(vals, cis, strict=True)]
        pos = [y + (0.2 if j == 0 else -0.2) for y in ys]
        ax.barh(pos, vals, height=0.38, color=colour, label=key.upper(), xerr=[lo, hi], ecolor=plots.INK)
    ax.set_yticks(ys, [plots._short(lab) for lab in names])
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (95% interval)")
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower right", ncols=2, bbox_to_anchor=(1.0, 1.0), fontsize=9)
    return plots._svg_uri(fig)


def _scores(files: RunFiles) -> tuple[dict[str, Any] | None, str]:
    """The evaluated split's scores (evaluation.json), else the probe's test (then val) scores."""
    ev = files.evaluation or {}
    if isinstance(ev.get("metrics"), dict) and "per_label" in ev["metrics"]:
        return ev["metrics"], f"{ev.get('split', 'test')} split (evaluate)"
    m = files.metrics or {}
    for s in ("test", "val"):
        if isinstance(m.get(s), dict) and "per_label" in m[s]:
            return m[s], f"{s} split (probe)"
    return None, ""


def section(files: RunFiles) -> tuple[Html, bool]:
    m, where = _scores(files)
    if m is None:
        return not_computed("no multi-label scores recorded", eval_cmd(files)), False
    readout = (files.metrics or {}).get("readout") or {}
    summary = key_value(
        [
            ("scored on", where),
            ("items", str(m.get("n"))),
            ("mAP", fmt_ci(m.get("map"), m.get("map_ci"))),
            ("micro-F1", fmt_ci(m.get("micro_f1"), m.get("micro_f1_ci"))),
            ("macro-F1", fmt_ci(m.get("macro_f1"), m.get("macro_f1_ci"))),
            ("exact set (subset accuracy)", fmt_ci(m.get("subset_accuracy"), m.get("subset_accuracy_ci"))),
            (
                "mean per-label ECE before / after temperature",
                f"{num(m.get('ece_before'))} / {num(m.get('ece_after'))}",
            ),
            ("C (L2) chosen by", f"{num(readout.get('C'))}: {readout.get('C_chosen_by', '-')}"),
            ("read-out", readout.get("rule", "-")),
        ]
    )
    sources = dict(zip(readout.get("outputs", []), readout.get("threshold_source", []), strict=False))
    rows = []
    for lab, v in m["per_label"].items():
        rows.append(
            [
                lab,
                str(v.get("support")),
                str(v.get("predicted")),
                fmt_ci(v.get("ap"), v.get("ap_ci")),
                fmt_ci(v.get("f1"), v.get("f1_ci")),
                fmt_ci(v.get("precision"), v.get("precision_ci")),
                fmt_ci(v.get("recall"), v.get("recall_ci")),
                f"{num(v.get('threshold'))} ({sources.get(lab, '-')})",
                f"{num(v.get('temperature'))}; ECE {num(v.get('ece_before'))} / {num(v.get('ece_after'))}",
            ]
        )
    headers = ["label", "positives", "predicted", "AP", "F1", "precision", "recall", "threshold", "T; ECE"]
    parts: list[Any] = [summary, table(headers, rows, numeric=range(1, 9))]
    if any(v.get("ap") is not None for v in m["per_label"].values()):
        parts.append(
            figure(label_bars(m["per_label"]), "AP and F1 per label", f"AP and F1 per label, {where}")
        )
    missing = [lab for lab, v in m["per_label"].items() if not v.get("support")]
    if missing:
        parts.append(
            note(
                f"No positive item of {', '.join(missing[:10])} here: their AP and F1 are undefined.", "warn"
            )
        )
    return join(parts), True
