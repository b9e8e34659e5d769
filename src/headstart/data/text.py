"""Labeled texts: a CSV / JSONL / Parquet table with `text,label[,split][,group]`, or folders of `.txt` files.

Accepted layouts (found by `is_text_data`, or forced with `load_dataset(..., modality="text")`):
- a table with a `text` column and a `label` column (optionally `split`, and `group` or `slice`: the
  text's slice, scored apart by evaluate): one text per row;
- `DATA/<class>/*.txt`, or `DATA/{train,val,test}/<class>/*.txt`: one text per file.

Each text becomes `Item(path=Path("<file>:<row>"), label, split, text=...)` (a `.txt` file's item path is
the file itself). Empty and whitespace-only texts are skipped and listed in `Dataset.skipped` with the
reason. A table that is not UTF-8 is an error naming the file and line; a `.txt` file that is not UTF-8 is
skipped with the reason (`read_text_file`: predict and export read the files given to a text model with
it too, one file = one text). Texts longer than the backbone's token limit are truncated by its tokenizer,
which counts them (`backbone.input_notes["truncated"]`, `backbone.truncated_count`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from headstart.data.dataset import Dataset, assemble_dataset
from headstart.data.items import GROUP_COLUMNS, SPLITS, Item, row_group
from headstart.data.layouts import TABLE_COLUMNS, class_folders
from headstart.errors import BadInput, HeadstartError

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
TEXT_FILE_SUFFIX = ".txt"
_SNIFF_FILES = 200  # files looked at to decide whether a folder holds texts


class NotUTF8(ValueError):
    """Bytes that are not UTF-8: `line` (1-based), `byte` (the first bad one) and `offset`."""

    def __init__(self, line: int, byte: int, offset: int) -> None:
        super().__init__(f"not UTF-8 text (line {line}, byte 0x{byte:02x})")
        self.line, self.byte, self.offset = line, byte, offset


def decode_utf8(data: bytes) -> str:
    """UTF-8 text (a BOM is dropped); NotUTF8 says where it is not, for a message that names the place."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise NotUTF8(data[: e.start].count(b"\n") + 1, data[e.start], e.start) from None


