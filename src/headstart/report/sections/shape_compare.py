"""A task shape's strategy comparison (`auto --task T`: shape_compare.json): each strategy's mean per-item
score on val and test, its paired gain over the probe on val with the interval, and the verdict."""

from __future__ import annotations

import json

from headstart.report.html import Html, join, not_computed, note, num, table, tag
from headstart.report.loader import RunFiles
from headstart.runs.names import SHAPE_COMPARE_FILE


def section(files: RunFiles) -> tuple[Html, bool]:
    path = files.path / SHAPE_COMPARE_FILE
    if not path.is_file():
        return not_computed(
            "no strategy comparison in this run folder", f"headstart auto DATA --task {files.info.task}"
        ), False
    c = json.loads(path.read_text())
    rec = c.get("recommendation") or {}
    rows = []
    for r in c.get("rows") or []:
        g = r.get("vs_probe_val") or {}
        ci = g.get("ci")
        gain = f"{g['diff']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "reference"
        rows.append(
            [
                r.get("strategy", "?"),
                num(r.get("val_score"), 4),
                num(r.get("test_score"), 4),
                gain,
                g.get("verdict", "-") if ci else "-",
                r.get("error", ""),
            ]
        )
    best = rec.get("strategy")
    parts = [
        note(join(["Recommendation: ", tag("b", best or "none"), f". {rec.get('reason', '')}"]), "good"),
        table(
            ["strategy", "val", "test", "gain over the probe on val [95% CI]", "verdict", "error"],
            rows,
            numeric=(1, 2, 3),
            row_class=["recommended" if r[0] == best else None for r in rows],
            caption=f"Mean {c.get('item_score', 'per-item score')} per item (higher is better). A gain "
            "whose interval holds 0 is a tie, and a tie keeps the probe.",
        ),
    ]
    return join(parts), True
