"""The layouts labeled files come in, listed entry by entry: every entry is read, or listed with the reason
it is not.

Accepted layouts:
- `DATA/<class>/<file>`: one sub-folder per class (split later: `headstart.data.splits`).
- `DATA/{train,val,test}/<class>/<file>`: the user's own split (`val` or `test` may be missing).
- a CSV or JSONL manifest with `path,label` (and optionally `split`, and `group` or `slice`: the item's
  slice, scored apart by evaluate); paths relative to the manifest.

What folders may hold besides data, and what each gets (never a silent drop):
- OS and archive junk (`__MACOSX`, `.DS_Store`, `Thumbs.db`, ...) and hidden names (`.x`): ignored, listed
  in `Dataset.skipped`; broken links, symlink loops and files beside the class folders: listed too;
- an empty class folder: listed (it is not a class);
- a folder inside a class folder: an error (flatten it, or give a manifest); one class folder that itself
  holds folders: an error that names it ("did you mean DATA/images?").
Copies (the same bytes under two classes, or twice in one) are found later, by `assemble_dataset`.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from headstart.data.items import SPLITS, Item, row_group
from headstart.errors import HeadstartError

MANIFEST_SUFFIXES = (".csv", ".jsonl")
#: What a table must hold, said by every error about a table's columns (texts and files alike).
TABLE_COLUMNS = (
    "a table of texts needs columns `text,label`, a manifest of image or audio files `path,label` "
    "(either may add `split`, and `group` to name each item's slice)"
)
#: Never data: operating-system and archive metadata (compared lowercased). Ignored and listed, never a class.
JUNK_NAMES = frozenset(
    n.lower()
    for n in (
        "__MACOSX",
        ".DS_Store",
        "Thumbs.db",
        "ehthumbs.db",
        "desktop.ini",
        "$RECYCLE.BIN",
        "System Volume Information",
        "__pycache__",
    )
)
EMPTY_CLASS = "empty class folder: not a class (add files to it, or remove it)"
MAX_NAMED = 5  # paths an error message names before "and N more"


# -- listing folders: every entry is read, or listed with the reason it is not ---------------------------


def ignore_reason(name: str) -> str | None:
    """Why an entry named `name` is not data (OS junk, hidden), or None."""
    if name.lower() in JUNK_NAMES:
        return "ignored: operating-system metadata, not data"
    if name.startswith("."):
        return "ignored: hidden (name starts with '.')"
    return None


def _kind(p: Path, folder: Path) -> tuple[str, str]:
    """("file" | "dir" | "skip", reason) for the entry `p` of `folder`; links are followed, their failures
    named (a broken link or a loop is a listed skip, never a crash or a silent drop)."""
    reason = ignore_reason(p.name)
    if reason:
        return "skip", reason
    try:
        st = p.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "skip", "symlink loop (the link resolves to itself)"
        if p.is_symlink():
            try:
                target = os.readlink(p)
            except OSError:
                target = "?"
            return "skip", f"broken link (its target {target} does not exist)"
        return "skip", f"cannot read ({e.strerror or e})"
    if stat.S_ISREG(st.st_mode):
        return "file", ""
    if not stat.S_ISDIR(st.st_mode):
        return "skip", "not a regular file (a device, pipe or socket)"
    if p.is_symlink():
        target, here = p.resolve(), folder.resolve()
        if target == here or target in here.parents:
            return "skip", f"symlink loop (links to {target}, which contains the link)"
    return "dir", ""


def _entries(folder: Path) -> list[tuple[Path, str, str]]:
    """(path, kind, reason) of each entry of `folder`, sorted by name."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise HeadstartError(f"cannot list {folder} ({e.strerror or e})", fix="check its permissions") from e
    return [(folder / n, *_kind(folder / n, folder)) for n in names]


def list_files(folder: Path, skipped: dict[str, str]) -> list[Path]:
    """Every file under `folder`, recursively, sorted; what is not read goes to `skipped` with the reason."""
    out: list[Path] = []
    seen: set[Path] = set()
    stack = [folder]
    while stack:
        d = stack.pop()
        real = d.resolve()
        if real in seen:  # a linked folder listed already: a loop, or the same files twice
            skipped[str(d)] = f"symlink loop or repeat (links to {real}, already read)"
            continue
        seen.add(real)
        for p, kind, reason in _entries(d):
            if kind == "file":
                out.append(p)
            elif kind == "dir":
                stack.append(p)
            else:
                skipped[str(p)] = reason
    return sorted(out)


def named(paths: Sequence[object]) -> str:
    listed = ", ".join(str(p) for p in paths[:MAX_NAMED])
    return listed + (f" and {len(paths) - MAX_NAMED} more" if len(paths) > MAX_NAMED else "")


