"""Where a run's items are: split.csv rows made from a dataset (paths relative to its data root), and the
one resolver that finds a recorded path again, from any working folder and after the run has moved.

A version-2 run records `data_root` in run.json (the absolute data folder, or a manifest's folder) and
the same folder relative to the run (`data_root_from_run`); split.csv holds each file's path relative to
it (absolute when the file lies outside it). So `resolve_path` tries data_root/path, then the data root
beside the run (run and data moved together). A version-1 run (no data_root) recorded paths as given on
the command line: they are tried as given (absolute, or from the working folder), then from the run
folder, then from its parent. Text items are the texts themselves: nothing to resolve.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.runs.names import DATA_FILE
from headstart.runs.records import RunInfo, SplitRow


def data_root_of(root: str | Path) -> Path:
    """The folder split.csv paths start from: the data folder, or the folder of a manifest file."""
    p = Path(os.path.abspath(Path(root).expanduser()))
    return p if p.is_dir() else p.parent


def make_split_rows(items: Any, hashes: Mapping[str, str], data_root: str | Path | None) -> list[SplitRow]:
    """split.csv rows of dataset items; `hashes`: source -> content hash (the backbone's item_hash, the key
    the feature cache and the changed-file checks use). A file under `data_root` is recorded relative to it
    (POSIX separators), any other by its absolute path; a text item as its text."""
    root = os.path.abspath(data_root) if data_root is not None else None
    rows = []
    for it in items:
        path = it.source
        if it.text is None and root is not None:
            full = os.path.abspath(path)
            rel = os.path.relpath(full, root)
            path = full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else Path(rel).as_posix()
        rows.append(SplitRow(path, it.label, it.split or "", hashes.get(it.source, ""), it.group or ""))
    return rows


def _candidates(run_dir: Path, path: str, info: RunInfo | None) -> list[Path]:
    p = Path(path).expanduser()
    if p.is_absolute():
        return [p]
    if info is not None and info.data_root is not None:
        out = [Path(info.data_root) / p]
        if info.data_root_from_run is not None:
            out.append(run_dir / info.data_root_from_run / p)
        return out
    return [p, run_dir / p, run_dir.parent / p]  # version 1: as given, then beside the run


def resolve_path(
    run_dir: str | Path, path: str, info: RunInfo | None = None, *, sha256: str = ""
) -> Path | None:
    """The file a run recorded as `path` (a split.csv path, or a source in its evaluation.json), or None.
    With `sha256`, a candidate whose content differs from it is passed over (a file changed since)."""
    from headstart.fileio import sha256_file

    if not path:
        return None
    for cand in _candidates(Path(run_dir), path, info):
        try:
            if cand.is_file() and (not sha256 or sha256_file(cand) == sha256):
                return cand
        except OSError:  # a name the file system refuses (too long, ...): not this candidate
            continue
    return None


def resolve_item(
    run_dir: str | Path, row: SplitRow, info: RunInfo | None, *, verify: bool = False
) -> Path | None:
    """The file of a split.csv row (None when no candidate exists; `verify`: or none has its sha256)."""
    return resolve_path(run_dir, row.path, info, sha256=row.sha256 if verify else "")


def expected_path(row: SplitRow, info: RunInfo | None) -> str:
    """Where a row's file should be, to name in a message when it cannot be found."""
    if info is not None and info.data_root is not None and not Path(row.path).is_absolute():
        return str(Path(info.data_root) / row.path)
    return row.path


def item_sources(run_dir: str | Path, rows: Sequence[SplitRow], info: RunInfo) -> list[str]:
    """What a verb reads for each row: the text (a text run; older ones through their data), the file the
    resolver finds, or where the file should be (so the verb's skip list names it)."""
    if info.modality == "text":
        texts = split_texts(run_dir, "text")
        return [texts.get(r.path, r.path) for r in rows]
    out = []
    for r in rows:
        found = resolve_item(run_dir, r, info)
        out.append(str(found) if found is not None else expected_path(r, info))
    return out


def split_texts(run_dir: str | Path, modality: str | None) -> dict[str, str]:
    """A text run's split.csv row ids mapped back to the texts (older runs list `<file>:<row>`, not the
    text; newer ones list the texts themselves, so the map is empty or unused); {} for file modalities
    or when the run's data can no longer be read."""
    if modality != "text":
        return {}
    from headstart.data import load_dataset

    try:
        summary = json.loads((Path(run_dir) / DATA_FILE).read_text())
        ds = load_dataset(summary["root"], modality=modality, seed=int(summary.get("seed", 0)))
    except (OSError, KeyError, ValueError, TypeError, HeadstartError):
        return {}
    return {str(it.path): it.source for it in ds.items}
