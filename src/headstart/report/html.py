"""HTML building blocks for the report: escaping, tables, figures, sections and the page template.

Every string that comes from data goes through `esc`; markup built here is wrapped in `Html`, and a
table cell or body that is not `Html` is escaped, so a class named `<script>` is shown, never run.
The page is one file: inline CSS, images as data URIs, no scripts, no network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


class Html(str):
    """Markup that is already safe (built here, with data escaped)."""


def esc(value: Any) -> Html:
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def join(parts: Iterable[Any]) -> Html:
    return Html("".join(esc(p) for p in parts))


def tag(name: str, body: Any = "", **attrs: Any) -> Html:
    """<name attrs>body</name>; attribute names use `_` for `-` and a trailing `_` for keywords (class_)."""
    rendered = "".join(
        f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None
    )
    return Html(f"<{name}{rendered}>{esc(body)}</{name}>")


def num(value: Any, digits: int = 3) -> str:
    """Numbers the way the CLI prints them; missing values as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return "–"
    return f"{x:.{digits}f}"


def size_bytes(n: Any) -> str:
    try:
        x = float(n)
    except (TypeError, ValueError):
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if x < 1024 or unit == "GB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} GB"


def table(
    headers: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    *,
    numeric: Iterable[int] = (),
    row_class: Sequence[str | None] | None = None,
    caption: str | None = None,
    class_: str = "data",
) -> Html:
    """A readable table; columns listed in `numeric` are right-aligned with tabular figures."""
    right = set(numeric)
    head = join(
        tag("th", h, class_="num" if i in right else None, scope="col") for i, h in enumerate(headers)
    )
    body = []
    for r, row in enumerate(rows):
        cells = join(tag("td", c, class_="num" if i in right else None) for i, c in enumerate(row))
        cls = row_class[r] if row_class and r < len(row_class) else None
        body.append(tag("tr", cells, class_=cls))
    cap = tag("caption", caption) if caption else Html("")
    return tag(
        "div",
        tag("table", join([cap, tag("thead", tag("tr", head)), tag("tbody", join(body))]), class_=class_),
        class_="table-wrap",
    )


def key_value(rows: Iterable[tuple[Any, Any]]) -> Html:
    """Two-column table of labelled values (model card, settings)."""
    body = join(tag("tr", join([tag("th", k, scope="row"), tag("td", v)])) for k, v in rows)
    return tag("div", tag("table", tag("tbody", body), class_="kv"), class_="table-wrap")


def figure(uri: str, alt: str, caption: str | None = None, *, class_: str | None = None) -> Html:
    img = Html(f'<img src="{esc(uri)}" alt="{esc(alt)}" loading="eager">')
    cap = tag("figcaption", caption) if caption else Html("")
    return tag("figure", join([img, cap]), class_=class_)


def note(text: Any, kind: str = "info") -> Html:
    return tag("p", text, class_=f"note note-{kind}")


def not_computed(what: str, command: str) -> Html:
    return tag(
        "p",
        join([tag("strong", "not computed"), f": {what}; run ", tag("code", command)]),
        class_="not-computed",
    )


def code(text: Any) -> Html:
    return tag("code", text)


def bar(fraction: float, colour: str = "var(--accent)") -> Html:
    """A small inline bar for a 0..1 score, next to its number."""
    pct = 0.0 if math.isnan(fraction) else max(0.0, min(1.0, fraction)) * 100
    inner = Html(f'<span style="width:{pct:.1f}%;background:{esc(colour)}"></span>')
    return tag("span", inner, class_="bar", aria_hidden="true")


def heat_cell(count: int, row_total: int, diagonal: bool) -> Html:
    """A confusion-matrix cell shaded by its share of the true class (blue: correct, red: confused)."""
    share = count / row_total if row_total else 0.0
    rgb = "9,105,218" if diagonal else "207,34,46"
    alpha = 0.06 + 0.84 * share if count else 0.0
    ink = "#ffffff" if alpha > 0.55 else "#1f2328"
    style = f"background:rgba({rgb},{alpha:.3f});color:{ink}"
    title = f"{count} ({share:.0%} of the row)"
    return Html(f'<td class="num heat" style="{style}" title="{esc(title)}">{count or ""}</td>')


