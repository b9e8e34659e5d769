"""Slices: every headline score per subgroup of the evaluated items, with its gap to the overall score."""

from __future__ import annotations

from typing import Any

from headstart.report.html import Html, join, not_computed, note, num, table, tag
from headstart.report.loader import RunFiles, ci_text, eval_cmd


def _gap(r: dict[str, Any], score: str) -> str:
    from headstart.intervals import fmt_ci

    v = r.get(f"{score}_gap")
    return fmt_ci(v, r.get(f"{score}_gap_ci")) if v is not None else "–"


def section(files: RunFiles) -> tuple[Html, bool]:
    from headstart.slices import SCORE_NAMES, SLICES_HELP

    sl = (files.evaluation or {}).get("slices")
    if not isinstance(sl, dict) or not sl.get("by_slice"):
        how = f"no slices: the evaluated items name none. Give {SLICES_HELP}"
        return not_computed(how, eval_cmd(files) + " --slices FILE"), False
    rows, flagged = [], []
    for name, r in sl["by_slice"].items():
        below = ", ".join(SCORE_NAMES.get(s, s) for s in r.get("below_overall") or [])
        if below:
            flagged.append(f"{name} ({below})")
        rows.append(
            [
                name,
                num(r.get("n")),
                ci_text(r, "accuracy"),
                _gap(r, "accuracy"),
                ci_text(r, "macro_f1"),
                _gap(r, "macro_f1"),
                ci_text(r, "balanced_accuracy"),
                tag("strong", below) if below else "–",
            ]
        )
    head = ["slice", "n", "accuracy", "gap", "macro-F1", "gap", "balanced accuracy", "below overall"]
    parts: list[Any] = [
        tag(
            "p",
            f"Slices from {sl.get('origin', '?')}; gap = slice minus overall, with its 95 % interval. "
            f"{sl.get('method', '')}.",
            class_="muted",
        ),
        table(head, rows, numeric=(1, 2, 3, 4, 5, 6)),
    ]
    if flagged:
        parts.append(note("Below the overall score beyond noise: " + "; ".join(flagged) + ".", "warn"))
    if sl.get("n_ungrouped"):
        parts.append(tag("p", f"{sl['n_ungrouped']} item(s) are in no slice.", class_="muted"))
    return join(parts), True
