"""The per-run HTML report: one self-contained page that shows everything a run folder records.

write_report("runs/demo")   # -> runs/demo/report.html

Each section reads one file of the run folder (data.json, compare.json, history.json, evaluation.json or
metrics.json, curve.json, run.json, ...) and is shown when that file exists; otherwise the section says
what is missing and which command computes it. Charts are matplotlib SVGs inlined as data URIs,
thumbnails are small inline JPEGs, and there is no script and no network access in the page.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.fileio import atomic_write_text
from headstart.report.html import (
    Html,
    Section,
    bar,
    code,
    esc,
    figure,
    heat_cell,
    join,
    key_value,
    not_computed,
    note,
    num,
    page,
    size_bytes,
    table,
    tag,
)

REPORT_FILE = "report.html"
THUMB_PX = 160
MAX_MISTAKES = 24
MAX_LISTED = 200  # rows of skipped files / duplicate pairs shown before "and N more"

# (id, title): the order of the page.
SECTIONS = (
    ("overview", "Overview"),
    ("data", "Data"),
    ("compare", "Strategy comparison"),
    ("training", "Learning curves"),
    ("confusion", "Confusion matrix and per-class scores"),
    ("calibration", "Calibration"),
    ("ood", "Out-of-distribution detection"),
    ("curve", "Label efficiency"),
    ("mistakes", "Most confident mistakes"),
    ("card", "Model card"),
    ("performance", "Latency and memory"),
)


@dataclass
class RunFiles:
    """The JSON files of one run folder that the report reads (None where absent); `problems` for the rest."""

    path: Path
    run: dict[str, Any]
    data: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    compare: dict[str, Any] | None = None
    curve: dict[str, Any] | None = None
    leakage: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.run.get("classes", [])]


@dataclass
class Report:
    html: str
    sections: dict[str, bool]  # id -> computed


def read_run_files(run_dir: str | Path) -> RunFiles:
    path = Path(run_dir)
    run_file = path / "run.json"
    if not run_file.is_file():
        raise HeadstartError(
            f"{path} is not a headstart run folder (no run.json)",
            fix="give the folder that `headstart probe` or `headstart fit` printed",
        )
    try:
        run = json.loads(run_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HeadstartError(f"{run_file} is not valid JSON: {e}", fix="the run folder is damaged") from e
    files = RunFiles(path=path, run=run)
    for attr, name in (
        ("data", "data.json"),
        ("metrics", "metrics.json"),
        ("evaluation", "evaluation.json"),
        ("history", "history.json"),
        ("compare", "compare.json"),
        ("curve", "curve.json"),
        ("leakage", "leakage.json"),
        ("recipe", "recipe.json"),
        ("calibration", "calibration.json"),
    ):
        f = path / name
        if not f.is_file():
            continue
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            files.problems[name] = f"not readable JSON ({e})"
            continue
        if isinstance(obj, dict):
            setattr(files, attr, obj)
        else:
            files.problems[name] = f"expected a JSON object, found {type(obj).__name__}"
    return files


def build_report(run_dir: str | Path) -> Report:
    """The report page for `run_dir` as a string, plus which sections had data."""
    files = read_run_files(run_dir)
    builders: dict[str, Callable[[RunFiles], tuple[Html, bool]]] = {
        "overview": _overview,
        "data": _data,
        "compare": _compare,
        "training": _training,
        "confusion": _confusion,
        "calibration": _calibration,
        "ood": _ood,
        "curve": _curve,
        "mistakes": _mistakes,
        "card": _card,
        "performance": _performance,
    }
    sections = []
    for sid, title in SECTIONS:
        try:
            body, computed = builders[sid](files)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            # A file with an unexpected shape spoils its own section, not the whole report.
            body, computed = note(f"could not show this section: {type(e).__name__}: {e}", "warn"), False
        sections.append(Section(sid, title, body, computed))
    if files.problems:
        sections[0].body = join(
            [sections[0].body, *(note(f"{n}: {why}", "warn") for n, why in files.problems.items())]
        )
    # Sections with data first, in their order; the ones still to compute follow, each saying how.
    sections.sort(key=lambda s: not s.computed)
    text = page(f"{files.name}: headstart report", _hero(files), sections)
    return Report(html=text, sections={s.id: s.computed for s in sections})


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of `run_dir` to `out` (default <run_dir>/report.html), atomically; return its path."""
    report = build_report(run_dir)
    target = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    atomic_write_text(target, report.html)
    return target


