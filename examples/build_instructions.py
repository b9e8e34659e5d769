"""Build a small instruction-tuning set offline: "what is the Unicode name of this character?" pairs.

The names come from Python's own Unicode database (`unicodedata`, no download): a seeded sample of
characters from a few blocks (Latin-1 Supplement and Latin Extended-A letters with diacritics, Greek,
Cyrillic, arrows, mathematical operators, currency symbols), each asked about as

    {"prompt": "What is the Unicode name of the character é (U+00E9)?",
     "response": "LATIN SMALL LETTER E WITH ACUTE"}

The base model (SmolLM2-135M-Instruct) answers these with a sentence of its own; the names follow rules
a fine-tune can pick up (letter + case + diacritic), so held-out ROUGE-L shows what instruction tuning
taught. Written as JSONL (one pair a line, no split: `fit` splits it with the seed).

    python examples/build_instructions.py          # -> examples/instructions/unicode_names.jsonl
    headstart fit examples/instructions/unicode_names.jsonl --task generate --out runs/unicode-lora
"""

from __future__ import annotations

import argparse
import json
import random
import unicodedata
from pathlib import Path

BLOCKS = {  # name -> (first, last) code point
    "Latin-1 Supplement": (0x00C0, 0x00FF),
    "Latin Extended-A": (0x0100, 0x017F),
    "Greek": (0x0391, 0x03C9),
    "Cyrillic": (0x0410, 0x044F),
    "Arrows": (0x2190, 0x21FF),
    "Mathematical Operators": (0x2200, 0x22FF),
    "Currency Symbols": (0x20A0, 0x20C0),
}
OUT = Path(__file__).with_name("instructions") / "unicode_names.jsonl"


def pairs(n: int, seed: int) -> list[dict[str, str]]:
    chars = [
        chr(c)
        for lo, hi in BLOCKS.values()
        for c in range(lo, hi + 1)
        if unicodedata.name(chr(c), "") and unicodedata.category(chr(c))[0] in "LS"
    ]
    picked = random.Random(seed).sample(chars, min(n, len(chars)))
    return [
        {
            "prompt": f"What is the Unicode name of the character {ch} (U+{ord(ch):04X})?",
            "response": unicodedata.name(ch),
        }
        for ch in picked
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("-n", type=int, default=300, help="pairs to write")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = pairs(args.n, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(args.out)
    print(f"{len(rows)} pairs -> {args.out} (Unicode {unicodedata.unidata_version})")


if __name__ == "__main__":
    main()
