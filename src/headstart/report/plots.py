"""The report's charts: matplotlib (Agg, no pyplot state) figures returned as inline SVG data URIs.

Each function takes plain JSON-shaped data and returns `data:image/svg+xml;base64,...`, so the page needs
no files and no network. Matplotlib is imported here only, when a chart is drawn.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

# One palette for the whole page (the CSS uses the same values).
SPLIT_COLOURS = {"train": "#4c78a8", "val": "#f58518", "test": "#54a24b"}
SERIES = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d", "#eeca3b"]
INK, MUTED, GRID = "#1f2328", "#656d76", "#e6e8eb"

# Font families in the order matplotlib falls back along them per character. DejaVu Sans comes with
# matplotlib; the others are monochrome fonts with emoji and symbols, used when installed. Colour-emoji fonts
# (Noto Color Emoji: fixed-size bitmap strikes) are left out: matplotlib cannot draw them at a chosen size.
FONTS = ("DejaVu Sans", "Noto Emoji", "Noto Sans Symbols 2", "Noto Sans Symbols", "Symbola")

_STYLE = {
    "font.size": 9.5,
    "axes.edgecolor": "#9aa1a9",
    "axes.labelcolor": INK,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.titlecolor": INK,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": GRID,
    "grid.linewidth": 0.8,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "legend.frameon": False,
    "text.parse_math": False,  # class names with "$" are names, not TeX
    "svg.fonttype": "path",  # glyphs as paths: the picture is the same on every machine
    "svg.hashsalt": "headstart",  # deterministic element ids
}


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _svg_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _styled(draw: Any) -> Any:
    """Run a chart function under the report's matplotlib style, without touching global settings."""

    def wrapper(*args: Any, **kwargs: Any) -> str:
        import matplotlib

        with matplotlib.rc_context({**_STYLE, "font.family": list(_fonts()[0])}):
            return draw(*args, **kwargs)

    wrapper.__doc__, wrapper.__name__ = draw.__doc__, draw.__name__
    return wrapper


@_styled
def class_counts(classes: Sequence[str], counts: dict[str, dict[str, int]]) -> str:
    """Horizontal stacked bars: items per class, one colour per split."""
    n = len(classes)
    fig, (ax,) = _figure(5.2, min(1.0 + 0.3 * n, 12.0))
    left = [0.0] * n
    ys = list(range(n))[::-1]
    for split, per_class in counts.items():
        values = [float(per_class.get(c, 0)) for c in classes]
        colour = SPLIT_COLOURS.get(split, SERIES[len(SPLIT_COLOURS) % len(SERIES)])
        ax.barh(ys, values, left=left, color=colour, label=_short(split), height=0.7)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_yticks(ys, [_short(c) for c in classes])
    ax.set_xlabel("items")
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower right", ncols=len(counts), bbox_to_anchor=(1.0, 1.0), fontsize=9)
    if n > 40:
        ax.tick_params(axis="y", labelsize=6)
    return _svg_uri(fig)