# -- helpers -------------------------------------------------------------------------------------------


def _eval_cmd(files: RunFiles) -> str:
    return f"headstart evaluate {files.path}"


def _test_metrics(files: RunFiles) -> tuple[dict[str, Any] | None, str, str]:
    """Held-out metrics to show, their split, and where they come from: evaluation.json, else metrics.json."""
    ev = files.evaluation or {}
    if isinstance(ev.get("metrics"), dict):
        split = str(ev.get("split", "test"))
        where = str(ev.get("data") or f"{split} split")
        return ev["metrics"], split, f"{where}, n = {num(ev.get('n'))} (evaluation.json)"
    m = files.metrics or {}
    for split in ("test", "val"):
        if isinstance(m.get(split), dict):
            return m[split], split, f"{split} split, n = {num(m[split].get('n'))} (metrics.json)"
    return None, "", ""


def _strategy(files: RunFiles) -> str | None:
    run, recipe = files.run, files.recipe or {}
    for v in (
        run.get("strategy"),
        (run.get("params") or {}).get("strategy"),
        recipe.get("strategy"),
        recipe.get("name"),
    ):
        if v:
            return str(v)
    return None


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# -- sections ------------------------------------------------------------------------------------------


def _hero(files: RunFiles) -> Html:
    run = files.run
    backbone = run.get("backbone") or {}
    kind = str(run.get("kind", "run"))
    strategy = _strategy(files)
    chips = [
        ("base", backbone.get("name", "?")),
        ("kind", kind + (f" · {strategy}" if strategy else "")),
        ("classes", len(files.classes)),
        ("date", str(run.get("created", "–")).replace("T", " ")),
    ]
    if run.get("pretrained") is False:
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


def _kpis(files: RunFiles) -> Html:
    metrics, split, _source = _test_metrics(files)
    cards: list[tuple[str, str, bool]] = []
    if metrics:
        ci = metrics.get("accuracy_ci")
        interval = f" (95%: {num(ci[0])}–{num(ci[1])})" if ci and None not in ci else ""
        cards.append((num(metrics.get("accuracy")), f"{split} accuracy{interval}", True))
        cards.append((num(metrics.get("macro_f1")), f"{split} macro-F1", False))
        if metrics.get("knn_accuracy") is not None:
            cards.append((num(metrics.get("knn_accuracy")), f"{split} kNN accuracy", False))
    if files.classes:
        cards.append((num(1 / len(files.classes)), "chance (1 / classes)", False))
    cal = (files.evaluation or {}).get("calibration") or {}
    if cal.get("ece_after") is not None:
        if _calibration_applied(cal)[0]:
            gain = _float(cal["ece_after"]) < _float(cal.get("ece_before"))
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


