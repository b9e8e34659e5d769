"""Latency and memory measured by evaluate, and where the run's time went."""

from __future__ import annotations

from typing import Any

from headstart.report.html import Html, join, key_value, not_computed, num, table, tag
from headstart.report.loader import RunFiles, eval_cmd


def section(files: RunFiles) -> tuple[Html, bool]:
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
        parts.append(not_computed("no latency or memory measured", eval_cmd(files)))
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
