"""Entities found, per type (a `--task tag` run): seqeval's entity precision, recall and F1 with 95 %
bootstrap intervals over sentences, from evaluation.json (else the run's own test or val scores in
metrics.json)."""

from __future__ import annotations

from typing import Any

from headstart.report.html import Html, join, not_computed, note, num, table, tag
from headstart.report.loader import RunFiles, eval_cmd


def _scores(files: RunFiles) -> tuple[dict[str, Any] | None, str]:
    ev = files.evaluation or {}
    if ev.get("task") == "tag" and isinstance(ev.get("metrics"), dict):
        return ev["metrics"], f"evaluation.json ({ev.get('split', 'test')} split)"
    metrics = files.metrics or {}
    for split in ("test", "val"):
        if isinstance(metrics.get(split), dict) and "entity_f1" in metrics[split]:
            return metrics[split], f"metrics.json ({split} split)"
    return None, ""


def section(files: RunFiles) -> tuple[Html, bool]:
    from headstart.intervals import fmt_ci

    m, source = _scores(files)
    if m is None:
        return not_computed("no entity scores", eval_cmd(files)), False
    rows = [["all (micro)", *_cells(m, "entity_"), num(m.get("n_entities")), num(m.get("n_predicted"))]]
    for typ, v in (m.get("per_type") or {}).items():
        rows.append([typ, *_cells(v, ""), num(v.get("support")), num(v.get("predicted"))])
    acc = fmt_ci(m.get("token_accuracy"), m.get("token_accuracy_ci"))
    parts: list[Any] = [
        table(
            ["entity type", "precision", "recall", "F1", "gold", "predicted"],
            rows,
            numeric=(1, 2, 3, 4, 5),
            caption=f"{source}: {m.get('n_sentences')} sentences; 95% bootstrap intervals over sentences",
        ),
        tag("p", f"Token accuracy (every word, O included): {acc}."),
        note(
            "An entity counts only when its type and its whole span match (seqeval's definition): a right "
            "span with the wrong type, or a wrong boundary, is both a false positive and a missed entity. "
            "Each word is read at its first subword."
        ),
    ]
    if m.get("unseen_words"):
        parts.append(
            note(f"{m['unseen_words']} word(s) lay beyond the encoder's max length: tagged O.", "warn")
        )
    return join(parts), True


def _cells(v: dict[str, Any], prefix: str) -> list[str]:
    from headstart.intervals import fmt_ci

    return [fmt_ci(v.get(f"{prefix}{k}"), v.get(f"{prefix}{k}_ci")) for k in ("precision", "recall", "f1")]