@dataclass
class Section:
    id: str
    title: str
    body: Html
    computed: bool


def section_html(s: Section) -> Html:
    return Html(
        f'<section id="{esc(s.id)}" data-computed="{"yes" if s.computed else "no"}">'
        f"<h2>{esc(s.title)}</h2>{s.body}</section>"
    )


def page(title: str, hero: Html, sections: Sequence[Section], *, by: str = "headstart report") -> str:
    """The page of `sections`; `by`: the command that writes it (named in the footer)."""
    links: list[Html] = []
    for i, s in enumerate(sections):
        if not s.computed and (i == 0 or sections[i - 1].computed):
            links.append(tag("p", "Not computed yet", class_="toc-title toc-later"))
        links.append(tag("a", s.title, href=f"#{s.id}", class_=None if s.computed else "missing"))
    toc = join(links)
    ids = ",".join(s.id for s in sections)
    computed = ",".join(s.id for s in sections if s.computed)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="{esc(by)}">'
        f'<meta name="headstart-sections" content="{esc(ids)}">'
        f'<meta name="headstart-sections-computed" content="{esc(computed)}">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        '<div class="layout">'
        f'<nav class="toc" aria-label="Contents"><p class="toc-title">Contents</p>{toc}</nav>'
        f"<main>{hero}{join(section_html(s) for s in sections)}"
        f"<footer>Written by <code>{esc(by)}</code>. Self-contained: no scripts, no network.</footer>"
        "</main></div></body></html>\n"
    )