def class_folder_files(folder: Path, skipped: dict[str, str]) -> list[tuple[str, Path]]:
    """(class, file) pairs of a `FOLDER/<class>/<file>` layout, sorted (see `class_folders`)."""
    return [(d.name, f) for d, files in class_folders(folder, skipped) for f in files]


def class_folders(folder: Path, skipped: dict[str, str]) -> list[tuple[Path, list[Path]]]:
    """(class folder, its files) of a `FOLDER/<class>/<file>` layout, sorted.

    Junk, hidden entries, broken links, loops, files beside the class folders and empty class folders go
    to `skipped` with the reason. A folder inside a class folder is an error: it usually means the wrong
    root, and merging it into its parent class or taking it as a class would both train on a guess.
    """
    classes: list[Path] = []
    for p, kind, reason in _entries(folder):
        if kind == "dir":
            classes.append(p)
        else:
            skipped[str(p)] = reason or "ignored: not inside a class folder (DATA/<class>/<file>)"
    out: list[tuple[Path, list[Path]]] = []
    nested: dict[Path, list[Path]] = {}
    for d in classes:
        files = []
        for p, kind, reason in _entries(d):
            if kind == "file":
                files.append(p)
            elif kind == "dir":
                nested.setdefault(d, []).append(p)
            else:
                skipped[str(p)] = reason
        if not files and d not in nested:
            skipped[str(d)] = EMPTY_CLASS
        elif files:
            out.append((d, files))
    if len(classes) == 1 and nested:
        d = classes[0]
        subs = ", ".join(p.name for p in nested[d][:MAX_NAMED])
        raise HeadstartError(
            f"{folder} holds one folder, {d.name}, whose sub-folders look like the classes ({subs}): "
            f"did you mean {d}?",
            fix=f"give {d} as the data folder",
        )
    if nested:
        raise HeadstartError(
            f"class folders hold sub-folders: {named([p for ps in nested.values() for p in ps])}. A class "
            "is one folder of files: a nested folder would be merged into its class, or mistaken for one",
            fix=f"flatten them (move their files up into {folder}/<class>/); if {folder} is one level too "
            "high, give the folder that holds the classes; or give a manifest CSV with path,label",
        )
    return out


def from_class_folders(folder: Path, split: str | None, skipped: dict[str, str] | None = None) -> list[Item]:
    skipped = {} if skipped is None else skipped
    return [Item(f, c, split) for c, f in class_folder_files(folder, skipped)]


def split_layout_items(root: Path, skipped: dict[str, str]) -> list[Item]:
    """`DATA/{train,val,test}/<class>/<file>`; anything else in DATA is listed as not read."""
    for p, kind, reason in _entries(root):
        if not (kind == "dir" and p.name in SPLITS):
            skipped[str(p)] = reason or "ignored: with a train/ folder, only train/, val/ and test/ are read"
    return [it for s in SPLITS if (root / s).is_dir() for it in from_class_folders(root / s, s, skipped)]


def read_manifest(path: Path) -> list[Item]:
    base = path.parent
    rows: list[dict[str, str]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise HeadstartError(f"manifest {path} is not UTF-8 text", fix="save it as UTF-8") from e
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    # null is a blank value (an empty label, no group), never the string "None"
                    rows.append({k: "" if v is None else str(v) for k, v in json.loads(line).items()})
                except (json.JSONDecodeError, AttributeError) as e:
                    raise HeadstartError(
                        f"{path}:{n} is not a JSON object", fix="one JSON object per line"
                    ) from e
    else:
        rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise HeadstartError(f"manifest {path} has no rows", fix="add `path,label` rows")
    missing = {"path", "label"} - set(rows[0])
    if missing:
        raise HeadstartError(
            f"{path} lacks column(s) {sorted(missing)} (has {sorted(rows[0])}): {TABLE_COLUMNS}",
            fix="rename its columns: the texts to `text` (or the file paths to `path`), classes to `label`",
        )
    items = []
    for n, r in enumerate(rows, 2 if path.suffix == ".csv" else 1):
        label, split = (r.get("label") or "").strip(), (r.get("split") or "").strip() or None
        if not label:
            raise HeadstartError(f"{path}:{n} has an empty label", fix="give every row a label, or remove it")
        if split is not None and split not in SPLITS:
            raise HeadstartError(f"{path}:{n} has split {split!r}", fix=f"use one of {', '.join(SPLITS)}")
        p = Path(r["path"]).expanduser()
        group = row_group(r, f"{path}:{n}")
        items.append(Item(p if p.is_absolute() else base / p, label, split, group=group))
    return items
