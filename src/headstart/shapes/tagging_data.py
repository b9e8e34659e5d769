"""CoNLL-style tagged data for `--task tag`: read, check, repair, split.

    EU      B-ORG        one token per line: the token first, its tag last (columns between are ignored)
    rejects O
    German  B-MISC
                         a blank line ends a sentence; `-DOCSTART-` lines are skipped

DATA is a file (its sentences split by seed into train/val/test) or a folder holding train.txt and
optionally val.txt (or dev.txt) and test.txt (.conll, .bio, .tsv or no suffix also read); a split the folder
lacks is drawn from train by seed. Tags are IOB2 (O, B-TYPE, I-TYPE). An `I-X` that starts an entity (after
O, at the start of a sentence, or after another type) is what seqeval and conlleval read as a new entity:
it is repaired to `B-X` and listed in data.json's notes; any other tag is refused naming file:line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError

OUTSIDE = "O"
DOCSTART = "-DOCSTART-"
SUFFIXES = (".txt", ".conll", ".bio", ".tsv", "")
SPLIT_FILES = {"train": ("train",), "val": ("val", "dev", "valid", "validation"), "test": ("test",)}
FORMAT_FIX = (
    "write one `TOKEN TAG` pair per line (whitespace-separated, the tag last), a blank line between "
    "sentences, tags in IOB2: O, B-TYPE, I-TYPE"
)


@dataclass(frozen=True)
class Sentence:
    """One tagged sentence: its tokens and IOB2 tags, and where it starts (`file:line`)."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    where: str = ""

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


@dataclass
class TagData:
    """The splits of a tagging dataset, its entity types (from train), and what the reader noted."""

    splits: dict[str, list[Sentence]]
    types: list[str]
    root: Path
    layout: str
    notes: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return labels_of(self.types)

    def summary(self) -> dict[str, Any]:
        """data.json: layout, sentences, tokens and entities per split and type, repairs and warnings."""
        from headstart.shapes.tagging_metrics import chunks

        per: dict[str, Any] = {}
        for name, sents in self.splits.items():
            ents: dict[str, int] = {}
            for s in sents:
                for typ, _, _ in chunks(s.tags):
                    ents[typ] = ents.get(typ, 0) + 1
            per[name] = {
                "sentences": len(sents),
                "tokens": sum(len(s.tokens) for s in sents),
                "entities": dict(sorted(ents.items())),
            }
        return {
            "task": "tag",
            "layout": self.layout,
            "root": str(self.root),
            "types": self.types,
            "labels": self.labels,
            "splits": per,
            # per split, entities per type: what the report's data section and the card count as classes
            "counts": {name: v["entities"] for name, v in per.items()},
            "notes": self.notes,
            "skipped": {},
            "warnings": self.warnings,
        }


def labels_of(types: list[str]) -> list[str]:
    """The head's outputs: O, then B- and I- of each type."""
    return [OUTSIDE, *[f"{p}-{t}" for t in types for p in ("B", "I")]]


def _check_tag(tag: str, where: str) -> tuple[str, str]:
    """(prefix, type) of an IOB2 tag; anything else is refused naming `where`."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, sep, typ = tag.partition("-")
    if sep and prefix in ("B", "I") and typ:
        return prefix, typ
    hint = ""
    if sep and prefix in ("E", "S", "L", "U"):
        hint = " (IOBES/BILOU: write S- as B- and E-/L- as I-)"
    raise HeadstartError(
        f"{where}: tag {tag!r} is not IOB2{hint}", fix=f"use O, B-TYPE or I-TYPE; {FORMAT_FIX}"
    )


def read_conll(path: Path, notes: dict[str, str] | None = None) -> list[Sentence]:
    """The sentences of one CoNLL file; `notes` collects the I- tags repaired to B- (file:line -> what)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise HeadstartError(
            f"{path} is not UTF-8 text (byte {e.start}: {e.reason})", fix="save the file as UTF-8"
        ) from None
    except OSError as e:
        raise HeadstartError(f"cannot read {path}: {e.strerror}", fix="give a readable CoNLL file") from None
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    prev = (OUTSIDE, "")

    def close() -> None:
        if tokens:
            sentences.append(Sentence(tuple(tokens), tuple(tags), f"{path}:{start}"))
        tokens.clear()
        tags.clear()

    for n, line in enumerate(text.splitlines(), 1):
        cols = line.split()
        if not cols or cols[0] == DOCSTART:
            close()
            prev = (OUTSIDE, "")
            continue
        where = f"{path}:{n}"
        if len(cols) < 2:
            raise HeadstartError(
                f"{where}: one column ({line.strip()[:40]!r}); a line needs a token and its tag",
                fix=FORMAT_FIX,
            )
        tag = cols[-1]
        prefix, typ = _check_tag(tag, where)
        if prefix == "I" and prev[1] != typ:  # starts an entity: what seqeval reads as B-
            was = "the start of the sentence" if not tokens else (f"{prev[0]}-{prev[1]}" if prev[1] else "O")
            if notes is not None:
                notes[where] = f"I-{typ} after {was}: read as B-{typ} (IOB2 repair)"
            tag, prefix = f"B-{typ}", "B"
        if not tokens:
            start = n
        tokens.append(cols[0])
        tags.append(tag)
        prev = (prefix, typ)
    close()
    return sentences


