"""`load_dataset`: which reader a data path needs. Texts (a table with a `text` column, folders of `.txt`)
go to `headstart.data.text`; image and audio files come as class folders, split folders or a manifest
(`headstart.data.layouts`); every reader ends in `assemble_dataset`'s shared checks and split."""

from __future__ import annotations

from pathlib import Path

from headstart.data.dataset import Dataset, assemble_dataset, detect_modality
from headstart.data.layouts import (
    MANIFEST_SUFFIXES,
    TABLE_COLUMNS,
    from_class_folders,
    read_manifest,
    split_layout_items,
)
from headstart.data.text import TABLE_SUFFIXES, is_text_data, load_text_dataset, table_columns
from headstart.errors import HeadstartError


def load_dataset(
    path: str | Path,
    *,
    modality: str | None = None,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    task: str = "classify",
) -> Dataset:
    """Read labeled items from `path` and give each a split (the layouts: `headstart.data.layouts`; texts:
    `headstart.data.text`).

    `modality=None` detects it from the items (`detect_modality`). `task`: how labels read
    (`headstart.data.targets`: classify, multilabel, regress)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise HeadstartError(f"data path not found: {root}", fix="check the path")
    if modality == "text" or (modality is None and is_text_data(root)):
        return load_text_dataset(root, val=val, test=test, seed=seed, task=task)
    skipped: dict[str, str] = {}
    if root.is_file():
        if root.suffix.lower() not in MANIFEST_SUFFIXES:
            has = f" (has columns {table_columns(root)})" if root.suffix.lower() in TABLE_SUFFIXES else ""
            raise HeadstartError(
                f"{root} is a file but not a table headstart reads{has}: {TABLE_COLUMNS}",
                fix="give a folder of one sub-folder per class, or a .csv/.jsonl table (.parquet: texts)",
            )
        items, layout = read_manifest(root), "manifest"
    elif (root / "train").is_dir():
        items, layout = split_layout_items(root, skipped), "split-folders"
    else:
        items, layout = from_class_folders(root, None, skipped), "class-folders"
    if not items:
        loose = [p for p, r in skipped.items() if r.startswith("ignored: not inside a class folder")]
        raise HeadstartError(
            f"no labeled files found under {root}"
            + (f": its {len(loose)} file(s) are not in class sub-folders" if loose else ""),
            fix="put files in one sub-folder per class (DATA/<class>/<file>) and give DATA, or give a "
            "manifest",
        )
    return assemble_dataset(
        root,
        items,
        layout=layout,
        modality=modality or detect_modality(items),
        val=val,
        test=test,
        seed=seed,
        one_class_fix="add a folder of examples for each other class",
        skipped=skipped,
        task=task,
    )
