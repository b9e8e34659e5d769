"""The labeled data of one run (`Dataset`), and the checks every reader of labeled data ends in.

`assemble_dataset` is shared by the file layouts (`headstart.data.layouts`) and the text reader
(`headstart.data.text`): the same bytes (or text) under two classes is an error naming both; twice in one
class, one is kept and the other listed as a duplicate (copies across the user's own splits are kept for
`headstart leakage`, and warned about); two classes at least; all rows split or none (else a drawn,
stratified split: `headstart.data.splits`). `load_dataset` (`headstart.data.load`) picks the reader.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from headstart.data.items import SPLITS, Item
from headstart.data.layouts import EMPTY_CLASS, MAX_NAMED, named
from headstart.data.targets import classes_of, label_set, merge_label_copies, normalise_labels, stratify
from headstart.errors import HeadstartError


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
    task: str = "classify"  # how labels read (headstart.data.targets): classify | multilabel | regress

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: n}} with every class present (zeros included); a multi-label item counts once
        under each of its labels; a regression has one count per split, under "items"."""
        out: dict[str, dict[str, int]] = {}
        for s in SPLITS:
            here = [it for it in self.items if it.split == s]
            if self.task == "regress":
                if here:
                    out[s] = {"items": len(here)}
                continue
            c = Counter(lab for it in here for lab in self._labels(it))
            if c:
                out[s] = {k: c.get(k, 0) for k in self.classes}
        return out

    def _labels(self, it: Item) -> list[str]:
        return label_set(it.label) if self.task == "multilabel" else [it.label]

    def drop(self, bad: dict[str, str]) -> Dataset:
        """The same dataset without the items whose sources are in `bad` (source -> reason).

        A split headstart drew is drawn again over the items that remain, so every remaining item lands
        where it would had the dropped files never been there (and each class of 3+ keeps val and test).
        """
        keep = [it for it in self.items if it.source not in bad]
        if self.split_drawn and len(keep) < len(self.items):
            try:
                keep = stratify(
                    [replace(it, split=None) for it in keep],
                    self.task,
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
            "task": self.task,
            "classes": self.classes,
            "counts": self.counts(),
            "n_items": len(self.items),
            "skipped": dict(self.skipped),
            "warnings": [*self.warnings, *self.split_warnings()],
            "notes": dict(self.notes),
            "n_cut": sum(1 for n in self.notes.values() if n.startswith("cut to")),
            "seed": self.seed,
        }


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
    task: str = "classify",
) -> Dataset:
    """The checks every reader shares: no content under two classes (copies in one class kept once; a
    multi-label item's copies under several classes merged into one item with each label), two classes at
    least (a regression: two values), all-or-no splits (else a stratified split), a training split."""
    skipped = dict(skipped or {})
    items = normalise_labels(items, task)
    if task == "multilabel":
        items = merge_label_copies(items, _content_keys(items, skipped))
    drawn = any(it.split is None for it in items)
    if drawn and any(it.split is not None for it in items):
        raise HeadstartError(
            f"{root}: some rows have a split and some do not", fix="fill every split or none"
        )
    items, warnings = _without_copies(root, items, skipped)
    classes = classes_of(items, task)
    if task == "regress" and len({it.label for it in items}) < 2:
        raise HeadstartError(
            f"{root}: a regression needs at least two different target values ({len(items)} item(s))",
            fix="add items with other values",
        )
    if task != "regress" and len(classes) < 2:
        empty = [p for p, r in skipped.items() if r == EMPTY_CLASS]
        found = (
            f"only one class ({classes[0]!r}) found under {root}: a classifier needs at least two"
            if classes
            else f"no usable labeled items under {root} ({len(skipped)} skipped: {named(list(skipped))})"
        )
        raise HeadstartError(
            found + (f" (empty folders are not classes: {', '.join(empty)})" if empty else ""),
            fix=one_class_fix,
        )
    if drawn:
        items = stratify(items, task, val=val, test=test, seed=seed)
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
        task=task,
    )


def _without_copies(root: Path, items: list[Item], skipped: dict[str, str]) -> tuple[list[Item], list[str]]:
    """(items with each content once per class and split, warnings), by sha256 of the bytes or the text.

    The same content under two classes is an error naming both (it cannot teach two labels). Copies in one
    class are kept once, the rest listed in `skipped` (a drawn split would put them on both sides). Copies
    across the user's own splits are kept for `headstart leakage` to report, and warned about here.
    Unreadable files are listed too. Hashes are memoised, so the embedding step does not read them again.
    """
    groups: dict[str, list[int]] = {}
    for i, key in _content_keys(items, skipped).items():
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


def _content_keys(items: list[Item], skipped: dict[str, str]) -> dict[int, str]:
    """{index: sha256 of the item's bytes or text}; unreadable files are listed in `skipped` instead."""
    from headstart.backbones.base import content_hash

    keys: dict[int, str] = {}
    for i, it in enumerate(items):
        if it.text is not None:
            keys[i] = "text:" + hashlib.sha256(it.text.encode("utf-8", "surrogatepass")).hexdigest()
        else:
            try:
                keys[i] = content_hash(it.path)
            except OSError as e:
                skipped[str(it.path)] = f"cannot read ({e.strerror or e})"
    return keys


def detect_modality(items: list[Item]) -> str:
    """`text` for text rows, `audio` when most files have an audio extension, else `image`."""
    from headstart.data.audio import is_audio_path

    if any(it.text is not None for it in items):
        return "text"
    n_audio = sum(1 for it in items if is_audio_path(it.path))
    return "audio" if 2 * n_audio > len(items) else "image"
