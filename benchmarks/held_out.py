"""More test items for the selection tasks: labeled items of each task's classes, from the same packaged
source and domain, that are none of the task's own items.

Why: a task of 20 to 60 items per class leaves 3 to 9 test items per class and seed, so a gain of five
points is inside the noise whatever its cause. `with_held_out` adds these items to the test split of one
seed's data and leaves train and val exactly as `load_dataset(data, seed)` draws them, so every strategy
trains and is chosen on what it would be without them; only the test score gets the power to tell.

Builders, one per task (root: a scratch folder; built: the task's data) -> [(path or text, label)]:
- fashion_mnist_*: Fashion-MNIST's own test split (the tasks draw from its train split);
- digits: the scikit-learn digits the task did not pick;
- shift: shifted items from Fashion-MNIST's test split that the task did not pick, shifted as
  build_shift shifts (their own seeded parameters);
- emoji: emoji of each group the packaged 40 do not hold, rendered by examples/emoji/build.py;
- fortunes: fortunes of each file the packaged CSV does not hold (medicine has only 3 more).
"""

from __future__ import annotations

import csv
import io
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

from _common import REPO

sys.path.insert(0, str(REPO / "examples"))

PER_CLASS = 60  # held-out items per class (fewer where the source has fewer)
SEED = 1_000_003  # the draw of the held-out items: never one of the tasks' seeds

Builder = Callable[[Path, Path], list[tuple[str, str]]]


def _files(folder: Path) -> list[tuple[str, str]]:
    """(path, class) for every file of a `<class>/<file>` folder, sorted."""
    return [
        (str(f), c.name)
        for c in sorted(p for p in folder.iterdir() if p.is_dir())
        for f in sorted(c.iterdir())
    ]


def _sample(rows: list[tuple[str, str]], exclude_names: set[str]) -> list[tuple[str, str]]:
    """At most PER_CLASS seeded rows of each class, none whose file name is in `exclude_names`."""
    rng = random.Random(SEED)
    out: list[tuple[str, str]] = []
    for label in sorted({lab for _, lab in rows}):
        pool = [r for r in rows if r[1] == label and Path(r[0]).name not in exclude_names]
        out += sorted(rng.sample(pool, min(PER_CLASS, len(pool))))
    return out


def _names(built: Path) -> set[str]:
    return {f.name for c in built.iterdir() if c.is_dir() for f in c.iterdir()}


def fashion(root: Path, built: Path) -> list[tuple[str, str]]:
    import build_fashion_mnist

    out = root / "fashion_held_out"
    if not out.is_dir():
        build_fashion_mnist.build(out, per_class=PER_CLASS, seed=SEED, split="test")
    return _files(out)


def digits(root: Path, built: Path) -> list[tuple[str, str]]:
    import build_digits

    out = root / "digits_all"
    if not out.is_dir():
        build_digits.build(out)
    return _sample(_files(out), _names(built))


def shift(root: Path, built: Path) -> list[tuple[str, str]]:
    import numpy as np

    from build_fashion_mnist import CLASSES, load
    from build_shift import shift as render_shift

    out = root / "shift_held_out"
    if not out.is_dir():
        taken = {int(m.group(1)) for n in _names(built) if (m := re.fullmatch(r"test_(\d+)\.png", n))}
        X, y = load("test")
        rng = np.random.default_rng(SEED)
        for c, name in enumerate(CLASSES):
            (out / name).mkdir(parents=True, exist_ok=True)
            pool = [int(i) for i in np.flatnonzero(y == c) if int(i) not in taken]
            for i in sorted(int(i) for i in rng.choice(pool, size=min(PER_CLASS, len(pool)), replace=False)):
                render_shift(X[i], rng).save(out / name / f"test_{i:05d}.png")
    return _files(out)


def emoji(root: Path, built: Path) -> list[tuple[str, str]]:
    out = root / "emoji_all"
    if not out.is_dir():
        sys.path.insert(0, str(REPO / "examples" / "emoji"))
        from build import main as build_emoji

        build_emoji(["--out", str(out), "--per-class", str(40 + PER_CLASS)])
    return _sample(_files(out), _names(built))  # built: the packaged examples/emoji/images


def fortunes(root: Path, built: Path) -> list[tuple[str, str]]:
    from build_fortunes import CATEGORIES, FORTUNES, MAX_CHARS, read_fortunes

    with built.open(newline="", encoding="utf-8") as f:
        have = {row["text"] for row in csv.DictReader(f)}
    rng = random.Random(SEED)
    out: list[tuple[str, str]] = []
    for cat in CATEGORIES:
        pool = sorted({t for t in read_fortunes(FORTUNES / cat) if len(t) <= MAX_CHARS} - have)
        out += [(t, cat) for t in rng.sample(pool, min(PER_CLASS, len(pool)))]
    return out


def with_held_out(built: Path, builder: Builder, seed: int, root: Path, name: str) -> Path:
    """A manifest of `built` as `load_dataset(built, seed)` splits it, with the builder's items added to
    test. Images: `path,label,split` (absolute paths); texts: `text,label,split`."""
    from headstart.data import load_dataset
    from headstart.fileio import atomic_write_text

    ds = load_dataset(built, seed=seed)
    extra = builder(root, built)
    text = ds.modality == "text"
    rows = [(it.source if text else str(Path(it.source).resolve()), it.label, it.split) for it in ds.items]
    rows += [(src, label, "test") for src, label in extra]
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("text" if text else "path", "label", "split"))
    writer.writerows(rows)
    return atomic_write_text(root / f"{name}_seed{seed}_held_out.csv", buf.getvalue())


BUILDERS: dict[str, Builder] = {
    "emoji": emoji,
    "fashion_mnist_20": fashion,
    "fashion_mnist_60": fashion,
    "digits": digits,
    "fortunes": fortunes,
    "shift": shift,
}