def _overview(files: RunFiles) -> tuple[Html, bool]:
    run = files.run
    metrics, _split, source = _test_metrics(files)
    parts: list[Any] = []
    if metrics:
        parts.append(tag("p", f"Held-out scores: {source}."))
        rows = []
        for s in ("val", "test"):
            m = (files.metrics or {}).get(s)
            if isinstance(m, dict):
                rows.append(
                    [
                        s,
                        num(m.get("n")),
                        _ci(m, "accuracy"),
                        _ci(m, "macro_f1"),
                        num(m.get("knn_accuracy")),
                    ]
                )
        if rows:
            parts.append(
                table(
                    ["split", "n", "accuracy (95%)", "macro-F1 (95%)", "kNN accuracy"],
                    rows,
                    numeric=(1, 2, 3, 4),
                )
            )
    else:
        parts.append(not_computed("no held-out metrics in this run folder", _eval_cmd(files)))
    m = files.metrics or {}
    facts = []
    if m.get("trainable_params") is not None or run.get("trainable_params") is not None:
        trainable = m.get("trainable_params", run.get("trainable_params"))
        total = m.get("backbone_params")
        facts.append(
            f"{num(trainable)} trainable parameters"
            + (f" on top of a {num(total)}-parameter backbone" if total else "")
        )
    params = run.get("params") if isinstance(run.get("params"), dict) else {}
    if params.get("C") is not None:
        tried = params.get("selection_scores") or {}
        facts.append(
            f"L2 strength C = {_float(params['C']):g}"
            + (f", the best of {len(tried)} values tried" if len(tried) > 1 else "")
        )
    timings = m.get("timings") or {}
    if timings:
        total_s = sum(_float(v) for v in timings.values() if not math.isnan(_float(v)))
        facts.append(f"the run took {total_s:.1f} s")
    if facts:
        parts.append(tag("p", "; ".join(facts) + ".", class_="muted"))
    return join(parts), bool(metrics)


def _data(files: RunFiles) -> tuple[Html, bool]:
    d = files.data
    if not d:
        return not_computed("no data summary (data.json)", "headstart probe DATA"), False
    from headstart.report import plots

    classes = [str(c) for c in d.get("classes") or files.classes]
    counts: dict[str, dict[str, int]] = {s: dict(v) for s, v in (d.get("counts") or {}).items()}
    splits = list(counts)
    parts: list[Any] = [
        tag(
            "p",
            join(
                [
                    "From ",
                    code(d.get("root", "?")),
                    f" ({d.get('layout', '?')}, "
                    f"{d.get('modality', 'image')}): {num(d.get('n_items'))} items in {len(classes)} classes"
                    + (f", split with seed {d['seed']}" if d.get("seed") is not None else "")
                    + ".",
                ]
            ),
        )
    ]
    rows = []
    for c in classes:
        vals = [int(counts[s].get(c, 0)) for s in splits]
        rows.append([c, *map(num, vals), num(sum(vals))])
    totals = [sum(int(counts[s].get(c, 0)) for c in classes) for s in splits]
    rows.append(["total", *map(num, totals), num(sum(totals))])
    count_table = table(
        ["class", *splits, "all"],
        rows,
        numeric=range(1, len(splits) + 2),
        row_class=[None] * len(classes) + ["total"],
    )
    chart = figure(
        plots.class_counts(classes, counts),
        alt="Bar chart of items per class, stacked by split: "
        + "; ".join(f"{c}: " + ", ".join(f"{s} {counts[s].get(c, 0)}" for s in splits) for c in classes[:30]),
    )
    parts.append(tag("div", join([count_table, chart]), class_="side-by-side"))

    skipped = d.get("skipped") or {}
    parts.append(tag("h3", f"Skipped files ({len(skipped)})"))
    if skipped:
        items = sorted(skipped.items())
        parts.append(table(["file", "reason"], [[code(p), r] for p, r in items[:MAX_LISTED]]))
        if len(items) > MAX_LISTED:
            parts.append(tag("p", f"… and {len(items) - MAX_LISTED} more.", class_="muted"))
    else:
        parts.append(tag("p", "Every file was readable.", class_="muted"))

    parts.append(tag("h3", "Duplicates across splits"))
    leak = files.leakage
    if leak is None:
        parts.append(not_computed("no leakage check (leakage.json)", "headstart leakage DATA"))
    else:
        n_exact, n_near = (
            leak.get("n_exact", len(leak.get("exact", []))),
            leak.get("n_near", len(leak.get("near", []))),
        )
        kind = "warn" if (n_exact or n_near) else "good"
        parts.append(
            note(f"{num(n_exact)} exact and {num(n_near)} near duplicate pair(s) across splits.", kind)
        )
        pairs = [("exact", p) for p in leak.get("exact", [])] + [("near", p) for p in leak.get("near", [])]
        if pairs:
            rows = [
                [k, code(p.get("a", "?")), code(p.get("b", "?")), " / ".join(map(str, p.get("splits", [])))]
                for k, p in pairs[:MAX_LISTED]
            ]
            parts.append(table(["match", "a", "b", "splits"], rows))
            if len(pairs) > MAX_LISTED:
                parts.append(tag("p", f"… and {len(pairs) - MAX_LISTED} more.", class_="muted"))
    return join(parts), True


