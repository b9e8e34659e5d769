from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_image_folder
from headstart.data import load_dataset
from headstart.errors import HeadstartError


def test_class_folders_get_a_seeded_stratified_split(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=("red", "blue", "green"), per_class=20)
    a = load_dataset(root, seed=1)
    b = load_dataset(root, seed=1)
    c = load_dataset(root, seed=2)
    assert a.layout == "class-folders" and a.classes == ["blue", "green", "red"]
    assert [(i.path, i.split) for i in a.items] == [(i.path, i.split) for i in b.items]
    assert {i.path for i in a.split("test")} != {i.path for i in c.split("test")}
    counts = a.counts()
    assert all(
        counts["train"][k] == 14 and counts["val"][k] == 3 and counts["test"][k] == 3 for k in a.classes
    )


def test_explicit_split_folders_are_used(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "d" / "train", per_class=4)
    make_image_folder(tmp_path / "d" / "test", per_class=2, seed=1)
    ds = load_dataset(tmp_path / "d")
    assert ds.layout == "split-folders"
    assert set(ds.counts()) == {"train", "test"} and ds.counts()["test"] == {"blue": 2, "red": 2}


def test_manifests_csv_and_jsonl(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=4)
    files = sorted(root.rglob("*.png"))
    rows = [f"{f.relative_to(root)},{f.parent.name}" for f in files]
    (root / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    ds = load_dataset(root / "m.csv")
    assert ds.layout == "manifest" and len(ds.items) == 8 and all(i.path.is_file() for i in ds.items)
    lines = [
        json.dumps({"path": str(f), "label": f.parent.name, "split": "train" if i % 2 else "test"})
        for i, f in enumerate(files)
    ]
    (root / "m.jsonl").write_text("\n".join(lines))
    ds = load_dataset(root / "m.jsonl")
    assert {i.split for i in ds.items} == {"train", "test"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,class\na.png,x\n", "lacks column"),
        ("path,label\na.png,\n", "empty label"),
        ("path,label,split\na.png,x,holdout\n", "split 'holdout'"),
        ("path,label\n", "no rows"),
    ],
)
def test_bad_manifests_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(HeadstartError, match=message) as e:
        load_dataset(tmp_path / "m.csv")
    assert "m.csv" in str(e.value)


def test_non_utf8_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes("path,label\nä.png,x\n".encode("latin-1"))
    with pytest.raises(HeadstartError, match="not UTF-8"):
        load_dataset(tmp_path / "m.csv")


def test_one_class_too_few_examples_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(HeadstartError, match="only one class"):
        load_dataset(make_image_folder(tmp_path / "one", classes=("red",), per_class=5))
    root = make_image_folder(tmp_path / "few", per_class=5)
    for f in sorted((root / "blue").iterdir())[2:]:
        f.unlink()
    with pytest.raises(HeadstartError, match=r"fewer than 3 examples.*'blue' \(2\)") as e:
        load_dataset(root)
    assert "train/ val/ test/" in str(e.value)
    with pytest.raises(HeadstartError, match="not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(HeadstartError, match="no labeled files"):
        load_dataset(tmp_path / "emptydir")
