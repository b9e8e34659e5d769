"""What a label means under each task shape, and the split each shape draws.

A run's `task` (run.json, `--task`) says how the `label` column (or class folder) of the data is read:
- `classify`: one class per item (the default);
- `multilabel`: a set of labels per item, written `a|b` in a table, or the same file linked into several
  class folders (its copies are merged into one item carrying every folder's label);
- `regress`: a number per item (`label` holds it: `3.25`, `-1e-3`).
Token tagging (`tag`) and instruction tuning (`generate`) read their own formats
(`headstart.shapes.tagging`, `headstart.shapes.generate`), not these readers.

An `Item.label` stays a string throughout (split.csv, the store and the report show it as written); a
shape turns the labels into its target array with `label_set` or `parse_target`.
"""

from __future__ import annotations

import math
from dataclasses import replace

from headstart.data.items import Item
from headstart.errors import HeadstartError

#: Every task shape, the default first. `--task` takes these names.
TASKS = ("classify", "multilabel", "regress", "tag", "generate")
LABEL_SEPARATOR = "|"
#: A regression split is stratified over this many quantile bins of the target, so val and test span the
#: range of values instead of landing by chance on one end of it.
REGRESSION_BINS = 5


def check_task(task: str) -> str:
    if task not in TASKS:
        raise HeadstartError(f"unknown task {task!r}", fix=f"use one of {', '.join(TASKS)}")
    return task


def label_set(label: str) -> list[str]:
    """The labels of a multi-label item, sorted and each once: `b|a|a` -> ["a", "b"]."""
    return sorted({p.strip() for p in label.split(LABEL_SEPARATOR) if p.strip()})


def parse_target(label: str, where: str) -> float:
    """The number a regression item's label holds; a non-number or a non-finite one names `where`."""
    try:
        v = float(label)
    except ValueError:
        raise HeadstartError(
            f"{where} has label {label!r}, not a number (--task regress reads the label as the target)",
            fix="give a numeric label in every row (e.g. 3.25), or drop --task regress to classify",
        ) from None
    if not math.isfinite(v):
        raise HeadstartError(f"{where} has target {label!r}", fix="give a finite number")
    return v


def normalise_labels(items: list[Item], task: str) -> list[Item]:
    """Each item's label in its task's canonical form, checked: multi-label sets sorted (`b|a` -> `a|b`),
    regression targets parsed (a bad one is an error naming the item)."""
    if task == "multilabel":
        out = []
        for it in items:
            labels = label_set(it.label)
            if not labels:
                raise HeadstartError(f"{it.path} has no label in {it.label!r}", fix="give at least one label")
            out.append(replace(it, label=LABEL_SEPARATOR.join(labels)))
        return out
    if task == "regress":
        for it in items:
            parse_target(it.label, str(it.path))
    return items


def merge_label_copies(items: list[Item], key_of: dict[int, str]) -> list[Item]:
    """Multi-label folders: one file linked (or copied) into several class folders is one item carrying
    every folder's label. `key_of`: index -> content hash (unhashable items absent, kept as they are)."""
    first: dict[tuple[str, str | None], int] = {}
    labels: dict[int, set[str]] = {}
    drop: set[int] = set()
    for i, it in enumerate(items):
        key = key_of.get(i)
        if key is None:
            continue
        j = first.setdefault((key, it.split), i)
        labels.setdefault(j, set(label_set(items[j].label))).update(label_set(it.label))
        if j != i:
            drop.add(i)
    return [
        replace(it, label=LABEL_SEPARATOR.join(sorted(labels[i]))) if i in labels else it
        for i, it in enumerate(items)
        if i not in drop
    ]


def classes_of(items: list[Item], task: str) -> list[str]:
    """The classes a task's model outputs: the labels (classify), the union of the sets (multilabel),
    none for a regression (one number out)."""
    if task == "regress":
        return []
    if task == "multilabel":
        return sorted({c for it in items for c in label_set(it.label)})
    return sorted({it.label for it in items})


def split_key(items: list[Item], task: str) -> list[str]:
    """What a drawn split stratifies on: the class; a multi-label item's rarest label (so each label keeps
    val and test items where it can); a regression target's quantile bin."""
    if task == "multilabel":
        freq: dict[str, int] = {}
        for it in items:
            for c in label_set(it.label):
                freq[c] = freq.get(c, 0) + 1
        return [min(label_set(it.label), key=lambda c: (freq[c], c)) for it in items]
    if task == "regress":
        values = sorted(float(it.label) for it in items)
        n = len(values)
        edges = [values[min(n - 1, (n * b) // REGRESSION_BINS)] for b in range(1, REGRESSION_BINS)]
        return [f"bin{sum(float(it.label) >= e for e in edges)}" for it in items]
    return [it.label for it in items]


def stratify(items: list[Item], task: str, *, val: float, test: float, seed: int) -> list[Item]:
    """`stratified_split` over the task's strata (`split_key`). A stratum too small to split (a rare label
    set, an outlying target) joins the largest one, so it never fails the split."""
    from headstart.data.splits import stratified_split

    if task == "classify":
        return stratified_split(items, val=val, test=test, seed=seed)
    keys = split_key(items, task)
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    largest = max(sorted(counts), key=lambda k: counts[k])
    strata = {id(it): k if counts[k] >= 3 else largest for it, k in zip(items, keys, strict=True)}
    return stratified_split(items, val=val, test=test, seed=seed, key=lambda it: strata[id(it)])
