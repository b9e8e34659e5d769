"""Labeled items from a folder or a manifest, with a seeded stratified split.

Accepted layouts:
- `DATA/<class>/<file>`: one sub-folder per class; split here (stratified, seeded).
- `DATA/{train,val,test}/<class>/<file>`: the user's own split (`val` or `test` may be missing).
- a CSV or JSONL manifest with `path,label` (and optionally `split`); paths relative to the manifest.

What folders may hold besides data, and what each gets (never a silent drop):
- OS and archive junk (`__MACOSX`, `.DS_Store`, `Thumbs.db`, ...) and hidden names (`.x`): ignored, listed
  in `Dataset.skipped`; broken links, symlink loops and files beside the class folders: listed too;
- an empty class folder: listed (it is not a class);
- a folder inside a class folder: an error (flatten it, or give a manifest); one class folder that itself
  holds folders: an error that names it ("did you mean DATA/images?");
- the same bytes (or text) under two classes: an error naming both; twice in one class: one kept, the other
  listed as a duplicate (copies across the user's own splits are kept for `headstart leakage`, and warned).

The drawn split is a function of the set of items (sorted, shuffled by the seed), and `Dataset.drop` draws
it again over the items that remain: one unreadable file never moves the readable ones between splits.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import random
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from headstart.errors import HeadstartError

SPLITS = ("train", "val", "test")
MANIFEST_SUFFIXES = (".csv", ".jsonl")
#: What a table must hold, said by every error about a table's columns (texts and files alike).
TABLE_COLUMNS = (
    "a table of texts needs columns `text,label`, a manifest of image or audio files `path,label` "
    "(either may add `split`)"
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


@dataclass(frozen=True)
class Item:
    """One labeled example. Files (images, audio) have a `path`; texts carry `text` and a row id as path."""

    path: Path
    label: str
    split: str | None = None
    text: str | None = None

    @property
    def source(self) -> str:
        """What the backbone reads: the text itself, or the file path."""
        return self.text if self.text is not None else str(self.path)


@dataclass
class Dataset:
    """Labeled items of one modality; every item has a split once `load_dataset` returns."""

    root: Path
    items: list[Item]
    classes: list[str]
    layout: str
    modality: str = "image"
    seed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason
    warnings: list[str] = field(default_factory=list)  # about the data as a whole, shown with the results
    notes: dict[str, str] = field(default_factory=dict)  # path -> what was done to an item that is kept
    val: float = 0.15
    test: float = 0.15
    split_drawn: bool = False  # True: headstart drew the split (redrawn by `drop`); False: the user's own

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: n}} with every class present (zeros included)."""
        out: dict[str, dict[str, int]] = {}
        for s in SPLITS:
            c = Counter(it.label for it in self.items if it.split == s)
            if c:
                out[s] = {k: c.get(k, 0) for k in self.classes}
        return out

    def drop(self, bad: dict[str, str]) -> Dataset:
        """The same dataset without the items whose sources are in `bad` (source -> reason).

        A split headstart drew is drawn again over the items that remain, so every remaining item lands
        where it would had the dropped files never been there (and each class of 3+ keeps val and test).
        """
        keep = [it for it in self.items if it.source not in bad]
        if self.split_drawn and len(keep) < len(self.items):
            try:
                keep = stratified_split(
                    [replace(it, split=None) for it in keep],
                    val=self.val,
                    test=self.test,
                    seed=self.seed,
                )
            except HeadstartError as e:
                lost = {it.source: bad[it.source] for it in self.items if it.source in bad}
                listed = "; ".join(f"{p}: {r}" for p, r in sorted(lost.items())[:MAX_NAMED])
                more = f" and {len(lost) - MAX_NAMED} more" if len(lost) > MAX_NAMED else ""
                raise HeadstartError(
                    f"{e.message}, after skipping {len(lost)} unreadable file(s) ({listed}{more})",
                    fix=f"fix or replace the skipped files; or {e.fix}",
                ) from e
        notes = {p: n for p, n in self.notes.items() if p not in bad}
        return replace(self, items=keep, skipped={**self.skipped, **bad}, notes=notes)

    def note_cuts(self, backbone: object) -> Dataset:
        """Audio clips longer than the backbone's window (Whisper: 30 s) are cut to it: note each one.

        Read from the file headers, not from decoding, so clips whose embeddings come from the cache are
        noted too."""
        seconds = getattr(getattr(backbone, "preprocess", None), "chunk_seconds", None)
        if self.modality != "audio" or not seconds:
            return self
        from headstart.data.audio import long_clips

        cut = long_clips([it.source for it in self.items], float(seconds))
        notes = {p: f"cut to its first {seconds:g} s ({s:.1f} s long)" for p, s in cut.items()}
        return replace(self, notes={**self.notes, **notes})

    def split_warnings(self) -> list[str]:
        """A class with no val (or test) items where that split exists: its held-out scores say nothing."""
        counts = self.counts()
        out = []
        for s in ("val", "test"):
            for c in (c for c, n in counts.get(s, {}).items() if n == 0):
                have = ", ".join(f"{t} {counts[t][c]}" for t in counts)
                out.append(f"class {c!r} has 0 {s} items ({have}): {s} scores say nothing about it")
        return out

    def summary(self) -> dict[str, object]:
        return {
            "root": str(self.root),
            "layout": self.layout,
            "modality": self.modality,
            "classes": self.classes,
            "counts": self.counts(),
            "n_items": len(self.items),
            "skipped": dict(self.skipped),
            "warnings": [*self.warnings, *self.split_warnings()],
            "notes": dict(self.notes),
            "n_cut": sum(1 for n in self.notes.values() if n.startswith("cut to")),
            "seed": self.seed,
        }


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


