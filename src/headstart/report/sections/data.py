"""Data: where the items came from, counts per class and split, skipped files, duplicates across splits."""

from __future__ import annotations

from typing import Any

from headstart.report.html import Html, code, figure, join, not_computed, note, num, table, tag
from headstart.report.loader import RunFiles

MAX_LISTED = 200  # rows of skipped files / duplicate pairs shown before "and N more"


def section(files: RunFiles) -> tuple[Html, bool]:
    d = files.data
    if not d:
        return not_computed("no data summary (data.json)", "headstart probe DATA"), False
    from headstart.report import plots

    unit = d.get("unit")  # items with no class (generate's pairs): data.json names what its counts count
    classes = [str(c) for c in d.get("classes") or files.classes or ([unit] if unit else [])]
    what = str(unit) if unit else f"items in {len(classes)} classes"
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
                    f"{d.get('modality', 'image')}): {num(d.get('n_items'))} {what}"
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
        ["items" if unit else "class", *splits, "all"],
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
