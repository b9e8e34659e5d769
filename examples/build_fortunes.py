"""Build a small text-classification dataset from the Debian `fortunes` files: which file a fortune is from.

Six topical files of /usr/share/games/fortunes (computers, food, law, love, medicine, startrek) are split
on their `%` lines; attribution lines ("-- Author, Source") are removed so the label has to come from
what the fortune says, not from a signature such as "-- Kirk, stardate 3468.1". Fortunes longer than
600 characters are left out (keeps the file small; the rest fit MiniLM's 256 tokens). A seeded sample of
60 per class is written as a CSV with columns `text,label`.

    python examples/build_fortunes.py                 # -> examples/fortunes/fortunes.csv
    headstart probe examples/fortunes/fortunes.csv --backbone minilm-l6

Needs the Debian package `fortunes` (`apt-get install fortunes`).
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import re
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
CATEGORIES = ("computers", "food", "law", "love", "medicine", "startrek")
MAX_CHARS = 600
ATTRIBUTION = re.compile(r"^\s*--\s*\S")  # "  -- Oscar Wilde, ..." (indented signature lines)


def read_fortunes(path: Path) -> list[str]:
    """The fortunes of one file: blocks between `%` lines, attribution lines removed, whitespace tidied."""
    blocks = re.split(r"^%\s*$", path.read_text(encoding="utf-8", errors="replace"), flags=re.MULTILINE)
    out = []
    for block in blocks:
        lines = [ln.rstrip() for ln in block.strip("\n").splitlines() if not ATTRIBUTION.match(ln)]
        text = "\n".join(lines).strip()
        if text:
            out.append(text)
    return out


def build(out: Path, *, per_class: int, seed: int, source: Path = FORTUNES) -> dict[str, int]:
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    for cat in CATEGORIES:
        path = source / cat
        if not path.is_file():
            raise SystemExit(f"{path} not found: install the Debian package `fortunes`")
        texts = sorted({t for t in read_fortunes(path) if len(t) <= MAX_CHARS})
        picked = rng.sample(texts, min(per_class, len(texts)))
        rows += [(t, cat) for t in picked]
        counts[cat] = len(picked)
    rng.shuffle(rows)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("text", "label"))
    writer.writerows(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(out)  # atomic: a reader never sees half a file
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "fortunes" / "fortunes.csv")
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    counts = build(args.out, per_class=args.per_class, seed=args.seed)
    size = args.out.stat().st_size
    print(f"wrote {sum(counts.values())} fortunes ({size / 1024:.0f} KB) to {args.out}: {counts}")


if __name__ == "__main__":
    main()
