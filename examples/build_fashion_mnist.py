"""Build a Fashion-MNIST validation set: class sub-folders of 28x28 grey PNGs, a seeded subset.

Reads the IDX files of the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist;
`apt-get install dataset-fashion-mnist`), so it works offline. Fashion-MNIST: Xiao, Rasul & Vollgraf,
2017 (arXiv:1708.07747), MIT licence.

    python examples/build_fashion_mnist.py OUT [--per-class 60] [--seed 0] [--split train|test]
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian dims after a 4-byte magic) as a uint8 array."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def load(split: str = "train", source: Path = SOURCE) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images, labels = source / f"{prefix}-images-idx3-ubyte.gz", source / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in {source} (apt-get install dataset-fashion-mnist)"
        )
    return read_idx(images), read_idx(labels)


def build(out: Path, *, per_class: int = 60, seed: int = 0, split: str = "train") -> dict[str, int]:
    """Write `per_class` seeded random images of each class to OUT/<class>/<index>.png."""
    X, y = load(split)
    rng = np.random.default_rng(seed)
    counts = {}
    for c, name in enumerate(CLASSES):
        idx = np.flatnonzero(y == c)
        pick = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in pick:
            Image.fromarray(X[i], "L").save(out / name / f"{split}_{i:05d}.png")
        counts[name] = len(pick)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=("train", "test"), default="train")
    a = ap.parse_args()
    counts = build(a.out, per_class=a.per_class, seed=a.seed, split=a.split)
    print(f"wrote {sum(counts.values())} images in {len(counts)} classes to {a.out}")


if __name__ == "__main__":
    main()
