"""Build a regression dataset from the bundled emoji: pictures of 1 to 9 copies of one emoji; the target
is how many there are.

Counting is read from the content, not from a pixel statistic: every picture's total emoji area is drawn
independently of its count (a few large copies or many small ones), so ink, colour and coverage say
nothing about the number; the model must see separate objects. Copies do not overlap; their sizes and
places are seeded. Every emoji lends its pictures to one split only (a `split` column drawn per emoji,
70/15/15), so test scores never see an emoji that train counted. The `group` column names the emoji's
Unicode group (evaluate scores each apart).

    python examples/build_regression.py OUT [--per-emoji 2] [--max-count 9] [--seed 0]
    headstart probe OUT/manifest.csv --task regress

Source: examples/emoji (Noto Color Emoji, SIL OFL 1.1; see examples/emoji/README.md).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

EMOJI = Path(__file__).resolve().parent / "emoji" / "images"
SPLIT_SHARES = (("train", 0.70), ("val", 0.15), ("test", 0.15))
CANVAS = 192
#: Total emoji area per picture, as a share of the canvas, drawn uniformly whatever the count.
AREA = (0.10, 0.30)
MIN_SIDE, MAX_SIDE = 18, 96


def glyph(path: Path) -> Image.Image:
    """The emoji of a bundled picture as RGBA, cropped to it: pixels far from the background colour."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    ink = np.abs(rgb - rgb[0, 0]).sum(axis=2) > 40
    ys, xs = np.nonzero(ink)
    alpha = (ink * 255).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([rgb.astype(np.uint8), alpha]), "RGBA")
    return rgba.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))


def picture(g: Image.Image, count: int, rng: np.random.Generator) -> Image.Image:
    """`count` non-overlapping copies of glyph `g` on a light background, total area drawn from AREA."""
    bg = tuple(int(v) for v in rng.integers(215, 256, 3))
    canvas = Image.new("RGB", (CANVAS, CANVAS), bg)
    area = rng.uniform(*AREA) * CANVAS * CANVAS
    boxes: list[tuple[int, int, int, int]] = []
    while len(boxes) < count:  # restart with smaller copies when they no longer fit
        side = int(np.clip(np.sqrt(area / count) * rng.uniform(0.8, 1.2), MIN_SIDE, MAX_SIDE))
        for _ in range(200):
            x, y = (int(v) for v in rng.integers(0, CANVAS - side + 1, 2))
            box = (x, y, x + side, y + side)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                boxes.append(box)
                break
        else:
            boxes, area = [], area * 0.8
    for x0, y0, x1, _ in boxes:
        copy = g.copy()
        copy.thumbnail((x1 - x0, x1 - x0), Image.Resampling.LANCZOS)
        canvas.paste(copy, (x0, y0), copy)
    return canvas


def build(out: Path, *, per_emoji: int = 2, max_count: int = 9, seed: int = 0) -> dict[str, int]:
    """Write OUT/images/<group>_<emoji>_<k>.png and OUT/manifest.csv (path,label,split,group)."""
    files = sorted(EMOJI.glob("*/*.png"))
    if not files:
        raise SystemExit(f"no emoji pictures under {EMOJI}: run it from a clone of the repository")
    rng = np.random.default_rng(seed)
    edges = np.cumsum([share for _, share in SPLIT_SHARES]) * len(files)
    rank = np.empty(len(files), dtype=np.int64)
    rank[rng.permutation(len(files))] = np.arange(len(files))
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, counts = [], {name: 0 for name, _ in SPLIT_SHARES}
    for i, f in enumerate(files):
        split = SPLIT_SHARES[int(np.searchsorted(edges, rank[i], side="right"))][0]
        g = glyph(f)
        for k in range(per_emoji):
            count = int(rng.integers(1, max_count + 1))
            name = f"{f.parent.name}_{f.stem}_{k}.png"
            picture(g, count, rng).save(out / "images" / name)
            rows.append({"path": f"images/{name}", "label": count, "split": split, "group": f.parent.name})
            counts[split] += 1
    with (out / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split", "group"])
        w.writeheader()
        w.writerows(rows)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-emoji", type=int, default=2, help="pictures of each emoji (default 2)")
    ap.add_argument("--max-count", type=int, default=9, help="counts drawn in 1..MAX (default 9)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    counts = build(a.out, per_emoji=a.per_emoji, max_count=a.max_count, seed=a.seed)
    print(f"wrote {sum(counts.values())} pictures to {a.out}/manifest.csv ({counts})")


if __name__ == "__main__":
    main()