def _named(paths: Sequence[object]) -> str:
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
            f"class folders hold sub-folders: {_named([p for ps in nested.values() for p in ps])}. A class "
            "is one folder of files: a nested folder would be merged into its class, or mistaken for one",
            fix=f"flatten them (move their files up into {folder}/<class>/); if {folder} is one level too "
            "high, give the folder that holds the classes; or give a manifest CSV with path,label",
        )
    return out


def _from_class_folders(folder: Path, split: str | None, skipped: dict[str, str] | None = None) -> list[Item]:
    skipped = {} if skipped is None else skipped
    return [Item(f, c, split) for c, f in class_folder_files(folder, skipped)]


def _split_layout_items(root: Path, skipped: dict[str, str]) -> list[Item]:
    """`DATA/{train,val,test}/<class>/<file>`; anything else in DATA is listed as not read."""
    for p, kind, reason in _entries(root):
        if not (kind == "dir" and p.name in SPLITS):
            skipped[str(p)] = reason or "ignored: with a train/ folder, only train/, val/ and test/ are read"
    return [it for s in SPLITS if (root / s).is_dir() for it in _from_class_folders(root / s, s, skipped)]


def _read_manifest(path: Path) -> list[Item]:
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
                    rows.append({k: str(v) for k, v in json.loads(line).items()})
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
        items.append(Item(p if p.is_absolute() else base / p, label, split))
    return items


def stratified_split(items: list[Item], *, val: float, test: float, seed: int) -> list[Item]:
    """Assign train/val/test per class (seeded); every class gets at least one item in each split.

    A function of the set of items alone (sorted, then shuffled by the seed): `Dataset.drop` draws it again
    over the readable items, so they land where they would without the unreadable ones."""
    by_class: dict[str, list[Item]] = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    too_few = {c: len(v) for c, v in by_class.items() if len(v) < 3}
    if too_few:
        listed = ", ".join(f"{c!r} ({n})" for c, n in sorted(too_few.items()))
        raise HeadstartError(
            f"class(es) with fewer than 3 examples cannot be split into train/val/test: {listed}",
            fix="add examples, remove those classes, or give your own train/ val/ test/ folders",
        )
    rng = random.Random(seed)
    out: list[Item] = []
    for label in sorted(by_class):
        group = sorted(by_class[label], key=lambda it: str(it.path))
        rng.shuffle(group)
        n = len(group)
        n_test = max(1, round(n * test))
        n_val = max(1, round(n * val))
        n_test = min(n_test, n - 2)
        n_val = min(n_val, n - n_test - 1)
        for i, it in enumerate(group):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            out.append(replace(it, split=split))
    return out


