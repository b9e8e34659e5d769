"""Labeled items from a folder or a manifest, with a seeded stratified split.

Accepted layouts:
- `DATA/<class>/<file>`: one sub-folder per class; split here (stratified, seeded).
- `DATA/{train,val,test}/<class>/<file>`: the user's own split (`val` or `test` may be missing).
- a CSV or JSONL manifest with `path,label` (and optionally `split`); paths relative to the manifest.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from headstart.errors import HeadstartError

SPLITS = ("train", "val", "test")
MANIFEST_SUFFIXES = (".csv", ".jsonl")


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
        """The same dataset without the items whose sources are in `bad` (source -> reason)."""
        keep = [it for it in self.items if it.source not in bad]
        return replace(self, items=keep, skipped={**self.skipped, **bad})

    def summary(self) -> dict[str, object]:
        return {
            "root": str(self.root),
            "layout": self.layout,
            "modality": self.modality,
            "classes": self.classes,
            "counts": self.counts(),
            "n_items": len(self.items),
            "skipped": dict(self.skipped),
            "seed": self.seed,
        }


def _visible_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.parts[-1:])
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _from_class_folders(folder: Path, split: str | None) -> list[Item]:
    return [Item(f, d.name, split) for d in _class_dirs(folder) for f in _visible_files(d)]


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
            f"manifest {path} lacks column(s) {sorted(missing)} (has {sorted(rows[0])})",
            fix="name the columns `path,label` (and optionally `split`)",
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
    """Assign train/val/test per class (seeded); every class gets at least one item in each split."""
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
    if root.is_file():
        if root.suffix.lower() not in MANIFEST_SUFFIXES:
            raise HeadstartError(
                f"{root} is a file but not a manifest", fix="give a folder, or a .csv/.jsonl with path,label"
            )
        items, layout = _read_manifest(root), "manifest"
    elif (root / "train").is_dir():
        items = [it for s in SPLITS if (root / s).is_dir() for it in _from_class_folders(root / s, s)]
        layout = "split-folders"
    else:
        items, layout = _from_class_folders(root, None), "class-folders"
    if not items:
        raise HeadstartError(
            f"no labeled files found under {root}",
            fix="put files in one sub-folder per class (DATA/<class>/<file>), or give a manifest",
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
    """The checks every reader shares: two classes at least, all-or-no splits (else a stratified split),
    a training split."""
    classes = sorted({it.label for it in items})
    if len(classes) < 2:
        raise HeadstartError(
            f"only one class ({classes[0]!r}) found under {root}: a classifier needs at least two",
            fix=one_class_fix,
        )
    if any(it.split is None for it in items):
        if any(it.split is not None for it in items):
            raise HeadstartError(
                f"{root}: some rows have a split and some do not", fix="fill every split or none"
            )
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
        skipped=dict(skipped or {}),
    )


def detect_modality(items: list[Item]) -> str:
    """`text` for text rows, `audio` when most files have an audio extension, else `image`."""
    from headstart.data.audio import is_audio_path

    if any(it.text is not None for it in items):
        return "text"
    n_audio = sum(1 for it in items if is_audio_path(it.path))
    return "audio" if 2 * n_audio > len(items) else "image"
