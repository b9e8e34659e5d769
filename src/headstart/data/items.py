"""One labeled example (`Item`) and the names of the splits, shared by every reader of labeled data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError

SPLITS = ("train", "val", "test")
#: Table columns that name an item's slice (subgroup): `group`, or `slice` as a synonym.
GROUP_COLUMNS = ("group", "slice")


@dataclass(frozen=True)
class Item:
    """One labeled example. Files (images, audio) have a `path`; texts carry `text` and a row id as path.
    `group`: the slice it belongs to (a manifest's or table's `group`/`slice` column), scored apart by
    evaluate (`headstart.slices`); None when the data names none."""

    path: Path
    label: str
    split: str | None = None
    text: str | None = None
    group: str | None = None

    @property
    def source(self) -> str:
        """What the backbone reads: the text itself, or the file path."""
        return self.text if self.text is not None else str(self.path)


def row_group(row: Mapping[str, Any], where: str) -> str | None:
    """The slice a table row names in its `group` (or `slice`) column; None when blank or absent. A row
    whose two columns disagree is an error naming `where` (the file and line)."""
    values = {c: row.get(c) for c in GROUP_COLUMNS}
    # Missing, blank, or NaN (a Parquet null): no slice.
    found = {c: str(v).strip() for c, v in values.items() if v is not None and v == v and str(v).strip()}
    if len(set(found.values())) > 1:
        raise HeadstartError(
            f"{where} names two slices: group {found['group']!r}, slice {found['slice']!r}",
            fix="keep one column, `group` or `slice`",
        )
    return next(iter(found.values()), None)
