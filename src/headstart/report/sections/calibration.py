"""Calibration: the temperature, ECE before and after, reliability diagrams."""

from __future__ import annotations

from typing import Any

from headstart.report.html import Html, figure, join, key_value, not_computed, note, num
from headstart.report.loader import RunFiles, as_float, eval_cmd


def calibration_applied(cal: dict[str, Any]) -> tuple[bool, str]:
    """(whether predictions use the fitted T, why not). Evaluations written before calibration had a
    status count as applied unless their T is outside the bounds load_model now enforces."""
    from headstart.calibration import applied_temperature

    if cal.get("status") == "skipped":
        return False, str(cal.get("reason") or "no reason recorded")
    if cal.get("temperature") is None:
        return False, "no temperature was fitted"
    _t, warning = applied_temperature(cal)
    return (False, warning) if warning else (True, "")


def section(files: RunFiles) -> tuple[Html, bool]:
    cal = (files.evaluation or {}).get("calibration")
    if not cal:
        return not_computed("no calibration measured", eval_cmd(files)), False
    from headstart.report import plots

    applied, why = calibration_applied(cal)
    before, after = cal.get("reliability_before"), cal.get("reliability_after")
    e0, e1 = as_float(cal.get("ece_before")), as_float(cal.get("ece_after"))
    fitted = cal.get("fitted_temperature")
    parts: list[Any] = []
    if not applied:
        parts.append(note(f"Temperature scaling not applied: {why}", "warn"))
        rows = [("temperature", "1 (not scaled)")]
        if fitted is not None:
            rows.append(("fitted temperature (not used)", num(fitted)))
        rows.append(("ECE (no scaling)", num(cal.get("ece_before"))))
        parts.append(key_value(rows))
        after = None  # there is no "after": predictions are the unscaled ones
    else:
        parts.append(
            key_value(
                [
                    ("temperature", num(cal.get("temperature"))),
                    ("ECE before scaling", num(cal.get("ece_before"))),
                    ("ECE after scaling", num(cal.get("ece_after"))),
                ]
            )
        )
        if not e1 < e0:  # also NaN: never present a non-improvement as a success
            parts.append(
                note(
                    f"Scaling did not lower ECE on the evaluated split ({num(e0)} \u2192 {num(e1)}): it was "
                    "fitted and checked on val, and this split disagrees; treat the probabilities with care.",
                    "warn",
                )
            )
    if before:
        uri = plots.reliability(before, after, (cal.get("ece_before"), cal.get("ece_after")))
        alt = (
            "Reliability diagrams: accuracy per confidence bin before "
            f"(ECE {num(cal.get('ece_before'))}) and after (ECE {num(cal.get('ece_after'))}) "
            "temperature scaling"
            if after
            else f"Reliability diagram: accuracy per confidence bin (ECE {num(cal.get('ece_before'))}), "
            "no temperature scaling applied"
        )
        parts.append(
            figure(
                uri,
                alt=alt,
                caption="Bars: accuracy of the predictions in each confidence bin; dots: their mean "
                "confidence. On the dashed diagonal, a confidence of 0.8 is right 80\u00a0% of the time.",
            )
        )
    return join(parts), True
