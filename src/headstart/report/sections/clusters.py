"""Clusters and suspected mislabels (clusters.json, written by `headstart cluster ... --out RUN`).

The map is an inline SVG scatter: one colour per cluster, a ring around each suspected mislabel, and on
hover (CSS only: the page has no script) the item itself: a small inline thumbnail of an image, or the
text. `standalone_page` is the same body as a page of its own (clusters.html).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from headstart.report.html import Html, Section, esc, join, not_computed, note, num, page, table, tag
from headstart.report.loader import RunFiles, find_file

MAP_POINTS = 2000  # points drawn at most (suspected mislabels always among them)
MAP_THUMB_PX = 48
MAX_SUSPECTS = 50  # rows of the mislabel table
PALETTE = (
    "#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d", "#eeca3b", "#ff9da6",
    "#79706e", "#1f77b4", "#bcbd22", "#17becf", "#8c564b", "#e377c2", "#2ca02c", "#9467bd", "#d62728",
)  # fmt: skip
_W, _H, _PAD = 760, 500, 16
_MAP_CSS = (
    ".hs-map{width:100%;max-width:760px;height:auto;border:1px solid #d8dee4;border-radius:8px;"
    "background:#fff;font:11px system-ui,sans-serif}"
    ".hs-map .tip{visibility:hidden;pointer-events:none}.hs-map .pt:hover .tip{visibility:visible}"
    ".hs-map .pt:hover .dot{stroke:#1f2328;stroke-width:2}.hs-map .ring{fill:none;stroke:#1f2328;"
    "stroke-width:1.5}.hs-map .tip rect{fill:#fff;stroke:#9aa1a9}.hs-map .tip text{fill:#1f2328}"
)


def colour(cluster: int) -> str:
    """The colour of a cluster: the palette, then evenly spread hues."""
    if 0 <= cluster < len(PALETTE):
        return PALETTE[cluster]
    return f"hsl({(cluster * 137.508) % 360:.0f},55%,50%)"


def shown_points(points: list[dict[str, Any]], flagged: set[int], seed: int = 0) -> list[int]:
    """Indices of the points the map draws: all of them up to MAP_POINTS, else a seeded sample that keeps
    every suspected mislabel; suspected mislabels last (drawn on top)."""
    n = len(points)
    keep = set(range(n))
    if n > MAP_POINTS:
        rest = np.array(sorted(set(range(n)) - flagged), dtype=np.int64)
        room = max(0, MAP_POINTS - len(flagged))
        picked = np.random.default_rng(seed).choice(rest, min(room, len(rest)), replace=False)
        keep = set(picked.tolist()) | set(sorted(flagged)[:MAP_POINTS])
    return sorted(keep, key=lambda i: (i in flagged, i))


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _lines(text: str, width: int = 42, most: int = 5) -> list[str]:
    import textwrap

    lines = textwrap.wrap(" ".join(str(text).split()), width) or [""]
    if len(lines) > most:
        lines = [*lines[: most - 1], _short(" ".join(lines[most - 1 :]), width)]
    return lines


def _tip(p: dict[str, Any], thumb: str | None, text: bool, at: tuple[float, float]) -> Html:
    """The hover box of a point: its thumbnail or text, and its label."""
    caption = _short(f"{p.get('label', '?')} · cluster {p.get('cluster')}", 34)
    body: list[str] = []
    if text:
        rows = _lines(str(p.get("source", "")))
        w, h = 270, 14 * (len(rows) + 1) + 10
        body += [f'<text x="6" y="{16 + 14 * i}">{esc(r)}</text>' for i, r in enumerate(rows)]
        body.append(f'<text x="6" y="{16 + 14 * len(rows)}" font-weight="600">{esc(caption)}</text>')
    else:
        w, h = max(MAP_THUMB_PX + 8, 6 * len(caption) + 12), MAP_THUMB_PX + 26
        if thumb:
            body.append(
                f'<image href="{esc(thumb)}" x="4" y="4" width="{MAP_THUMB_PX}" height="{MAP_THUMB_PX}"/>'
            )
        body.append(f'<text x="4" y="{MAP_THUMB_PX + 19}" font-weight="600">{esc(caption)}</text>')
    x, y = at[0] + 8, at[1] - 8 - h
    x = x if x + w <= _W else at[0] - 8 - w
    y = y if y >= 0 else at[1] + 8
    return Html(
        f'<g class="tip" transform="translate({x:.1f},{y:.1f})"><rect width="{w}" height="{h}" rx="4"/>'
        f"{''.join(body)}</g>"
    )


def cluster_map(
    points: list[dict[str, Any]],
    suspects: dict[int, dict[str, Any]],
    thumbs: dict[int, str],
    *,
    text: bool,
) -> Html:
    """The inline SVG scatter of `points` (x, y, cluster, label, source), those listed in `suspects` ringed;
    `thumbs`: inline image URIs by point index; `text`: the hover shows the source as text."""
    idx = shown_points(points, set(suspects))
    xs = np.array([float(points[i].get("x", 0.0)) for i in idx] or [0.0])
    ys = np.array([float(points[i].get("y", 0.0)) for i in idx] or [0.0])
    sx = (_W - 2 * _PAD) / max(float(np.ptp(xs)), 1e-9)
    sy = (_H - 2 * _PAD) / max(float(np.ptp(ys)), 1e-9)
    parts = [f"<style>{_MAP_CSS}</style>"]
    for i, px, py in zip(idx, xs, ys, strict=True):
        p = points[i]
        cx, cy = _PAD + (px - xs.min()) * sx, _H - _PAD - (py - ys.min()) * sy
        title = f"{p.get('label')} · cluster {p.get('cluster')}"
        ring = ""
        if i in suspects:
            s = suspects[i]
            title += f" · suspected mislabel: {num(s.get('score'), 1)} of neighbours labelled otherwise, "
            title += f"most {s.get('neighbours_label')}"
            ring = f'<circle class="ring" cx="{cx:.1f}" cy="{cy:.1f}" r="7"/>'
        title += "\n" + _short(str(p.get("source", "")), 400)
        fill = colour(int(p.get("cluster", 0)))
        dot = f'<circle class="dot" cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{fill}"/>'
        tip = _tip(p, thumbs.get(i), text, (cx, cy))
        parts.append(f'<g class="pt">{dot}{ring}<title>{esc(title)}</title>{tip}</g>')
    label = f"Map of {len(idx)} items, coloured by cluster"
    return Html(
        f'<svg class="hs-map" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-label="{esc(label)}">{"".join(parts)}</svg>'
    )


def body(summary: dict[str, Any], resolve: Callable[[str], Path | None]) -> Html:
    """The section's content from clusters.json; `resolve` finds an image source's file (None: gone)."""
    from headstart.report.sections.mistakes import thumbnail

    points = [p for p in summary.get("points") or [] if isinstance(p, dict)]
    mislabels = [m for m in summary.get("mislabels") or [] if isinstance(m, dict)]
    suspects = {m["index"]: m for m in mislabels if isinstance(m.get("index"), int)}
    text = summary.get("modality") == "text"
    thumbs: dict[int, str] = {}
    if summary.get("modality", "image") == "image":
        for i in shown_points(points, set(suspects)):
            path = resolve(str(points[i].get("source", "")))
            uri = thumbnail(path, MAP_THUMB_PX) if path else None
            if uri:
                thumbs[i] = uri
    intro = (
        f"{num(summary.get('k'))} clusters of {num(summary.get('n'))} items "
        f"({summary.get('criterion_text', summary.get('criterion'))}); adjusted Rand index between clusters "
        f"and labels {num(summary.get('ari'))} (1: the clusters are the labels; 0: no better than chance)."
    )
    parts: list[Any] = [tag("p", intro)]
    if points:
        cap = f"{summary.get('map', 'PCA to 2-D')}. Colour: cluster; ring: suspected mislabel; hover a point."
        if len(points) > MAP_POINTS:
            cap += (
                f" Showing {MAP_POINTS:,} of {len(points):,} items (seeded sample; suspected mislabels kept)."
            )
        svg = cluster_map(points, suspects, thumbs, text=text)
        parts.append(tag("figure", join([svg, tag("figcaption", cap)])))
    parts.append(_cluster_table(summary.get("clusters") or []))
    return join([*parts, *_suspect_table(summary.get("mislabel_rule") or {}, mislabels, thumbs, text)])


def _cluster_table(clusters: list[Any]) -> Html:
    rows = []
    for c in clusters:
        if isinstance(c, dict):
            swatch = Html(f'<span class="swatch" style="background:{colour(int(c["cluster"]))}"></span>')
            share = num(c.get("majority_share"), 2)
            rows.append(
                [join([swatch, c["cluster"]]), num(c.get("size")), c.get("majority_label", "?"), share]
            )
    return table(["cluster", "items", "most common label", "its share"], rows, numeric=(1, 3))


def _suspect_table(
    rule: dict[str, Any], mislabels: list[dict[str, Any]], thumbs: dict[int, str], text: bool
) -> list[Html]:
    """The heading and table of suspected mislabels (most certain first)."""
    head = (
        f"Suspected mislabels: items where at least {num(rule.get('min_share', 0.7), 1)} of their "
        f"{rule.get('neighbours', 10)} nearest neighbours ({rule.get('metric', 'cosine')}) carry another "
        "label"
    )
    if not mislabels:
        return [tag("h3", head), note("No item is suspected.", "good")]
    rows = []
    for m in mislabels[:MAX_SUSPECTS]:
        theirs = f"{m.get('neighbours_label')} ({num(m.get('neighbours_label_share'), 1)})"
        i, source = m.get("index"), str(m.get("source", ""))
        item: Any = _short(source, 120) if text else Path(source).name
        if isinstance(i, int) and i in thumbs:
            img = Html(f'<img src="{esc(thumbs[i])}" alt="{esc(Path(source).name)}" width="32"> ')
            item = join([img, item])
        rows.append([item, m.get("label"), theirs, num(m.get("score"), 1), m.get("cluster")])
    caption = f"{len(mislabels)} suspected, most certain first"
    if len(mislabels) > MAX_SUSPECTS:
        caption += f" (the first {MAX_SUSPECTS} shown; all in clusters.json)"
    headers = ["item", "label", "neighbours' label (share)", "share of neighbours disagreeing", "cluster"]
    return [tag("h3", head), table(headers, rows, numeric=(3, 4), caption=caption)]


def section(files: RunFiles) -> tuple[Html, bool]:
    summary = files.clusters
    if not summary or "k" not in summary:
        return not_computed(
            "no clusters (clusters.json)", f"headstart cluster DATA --backbone B --out {files.path}"
        ), False
    return body(summary, lambda s: find_file(s, files)), True


def standalone_page(summary: dict[str, Any], resolve: Callable[[str], Path | None]) -> str:
    """clusters.html: the section as a page of its own."""
    title = f"Clusters of {summary.get('data', 'the data')} ({summary.get('backbone', '?')})"
    hero = tag(
        "header", join([tag("p", "headstart cluster", class_="eyebrow"), tag("h1", title)]), class_="hero"
    )
    content = body(summary, resolve)
    return page(
        title,
        hero,
        [Section("clusters", "Clusters and suspected mislabels", content, True)],
        by="headstart cluster",
    )
