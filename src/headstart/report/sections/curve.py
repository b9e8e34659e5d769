"""Label efficiency: accuracy against labelled examples per class (curve.json, else curve.png)."""

from __future__ import annotations

import base64
import math
from typing import Any

from headstart.report.html import Html, figure, join, not_computed, num, table
from headstart.report.loader import RunFiles, as_float


def section(files: RunFiles) -> tuple[Html, bool]:
    cv = files.curve
    png = files.path / "curve.png"
    if cv and cv.get("points"):
        from headstart.report import plots

        points = [p for p in cv["points"] if isinstance(p, dict)]
        parts: list[Any] = [
            figure(
                plots.label_efficiency(points),
                alt="Test accuracy against labelled examples per class, one line per method",
            )
        ]
        methods = list(dict.fromkeys(str(p.get("method")) for p in points))
        ns = sorted({as_float(p.get("labels_per_class")) for p in points})
        rows = []
        for m in methods:
            row: list[Any] = [m]
            for n in ns:
                accs = [
                    as_float(p.get("test_accuracy"))
                    for p in points
                    if str(p.get("method")) == m and as_float(p.get("labels_per_class")) == n
                ]
                accs = [a for a in accs if not math.isnan(a)]
                row.append(num(sum(accs) / len(accs)) if accs else "–")
            rows.append(row)
        parts.append(
            table(
                ["method", *(f"{n:g}/class" for n in ns)],
                rows,
                numeric=range(1, len(ns) + 1),
                caption="mean test accuracy over seeds",
            )
        )
        return join(parts), True
    if png.is_file():
        uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        return figure(uri, alt="Label-efficiency curve (curve.png)"), True
    return not_computed("no label-efficiency curve (curve.json)", "headstart curve DATA"), False