@_styled
def learning_curves(epochs: list[dict[str, Any]], best_epoch: int | None) -> str:
    """Loss and accuracy per epoch (train solid, val dashed), best epoch marked, phases shaded."""
    fig, (ax_loss, ax_acc) = _figure(9.0, 3.3, ncols=2)
    x = [e.get("epoch", i + 1) for i, e in enumerate(epochs)]
    for ax, metric, title in ((ax_loss, "loss", "Loss"), (ax_acc, "acc", "Accuracy")):
        for split, style in (("train", "-"), ("val", "--")):
            ys = [_num(e.get(f"{split}_{metric}")) for e in epochs]
            if any(not math.isnan(y) for y in ys):
                ax.plot(x, ys, style, color=SPLIT_COLOURS[split], label=split, marker="o", markersize=3)
        _shade_phases(ax, epochs, x)
        if best_epoch is not None:
            ax.axvline(best_epoch, color=INK, linewidth=1, linestyle=":")
            ax.annotate(
                f"best: {best_epoch}",
                (best_epoch, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=8.5,
                color=INK,
            )
        ax.set_title(title, loc="left")
        ax.set_xlabel("epoch")
        if metric == "acc":
            ax.set_ylim(top=min(1.02, ax.get_ylim()[1]))
    ax_loss.legend(loc="upper right")
    return _svg_uri(fig)


def _shade_phases(ax: Any, epochs: list[dict[str, Any]], x: list[Any]) -> None:
    """Alternate light bands per training phase (e.g. linear probe, then fine-tune) with the phase name."""
    runs: list[tuple[str, Any, Any]] = []
    for xi, e in zip(x, epochs, strict=True):
        phase = str(e.get("phase", ""))
        if runs and runs[-1][0] == phase:
            runs[-1] = (phase, runs[-1][1], xi)
        else:
            runs.append((phase, xi, xi))
    if len(runs) < 2:
        return
    for i, (phase, start, stop) in enumerate(runs):
        if i % 2 == 1:
            ax.axvspan(start - 0.5, stop + 0.5, color="#f2f4f7", zorder=0, linewidth=0)
        ax.annotate(
            _short(phase, 18),
            (start - 0.4, 0.02),
            xycoords=("data", "axes fraction"),
            fontsize=7.5,
            color=MUTED,
        )


@_styled
def reliability(before: dict[str, Any], after: dict[str, Any] | None, ece: tuple[Any, Any]) -> str:
    """Reliability diagrams: accuracy per confidence bin against the diagonal, before/after scaling."""
    panels = [("before temperature scaling", before, ece[0])]
    if after:
        panels.append(("after temperature scaling", after, ece[1]))
    fig, axes = _figure(4.3 * len(panels), 4.1, ncols=len(panels))
    for ax, (title, bins, e) in zip(axes, panels, strict=True):
        acc = [_num(v) for v in bins.get("accuracy", [])]
        conf = [_num(v) for v in bins.get("confidence", [])]
        count = [int(v or 0) for v in bins.get("count", [0] * len(acc))]
        k = max(len(acc), 1)
        edges = [_num(v) for v in bins.get("edges") or []]
        if len(edges) != k + 1 or any(math.isnan(v) for v in edges):
            edges = [i / k for i in range(k + 1)]  # equal-width bins over [0, 1]
        shown = [i for i in range(len(acc)) if i < len(count) and count[i] > 0 and not math.isnan(acc[i])]
        ax.bar(
            [edges[i] for i in shown],
            [acc[i] for i in shown],
            width=[(edges[i + 1] - edges[i]) * 0.92 for i in shown],
            align="edge",
            color=SERIES[0],
            alpha=0.85,
            label="accuracy",
        )
        gap_x = [conf[i] for i in shown if i < len(conf) and not math.isnan(conf[i])]
        gap_y = [acc[i] for i in shown if i < len(conf) and not math.isnan(conf[i])]
        ax.scatter(gap_x, gap_y, s=10, color=INK, zorder=3, label="mean confidence")
        ax.plot([0, 1], [0, 1], color=SERIES[3], linewidth=1.2, linestyle="--", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}\nECE {_fmt(e)}", loc="left")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8.5)
    return _svg_uri(fig)


@_styled
def label_efficiency(points: list[dict[str, Any]]) -> str:
    """Test accuracy against labels per class, one line per method, band = min..max over seeds."""
    by_method: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        acc = _num(p.get("test_accuracy"))
        if not math.isnan(acc):
            by_method[str(p.get("method", "?"))][float(p.get("labels_per_class", 0))].append(acc)
    fig, (ax,) = _figure(7.2, 3.6)
    xs_all: list[float] = []
    for i, (method, per_n) in enumerate(by_method.items()):
        xs = sorted(per_n)
        xs_all += xs
        mean = [sum(per_n[x]) / len(per_n[x]) for x in xs]
        colour = SERIES[i % len(SERIES)]
        ax.plot(xs, mean, "-o", color=colour, label=_short(method, 30), markersize=4)
        ax.fill_between(
            xs, [min(per_n[x]) for x in xs], [max(per_n[x]) for x in xs], color=colour, alpha=0.15
        )
    positive = [x for x in xs_all if x > 0]
    if positive and max(positive) / min(positive) >= 8:
        ax.set_xscale("log")
        ticks = sorted(set(positive))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel("labelled examples per class")
    ax.set_ylabel("test accuracy")
    ax.legend(loc="lower right")
    return _svg_uri(fig)


@_styled
def accuracy_vs_cost(rows: list[dict[str, Any]], recommended: str | None) -> str:
    """Each strategy's test accuracy (val where it has no test) with its 95 % interval, against training
    seconds and against single-item latency; the recommended row ringed."""
    split = "test" if any(r.get("test_accuracy") is not None for r in rows) else "val"
    costs = [("train_s", "training seconds (this machine)"), ("latency_ms", "single-item latency, ms")]
    costs = [c for c in costs if any(_num(r.get(c[0])) > 0 for r in rows)]
    fig, axes = _figure(3.6 * max(1, len(costs)), 3.4, ncols=max(1, len(costs)))
    for ax, (key, label) in zip(axes, costs, strict=False):
        points = []
        for i, r in enumerate(rows):
            x, y = _num(r.get(key)), _num(r.get(f"{split}_accuracy"))
            if math.isnan(x) or math.isnan(y) or x <= 0:
                continue
            lo, hi = (r.get(f"{split}_accuracy_ci") or [y, y])[:2]
            colour = SERIES[i % len(SERIES)]
            err = [[max(0.0, y - _num(lo))], [max(0.0, _num(hi) - y)]]
            ax.errorbar([x], [y], yerr=err, fmt="o", color=colour, capsize=3, markersize=5)
            if r.get("strategy") == recommended:
                ax.plot([x], [y], "o", markersize=13, markerfacecolor="none", markeredgecolor=INK)
            points.append((x, y, _short(str(r.get("strategy", "?")), 18), colour))
        xs = [x for x, *_ in points]
        log = bool(xs) and max(xs) / min(xs) >= 8
        if log:  # plain numbers: with TeX parsing off, matplotlib's log labels would print as raw TeX
            from matplotlib.ticker import FuncFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(_two_and_five))
        for (x, y, name, colour), dy in zip(points, _label_rows(points, log), strict=True):
            ax.annotate(
                name, (x, y), xytext=(7, 4 - dy), fontsize=8, textcoords="offset points", color=colour
            )
        ax.set_xlabel(label)
        ax.set_ylabel(f"{split} accuracy (95% interval)")
    return _svg_uri(fig)


