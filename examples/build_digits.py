"""Build a handwritten-digits validation set from scikit-learn's bundled `load_digits` (offline).

1,797 8x8 digits (UCI optical recognition of handwritten digits; ~180 per class), grey levels 0..16
scaled to 0..255 and upscaled (nearest neighbour, so no detail is invented) to PNGs in OUT/<digit>/.

    python examples/build_digits.py OUT [--per-class N] [--size 64] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def build(out: Path, *, per_class: int | None = None, size: int = 64, seed: int = 0) -> dict[str, int]:
    """Write all digits (or `per_class` seeded random ones per class) to OUT/<digit>/<index>.png."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * (255 / 16), 0, 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    counts = {}
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        if per_class is not None:
            idx = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        (out / str(c)).mkdir(parents=True, exist_ok=True)
        for i in idx:
            img = Image.fromarray(images[i], "L").resize((size, size), Image.Resampling.NEAREST)
            img.save(out / str(c) / f"{i:04d}.png")
        counts[str(c)] = len(idx)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, help="default: all (~180 per class)")
    ap.add_argument("--size", type=int, default=64, help="side of the upscaled PNG in pixels")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    counts = build(a.out, per_class=a.per_class, size=a.size, seed=a.seed)
    print(f"wrote {sum(counts.values())} images in {len(counts)} classes to {a.out}")


if __name__ == "__main__":
    main()
