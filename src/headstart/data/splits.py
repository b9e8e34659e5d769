"""The split headstart draws when the data brings none: stratified per class, seeded.

The drawn split is a function of the set of items (sorted, shuffled by the seed), and `Dataset.drop` draws
it again over the items that remain: one unreadable file never moves the readable ones between splits.
(Copies moved into one split, for leakage: `headstart.data.grouped_split`.)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from headstart.data.items import Item
from headstart.errors import HeadstartError


def stratified_split(
    items: list[Item],
    *,
    val: float,
    test: float,
    seed: int,
    key: Callable[[Item], str] | None = None,
) -> list[Item]:
    """Assign train/val/test per class (seeded); every class gets at least one item in each split.
    `key`: the stratum of an item when it is not its label (`headstart.data.targets.stratify`).

    A function of the set of items alone (sorted, then shuffled by the seed): `Dataset.drop` draws it again
    over the readable items, so they land where they would without the unreadable ones."""
    by_class: dict[str, list[Item]] = {}
    for it in items:
        by_class.setdefault(it.label if key is None else key(it), []).append(it)
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
