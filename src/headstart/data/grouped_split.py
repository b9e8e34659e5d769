"""Copies kept in one split: exact and near duplicates found across splits are moved into the earliest
split of their group (train before val before test), so no held-out score is inflated by an item the
model trained on. `compare` and `auto` do this by default (`--keep-duplicates` opts out)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from headstart.data.dataset import Dataset
from headstart.data.items import SPLITS
from headstart.fileio import atomic_write, atomic_write_json, atomic_write_text

_ORDER = {s: i for i, s in enumerate(SPLITS)}


def _groups(pairs: list[tuple[str, str]]) -> list[set[str]]:
    """Connected components of the copy pairs (union-find over item paths)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    comps: dict[str, set[str]] = {}
    for x in list(parent):
        comps.setdefault(find(x), set()).add(x)
    return list(comps.values())


def regroup(ds: Dataset, leaks: dict[str, Any]) -> tuple[Dataset, dict[str, Any]]:
    """`ds` with every copy group in one split (its earliest), and what moved: {"groups", "moved"}."""
    pairs = [(r["a"], r["b"]) for r in [*leaks.get("exact", []), *leaks.get("near", [])]]
    target: dict[str, str] = {}
    by_path = {str(it.path): it for it in ds.items}
    groups = _groups(pairs)
    for g in groups:
        members = [by_path[p] for p in g if p in by_path]
        if not members:
            continue
        first = min((m.split or "train" for m in members), key=_ORDER.__getitem__)
        for m in members:
            target[str(m.path)] = first
    moved = 0
    items = []
    for it in ds.items:
        split = target.get(str(it.path), it.split)
        moved += split != it.split
        items.append(replace(it, split=split) if split != it.split else it)
    return replace(ds, items=items), {"groups": len(groups), "moved": moved}


def write_manifest(ds: Dataset, path: Path) -> Path:
    """The dataset with its splits as a manifest every verb reads: CSV path,label,split for files, JSONL
    text,label,split for texts, plus `group` when items name their slice. Paths are absolute, so the
    manifest can live anywhere."""
    path = Path(path)
    # `split`, and `group` (the slice) when any item names one: as the item records them (None: blank).
    cols = ["split", *(["group"] if any(it.group is not None for it in ds.items) else [])]
    if ds.modality == "text":
        path = path.with_suffix(".jsonl")
        lines = [
            json.dumps(
                {"text": it.text, "label": it.label, **{c: getattr(it, c) for c in cols}}, ensure_ascii=False
            )
            for it in ds.items
        ]
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path
    path = path.with_suffix(".csv")

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", *cols])
            w.writerows(
                [str(Path(it.path).resolve()), it.label, *(getattr(it, c) for c in cols)] for it in ds.items
            )

    atomic_write(path, write)
    return path


def regroup_copies(
    ds: Any, data: str | Path, out_dir: Path, keep: bool
) -> tuple[str | Path, Any, dict[str, Any]]:
    """Copies across splits, regrouped into one split unless `keep`: (data to use, dataset, summary)."""
    from headstart.data.leakage import find_leaks
    from headstart.runs import LEAKAGE_FILE, to_jsonable

    leaks = find_leaks(ds)
    atomic_write_json(out_dir / LEAKAGE_FILE, to_jsonable(leaks))
    summary: dict[str, Any] = {"n_exact": leaks["n_exact"], "n_near": leaks["n_near"], "regrouped": False}
    if keep or not (leaks["n_exact"] or leaks["n_near"]):
        return data, ds, summary
    ds, moved = regroup(ds, leaks)
    path = write_manifest(ds, out_dir / "split-grouped")
    summary.update(regrouped=True, manifest=str(path), **moved)
    return path, ds, summary
