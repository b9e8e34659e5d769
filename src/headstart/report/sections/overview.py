"""Overview: the held-out scores with their intervals, and the run's size and time."""

from __future__ import annotations

import math
from typing import Any

from headstart.imbalance import skewed_in
from headstart.report.html import Html, join, not_computed, num, table, tag
from headstart.report.loader import RunFiles, as_float, ci_text, eval_cmd, test_metrics


def section(files: RunFiles) -> tuple[Html, bool]:
    metrics, _split, source = test_metrics(files)
    parts: list[Any] = []
    if metrics:
        parts.append(tag("p", f"Held-out scores: {source}."))
        # Skewed classes: what was done, and balanced accuracy (what chose) beside accuracy.
        skew = skewed_in(files.metrics or {})
        if skew:
            parts.append(tag("p", skew[0].upper() + skew[1:] + "."))
        rows = []
        for s in ("val", "test"):
            m = (files.metrics or {}).get(s)
            if isinstance(m, dict):
                rows.append(
                    [
                        s,
                        num(m.get("n")),
                        ci_text(m, "accuracy"),
                        *([ci_text(m, "balanced_accuracy")] if skew else []),
                        ci_text(m, "macro_f1"),
                        ci_text(m, "knn_accuracy"),
                    ]
                )
        if rows:
            bal = ["balanced accuracy (95%)"] if skew else []
            parts.append(
                table(
                    ["split", "n", "accuracy (95%)", *bal, "macro-F1 (95%)", "kNN accuracy (95%)"],
                    rows,
                    numeric=range(1, 5 + len(bal)),
                )
            )
    else:
        parts.append(not_computed("no held-out metrics in this run folder", eval_cmd(files)))
    m = files.metrics or {}
    facts = []
    if m.get("trainable_params") is not None or files.info.trainable_params is not None:
        trainable = m.get("trainable_params", files.info.trainable_params)
        total = m.get("backbone_params")
        facts.append(
            f"{num(trainable)} trainable parameters"
            + (f" on top of a {num(total)}-parameter backbone" if total else "")
        )
    params = files.info.params
    if params.get("C") is not None:
        tried = params.get("selection_scores") or {}
        facts.append(
            f"L2 strength C = {as_float(params['C']):g}"
            + (f", the best of {len(tried)} values tried" if len(tried) > 1 else "")
        )
    timings = m.get("timings") or {}
    if timings:
        total_s = sum(as_float(v) for v in timings.values() if not math.isnan(as_float(v)))
        facts.append(f"the run took {total_s:.1f} s")
    if facts:
        parts.append(tag("p", "; ".join(facts) + ".", class_="muted"))
    return join(parts), bool(metrics)