CSS = """
:root{--ink:#1f2328;--muted:#656d76;--line:#d8dee4;--panel:#f6f8fa;--accent:#0969da;
--train:#4c78a8;--val:#f58518;--test:#54a24b;--bad:#cf222e;--warn:#9a6700;--good:#1a7f37}
*{box-sizing:border-box}
html{scroll-behavior:smooth}
body{margin:0;color:var(--ink);background:#fff;
font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","DejaVu Sans",Arial,sans-serif}
.layout{display:grid;grid-template-columns:200px minmax(0,1fr);gap:44px;max-width:1240px;margin:0 auto;
padding:0 28px}
nav.toc{position:sticky;top:0;align-self:start;max-height:100vh;overflow-y:auto;padding:32px 0 24px}
.toc-title{margin:0 0 8px 12px;font-size:12px;font-weight:600;letter-spacing:.06em;text-transform:uppercase;
color:var(--muted)}
nav.toc a{display:block;padding:5px 12px;border-left:2px solid var(--line);color:var(--ink);
text-decoration:none;font-size:14px;line-height:1.35}
nav.toc a:hover{border-left-color:var(--accent);color:var(--accent)}
nav.toc a.missing{color:var(--muted)}
.toc-later{margin-top:18px}
main{padding:28px 0 64px;min-width:0}
header.hero{padding:8px 0 20px}
.eyebrow{margin:0;color:var(--muted);font-size:13px;font-weight:600;letter-spacing:.05em;
text-transform:uppercase}
h1{margin:4px 0 10px;font-size:30px;line-height:1.2;font-weight:700;overflow-wrap:anywhere}
h2{margin:0 0 14px;font-size:21px;line-height:1.3}
h3{margin:22px 0 8px;font-size:16px}
.chips{display:flex;flex-wrap:wrap;gap:8px;margin:0 0 18px;padding:0;list-style:none}
.chips li{background:var(--panel);border:1px solid var(--line);border-radius:999px;padding:2px 12px;
font-size:13px;color:var(--muted)}
.chips li b{color:var(--ink);font-weight:600}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.kpi{border:1px solid var(--line);border-radius:10px;padding:12px 16px;background:#fff}
.kpi .value{display:block;font-size:28px;font-weight:700;font-variant-numeric:tabular-nums;line-height:1.2}
.kpi .label{display:block;color:var(--muted);font-size:13px}
.kpi.main{border-color:var(--accent);background:#f3f8ff}
.kpi.main .value{color:var(--accent)}
section{margin-top:34px;padding-top:22px;border-top:1px solid var(--line);scroll-margin-top:8px}
p{margin:8px 0;max-width:80ch}
.muted{color:var(--muted)}
.table-wrap{overflow-x:auto;max-width:100%;margin:10px 0 14px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:14px}
table.data th,table.data td{padding:6px 12px;border-bottom:1px solid var(--line);text-align:left;
vertical-align:top}
table.data thead th{border-bottom:2px solid var(--line);font-weight:600;white-space:nowrap}
table.data tbody tr:nth-child(even){background:#fafbfc}
table.data tbody tr.recommended{background:#dafbe1}
table.data tbody tr.total td{font-weight:600;border-top:2px solid var(--line)}
table.data .num,th.num,td.num{text-align:right}
caption{caption-side:top;text-align:left;color:var(--muted);font-size:13px;padding-bottom:6px}
table.kv th{text-align:left;font-weight:600;padding:5px 18px 5px 0;white-space:nowrap;vertical-align:top;
color:var(--muted);min-width:220px}
table.kv td{padding:5px 0;overflow-wrap:anywhere}
table.confusion td,table.confusion th{padding:5px 7px;border:1px solid #eef0f2;font-size:13px}
table.confusion thead th.col{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;
font-weight:500;vertical-align:bottom;max-height:180px}
table.confusion tbody th{text-align:right;font-weight:500;white-space:nowrap;padding-right:10px}
table.confusion td.heat{min-width:38px;height:30px;text-align:center}
.axis-label{color:var(--muted);font-size:12px}
.bar{display:inline-block;width:64px;height:8px;margin-left:8px;background:#eef0f2;border-radius:4px;
vertical-align:middle;overflow:hidden}
.bar span{display:block;height:100%}
figure{margin:14px 0}
figure img{display:block;max-width:100%;height:auto}
figcaption{color:var(--muted);font-size:13px;margin-top:4px}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:13px}
code{background:var(--panel);padding:1px 5px;border-radius:4px;overflow-wrap:anywhere}
pre{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:12px;overflow-x:auto}
.not-computed{color:var(--muted);background:var(--panel);border:1px dashed var(--line);border-radius:8px;
padding:10px 14px;max-width:none}
.note{border-left:3px solid var(--accent);background:#f3f8ff;padding:8px 12px;border-radius:0 6px 6px 0}
.note-warn{border-left-color:var(--warn);background:#fff8c5}
.note-good{border-left-color:var(--good);background:#dafbe1}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:14px;margin-top:12px}
.mistake{border:1px solid var(--line);border-radius:10px;overflow:hidden;background:#fff;margin:0}
.mistake img,.mistake .placeholder{display:block;width:100%;aspect-ratio:1;object-fit:contain;
background:var(--panel)}
.mistake .placeholder{display:flex;align-items:center;justify-content:center;color:var(--muted);
font-size:12px;padding:8px;text-align:center}
.mistake blockquote{margin:0;padding:10px 12px;background:var(--panel);font-size:13px;max-height:9em;
overflow:hidden;overflow-wrap:anywhere}
.mistake figcaption{margin:0;padding:8px 10px;font-size:12.5px;color:var(--ink);line-height:1.4}
.mistake figcaption>span{display:block;overflow-wrap:anywhere}
.mistake .true b{color:var(--good)}
.mistake .pred b{color:var(--bad)}
.mistake .conf{font-variant-numeric:tabular-nums}
.mistake .file{color:var(--muted);margin-top:2px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
.side-by-side{display:flex;flex-wrap:wrap;align-items:flex-start;gap:8px 40px}
.side-by-side figure{flex:1 1 360px;min-width:0}
footer{margin-top:48px;padding-top:14px;border-top:1px solid var(--line);color:var(--muted);font-size:13px}
@media (max-width:900px){
.layout{grid-template-columns:minmax(0,1fr);gap:0;padding:0 16px}
nav.toc{z-index:2;display:flex;gap:2px;overflow-x:auto;max-height:none;padding:8px 0;background:#fff;
border-bottom:1px solid var(--line)}
.toc-title{display:none}
nav.toc a{border-left:0;white-space:nowrap;padding:4px 8px}
h1{font-size:24px}}
@media print{nav.toc{display:none}.layout{display:block}}
"""
