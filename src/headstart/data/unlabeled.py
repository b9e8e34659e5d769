"""Unlabeled inputs (distillation transfer sets, domain-adversarial target data, continued pretraining).

Images and audio: a folder (searched recursively; unreadable files are skipped later, when decoded).
Text: a `.txt` file (one text per line), a folder of `.txt` files (one text per file), or a CSV / JSONL /
Parquet table with a `text` column. Empty and whitespace-only texts are skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from headstart.data.text import (
    TABLE_SUFFIXES,
    TEXT_FILE_SUFFIX,
    _decode_utf8,
    _empty_reason,
    _rows_csv,
    _rows_jsonl,
    _rows_parquet,
)
from headstart.errors import HeadstartError


@dataclass
class Unlabeled:
    """Sources to feed a backbone: file paths (images, audio) or the texts themselves."""

    sources: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def _texts(path: Path) -> Unlabeled:
    out: list[str] = []
    skipped: dict[str, str] = {}

    def add(where: str, text: object) -> None:
        reason = _empty_reason(text)
        if reason:
            skipped[where] = reason
        else:
            out.append(str(text))

    suffix = path.suffix.lower()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if f.suffix.lower() != TEXT_FILE_SUFFIX:
                skipped[str(f)] = "not a .txt file"
                continue
            add(str(f), _decode_utf8(f))
    elif suffix in TABLE_SUFFIXES:
        reader = {".csv": _rows_csv, ".jsonl": _rows_jsonl, ".parquet": _rows_parquet}[suffix]
        rows = reader(path)
        if rows and "text" not in rows[0][1]:
            raise HeadstartError(f"{path} has no `text` column", fix="name the column of texts `text`")
        for line, row in rows:
            add(f"{path}:{line}", row.get("text"))
    else:
        for n, line in enumerate(_decode_utf8(path).splitlines(), 1):
            add(f"{path}:{n}", line)
    return Unlabeled(out, skipped)


def load_unlabeled(path: str | Path, modality: str) -> Unlabeled:
    """The unlabeled inputs under `path` for a backbone of `modality`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise HeadstartError(f"unlabeled data {p} does not exist", fix="check the path")
    got = _texts(p) if modality == "text" else _files(p)
    if not got.sources:
        raise HeadstartError(
            f"no usable unlabeled {modality} inputs in {p} ({len(got.skipped)} skipped)",
            fix="point at a folder of files, or (text) a .txt file with one text per line or a table with a "
            "`text` column",
        )
    return got


def _files(path: Path) -> Unlabeled:
    if path.is_file():
        return Unlabeled([str(path)])
    files = sorted(
        str(p) for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.parts[-1:])
    )
    return Unlabeled(files)
