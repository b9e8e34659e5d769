"""Build a small CoNLL tagging dataset offline: Unicode character names mentioned in short sentences.

Each sentence is a template ("press {} then {}", "write {} with {} above it", ...) whose slots hold the
names of Unicode characters, lower-cased and split into words ("latin small letter a with acute"). Every
name is one entity; its type is the character's general category in Python's own Unicode database
(`unicodedata.category`, major class): LETTER (L*), MARK (M*), NUMBER (N*), PUNCT (P*), SYMBOL (S*). So
the labels are correct by construction, and not recoverable from a word alone: the templates' own words
("a", "small", "with", "sign", "above", "letter", "and", "digit") also occur inside names, two names may
stand side by side, and a name's type is decided by the whole name ("modifier letter circumflex accent" is
a SYMBOL, "combining circumflex accent" a MARK, "latin small letter a with circumflex" a LETTER).

    python examples/build_tags.py                       # -> examples/tags/{train,val,test}.txt
    headstart probe examples/tags --task tag            # minilm-l6, frozen, closed-form head
    headstart fit examples/tags --task tag --strategy lora

Needs nothing but Python: the names and categories come with its `unicodedata` module (the Unicode
version is written into examples/tags/README.md).
"""

from __future__ import annotations

import argparse
import random
import unicodedata
from pathlib import Path

TYPES = {"L": "LETTER", "M": "MARK", "N": "NUMBER", "P": "PUNCT", "S": "SYMBOL"}
TEMPLATES = (
    "press {} then {}",
    "the sign shows {} next to {}",
    "a small mark : {}",
    "write {} with {} above it",
    "is {} a letter or a sign ?",
    "copy {} , {} and {} into the text",
    "{} looks like {}",
    "between {} and {} there is a small space",
    "the digit after {} is {}",
    "the keys {} {} sit side by side",
    "{}",
    "type {} and a {}",
)
# Code points drawn from: the alphabetic, symbol and punctuation blocks below the CJK ideographs (whose
# names are numbers, not words), Hangul syllables excluded for the same reason.
RANGES = ((0x21, 0x2FFF), (0xA640, 0xABFF), (0xFB00, 0xFFEF))
MAX_NAME_WORDS = 8
SPLITS = {"train": 1000, "val": 250, "test": 400}


def pools() -> dict[str, list[str]]:
    """Character names (lower case) per type; names repeated across types are impossible by construction
    (a name is one character)."""
    out: dict[str, list[str]] = {t: [] for t in TYPES.values()}
    for lo, hi in RANGES:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            name = unicodedata.name(ch, "")
            typ = TYPES.get(unicodedata.category(ch)[0])
            if name and typ and len(name.split()) <= MAX_NAME_WORDS:
                out[typ].append(name.lower())
    return out


def sentence(rng: random.Random, names: dict[str, list[str]]) -> list[tuple[str, str]]:
    """One template filled with names of types drawn uniformly: (word, IOB2 tag) pairs."""
    template = rng.choice(TEMPLATES)
    words: list[tuple[str, str]] = []
    parts = template.split("{}")
    for i, part in enumerate(parts):
        words += [(w, "O") for w in part.split()]
        if i < len(parts) - 1:
            typ = rng.choice(sorted(names))
            name = rng.choice(names[typ]).split()
            words += [(w, ("B-" if j == 0 else "I-") + typ) for j, w in enumerate(name)]
    return words


def build(out: Path, *, seed: int, sizes: dict[str, int]) -> dict[str, int]:
    """Write train/val/test files; the characters of test and val are not used in train (held-out names)."""
    rng = random.Random(seed)
    every = pools()
    held: dict[str, dict[str, list[str]]] = {s: {} for s in sizes}
    for typ, names in every.items():
        names = sorted(names)
        rng.shuffle(names)
        n = len(names)
        cut1, cut2 = int(0.6 * n), int(0.8 * n)
        held["train"][typ], held["val"][typ], held["test"][typ] = names[:cut1], names[cut1:cut2], names[cut2:]
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n in sizes.items():
        lines = []
        for _ in range(n):
            lines += [f"{w} {t}" for w, t in sentence(rng, held[split])] + [""]
        (out / f"{split}.txt").write_text("\n".join(lines), encoding="utf-8")
        counts[split] = n
    (out / "README.md").write_text(
        "Unicode character names in template sentences, tagged with their general category "
        "(LETTER, MARK, NUMBER, PUNCT, SYMBOL); built by examples/build_tags.py "
        f"(seed {seed}, Unicode {unicodedata.unidata_version}, Python's unicodedata). Val and test use "
        "characters train never shows.\n",
        encoding="utf-8",
    )
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "tags")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    counts = build(args.out, seed=args.seed, sizes=SPLITS)
    print(f"wrote {args.out}: " + ", ".join(f"{s} {n} sentences" for s, n in counts.items()))


if __name__ == "__main__":
    main()
