"""Build a multi-label image dataset from Unicode's emoji keywords: each emoji picture carries every
keyword of its name and subgroup that at least `--min-items` pictures share.

    python examples/build_emoji_keywords.py OUT [--per-subgroup 14] [--min-items 15] [--size 64]
    headstart probe OUT/labels.csv --task multilabel

Labels come from `emoji-test.txt` (Debian package `unicode-data`): the words of the emoji's name ("cat
face") and of its subgroup ("animal-mammal"), minus a few filler words. A keyword that at least
`--min-items` pictures share becomes a label (face, person, food, animal, hand, heart, ...), so "cat
face" is `animal|face|mammal`-like: several labels per item, some from what is drawn, some from what
kind of thing it is. Pictures are rendered with the Noto Color Emoji font (Debian package
`fonts-noto-color-emoji`) by examples/emoji/build.py's renderer; at most `--per-subgroup` emoji per
subgroup (seeded), so the 250 country flags do not swamp the rest. Skin tones, ZWJ sequences and
subdivision flags are left out, as in examples/emoji. Pictures with no kept label are left out.
Deterministic for a given seed (and font / data versions). Writes OUT/images/*.png and OUT/labels.csv
(path,label with labels joined by `|`), nothing else.

Licences: Noto Color Emoji SIL OFL 1.1; Unicode data: Unicode License v3 (see examples/emoji/README.md).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import random
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
#: Words too common or too empty to be a label.
STOP = {"with", "of", "and", "the", "without", "in", "on", "button", "symbol", "sign", "other", "mark"}


def _renderer():  # examples/emoji/build.py: the font renderer the classification example was made with
    spec = importlib.util.spec_from_file_location("emoji_build", HERE / "emoji" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def parse(path: Path) -> list[tuple[tuple[int, ...], str, str]]:
    """(code points, name, subgroup) of every fully-qualified emoji outside the Component group."""
    out, group, sub = [], "", ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            sub = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#") and group != "Component":
            fields, _, comment = line.partition("#")
            cps, _, status = fields.partition(";")
            if status.strip() == "fully-qualified":
                out.append((tuple(int(c, 16) for c in cps.split()), comment.strip().split(" ", 2)[-1], sub))
    return out


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2 and w not in STOP}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (OUT/images, OUT/labels.csv)")
    p.add_argument("--per-subgroup", type=int, default=14, help="emoji per Unicode subgroup at most")
    p.add_argument("--min-items", type=int, default=15, help="pictures a keyword needs to become a label")
    p.add_argument("--size", type=int, default=64, help="square picture side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--emoji-test", type=Path, default=EMOJI_TEST)
    args = p.parse_args(argv)
    build = _renderer()
    build.require(args.emoji_test, "unicode-data")
    build.require(build.DEFAULT_FONT, "fonts-noto-color-emoji")
    from PIL import ImageFont, features

    if not features.check("raqm"):
        sys.exit("error: this Pillow lacks libraqm support (install libraqm0): flags would not shape")
    font = ImageFont.truetype(str(build.DEFAULT_FONT), build.FONT_PX)
    tofu = build.render(font, build.TOFU_PROBE)

    by_sub: dict[str, list[tuple[tuple[int, ...], str, str]]] = {}
    for e in parse(args.emoji_test):
        if build.Emoji(e[0], e[1]).simple:
            by_sub.setdefault(e[2], []).append(e)
    chosen = []
    for sub, entries in by_sub.items():
        random.Random(f"{args.seed}:{sub}").shuffle(entries)
        chosen += entries[: args.per_subgroup]
    keywords = {e[0]: words(e[1]) | words(e[2]) for e in chosen}
    counts = Counter(w for ws in keywords.values() for w in ws)
    kept = {w for w, n in counts.items() if n >= args.min_items}

    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows, unrendered = [], 0
    for cps, _name, _sub in chosen:
        labels = sorted(keywords[cps] & kept)
        if not labels:
            continue
        emoji = build.Emoji(cps, _name)
        glyph = build.usable_glyph(font, emoji.text, tofu)
        if glyph is None:
            unrendered += 1
            continue
        rng = random.Random(f"{args.seed}:{emoji.stem}")
        build.compose(glyph, args.size, rng).save(images / f"{emoji.stem}.png", optimize=True)
        rows.append((f"images/{emoji.stem}.png", "|".join(labels)))
    with open(args.out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(sorted(rows))
    per_label = Counter(lab for _, ls in rows for lab in ls.split("|"))
    print(f"{len(rows)} pictures, {len(per_label)} labels ({unrendered} emoji not rendered): {args.out}")
    print(", ".join(f"{lab} {n}" for lab, n in per_label.most_common()))


if __name__ == "__main__":
    main()