def _decode_utf8(path: Path) -> str:
    try:
        return decode_utf8(path.read_bytes())
    except NotUTF8 as e:
        raise HeadstartError(
            f"{path}:{e.line} is not UTF-8 text (byte 0x{e.byte:02x} at offset {e.offset})",
            fix="save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from None


def table_columns(path: Path) -> list[str]:
    """Column names of a table, reading only its head."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            if suffix == ".jsonl":
                for line in f:
                    if line.strip():
                        obj = json.loads(line)
                        return list(obj) if isinstance(obj, dict) else []
                return []
            return next(csv.reader(f), [])
    except (OSError, ValueError):
        return []


def _sample_files(folder: Path) -> list[Path]:
    out: list[Path] = []
    for p in folder.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            out.append(p)
            if len(out) >= _SNIFF_FILES:
                break
    return out


def is_text_data(root: Path) -> bool:
    """A table with a `text` column, or a folder whose files are mostly `.txt`."""
    if root.is_file():
        return root.suffix.lower() in TABLE_SUFFIXES and "text" in table_columns(root)
    if root.is_dir():
        files = _sample_files(root)
        n_txt = sum(1 for p in files if p.suffix.lower() == TEXT_FILE_SUFFIX)
        return bool(files) and 2 * n_txt > len(files)
    return False


# -- tables -------------------------------------------------------------------------------------------------


def _rows_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(_decode_utf8(path), newline=""))
    rows = []
    start = 2  # the line a record starts on (quoted texts may span lines)
    try:
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise HeadstartError(f"{path}:{reader.line_num} is not valid CSV ({e})", fix="quote texts") from e
    return rows


def _rows_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for n, line in enumerate(_decode_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise HeadstartError(
                f"{path}:{n} is not valid JSON ({e.msg})", fix="one JSON object per line"
            ) from e
        if not isinstance(obj, dict):
            raise HeadstartError(f"{path}:{n} is not a JSON object", fix="one JSON object per line")
        rows.append((n, obj))
    return rows


def _rows_parquet(path: Path) -> list[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = set(pq.read_schema(path).names)
    try:
        wanted = ("text", "label", "split", *GROUP_COLUMNS)
        table = pq.read_table(path, columns=[c for c in wanted if c in names])
    except (OSError, pa.ArrowException) as e:
        raise HeadstartError(f"cannot read {path}: {e}", fix="check that it is a Parquet file") from e
    return [(i, row) for i, row in enumerate(table.to_pylist(), 1)]


def read_text_table(path: Path) -> tuple[list[Item], dict[str, str]]:
    """(items, {"<file>:<row>": reason} for skipped rows) of a `text,label[,split]` table."""
    suffix = path.suffix.lower()
    reader = {".csv": _rows_csv, ".jsonl": _rows_jsonl, ".parquet": _rows_parquet}.get(suffix)
    if reader is None:
        raise HeadstartError(
            f"{path} is not a CSV, JSONL or Parquet table", fix="use .csv, .jsonl or .parquet"
        )
    rows = reader(path)
    if not rows:
        raise HeadstartError(f"{path} has no rows", fix="add `text,label` rows")
    columns = set(rows[0][1])
    missing = {"text", "label"} - columns
    if missing:
        raise HeadstartError(
            f"{path} lacks column(s) {sorted(missing)} (has {sorted(columns)}): {TABLE_COLUMNS}",
            fix="rename its columns: the texts to `text`, the classes to `label`",
        )
    items: list[Item] = []
    skipped: dict[str, str] = {}
    for row_id, r in rows:
        where = f"{path}:{row_id}"
        label = "" if r.get("label") is None else str(r["label"]).strip()
        split = "" if r.get("split") is None else str(r["split"]).strip()
        if not label:
            raise HeadstartError(f"{where} has an empty label", fix="give every row a label, or remove it")
        if split and split not in SPLITS:
            raise HeadstartError(f"{where} has split {split!r}", fix=f"use one of {', '.join(SPLITS)}")
        text = r.get("text")
        reason = _empty_reason(text)
        if reason:
            skipped[where] = reason
            continue
        items.append(Item(Path(where), label, split or None, text=str(text), group=row_group(r, where)))
    return items, skipped


def _empty_reason(text: object) -> str | None:
    if text is None or (isinstance(text, float) and text != text):  # missing, or NaN from a table
        return "empty text (missing)"
    if not str(text):
        return "empty text"
    if not str(text).strip():
        return "whitespace-only text"
    return None


# -- folders of .txt files --------------------------------------------------------------------------------


def _read_txt_folder(folder: Path, split: str | None, skipped: dict[str, str]) -> list[Item]:
    items = []
    for class_dir, files in class_folders(folder, skipped):  # junk, links, nested folders: as for files
        for f in files:
            if f.suffix.lower() != TEXT_FILE_SUFFIX:
                skipped[str(f)] = "not a .txt file"
                continue
            try:
                text = read_text_file(f)
            except BadInput as e:
                skipped[str(f)] = e.reason
                continue
            items.append(Item(f, class_dir.name, split, text=text))
    return items


def read_text_file(path: str | Path) -> str:
    """One file as one text (UTF-8, a BOM dropped): how training reads `.txt` class folders, and how predict
    and export read the files given to a text model. Raises BadInput with the reason when unusable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(path, "file not found") from None
    except IsADirectoryError:
        raise BadInput(path, "a folder, not a text file") from None
    except OSError as e:
        raise BadInput(path, f"cannot read ({e.strerror or e})") from None
    try:
        text = decode_utf8(data)
    except NotUTF8 as e:
        raise BadInput(path, str(e)) from None
    reason = _empty_reason(text)
    if reason:
        raise BadInput(path, reason)
    return text


def read_one_text(path: str | Path, *, table_fix: str) -> str:
    """A file given where ONE text is expected (predict, export, search): its text (`read_text_file`). A
    table holds many texts, so it is refused (`table_fix`: what to do instead) rather than read whole as
    one text, which would give a wrong answer. Raises BadInput with the reason."""
    suffix = Path(path).suffix.lower()
    if suffix in TABLE_SUFFIXES:
        raise BadInput(path, f"a {suffix} table, not one text ({table_fix})")
    return read_text_file(path)


# -- the dataset ------------------------------------------------------------------------------------------


def load_text_dataset(
    root: Path, *, val: float = 0.15, test: float = 0.15, seed: int = 0, task: str = "classify"
) -> Dataset:
    """Read labeled texts from `root` (see the module docstring) and give each a split."""
    skipped: dict[str, str] = {}
    if root.is_file():
        items, skipped = read_text_table(root)
        layout = "text-table"
    elif (root / "train").is_dir():
        items = [it for s in SPLITS if (root / s).is_dir() for it in _read_txt_folder(root / s, s, skipped)]
        layout = "text-split-folders"
    else:
        items = _read_txt_folder(root, None, skipped)
        layout = "text-class-folders"
    if not items:
        raise HeadstartError(
            f"no usable labeled texts in {root}" + (f" ({len(skipped)} skipped)" if skipped else ""),
            fix="give a table with `text,label` columns, or DATA/<class>/*.txt files",
        )
    return assemble_dataset(
        root,
        items,
        layout=layout,
        modality="text",
        val=val,
        test=test,
        seed=seed,
        one_class_fix="add texts of each other class",
        skipped=skipped,
        task=task,
    )
