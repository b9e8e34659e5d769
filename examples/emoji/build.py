"""Build the bundled emoji image-classification example dataset.

Renders emoji from the Noto Color Emoji font into small square RGB PNGs, one
folder per Unicode emoji group (the class label) as listed in Unicode's
``emoji-test.txt``. Both inputs come from Debian packages::

    apt-get install fonts-noto-color-emoji unicode-data
    python examples/emoji/build.py

Output is deterministic for a given ``--seed`` (and font / data versions).
Only ``<out>/<class>/*.png`` files are ever removed or written.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

HERE = Path(__file__).resolve().parent
DEFAULT_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
DEFAULT_EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")

# Unicode group name -> class folder name ("Component" is deliberately absent).
GROUPS: dict[str, str] = {
    "Smileys & Emotion": "smileys_emotion",
    "People & Body": "people_body",
    "Animals & Nature": "animals_nature",
    "Food & Drink": "food_drink",
    "Travel & Places": "travel_places",
    "Activities": "activities",
    "Objects": "objects",
    "Symbols": "symbols",
    "Flags": "flags",
}

FONT_PX = 109  # the only bitmap strike in NotoColorEmoji (CBDT)
ZWJ = 0x200D
SKIN_TONES = range(0x1F3FB, 0x1F400)
TAGS = range(0xE0020, 0xE0080)  # subdivision flags, e.g. England
TOFU_PROBE = "\ue000"  # private-use code point: shows what "missing" looks like
OPAQUE = 32  # alpha above this counts as a visible pixel
MIN_OPAQUE_PIXELS = 64  # fewer visible pixels than this (at 109 px) is blank
REFERENCE = "\U0001f600"  # grinning face: the advance of one emoji glyph
MAX_ADVANCE = 1.5  # in REFERENCE advances; more means an unshaped sequence


@dataclass(frozen=True)
class Emoji:
    """One fully-qualified emoji-test.txt entry."""

    codepoints: tuple[int, ...]
    name: str

    @property
    def text(self) -> str:
        """The emoji as a string."""
        return "".join(map(chr, self.codepoints))

    @property
    def stem(self) -> str:
        """File stem: lowercase hex code points joined by '-', e.g. '2764-fe0f'."""
        return "-".join(f"{cp:x}" for cp in self.codepoints)

    @property
    def simple(self) -> bool:
        """No ZWJ sequences, skin-tone modifiers or tag (subdivision) sequences."""
        return not any(cp == ZWJ or cp in SKIN_TONES or cp in TAGS for cp in self.codepoints)


def parse_emoji_test(path: Path) -> dict[str, list[Emoji]]:
    """Return the fully-qualified emoji of each group, in file (CLDR) order."""
    groups: dict[str, list[Emoji]] = {}
    group = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        if not line.strip() or line.startswith("#"):
            continue
        fields, _, comment = line.partition("#")
        cps, _, status = fields.partition(";")
        if status.strip() != "fully-qualified":
            continue
        name = comment.strip().split(" ", 2)[-1]  # "😀 E1.0 grinning face"
        emoji = Emoji(tuple(int(cp, 16) for cp in cps.split()), name)
        groups.setdefault(group, []).append(emoji)
    return groups


def render(font: ImageFont.FreeTypeFont, text: str) -> Image.Image | None:
    """Render text to RGBA, cropped to its visible pixels (None if nothing)."""
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("RGBA", (right - left + 8, bottom - top + 8))
    draw = ImageDraw.Draw(canvas)
    draw.text((4 - left, 4 - top), text, font=font, embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    return canvas.crop(bbox) if bbox else None


def usable_glyph(font: ImageFont.FreeTypeFont, text: str, tofu: Image.Image | None) -> Image.Image | None:
    """Render text; None if blank, the missing-glyph box or an unshaped sequence."""
    # A sequence the layout engine could not shape advances by several glyphs.
    if font.getlength(text) > MAX_ADVANCE * font.getlength(REFERENCE):
        return None
    glyph = render(font, text)
    if glyph is None or (tofu is not None and glyph.tobytes() == tofu.tobytes()):
        return None
    alpha = np.asarray(glyph.getchannel("A"))
    return glyph if int((alpha > OPAQUE).sum()) >= MIN_OPAQUE_PIXELS else None


def compose(glyph: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """Paste the glyph on a light seeded background with random padding; resize."""
    side = max(glyph.size)
    left, top, right, bottom = (round(side * rng.uniform(0.04, 0.14)) for _ in "ltrb")
    width = glyph.width + left + right
    height = glyph.height + top + bottom
    square = max(width, height)
    colour = tuple(rng.randint(232, 255) for _ in "rgb")
    canvas = Image.new("RGBA", (square, square), (*colour, 255))
    # Centre the padded box in the square canvas.
    canvas.alpha_composite(glyph, (left + (square - width) // 2, top + (square - height) // 2))
    return canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def require(path: Path, package: str) -> None:
    """Exit with an install hint if a required input file is missing."""
    if not path.is_file():
        sys.exit(
            f"error: {path} not found; install the Debian package {package} "
            f"(apt-get install {package}) or pass the path explicitly"
        )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--out", type=Path, default=HERE / "images", help="output folder")
    add("--per-class", type=int, default=40, help="images per class")
    add("--size", type=int, default=80, help="square image side in pixels")
    add("--seed", type=int, default=0, help="selection / augmentation seed")
    add("--font", type=Path, default=DEFAULT_FONT, help="NotoColorEmoji.ttf")
    add("--emoji-test", type=Path, default=DEFAULT_EMOJI_TEST, help="emoji-test.txt")
    args = parser.parse_args(argv)
    if args.per_class < 1 or args.size < 1:
        parser.error("--per-class and --size must be positive")

    require(args.font, "fonts-noto-color-emoji")
    require(args.emoji_test, "unicode-data")
    if not features.check("raqm"):
        # Without text shaping, flags and other sequences fall apart into glyphs.
        sys.exit("error: this Pillow lacks libraqm support (install libraqm0)")

    font = ImageFont.truetype(str(args.font), FONT_PX)
    tofu = render(font, TOFU_PROBE)
    groups = parse_emoji_test(args.emoji_test)

    for group, folder in GROUPS.items():
        candidates = [e for e in groups.get(group, []) if e.simple]
        random.Random(f"{args.seed}:{folder}").shuffle(candidates)

        dest = args.out / folder
        dest.mkdir(parents=True, exist_ok=True)
        for stale in dest.glob("*.png"):  # only our own previous outputs
            stale.unlink()

        written = skipped = 0
        for emoji in candidates:
            if written == args.per_class:
                break
            glyph = usable_glyph(font, emoji.text, tofu)
            if glyph is None:
                skipped += 1
                continue
            # Per-image RNG: an image doesn't depend on which others were picked.
            rng = random.Random(f"{args.seed}:{folder}:{emoji.stem}")
            image = compose(glyph, args.size, rng)
            image.save(dest / f"{emoji.stem}.png", optimize=True)
            written += 1

        note = f", {skipped} skipped (not rendered)" if skipped else ""
        print(f"{folder:16s} {written:3d} images{note}")
        if written < args.per_class:
            print(f"warning: only {written} usable emoji in {group!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
