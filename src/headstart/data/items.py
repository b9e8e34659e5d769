"""One labeled example (`Item`) and the names of the splits, shared by every reader of labeled data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Item:
    """One labeled example. Files (images, audio) have a `path`; texts carry `text` and a row id as path."""

    path: Path
    label: str
    split: str | None = None
    text: str | None = None

    @property
    def source(self) -> str:
        """What the backbone reads: the text itself, or the file path."""
        return self.text if self.text is not None else str(self.path)
