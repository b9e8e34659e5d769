"""Pretraining overlap (overlap.json): items the backbone's own pretrained classifier already recognises as
their label, and the probe's accuracy on them vs the rest; or a causal LM's memorisation signal."""

from __future__ import annotations

from typing import Any

from headstart.report.html import Html, join, not_computed, note, num, table, tag
from headstart.report.loader import RunFiles, ci_text


def section(files: RunFiles) -> tuple[Html, bool]:
    ov = files.overlap
    if not ov:
        return not_computed("no pretraining-overlap check", f"headstart overlap {files.path}"), False
    if not ov.get("supported"):
        return note(f"Not available: {ov.get('reason', 'unsupported backbone')}."), True
    if ov.get("check") == "lm-memorisation":
        return _memorisation(ov), True
    parts: list[Any] = [
        tag(
            "p",
            f"{num(ov.get('n_overlap'))} of {num(ov.get('n'))} test items overlap {ov.get('backbone')}'s "
            f"pretraining ({ov.get('label_space')}): its own classifier puts at least "
            f"{num(ov.get('threshold'), 2)} of the probability on the classes their label names. "
            "If many do, few-shot scores above may be inflated.",
        )
    ]
    acc = ov.get("accuracy")
    if isinstance(acc, dict):
        rows = [
            [g, num((acc.get(g) or {}).get("n")), ci_text(acc.get(g) or {}, "accuracy")]
            for g in ("overlap", "rest")
        ]
        parts.append(table(["items", "n", "test accuracy of the run [95 % CI]"], rows, numeric=(1, 2)))
        if acc.get("p_value") is not None:
            verdict = "beyond noise" if acc.get("beyond_noise") else "within noise"
            parts.append(
                tag(
                    "p",
                    f"Gap {num(acc.get('gap'))}: {verdict} "
                    f"({acc.get('test')}, p = {num(acc.get('p_value'))}).",
                )
            )
    per_class = ov.get("per_class") or {}
    rows = []
    for lab, c in per_class.items():
        named = c.get("named_classes") or []
        tops = ", ".join(f"{t.get('class')} ({t.get('n')})" for t in c.get("top_confident") or [])
        rows.append(
            [lab, num(c.get("n")), num(c.get("n_overlap")), "; ".join(named[:3]) or "none", tops or "–"]
        )
    if rows:
        parts.append(
            table(
                ["class", "items", "overlap", "pretraining classes it names", "confident pretraining class"],
                rows,
                numeric=(1, 2),
            )
        )
    if ov.get("unnamed_labels"):
        parts.append(
            note(
                f"{len(ov['unnamed_labels'])} labels name no pretraining class; overlap by name cannot be "
                "seen for them: " + ", ".join(ov["unnamed_labels"]) + ".",
                "warn",
            )
        )
    return join(parts), True


def _memorisation(ov: dict[str, Any]) -> Html:
    ref = ov.get("reference") or {}
    rows = [
        [
            "these texts",
            num(ov.get("n")),
            num(ov.get("loss_real")),
            num(ov.get("loss_shuffled")),
            num(ov.get("ratio")),
        ],
        [
            "reference",
            num(ref.get("n")),
            num(ref.get("loss_real")),
            num(ref.get("loss_shuffled")),
            num(ref.get("ratio")),
        ],
    ]
    return join(
        [
            table(["texts", "n", "loss (real)", "loss (shuffled)", "ratio"], rows, numeric=(1, 2, 3, 4)),
            tag(
                "p",
                f"Ratio vs reference: {num(ov.get('ratio_vs_reference'))}. {ov.get('caveat', '')}.",
                class_="muted",
            ),
        ]
    )
