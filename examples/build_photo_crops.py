"""Build a small photo-like set offline: random crops of the three photographs installed with
scikit-learn (china.jpg, flower.jpg) and matplotlib (grace_hopper.jpg), one class per photograph.

It is no benchmark (three scenes), only a reference point of natural-photo statistics for the domain
distance, which has no other photo data available offline.

    python examples/build_photo_crops.py OUT [--per-class 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image


def photo_sources() -> dict[str, Path]:
    import matplotlib
    import sklearn

    sk = Path(sklearn.__file__).parent / "datasets" / "images"
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    found = {"china": sk / "china.jpg", "flower": sk / "flower.jpg", "grace_hopper": mpl / "grace_hopper.jpg"}
    return {k: p for k, p in found.items() if p.is_file()}


def build(out: Path, *, per_class: int = 40, size: int = 224, seed: int = 0) -> dict[str, int]:
    """Crops covering 30-80 % of each photo's shorter side, random position and flip, resized to `size`."""
    rng = np.random.default_rng(seed)
    counts = {}
    for name, path in photo_sources().items():
        photo = Image.open(path).convert("RGB")
        w, h = photo.size
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(min(w, h) * rng.uniform(0.3, 0.8))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(out / name / f"{name}_{i:03d}.jpg", quality=92)
        counts[name] = per_class
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    counts = build(a.out, per_class=a.per_class, seed=a.seed)
    print(f"wrote {sum(counts.values())} crops of {len(counts)} photos to {os.fspath(a.out)}")


if __name__ == "__main__":
    main()
