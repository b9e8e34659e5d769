"""The page's header: the run's name, what it is, and its headline numbers (KPI cards)."""

from __future__ import annotations

from headstart.report.html import Html, join, num, tag
from headstart.report.loader import RunFiles, as_float, strategy_name, test_metrics
from headstart.report.sections.calibration import calibration_applied

# The classification scores the hero shows, each with its interval where the metrics carry one.
_SCORE_CARDS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("knn_accuracy", "kNN accuracy"))


def hero(files: RunFiles) -> Html:
    info = files.info
    strategy = strategy_name(files)
    shaped = info.task != "classify"
    chips = [
        ("base", info.backbone.name or "?"),
        ("kind", info.kind + (f" · {strategy}" if strategy else "")),
        ("task", info.task) if shaped else ("classes", len(files.classes)),
        ("date", (info.created or "–").replace("T", " ")),
    ]
    if not info.pretrained:
        chips.append(("weights", "random init"))
    chip_html = join(tag("li", join([f"{k} ", tag("b", v)])) for k, v in chips)
    return tag(
        "header",
        join(
            [
                tag("p", "headstart run report", class_="eyebrow"),
                tag("h1", files.name),
                tag("ul", chip_html, class_="chips"),
                _kpis(files),
            ]
        ),
        class_="hero",
    )


def _shape_cards(files: RunFiles) -> list[tuple[str, str, bool]]:
    """A task shape's headline scores (headstart.shapes) on test, else val, from metrics.json."""
    from headstart.shapes import shape_of_task

    shape = shape_of_task(files.info.task)
    metrics = files.metrics or {}
    split = "test" if isinstance(metrics.get("test"), dict) else "val"
    if shape is None or not isinstance(metrics.get(split), dict):
        return []
    cards = []
    for i, (value, ci, label) in enumerate(shape.headline_scores(metrics[split])):
        interval = f" (95%: {num(ci[0])}–{num(ci[1])})" if ci and None not in ci else ""
        cards.append((num(value), f"{split} {label}{interval}", i == 0))
    return cards


def _kpis(files: RunFiles) -> Html:
    metrics, split, _source = test_metrics(files)
    cards: list[tuple[str, str, bool]] = []
    if files.info.task != "classify":
        cards = _shape_cards(files)
    elif metrics:
        for key, name in _SCORE_CARDS:
            if metrics.get(key) is not None:
                ci = metrics.get(f"{key}_ci")
                interval = f" (95%: {num(ci[0])}–{num(ci[1])})" if ci and None not in ci else ""
                cards.append((num(metrics.get(key)), f"{split} {name}{interval}", key == "accuracy"))
    if files.classes and files.info.task == "classify":
        cards.append((num(1 / len(files.classes)), "chance (1 / classes)", False))
    cal = (files.evaluation or {}).get("calibration") or {}
    if cal.get("ece_after") is not None:
        if calibration_applied(cal)[0]:
            gain = as_float(cal["ece_after"]) < as_float(cal.get("ece_before"))
            cards.append((num(cal["ece_after"]), "ECE after scaling" + ("" if gain else " (no gain)"), False))
        else:
            cards.append((num(cal.get("ece_before")), "ECE (not scaled)", False))
    lat = (files.evaluation or {}).get("latency") or {}
    if lat.get("single_p50_ms") is not None:
        cards.append((f"{num(lat['single_p50_ms'], 1)} ms", "forward, one item (p50)", False))
    if not cards:
        return Html("")
    return tag(
        "div",
        join(
            tag(
                "div",
                join([tag("span", v, class_="value"), tag("span", label, class_="label")]),
                class_="kpi main" if main else "kpi",
            )
            for v, label, main in cards
        ),
        class_="kpis",
    )