def _two_and_five(v: float, _pos: int) -> str:
    """A log axis's minor tick label at 2x and 5x a power of ten (one decade has no other label)."""
    return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""


def _label_rows(points: list[tuple[float, float, str, str]], log: bool) -> list[float]:
    """Downward offsets (points) for the labels of `points` (x, y, name, colour), so that labels of points
    close together in x and y stack instead of overprinting each other."""
    if not points:
        return []
    xs = [math.log10(p[0]) if log else p[0] for p in points]
    ys = [p[1] for p in points]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float, int]] = []
    offsets = []
    for x, y in zip(xs, ys, strict=True):
        near = {k for px, py, k in placed if abs(px - x) < 0.15 * span_x and abs(py - y) < 0.06 * span_y}
        k = next(i for i in range(len(placed) + 1) if i not in near)
        placed.append((x, y, k))
        offsets.append(10.0 * k)
    return offsets


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _fmt(v: Any) -> str:
    x = _num(v)
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _short(text: str, limit: int = 28) -> str:
    """A label from the data (class, phase, method), drawable and at most `limit` characters."""
    text = _drawable(str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.cache
def _fonts() -> tuple[tuple[str, ...], frozenset[int]]:
    """The installed families of FONTS, and every code point one of them can draw."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    files: dict[str, str] = {}
    for entry in font_manager.fontManager.ttflist:
        files.setdefault(entry.name, entry.fname)
    families: list[str] = []
    covered: set[int] = set()
    for name in FONTS:
        if name not in files:
            continue
        try:
            covered.update(FT2Font(files[name]).get_charmap())
        except (OSError, RuntimeError, ValueError):  # a font file FreeType cannot read: not a fallback
            continue
        families.append(name)
    return tuple(families) or ("DejaVu Sans",), frozenset(covered)


def _drawable(text: str) -> str:
    """`text` with every character no available font can draw spelled out by its Unicode name ("🦊 fox" ->
    "[fox face] fox"): matplotlib would draw an empty box and warn, and two emoji classes would look alike.
    Invisible format characters the fonts lack (zero-width joiner, variation selectors) are dropped."""
    covered = _fonts()[1]
    if all(ord(ch) in covered or ch == "\n" for ch in text):
        return text
    out: list[str] = []
    for ch in text:
        if ord(ch) in covered or ch == "\n":
            out.append(ch)
        elif unicodedata.category(ch) == "Cf" or unicodedata.name(ch, "").startswith("VARIATION SELECTOR"):
            continue
        else:
            name = unicodedata.name(ch, "").lower()
            out.append(f"[{name or f'U+{ord(ch):04X}'}]")
    return "".join(out)
