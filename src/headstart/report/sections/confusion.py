"""Confusion matrix and per-class scores of the held-out split."""

from __future__ import annotations

import math
from typing import Any

from headstart.report.html import Html, bar, heat_cell, join, not_computed, num, table, tag
from headstart.report.loader import RunFiles, as_float, eval_cmd, test_metrics


def section(files: RunFiles) -> tuple[Html, bool]:
    metrics, _split, source = test_metrics(files)
    if not metrics or not metrics.get("confusion"):
        return not_computed("no confusion matrix", eval_cmd(files)), False
    classes = files.classes
    cm = [[int(v) for v in row] for row in metrics["confusion"]]
    if len(classes) != len(cm):
        classes = [str(i) for i in range(len(cm))]
    head = join(
        [
            tag("th", tag("span", "true ↓  predicted →", class_="axis-label"), scope="col"),
            *(tag("th", c, class_="col", scope="col", title=c) for c in classes),
        ]
    )
    body = []
    for i, row in enumerate(cm):
        total = sum(row)
        cells = join(heat_cell(v, total, i == j) for j, v in enumerate(row))
        body.append(tag("tr", join([tag("th", classes[i], scope="row"), cells])))
    heat = tag(
        "div",
        tag("table", join([tag("thead", tag("tr", head)), tag("tbody", join(body))]), class_="confusion"),
        class_="table-wrap",
    )
    parts: list[Any] = [
        tag(
            "p",
            f"{source}. Rows are the true class, columns the prediction; blue is "
            "correct, red is confusion, shaded by the share of the row.",
            class_="muted",
        ),
        heat,
    ]
    per_class = metrics.get("per_class") or {}
    if per_class:
        rows = []
        for c in classes:
            p = per_class.get(c) or {}
            f1 = as_float(p.get("f1"))
            rows.append(
                [
                    c,
                    num(p.get("precision")),
                    num(p.get("recall")),
                    join([num(f1), bar(f1)]),
                    num(p.get("support")),
                ]
            )
        parts.append(tag("h3", "Per class"))
        parts.append(table(["class", "precision", "recall", "F1", "support"], rows, numeric=(1, 2, 3, 4)))
        worst = sorted(
            ((c, as_float((per_class.get(c) or {}).get("f1"))) for c in classes), key=lambda t: t[1]
        )
        worst = [w for w in worst if not math.isnan(w[1])][:3]
        if worst:
            parts.append(
                tag(
                    "p",
                    "Weakest classes by F1: " + ", ".join(f"{c} ({f:.2f})" for c, f in worst) + ".",
                    class_="muted",
                )
            )
    return join(parts), True