def _find(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in SUFFIXES:
            p = folder / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def _draw(sents: list[Sentence], fraction: float, rng: random.Random) -> tuple[list, list]:
    """(kept, drawn): `fraction` of the sentences drawn by seed (at least one when there are two)."""
    order = list(range(len(sents)))
    rng.shuffle(order)
    n = min(len(sents) - 1, max(1, round(fraction * len(sents)))) if fraction > 0 and len(sents) > 1 else 0
    drawn = set(order[:n])
    return [s for i, s in enumerate(sents) if i not in drawn], [sents[i] for i in sorted(drawn)]


def load_tag_data(path: str | Path, *, seed: int = 0, val: float = 0.15, test: float = 0.15) -> TagData:
    """A CoNLL file or a folder of split files (module docstring), checked and split."""
    root = Path(path).expanduser()
    notes: dict[str, str] = {}
    rng = random.Random(seed)
    if root.is_dir():
        found = {s: _find(root, stems) for s, stems in SPLIT_FILES.items()}
        if found["train"] is None:
            raise HeadstartError(
                f"{root} holds no train.txt (nor train.conll, train.bio, train.tsv, train)",
                fix="put the training sentences in train.txt (val.txt/dev.txt and test.txt beside it), or "
                "give one CoNLL file to split by seed",
            )
        splits = {s: read_conll(p, notes) if p else [] for s, p in found.items()}
        drawn = [s for s in ("val", "test") if found[s] is None]
        layout = "folder: " + ", ".join(p.name for p in found.values() if p)
        if drawn:
            layout += f"; {' and '.join(drawn)} drawn from {found['train'].name} by seed {seed}"
        for s in drawn:
            splits["train"], splits[s] = _draw(splits["train"], val if s == "val" else test, rng)
    elif root.is_file():
        every = read_conll(root, notes)
        rest, test_part = _draw(every, test, rng)
        train, val_part = _draw(rest, val / max(1e-9, 1 - test), rng)
        splits = {"train": train, "val": val_part, "test": test_part}
        layout = f"file: {root.name}, split by seed {seed}"
        root = root.parent
    else:
        raise HeadstartError(
            f"{root} does not exist",
            fix="give a CoNLL file or a folder with train.txt (and val.txt, test.txt)",
        )
    if not splits["train"]:
        raise HeadstartError(f"{path} has no training sentence", fix=FORMAT_FIX)
    return _typed(TagData(splits, [], root.resolve(), layout, notes))


def _typed(data: TagData) -> TagData:
    """Entity types from train; a type only val or test has cannot be predicted: said, not hidden."""
    from headstart.shapes.tagging_metrics import chunks

    def types(sents: list[Sentence]) -> set[str]:
        return {t for s in sents for t, _, _ in chunks(s.tags)}

    data.types = sorted(types(data.splits["train"]))
    if not data.types:
        raise HeadstartError(
            f"the training sentences of {data.root} tag no entity (every tag is O)",
            fix="tag entities as B-TYPE / I-TYPE",
        )
    for s in ("val", "test"):
        unseen = sorted(types(data.splits[s]) - set(data.types))
        if unseen:
            data.warnings.append(
                f"entity type(s) {unseen} occur in {s} but not in train: the model cannot predict them "
                "(they count as missed)"
            )
    return data


def sentences_of_rows(rows: list[Any], split: str) -> list[Sentence]:
    """The sentences split.csv records for `split` (path: the tokens, label: the tags, space-joined)."""
    out = []
    for r in rows:
        if r.split == split:
            tokens, tags = tuple(r.path.split(" ")), tuple(r.label.split(" "))
            if len(tokens) != len(tags):
                raise HeadstartError(
                    f"split.csv row {r.path[:40]!r} has {len(tokens)} tokens and {len(tags)} tags",
                    fix="the run folder is damaged; re-run it",
                )
            out.append(Sentence(tokens, tags))
    return out