def _ci(r: dict[str, Any], key: str) -> str:
    """A score with its 95 % interval, as every table of the report shows it."""
    from headstart.intervals import fmt_ci

    v = r.get(key)
    return fmt_ci(v, r.get(f"{key}_ci")) if v is not None else "–"


def _compare(files: RunFiles) -> tuple[Html, bool]:
    c = files.compare
    if not c:
        return not_computed(
            "no strategy comparison in this run folder (compare.json)", "headstart compare DATA"
        ), False
    rows_in = c.get("rows") or []
    rec = c.get("recommendation") or {}
    best = rec.get("strategy")
    flags = c.get("flags") or {}
    tests = (c.get("selection") or {}).get("tests") or {}
    overfit = set(map(str, flags.get("overfitting") or []))
    rows, classes = [], []
    for r in rows_in:
        name = str(r.get("strategy", "?"))
        label: Any = name
        marks = []
        if name == best:
            marks.append("recommended")
        if name in overfit:
            marks.append("overfits")
        if marks:
            label = join([name, tag("span", " · " + ", ".join(marks), class_="muted")])
        d = tests.get(name)
        vs = (
            "–" if d is None else f"{d['diff']:+.3f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}], p = {d['p']:.2g}"
        )
        ran = r.get("epochs_run")
        rows.append(
            [
                label,
                _ci(r, "val_accuracy"),
                vs,
                _ci(r, "test_accuracy"),
                _ci(r, "test_macro_f1"),
                "–"
                if ran is None
                else f"{ran} / {r.get('epochs_planned')}"
                + (
                    f" of {r['recipe_epochs']}"
                    if r.get("recipe_epochs") and (r.get("epochs_planned") or 0) < r["recipe_epochs"]
                    else ""
                ),
                num(r.get("train_s"), 1),
                num(r.get("trainable_params")),
                size_bytes(r.get("stored_bytes")),
            ]
        )
        classes.append("recommended" if name == best else None)
    parts: list[Any] = []
    if best:
        parts.append(note(join(["Recommendation: ", tag("b", best), f". {rec.get('reason', '')}"]), "good"))
    if flags.get("negative_transfer"):
        parts.append(note(f"Negative transfer: {flags.get('transfer', '')}.", "warn"))
    elif flags.get("transfer"):
        parts.append(tag("p", f"Transfer: {flags['transfer']}."))
    leak = c.get("leakage") or {}
    if leak.get("regrouped"):
        raw, grouped = leak.get("probe_raw") or {}, leak.get("probe_grouped") or {}
        parts.append(
            note(
                f"{leak.get('n_exact', 0)} exact and {leak.get('n_near', 0)} near copies across splits: "
                f"{leak.get('moved', 0)} item(s) in {leak.get('groups', 0)} group(s) were moved so each "
                f"group sits in one split. The probe's test accuracy was {num(raw.get('test'))} on the raw "
                f"split and is {num(grouped.get('test'))} on the grouped one.",
                "warn",
            )
        )
    rb = c.get("rule_based") or {}
    if rb.get("untested"):
        parts.append(
            tag(
                "p",
                f"Rule-based recommendation {rb.get('strategy')}: untested ({rb['untested']}).",
                class_="muted",
            )
        )
    parts.append(
        table(
            [
                "strategy",
                "val accuracy (95%)",
                "vs probe, paired",
                "test accuracy (95%)",
                "test macro-F1 (95%)",
                "epochs run / planned (of recipe)",
                "train s",
                "trainable params",
                "stored",
            ],
            rows,
            numeric=range(1, 9),
            row_class=classes,
        )
    )
    return join(parts), True