def load_dataset(
    path: str | Path,
    *,
    modality: str | None = None,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
) -> Dataset:
    """Read labeled items from `path` and give each a split (see the module docstring for layouts).

    `modality=None` detects it from the items (`detect_modality`)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise HeadstartError(f"data path not found: {root}", fix="check the path")
    from headstart.data.text import is_text_data, load_text_dataset

    if modality == "text" or (modality is None and is_text_data(root)):
        return load_text_dataset(root, val=val, test=test, seed=seed)
    skipped: dict[str, str] = {}
    if root.is_file():
        if root.suffix.lower() not in MANIFEST_SUFFIXES:
            from headstart.data.text import TABLE_SUFFIXES, _table_columns

            has = f" (has columns {_table_columns(root)})" if root.suffix.lower() in TABLE_SUFFIXES else ""
            raise HeadstartError(
                f"{root} is a file but not a table headstart reads{has}: {TABLE_COLUMNS}",
                fix="give a folder of one sub-folder per class, or a .csv/.jsonl table (.parquet: texts)",
            )
        items, layout = _read_manifest(root), "manifest"
    elif (root / "train").is_dir():
        items, layout = _split_layout_items(root, skipped), "split-folders"
    else:
        items, layout = _from_class_folders(root, None, skipped), "class-folders"
    if not items:
        loose = [p for p, r in skipped.items() if r.startswith("ignored: not inside a class folder")]
        raise HeadstartError(
            f"no labeled files found under {root}"
            + (f": its {len(loose)} file(s) are not in class sub-folders" if loose else ""),
            fix="put files in one sub-folder per class (DATA/<class>/<file>) and give DATA, or give a "
            "manifest",
        )
    return assemble_dataset(
        root,
        items,
        layout=layout,
        modality=modality or detect_modality(items),
        val=val,
        test=test,
        seed=seed,
        one_class_fix="add a folder of examples for each other class",
        skipped=skipped,
    )


def assemble_dataset(
    root: Path,
    items: list[Item],
    *,
    layout: str,
    modality: str,
    val: float,
    test: float,
    seed: int,
    one_class_fix: str,
    skipped: dict[str, str] | None = None,
) -> Dataset:
    """The checks every reader shares: no content under two classes (copies in one class kept once), two
    classes at least, all-or-no splits (else a stratified split), a training split."""
    skipped = dict(skipped or {})
    drawn = any(it.split is None for it in items)
    if drawn and any(it.split is not None for it in items):
        raise HeadstartError(
            f"{root}: some rows have a split and some do not", fix="fill every split or none"
        )
    items, warnings = _without_copies(root, items, skipped)
    classes = sorted({it.label for it in items})
    if len(classes) < 2:
        empty = [p for p, r in skipped.items() if r == EMPTY_CLASS]
        found = (
            f"only one class ({classes[0]!r}) found under {root}: a classifier needs at least two"
            if classes
            else f"no usable labeled items under {root} ({len(skipped)} skipped: {_named(list(skipped))})"
        )
        raise HeadstartError(
            found + (f" (empty folders are not classes: {', '.join(empty)})" if empty else ""),
            fix=one_class_fix,
        )
    if drawn:
        items = stratified_split(items, val=val, test=test, seed=seed)
    if not any(it.split == "train" for it in items):
        raise HeadstartError(f"{root} has no training items", fix="add a train split")
    return Dataset(
        root=root,
        items=items,
        classes=classes,
        layout=layout,
        modality=modality,
        seed=seed,
        skipped=skipped,
        warnings=warnings,
        val=val,
        test=test,
        split_drawn=drawn,
    )


def _without_copies(root: Path, items: list[Item], skipped: dict[str, str]) -> tuple[list[Item], list[str]]:
    """(items with each content once per class and split, warnings), by sha256 of the bytes or the text.

    The same content under two classes is an error naming both (it cannot teach two labels). Copies in one
    class are kept once, the rest listed in `skipped` (a drawn split would put them on both sides). Copies
    across the user's own splits are kept for `headstart leakage` to report, and warned about here.
    Unreadable files are listed too. Hashes are memoised, so the embedding step does not read them again.
    """
    from headstart.features import content_hash

    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        if it.text is not None:
            key = "text:" + hashlib.sha256(it.text.encode("utf-8", "surrogatepass")).hexdigest()
        else:
            try:
                key = content_hash(it.path)
            except OSError as e:
                skipped[str(it.path)] = f"cannot read ({e.strerror or e})"
                continue
        groups.setdefault(key, []).append(i)
    what = "text" if any(it.text is not None for it in items) else "bytes"
    conflicts = [g for g in groups.values() if len({items[i].label for i in g}) > 1]
    if conflicts:
        pairs = []
        for g in conflicts[:MAX_NAMED]:
            a = items[g[0]]
            b = next(items[i] for i in g if items[i].label != a.label)
            pairs.append(f"{a.path} ({a.label!r}) and {b.path} ({b.label!r})")
        more = f"; and {len(conflicts) - MAX_NAMED} more" if len(conflicts) > MAX_NAMED else ""
        raise HeadstartError(
            f"the same {what} (sha256) under two classes: {'; '.join(pairs)}{more}",
            fix="remove one copy, or move (relabel) it to the class it belongs to",
        )
    keep: set[int] = set()
    across = 0
    for g in groups.values():
        first: dict[str | None, int] = {}
        for i in g:
            if items[i].split in first:
                kept = items[first[items[i].split]]
                if kept.path == items[i].path:  # a manifest naming one file twice
                    skipped[f"{kept.path} (listed again)"] = "the same path twice: used once"
                else:
                    skipped[str(items[i].path)] = f"duplicate of {kept.path} (the same {what}): one is kept"
            else:
                first[items[i].split] = i
                keep.add(i)
        across += len(first) - 1
    warnings = []
    if across:
        warnings.append(
            f"{across} item(s) of {root} are copies of items in another of your splits: held-out scores "
            f"are inflated (`headstart leakage {root}` lists them, --dedupe removes them)"
        )
    return [it for i, it in enumerate(items) if i in keep], warnings


def detect_modality(items: list[Item]) -> str:
    """`text` for text rows, `audio` when most files have an audio extension, else `image`."""
    from headstart.data.audio import is_audio_path

    if any(it.text is not None for it in items):
        return "text"
    n_audio = sum(1 for it in items if is_audio_path(it.path))
    return "audio" if 2 * n_audio > len(items) else "image"
