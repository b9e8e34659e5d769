"""Out-of-distribution detection: how well low scores flag inputs unlike the training data."""

from __future__ import annotations

from headstart.report.html import Html, code, join, key_value, not_computed, num, tag
from headstart.report.loader import RunFiles, eval_cmd


def section(files: RunFiles) -> tuple[Html, bool]:
    ev = files.evaluation
    if not ev:
        return not_computed("no out-of-distribution check", eval_cmd(files) + " --ood FOLDER"), False
    ood = ev.get("ood")
    if not ood:
        return not_computed("no out-of-distribution set was given", eval_cmd(files) + " --ood FOLDER"), False
    rows = [
        ("out-of-distribution data", code(ood.get("path", "?"))),
        ("items", num(ood.get("n"))),
        ("AUROC, max softmax probability", num(ood.get("auroc_msp"))),
        ("AUROC, energy score", num(ood.get("auroc_energy"))),
    ]
    if ood.get("accuracy") is not None:
        rows.append(("accuracy on it", num(ood["accuracy"])))
    text = tag(
        "p",
        "How well a low score flags inputs unlike the training data (0.5: no better than chance, "
        "1.0: perfectly separated).",
        class_="muted",
    )
    return join([text, key_value(rows)]), True
