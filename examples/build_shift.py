"""Build an offline domain shift from Fashion-MNIST: labeled source, unlabeled target, labeled target test.

    python examples/build_shift.py OUT [--per-class 20] [--target-per-class 20] [--test-per-class 20]

OUT/source/<class>/*.png          the original grey items (labeled: what you train on)
OUT/target_unlabeled/*.png        *other* items, shifted, with no labels (what --target-unlabeled reads)
OUT/target_test/<class>/*.png     held-out shifted items from the test split, labeled: for evaluation only

The shift, applied to every target item with its own seeded parameters: colours inverted (a light garment
on a dark background becomes a dark one on a light background), the grey levels mapped onto a random
two-colour ramp (recoloured), and a Gaussian blur of radius 0.6-1.2 px. The three parts never share an
item. Reads the IDX files of the Debian package `dataset-fashion-mnist` through build_fashion_mnist.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_fashion_mnist import CLASSES, load


def shift(grey: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The target domain's rendering of one 28x28 grey item."""
    t = (255 - grey.astype(np.float32)) / 255.0  # inverted, in [0, 1]
    dark = rng.uniform(0, 110, 3)  # the ramp: grey 0 -> `dark`, grey 1 -> `light`
    light = rng.uniform(150, 255, 3)
    rgb = dark + t[..., None] * (light - dark)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 1.2))))


def _pick(y: np.ndarray, c: int, n: int, rng: np.random.Generator, taken: set[int]) -> list[int]:
    idx = np.array([i for i in np.flatnonzero(y == c) if int(i) not in taken])
    pick = sorted(int(i) for i in rng.choice(idx, size=min(n, len(idx)), replace=False))
    taken.update(pick)
    return pick


def build(
    out: Path, *, per_class: int = 20, target_per_class: int = 20, test_per_class: int = 20, seed: int = 0
) -> dict[str, int]:
    X, y = load("train")
    Xt, yt = load("test")
    rng = np.random.default_rng(seed)
    taken: set[int] = set()
    counts = {"source": 0, "target_unlabeled": 0, "target_test": 0}
    (out / "target_unlabeled").mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(CLASSES):
        (out / "source" / name).mkdir(parents=True, exist_ok=True)
        (out / "target_test" / name).mkdir(parents=True, exist_ok=True)
        for i in _pick(y, c, per_class, rng, taken):
            Image.fromarray(X[i], "L").convert("RGB").save(out / "source" / name / f"train_{i:05d}.png")
            counts["source"] += 1
        for i in _pick(y, c, target_per_class, rng, taken):  # different items than the source
            shift(X[i], rng).save(out / "target_unlabeled" / f"train_{i:05d}.png")
            counts["target_unlabeled"] += 1
        for i in _pick(yt, c, test_per_class, rng, set()):
            shift(Xt[i], rng).save(out / "target_test" / name / f"test_{i:05d}.png")
            counts["target_test"] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=20, help="labeled source items per class")
    ap.add_argument("--target-per-class", type=int, default=20, help="unlabeled target items per class")
    ap.add_argument("--test-per-class", type=int, default=20, help="labeled target test items per class")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    counts = build(
        a.out,
        per_class=a.per_class,
        target_per_class=a.target_per_class,
        test_per_class=a.test_per_class,
        seed=a.seed,
    )
    print(", ".join(f"{k}: {v}" for k, v in counts.items()), f"-> {a.out}")


if __name__ == "__main__":
    main()
