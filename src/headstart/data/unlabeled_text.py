"""Unlabeled text (continued pretraining, distillation, domain adaptation): a `.txt` file, a folder of
them, or a table with a `text` column.

A `.txt` file holds one text per line, or paragraphs separated by blank lines, each joined into one text.
`layout="auto"` reads paragraphs when blank lines split the file into blocks most of which span several
lines, else lines; `layout="lines"` or `"paragraphs"` says it outright. Empty and
whitespace-only texts are skipped and counted. A file that is not UTF-8 is an error naming the file and
line: continued pretraining on mis-decoded text would teach the model mojibake.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.data.text import TABLE_SUFFIXES, _decode_utf8
from headstart.errors import HeadstartError
from headstart.fileio import sha256_file

TXT_LAYOUTS = ("auto", "lines", "paragraphs")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass
class UnlabeledTexts:
    """Texts read from `path`, with what was skipped and the content hash of the input files."""

    path: str
    texts: list[str]
    files: int
    skipped_empty: int
    sha256: str
    layout: str  # "lines", "paragraphs", "table", or "folder"
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "layout": self.layout,
            "files": self.files,
            "texts": len(self.texts),
            "skipped_empty": self.skipped_empty,
            "sha256": self.sha256,
        }

    def split(self, held_out: float, seed: int) -> tuple[list[str], list[str]]:
        """(train, held-out) texts: a seeded shuffle, at least one text on each side."""
        if not 0 < held_out < 1:
            raise HeadstartError(f"held-out fraction {held_out}: must be between 0 and 1", fix="e.g. 0.1")
        if len(self.texts) < 2:
            raise HeadstartError(
                f"{self.path} has {len(self.texts)} text(s); continued pretraining needs at least 2 "
                "(one is held out to measure perplexity)",
                fix="give more unlabeled text",
            )
        order = list(range(len(self.texts)))
        random.Random(seed).shuffle(order)
        n_held = min(len(order) - 1, max(1, round(held_out * len(order))))
        held = sorted(order[:n_held])
        train = sorted(order[n_held:])
        return [self.texts[i] for i in train], [self.texts[i] for i in held]


def split_txt(content: str, layout: str = "auto") -> tuple[list[str], int, str]:
    """(texts, empty ones skipped, "lines" | "paragraphs") of a `.txt` file's content."""
    if layout not in TXT_LAYOUTS:
        raise HeadstartError(f"unknown text layout {layout!r}", fix=f"one of {', '.join(TXT_LAYOUTS)}")
    content = content.replace("\r\n", "\n").replace("\r", "\n")
    blocks = _BLANK_LINE.split(content)
    if layout == "auto":
        wrapped = sum(1 for b in blocks if b.strip().count("\n") > 0)
        paragraphs = len(blocks) > 1 and wrapped * 2 > len([b for b in blocks if b.strip()])
        layout = "paragraphs" if paragraphs else "lines"
    if layout == "paragraphs":
        texts = [" ".join(line.strip() for line in b.strip().split("\n")) for b in blocks]
    else:
        texts = content.split("\n")
        if texts and texts[-1] == "":  # the final newline ends the last line; it opens no empty text
            texts.pop()
    kept = [t.strip() for t in texts if t.strip()]
    return kept, len(texts) - len(kept), layout


def _table_texts(path: Path) -> tuple[list[str], int]:
    from headstart.data.text import _rows_csv, _rows_jsonl, _rows_parquet

    reader = {".csv": _rows_csv, ".jsonl": _rows_jsonl, ".parquet": _rows_parquet}[path.suffix.lower()]
    rows = reader(path)
    if rows and "text" not in rows[0][1]:
        raise HeadstartError(
            f"{path} has no `text` column (has {sorted(rows[0][1])})", fix="name the text column `text`"
        )
    raw = ["" if r.get("text") is None else str(r["text"]) for _, r in rows]
    kept = [t.strip() for t in raw if t.strip()]
    return kept, len(raw) - len(kept)


def read_unlabeled(path: str | Path, layout: str = "auto") -> UnlabeledTexts:
    """Read unlabeled texts from a `.txt` file, a folder of `.txt` files, or a CSV/JSONL/Parquet table.
    `layout` tells how `.txt` files hold their texts (see the module docstring)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise HeadstartError(
            f"{root} does not exist", fix="give a .txt file, a folder of .txt files or a CSV"
        )
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.txt") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise HeadstartError(f"{root} holds no .txt files", fix="put the unlabeled text in .txt files")
        texts: list[str] = []
        skipped = 0
        h = hashlib.sha256()
        for f in files:
            t, s, _ = split_txt(_decode_utf8(f), layout)
            texts += t
            skipped += s
            h.update(f"{f.relative_to(root).as_posix()}\0{sha256_file(f)}\n".encode())
        result = UnlabeledTexts(str(root), texts, len(files), skipped, h.hexdigest(), "folder")
    elif root.suffix.lower() in TABLE_SUFFIXES:
        texts, skipped = _table_texts(root)
        result = UnlabeledTexts(str(root), texts, 1, skipped, sha256_file(root), "table")
    else:  # any other file is read as plain text (`.txt`, `.md`, no suffix ...)
        texts, skipped, found = split_txt(_decode_utf8(root), layout)
        result = UnlabeledTexts(str(root), texts, 1, skipped, sha256_file(root), found)
    if not result.texts:
        raise HeadstartError(
            f"{root} holds no text ({result.skipped_empty} empty or whitespace-only entries skipped)",
            fix="give a file with at least two non-empty texts",
        )
    return result
