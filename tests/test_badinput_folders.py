"""Bad-input corpus: data folders (issue 13, item 8).

What a data folder may hold besides one sub-folder of files per class, and what each gets from `probe`:
- refused (exit 2, the message names the path and a fix, nothing written): a folder inside a class folder;
  one class folder that itself holds the class folders ("did you mean DATA/images?"); the same bytes (or
  text) under two classes; one class only (an empty folder beside it is named: it is not a class); one item
  per class; files with no class folder;
- read, with every left-out entry listed with its reason (no traceback, exit 0): `__MACOSX`, hidden
  folders and files, `.DS_Store`, `Thumbs.db`, the same bytes twice in one class, symlink loops, broken
  links, empty class folders, files beside the class folders, unreadable files, a manifest row naming a
  file again (`fit` lists them too);
- announced: a class with 0 val items in the user's own split; an audio clip cut to the backbone's 30 s.
And the split is drawn over the readable files: adding a corrupt file moves no other file between splits.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from badinput import CliResult, assert_refused, run_cli, tree_digest
from conftest import TEST_BACKBONE, make_image_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = Path(__file__).resolve().parents[1]
PROBE = ["--backbone", TEST_BACKBONE, "--backend", "torch"]


def _probe(capsys: pytest.CaptureFixture[str], data: Path, out: Path, *extra: str) -> CliResult:
    return run_cli(capsys, "probe", data, *PROBE, "--out", out, *extra)


# -- refused: exit 2, the message names the input and the fix ------------------------------------------


def _nested(root: Path) -> tuple[Path, str]:
    data = make_image_folder(root / "data", per_class=4)
    (data / "red" / "dark").mkdir()
    shutil.copy(data / "red" / "red_000.png", data / "red" / "dark" / "x.png")
    return data, str(data / "red" / "dark")


def _one_folder_of_classes(root: Path) -> tuple[Path, str]:
    make_image_folder(root / "data" / "images", per_class=4)
    return root / "data", f"did you mean {root / 'data' / 'images'}"


def _same_bytes_two_classes(root: Path) -> tuple[Path, str]:
    data = make_image_folder(root / "data", per_class=4)
    shutil.copy(data / "red" / "red_001.png", data / "blue" / "also_blue.png")
    return data, str(data / "blue" / "also_blue.png")


def _same_text_two_classes(root: Path) -> tuple[Path, str]:
    rows = [(f"a {w} ran off", "animal") for w in ("cat", "dog", "fox")]
    rows += [(f"a {w} drove by", "vehicle") for w in ("bus", "van", "car")] + [("a red car", "vehicle")]
    rows.insert(2, ("a red car", "animal"))
    path = root / "texts.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path, f"{path}:4 ('animal')"


def _one_class(root: Path) -> tuple[Path, str]:
    return make_image_folder(root / "data", classes=("red",), per_class=4), "'red'"


def _one_class_and_an_empty_folder(root: Path) -> tuple[Path, str]:
    data = make_image_folder(root / "data", classes=("red",), per_class=4)
    (data / "blue").mkdir()
    return data, str(data / "blue")


def _one_item_per_class(root: Path) -> tuple[Path, str]:
    return make_image_folder(root / "data", per_class=1), "'blue' (1)"


def _no_class_folders(root: Path) -> tuple[Path, str]:
    data = make_image_folder(root / "data", per_class=3)
    for f in sorted(data.rglob("*.png")):
        f.rename(data / f.name)
    for c in ("red", "blue"):
        (data / c).rmdir()
    return data, "not in class sub-folders"


@pytest.mark.parametrize(
    "build",
    [
        _nested,
        _one_folder_of_classes,
        _same_bytes_two_classes,
        _same_text_two_classes,
        _one_class,
        _one_class_and_an_empty_folder,
        _one_item_per_class,
        _no_class_folders,
    ],
)
def test_folder_problems_are_refused_with_the_path_and_a_fix(
    build: Callable[[Path], tuple[Path, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, named = build(tmp_path)
    before = tree_digest(data)
    res = _probe(capsys, data, tmp_path / "run")
    assert_refused(res, names=named)
    assert tree_digest(data) == before and not (tmp_path / "run").exists()


def test_same_bytes_under_two_classes_names_both_copies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, copy = _same_bytes_two_classes(tmp_path)
    res = _probe(capsys, data, tmp_path / "run")
    assert_refused(res, names=data / "red" / "red_001.png")
    assert copy in res.text and "relabel" in res.text


def test_probe_on_the_emoji_example_root_says_which_folder_was_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    res = _probe(capsys, REPO / "examples" / "emoji", tmp_path / "run")
    assert_refused(res, names=f"did you mean {REPO / 'examples' / 'emoji' / 'images'}")


# -- read, with what was left out listed (path: reason) ---------------------------------------------------


def _macosx(data: Path) -> dict[str, str]:
    junk = data / "__MACOSX" / "red"
    junk.mkdir(parents=True)
    (junk / "._red_000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    return {str(data / "__MACOSX"): "operating-system metadata"}


def _hidden(data: Path) -> dict[str, str]:
    (data / ".cache").mkdir()
    shutil.copy(data / "red" / "red_000.png", data / ".cache" / "thumb.png")
    (data / "red" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (data / "blue" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (data / "blue" / ".hidden.png").write_bytes(b"not really")
    return {
        str(data / ".cache"): "hidden",
        str(data / "red" / ".DS_Store"): "operating-system metadata",
        str(data / "blue" / "Thumbs.db"): "operating-system metadata",
        str(data / "blue" / ".hidden.png"): "hidden",
    }


def _same_bytes_one_class(data: Path) -> dict[str, str]:
    shutil.copy(data / "red" / "red_002.png", data / "red" / "red_002_copy.png")
    return {str(data / "red" / "red_002_copy.png"): f"duplicate of {data / 'red' / 'red_002.png'}"}


def _symlink_loops(data: Path) -> dict[str, str]:
    os.symlink(data / "red", data / "red" / "again")  # a folder link back to its own folder
    os.symlink("itself.png", data / "blue" / "itself.png")  # a link to itself
    return {
        str(data / "red" / "again"): "symlink loop",
        str(data / "blue" / "itself.png"): "symlink loop",
    }


def _broken_link(data: Path) -> dict[str, str]:
    os.symlink(data / "gone.png", data / "red" / "moved.png")
    return {str(data / "red" / "moved.png"): "broken link"}


def _empty_class_folder(data: Path) -> dict[str, str]:
    (data / "green").mkdir()
    return {str(data / "green"): "empty class folder: not a class"}


def _corrupt_file(data: Path) -> dict[str, str]:
    (data / "blue" / "half.png").write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")
    return {str(data / "blue" / "half.png"): "not an image"}


def _loose_file(data: Path) -> dict[str, str]:
    (data / "labels.txt").write_text("red\nblue\n")
    return {str(data / "labels.txt"): "not inside a class folder"}


@pytest.mark.parametrize(
    "add",
    [
        _macosx,
        _hidden,
        _same_bytes_one_class,
        _symlink_loops,
        _broken_link,
        _empty_class_folder,
        _corrupt_file,
        _loose_file,
    ],
)
def test_left_out_entries_are_listed_with_the_reason(
    add: Callable[[Path], dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_image_folder(tmp_path / "data", per_class=5)
    expected = add(data)
    res = _probe(capsys, data, tmp_path / "run")
    assert "Traceback" not in res.text and res.code == 0, res.text
    lines = res.out.splitlines()
    for path, reason in expected.items():
        assert any(ln.strip().startswith(f"{path}: ") and reason in ln for ln in lines), (path, res.out)
    saved = json.loads((tmp_path / "run" / "data.json").read_text())
    assert saved["classes"] == ["blue", "red"] and saved["n_items"] == 10
    for path, reason in expected.items():
        assert reason in saved["skipped"][path]


def test_a_manifest_naming_a_file_twice_uses_it_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    files = sorted(data.rglob("*.png"))
    rows = [(f.relative_to(data).as_posix(), f.parent.name) for f in [*files, files[0]]]
    with open(data / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    res = _probe(capsys, data / "m.csv", tmp_path / "run")
    assert "Traceback" not in res.text and res.code == 0, res.text
    assert f"{files[0]} (listed again): the same path twice: used once" in res.out
    assert json.loads((tmp_path / "run" / "data.json").read_text())["n_items"] == 8


def test_fit_lists_skipped_files_as_probe_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", per_class=5)
    expected = {**_corrupt_file(data), **_broken_link(data)}
    fit = ["--backbone", TEST_BACKBONE, "--strategy", "head", "--epochs", "1", "--out", tmp_path / "run"]
    res = run_cli(capsys, "fit", data, *fit)
    assert "Traceback" not in res.text and res.code == 0, res.text
    assert "skipped 2 file(s)" in res.out
    for path, reason in expected.items():
        assert any(ln.strip().startswith(f"{path}: ") and reason in ln for ln in res.out.splitlines())


# -- the split ------------------------------------------------------------------------------------------


def _splits(run: Path) -> dict[str, str]:
    with open(run / "split.csv", newline="") as f:
        return {r["path"]: r["split"] for r in csv.DictReader(f)}


def test_a_corrupt_file_moves_no_readable_file_between_splits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_image_folder(tmp_path / "data", classes=("red", "blue", "green"), per_class=9)
    assert _probe(capsys, data, tmp_path / "clean").code == 0
    (data / "blue" / "blue_004b.png").write_bytes(b"")  # sorts among the good ones
    (data / "red" / "aaa.png").write_bytes(b"GIF89a garbage")
    res = _probe(capsys, data, tmp_path / "corrupt")
    assert res.code == 0 and "skipped 2 file(s)" in res.out, res.text
    assert _splits(tmp_path / "corrupt") == _splits(tmp_path / "clean")


def test_a_corrupt_file_in_a_small_class_is_named_when_the_class_cannot_be_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    (data / "red" / "red_000.png").write_bytes(b"")
    (data / "red" / "red_001.png").write_bytes(b"nope")
    res = _probe(capsys, data, tmp_path / "run")
    assert_refused(res, names=data / "red" / "red_001.png")
    assert "'red' (2)" in res.text


def test_a_class_with_no_val_items_is_announced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=5)
    make_image_folder(data / "val", classes=("red",), per_class=2, seed=1)
    make_image_folder(data / "test", per_class=2, seed=2)
    res = _probe(capsys, data, tmp_path / "run")
    assert "Traceback" not in res.text and res.code == 0, res.text
    assert "warning: class 'blue' has 0 val items (train 5, val 0, test 2)" in res.out
    saved = json.loads((tmp_path / "run" / "data.json").read_text())
    assert any("'blue' has 0 val items" in w for w in saved["warnings"])


# -- audio -----------------------------------------------------------------------------------------------


def _tone(path: Path, freq: float, seconds: float, rate: int = 8_000) -> None:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="PCM_16")


def test_a_long_audio_clip_cut_to_30_s_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "tones"
    for i in range(4):
        _tone(data / "low" / f"low_{i}.wav", 200 + 40 * i, 0.5)
        _tone(data / "high" / f"high_{i}.wav", 2_000 + 300 * i, 0.5)
    _tone(data / "low" / "long.wav", 250, 70.0)
    args = ["--backbone", "test_whisper_encoder", "--out", tmp_path / "run"]
    res = run_cli(capsys, "probe", data, *args)
    assert "Traceback" not in res.text and res.code == 0, res.text
    note = "cut to its first 30 s (70.0 s long)"
    assert "1 input(s) used only in part" in res.out
    assert f"{data / 'low' / 'long.wav'}: {note}" in res.out
    saved = json.loads((tmp_path / "run" / "data.json").read_text())
    assert saved["notes"] == {str(data / "low" / "long.wav"): note} and saved["n_cut"] == 1