def _training(files: RunFiles) -> tuple[Html, bool]:
    h = files.history
    if not h or not h.get("epochs"):
        return not_computed(
            "no per-epoch history (history.json): probe runs fit the head in one step",
            f"headstart fit DATA --backbone {(files.run.get('backbone') or {}).get('name', 'NAME')}",
        ), False
    from headstart.report import plots

    epochs = [e for e in h["epochs"] if isinstance(e, dict)]
    best = h.get("best_epoch")
    chart = plots.learning_curves(epochs, best)
    best_row = next((e for e in epochs if e.get("epoch") == best), None)
    total_s = sum(_float(e.get("seconds")) for e in epochs if not math.isnan(_float(e.get("seconds"))))
    text = f"{len(epochs)} epochs"
    phases = list(dict.fromkeys(str(e.get("phase")) for e in epochs if e.get("phase")))
    if phases:
        text += " in phase(s) " + ", ".join(phases)
    if total_s:
        text += f", {total_s:.1f} s"
    if best_row:
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


def _confusion(files: RunFiles) -> tuple[Html, bool]:
    metrics, _split, source = _test_metrics(files)
    if not metrics or not metrics.get("confusion"):
        return not_computed("no confusion matrix", _eval_cmd(files)), False
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
            f1 = _float(p.get("f1"))
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
        worst = sorted(((c, _float((per_class.get(c) or {}).get("f1"))) for c in classes), key=lambda t: t[1])
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


def _calibration_applied(cal: dict[str, Any]) -> tuple[bool, str]:
    """(whether predictions use the fitted T, why not). Evaluations written before calibration had a
    status count as applied unless their T is outside the bounds load_model now enforces."""
    from headstart.calibration import applied_temperature

    if cal.get("status") == "skipped":
        return False, str(cal.get("reason") or "no reason recorded")
    if cal.get("temperature") is None:
        return False, "no temperature was fitted"
    _t, warning = applied_temperature(cal)
    return (False, warning) if warning else (True, "")


def _calibration(files: RunFiles) -> tuple[Html, bool]:
    cal = (files.evaluation or {}).get("calibration")
    if not cal:
        return not_computed("no calibration measured", _eval_cmd(files)), False
    from headstart.report import plots

    applied, why = _calibration_applied(cal)
    before, after = cal.get("reliability_before"), cal.get("reliability_after")
    e0, e1 = _float(cal.get("ece_before")), _float(cal.get("ece_after"))
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


def _ood(files: RunFiles) -> tuple[Html, bool]:
    ev = files.evaluation
    if not ev:
        return not_computed("no out-of-distribution check", _eval_cmd(files) + " --ood FOLDER"), False
    ood = ev.get("ood")
    if not ood:
        return not_computed("no out-of-distribution set was given", _eval_cmd(files) + " --ood FOLDER"), False
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


