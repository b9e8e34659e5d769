"""benchmarks/held_out.py: more test items for a benchmark task must leave every seed's train and val
exactly as load_dataset draws them, and only add to test."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from conftest import make_image_folder
from headstart.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from held_out import with_held_out


def _splits(ds) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for it in ds.items:
        key = it.text if it.text is not None else str(Path(it.source).resolve())
        out.setdefault(it.split, set()).add((key, it.label))
    return out


@pytest.mark.parametrize("seed", [0, 3])
def test_images_keep_train_and_val_and_add_to_test(tmp_path: Path, seed: int) -> None:
    built = make_image_folder(tmp_path / "task", classes=("red", "blue", "green"), per_class=12)
    extra_dir = make_image_folder(tmp_path / "more", classes=("red", "blue", "green"), per_class=5, seed=7)
    extra = [(str(f), f.parent.name) for f in sorted(extra_dir.rglob("*.png"))]
    manifest = with_held_out(built, lambda _root, _built: extra, seed, tmp_path, "t")

    before, after = _splits(load_dataset(built, seed=seed)), _splits(load_dataset(manifest, seed=seed))
    assert after["train"] == before["train"] and after["val"] == before["val"]
    assert after["test"] == before["test"] | {(str(Path(p).resolve()), lab) for p, lab in extra}
    assert len(after["test"]) == len(before["test"]) + 15
    with_held_out(built, lambda _root, _built: extra, seed + 1, tmp_path, "t")  # another seed: another draw
    other = _splits(load_dataset(tmp_path / f"t_seed{seed + 1}_held_out.csv", seed=0))
    assert other["train"] != after["train"]


def test_texts_keep_their_text_and_split(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    with table.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("text", "label"))
        w.writerows(
            (f"{lab} text number {i}, with, commas\nand a line", lab) for lab in "ab" for i in range(20)
        )
    extra = [("a held-out a text", "a"), ("a held-out b text", "b")]
    manifest = with_held_out(table, lambda _root, _built: extra, 1, tmp_path, "txt")

    before, after = _splits(load_dataset(table, seed=1)), _splits(load_dataset(manifest, seed=1))
    assert after["train"] == before["train"] and after["val"] == before["val"]
    assert after["test"] == before["test"] | set(extra)
