"""Learning curves: history.json's per-epoch losses and accuracies."""

from __future__ import annotations

import math

from headstart.report.html import Html, figure, join, not_computed, num, tag
from headstart.report.loader import RunFiles, as_float


def section(files: RunFiles) -> tuple[Html, bool]:
    h = files.history
    if not h or not h.get("epochs"):
        return not_computed(
            "no per-epoch history (history.json): probe runs fit the head in one step",
            f"headstart fit DATA --backbone {files.info.backbone.name or 'NAME'}",
        ), False
    from headstart.report import plots

    rows = [e for e in h["epochs"] if isinstance(e, dict)]
    epochs = [e for e in rows if e.get("kind") != "soup"]  # a soup is no epoch: it is said in words
    soup = next((e for e in reversed(rows) if e.get("kind") == "soup"), None)
    best = h.get("best_epoch")
    chart = plots.learning_curves(epochs, best)
    best_row = next((e for e in epochs if e.get("epoch") == best), None)
    total_s = sum(as_float(e.get("seconds")) for e in epochs if not math.isnan(as_float(e.get("seconds"))))
    text = f"{len(epochs)} epochs"
    phases = list(dict.fromkeys(str(e.get("phase")) for e in epochs if e.get("phase")))
    if phases:
        text += " in phase(s) " + ", ".join(phases)
    if total_s:
        text += f", {total_s:.1f} s"
    if soup:
        members = ", ".join(str(m) for m in soup.get("members") or [])
        val_acc, val_loss = num(soup.get("val_acc")), num(soup.get("val_loss"))
        text += f"; the weights kept are the greedy soup of epochs {members}"
        text += f" (val accuracy {val_acc}, val loss {val_loss})"
    elif best_row:
        val_acc, val_loss = num(best_row.get("val_acc")), num(best_row.get("val_loss"))
        text += f"; the weights kept are from epoch {best} (val accuracy {val_acc}, val loss {val_loss})"
    parts = [
        tag("p", text + "."),
        figure(
            chart,
            alt=f"Training and validation loss and accuracy over {len(epochs)} epochs; best epoch {best}",
        ),
    ]
    return join(parts), True