def _curve(files: RunFiles) -> tuple[Html, bool]:
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
        ns = sorted({_float(p.get("labels_per_class")) for p in points})
        rows = []
        for m in methods:
            row: list[Any] = [m]
            for n in ns:
                accs = [
                    _float(p.get("test_accuracy"))
                    for p in points
                    if str(p.get("method")) == m and _float(p.get("labels_per_class")) == n
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


def _mistakes(files: RunFiles) -> tuple[Html, bool]:
    ev = files.evaluation
    if not ev or "mistakes" not in ev:
        return not_computed("no list of mistakes", _eval_cmd(files)), False
    mistakes = [m for m in ev.get("mistakes") or [] if isinstance(m, dict)]
    if not mistakes:
        return note("No mistakes on the evaluated split.", "good"), True
    modality = str((files.data or {}).get("modality") or files.run.get("modality") or "image")
    shown = mistakes[:MAX_MISTAKES]
    cards = [_mistake_card(m, modality, files.path) for m in shown]
    intro = f"The {len(shown)} wrong predictions the model was surest of"
    if len(mistakes) > len(shown):
        intro += f" (of {len(mistakes)})"
    return join(
        [
            tag("p", intro + ": often mislabelled data, or classes that overlap."),
            tag("div", join(cards), class_="gallery"),
        ]
    ), True


def _mistake_card(m: dict[str, Any], modality: str, run_dir: Path) -> Html:
    source = str(m.get("source", ""))
    caption = join(
        [
            tag("span", join(["labelled ", tag("b", m.get("label", "?"))]), class_="true"),
            tag("span", join(["predicted ", tag("b", m.get("pred", "?"))]), class_="pred"),
            tag("span", f"confidence {num(m.get('confidence'), 2)}", class_="conf"),
        ]
    )
    if modality == "text":
        visual = tag("blockquote", source)
    else:
        path = _find_file(source, run_dir)
        thumb = _thumbnail(path) if path and modality == "image" else None
        if thumb:
            alt = f"{Path(source).name}: labelled {m.get('label')}, predicted {m.get('pred')}"
            visual = Html(f'<img src="{esc(thumb)}" alt="{esc(alt)}">')
        else:
            visual = tag("div", "file not available" if path is None else "no preview", class_="placeholder")
        caption = join([caption, tag("span", Path(source).name, class_="file", title=source)])
    return tag("figure", join([visual, tag("figcaption", caption)]), class_="mistake")


def _find_file(source: str, run_dir: Path) -> Path | None:
    """Sources are recorded as given (absolute, or relative to where the command ran, or to the run)."""
    if not source:
        return None
    for cand in (Path(source), run_dir / source):
        try:
            if cand.is_file():
                return cand
        except OSError:
            return None
    return None


def _thumbnail(path: Path) -> str | None:
    """A small inline JPEG of an image file, or None when it cannot be decoded."""
    from headstart.data.images import open_image
    from headstart.errors import BadInput

    try:
        img = open_image(path, draft_to=THUMB_PX * 2)
    except BadInput:
        return None
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=82, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _card(files: RunFiles) -> tuple[Html, bool]:
    run = files.run
    bb = run.get("backbone") or {}
    card = bb.get("card") or {}
    if not bb:
        return not_computed("run.json has no backbone record", "headstart probe DATA"), False
    rows: list[tuple[Any, Any]] = [
        ("name", card.get("name", bb.get("name", "?"))),
        ("family", card.get("family", "–")),
        ("source", join([code(card.get("source", "–")), f" version {card.get('version', '–')}"])),
        ("weights sha256", code(card.get("weights_sha256") or bb.get("weights_sha256") or "–")),
        ("license", card.get("license", "–")),
        ("pretraining data", card.get("pretraining_data", "–")),
        ("paper", card.get("paper", "–")),
    ]
    if card.get("embed_dim") is not None:
        rows.append(("embedding size", num(card["embed_dim"])))
    if card.get("num_params") is not None:
        rows.append(("backbone parameters", num(card["num_params"])))
    if bb.get("key"):
        rows.append(("backbone key", code(bb["key"])))
    rows.append(("trained", _what_trained(run)))
    parts: list[Any] = [tag("h3", "Base backbone"), key_value(rows)]

    pre = run.get("preprocess") or {}
    if pre:
        parts.append(tag("h3", "Preprocessing"))
        parts.append(
            key_value((k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in pre.items())
        )

    params = dict(run.get("params") or {})
    seed = params.pop("seed", run.get("seed"))
    params.pop("selection_scores", None)
    settings: list[tuple[Any, Any]] = [("kind", run.get("kind", "–")), ("seed", num(seed))]
    if _strategy(files):
        settings.append(("strategy", _strategy(files)))
    settings += [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in params.items()]
    if files.calibration and files.calibration.get("temperature") is not None:
        settings.append(("temperature (calibration.json)", num(files.calibration["temperature"])))
    parts += [tag("h3", "Settings"), key_value(settings)]
    if files.recipe:
        parts += [tag("h3", "Recipe"), tag("pre", json.dumps(files.recipe, indent=2, default=str))]

    versions = run.get("versions") or {}
    if versions:
        parts += [tag("h3", "Library versions"), key_value(versions.items())]
    return join(parts), True


_ADAPTER_NAMES = {"lora": "LoRA"}


def _what_trained(run: dict[str, Any]) -> Any:
    """What the run changed, from run.json: the head always, and the backbone groups that moved, the LoRA
    adapters, or every layer. A probe and the `head` strategy train the head only (no `trained_groups`
    or an empty list); fit records the group names in `trained_groups`, LoRA in `adapter.groups`."""
    adapter, groups = run.get("adapter"), run.get("trained_groups")
    if isinstance(adapter, dict):
        method = str(adapter.get("method", "lora"))
        in_groups = ", ".join(map(str, adapter.get("groups") or [])) or "–"
        return join(
            [
                f"the head and {_ADAPTER_NAMES.get(method, method)} adapters "
                f"(r = {adapter.get('r', '?')}) in groups {in_groups}; the base weights stay frozen (",
                code(adapter.get("file", "?")),
                ")",
            ]
        )
    if run.get("pretrained") is False:
        return "every layer and the head, from random initialisation (no pretrained weights)"
    if groups:
        delta = run.get("delta") or {}
        text = f"the head and backbone groups {', '.join(map(str, groups))}"
        if run.get("merged_from"):
            text += " (LoRA adapters merged into their weights)"
        return join([text, " (", code(delta.get("file", "?")), ")"]) if delta else text
    if groups == [] or run.get("kind") == "probe":
        return "the head only (a linear classifier on the frozen backbone's embeddings)"
    return "not recorded in run.json"


def _performance(files: RunFiles) -> tuple[Html, bool]:
    ev = files.evaluation or {}
    lat, mem = ev.get("latency") or {}, ev.get("memory") or {}
    parts: list[Any] = []
    rows: list[tuple[Any, Any]] = []
    known = {
        "single_p50_ms": "forward of one preprocessed item, median",
        "single_p95_ms": "forward of one preprocessed item, p95",
        "batch32_per_item_ms": "forward in batches of 32, per item",
        "end_to_end_p50_ms": "one file from disk (decode, preprocess, forward), median",
    }
    for key, label in known.items():
        if lat.get(key) is not None:
            rows.append((label, f"{num(lat[key], 2 if 'batch' in key else 1)} ms"))
    for key, value in lat.items():  # figures added later (another backend, ...) under their own names
        if key not in known and key.endswith("_ms") and isinstance(value, int | float):
            rows.append((key.removesuffix("_ms").replace("_", " "), f"{num(value, 1)} ms"))
    if lat.get("backend"):
        threads = lat.get("torch_threads")
        rows.append(("measured with", str(lat["backend"]) + (f", {threads} thread(s)" if threads else "")))
    if mem.get("peak_rss_mb") is not None:
        rows.append(("peak memory of the evaluating process (RSS)", f"{num(mem['peak_rss_mb'], 0)} MB"))
    if rows:
        parts.append(key_value(rows))
    else:
        parts.append(not_computed("no latency or memory measured", _eval_cmd(files)))
    timings = (files.metrics or {}).get("timings") or {}
    if timings:
        parts.append(tag("h3", "Where the run's time went"))
        parts.append(
            table(
                ["step", "seconds"],
                [[k.removesuffix("_s").replace("_", " "), num(v, 2)] for k, v in timings.items()],
                numeric=(1,),
            )
        )
    return join(parts), bool(rows)
