"""Slices: a `group` column flows from the data through split.csv into per-slice scores; a slice regression
blocks `models promote` unless --force, which the event log records."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder
from headstart.errors import HeadstartError
from headstart.intervals import wilson
from headstart.slices import compare_slices, slice_scores


def _macro_f1(y: list[str], p: list[str]) -> float:
    """Macro-F1 over the classes present, by hand: 2TP / (2TP + FP + FN) per class."""
    f1s = []
    for c in sorted(set(y)):
        tp = sum(a == c and b == c for a, b in zip(y, p, strict=True))
        fp = sum(a != c and b == c for a, b in zip(y, p, strict=True))
        fn = sum(a == c and b != c for a, b in zip(y, p, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A probe run on a manifest with a `group` column, evaluated on its own test split."""
    from headstart.api import probe
    from headstart.evaluate import evaluate_run

    root = tmp_path_factory.mktemp("slices")
    data = make_image_folder(root / "data", classes=("red", "blue", "green"), per_class=14)
    manifest = data / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        for i, p in enumerate(sorted(data.rglob("*.png"))):
            w.writerow([p.relative_to(data).as_posix(), p.parent.name, "night" if i % 3 == 0 else "day"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        probe(manifest, backbone=TEST_BACKBONE, out=root / "run", backend="torch", progress=False)
        evaluate_run(root / "run", latency=False, backend="torch")
    return root / "run"


def test_manifest_groups_give_per_slice_scores_that_match_a_hand_count(run: Path) -> None:
    from headstart.model import load_model
    from headstart.runs import item_sources, read_split_rows

    rows = [r for r in read_split_rows(run) if r.split == "test"]
    assert {r.group for r in rows} == {"day", "night"}  # kept in split.csv
    model = load_model(run)
    z, kept, _ = model.logits(item_sources(run, rows, model.run_info), backend="torch")
    assert len(kept) == len(rows)
    pred = [model.classes[i] for i in z.argmax(axis=1)]
    ev = json.loads((run / "evaluation.json").read_text())
    by_slice = ev["slices"]["by_slice"]
    assert sorted(by_slice) == ["day", "night"] and ev["slices"]["n_ungrouped"] == 0
    for g, got in by_slice.items():
        mine = [i for i, r in enumerate(rows) if r.group == g]
        y, p = [rows[i].label for i in mine], [pred[i] for i in mine]
        right = sum(a == b for a, b in zip(y, p, strict=True))
        assert got["n"] == len(mine)
        assert got["accuracy"] == pytest.approx(right / len(mine))
        assert got["accuracy_ci"] == pytest.approx(list(wilson(right, len(mine))))
        assert got["macro_f1"] == pytest.approx(_macro_f1(y, p))
        assert got["accuracy_gap"] == pytest.approx(got["accuracy"] - ev["metrics"]["accuracy"])


def test_slice_scores_by_hand_and_a_planted_weak_slice_is_flagged() -> None:
    # a: 3 of 4 right; b: 4 of 4; two items in no slice, 1 of 2 right: overall 8 of 10.
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1, 0, 1])
    p = np.array([0, 1, 1, 1, 0, 1, 0, 1, 1, 1])
    groups = ["a"] * 4 + ["b"] * 4 + [None, None]
    res = slice_scores(y, p, groups, [f"/x/{i}" for i in range(10)], ["c0", "c1"], origin="test")
    assert res is not None and res["n_ungrouped"] == 2 and res["n_grouped"] == 8
    a = res["by_slice"]["a"]
    assert a["accuracy"] == pytest.approx(0.75) and a["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # slice - overall = (1 - 4/10) x (slice - rest): 0.6 x (3/4 - 5/6) = -0.05
    assert a["accuracy_gap"] == pytest.approx(-0.05)
    assert a["accuracy_gap_ci"][0] < -0.05 < a["accuracy_gap_ci"][1]
    assert a["correct"].count("1") == 3 and "macro_f1_gap_p" not in a  # too few items to bootstrap-test
    assert slice_scores(y, p, [None] * 10, ["s"] * 10, ["c0", "c1"], origin="test") is None

    # 60 items: "weak" gets half wrong, "fine" none: weak is flagged below overall, fine is not.
    y = np.zeros(120, dtype=int)
    p = np.where(np.arange(120) % 2 == 1, 1, 0) * (np.arange(120) < 60)
    groups = ["weak"] * 60 + ["fine"] * 60
    res = slice_scores(y, p, groups, [f"/x/{i}" for i in range(120)], ["c0", "c1"], origin="test")
    assert res is not None and res["flagged"] == ["weak"]
    assert "accuracy" in res["by_slice"]["weak"]["below_overall"]
    assert res["by_slice"]["fine"]["below_overall"] == []


def _planted(right_a: int, right_b: int, sources: list[str]) -> dict:
    """Slices A and B of 100 items each; the first right_a / right_b of each are right."""
    y = np.zeros(200, dtype=int)
    p = np.ones(200, dtype=int)
    p[:right_a] = 0
    p[100 : 100 + right_b] = 0
    res = slice_scores(y, p, ["A"] * 100 + ["B"] * 100, sources, ["c0", "c1"], origin="planted")
    assert res is not None
    return res


SOURCES = [f"/data/{i:03d}.png" for i in range(200)]


def _version(run: Path, tmp_path: Path, name: str, slices: dict | None) -> Path:
    out = Path(shutil.copytree(run, tmp_path / name))
    ev = json.loads((out / "evaluation.json").read_text())
    ev["slices"] = slices
    (out / "evaluation.json").write_text(json.dumps(ev))
    return out


def _store(run: Path, tmp_path: Path, *versions: tuple[str, dict | None]):
    """A store holding model "m": one version per (folder name, slices), the first one @production."""
    from headstart.store import ModelStore

    store = ModelStore(tmp_path / "models")
    for i, (name, slices) in enumerate(versions):
        store.register(_version(run, tmp_path, name, slices), "m", alias="production" if i == 0 else None)
    return store


def test_planted_slice_regression_blocks_promotion_and_force_is_recorded(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.cli import main

    # Equal overall (175 of 200), but the candidate loses 20 of B's items the holder got right.
    store = _store(run, tmp_path, ("holder", _planted(80, 95, SOURCES)), ("cand", _planted(100, 75, SOURCES)))
    with pytest.raises(HeadstartError, match=r"slice.*B: -0\.200") as err:
        store.promote("m", 2)
    assert "A:" not in str(err.value) and "--force" in err.value.fix
    assert store.resolve("m@production") == ("m", 1)  # nothing moved

    s = ["--store", str(tmp_path / "models")]
    assert main(["models", "promote", "m", "2", *s]) == 2
    assert "B: -0.200" in capsys.readouterr().err
    assert main(["models", "promote", "m", "2", "--force", *s, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == 2 and out["slices"]["regressed"] == ["B"]
    assert out["slices"]["by_slice"]["B"]["paired"] is True  # the same items: McNemar
    assert store.resolve("m@production") == ("m", 2)
    event = json.loads((tmp_path / "models" / "m" / "index.json").read_text())["events"][-1]
    assert event["action"] == "promote" and event["forced"] is True
    assert event["regressed_slices"]["B"] == pytest.approx(-0.2)


def test_no_regression_promotes_and_missing_slices_say_so(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.cli import main

    store = _store(
        run,
        tmp_path,
        ("holder", _planted(80, 95, SOURCES)),
        ("better", _planted(90, 94, SOURCES)),
        ("bare", None),
    )
    done = store.promote_checked("m", 2)
    assert done["slices"]["compared"] and done["slices"]["regressed"] == []
    event = json.loads((tmp_path / "models" / "m" / "index.json").read_text())["events"][-1]
    assert "forced" not in event
    assert main(["models", "promote", "m", "3", "--store", str(tmp_path / "models")]) == 0
    assert "slices not compared: the candidate has no slices" in capsys.readouterr().out
    assert store.resolve("m@production") == ("m", 3)


def test_unpaired_comparison_when_the_items_differ() -> None:
    other = [s.replace("data", "elsewhere") for s in SOURCES]
    res = compare_slices(_planted(100, 60, other), _planted(80, 95, SOURCES))
    b = res["by_slice"]["B"]
    assert b["paired"] is False and b["diff"] == pytest.approx(-0.35) and res["regressed"] == ["B"]
    assert compare_slices(_planted(80, 94, other), _planted(80, 95, SOURCES))["regressed"] == []


def test_old_split_csv_without_group_still_evaluates_and_slices_file_works(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.cli import main
    from headstart.evaluate import evaluate_run
    from headstart.report import read_run_files
    from headstart.report.sections import slices as section
    from headstart.runs import read_split_rows

    old = Path(shutil.copytree(run, tmp_path / "old"))
    lines = (old / "split.csv").read_text().splitlines()
    assert lines[0] == "path,label,split,sha256,group"
    (old / "split.csv").write_text("\n".join(",".join(ln.split(",")[:4]) for ln in lines) + "\n")
    assert all(r.group == "" for r in read_split_rows(old))
    res = evaluate_run(old, latency=False, backend="torch")
    assert res["slices"] is None and res["n"] == json.loads((run / "evaluation.json").read_text())["n"]
    html, computed = section.section(read_run_files(old))
    assert not computed and "--slices FILE" in html

    # A slice file names them instead: paths relative to its folder.
    data = Path(json.loads((old / "run.json").read_text())["data_root"])
    rows = [r for r in read_split_rows(run) if r.split == "test"]
    sf = data / "slices.csv"
    sf.write_text("path,slice\n" + "".join(f"{r.path},{r.label}-ish\n" for r in rows))
    assert main(["evaluate", str(old), "--slices", str(sf), "--no-latency", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "Per slice" in out and "red-ish" in out
    ev = json.loads((old / "evaluation.json").read_text())
    assert sorted(ev["slices"]["by_slice"]) == ["blue-ish", "green-ish", "red-ish"]
    assert ev["slices"]["origin"] == f"--slices {sf}"

    sf.write_text("path,group\nnowhere.png,x\n")
    with pytest.raises(HeadstartError, match="names none of the"):
        evaluate_run(old, latency=False, backend="torch", slices=sf)
    sf.write_text("file,group\na.png,x\n")
    with pytest.raises(HeadstartError, match=r"slices.csv has columns.*path,group"):
        evaluate_run(old, latency=False, backend="torch", slices=sf)


def test_text_tables_and_jsonl_manifests_read_the_group(tmp_path: Path) -> None:
    from headstart.data import load_dataset
    from headstart.data.grouped_split import write_manifest
    from headstart.data.layouts import read_manifest
    from headstart.data.text import read_text_table

    table = tmp_path / "texts.csv"
    table.write_text("text,label,group\nhello there,a,formal\nyo,b,\nhey,a,casual\n")
    items, _ = read_text_table(table)
    assert [it.group for it in items] == ["formal", None, "casual"]
    # The manifest compare/auto write after regrouping copies keeps the slices.
    texts = "".join(f"text {c}{i},{c},{'g' if i else ''}\n" for c in "ab" for i in range(3))
    table.write_text("text,label,group\n" + texts)
    ds = load_dataset(table, modality="text")
    again, _ = read_text_table(write_manifest(ds, tmp_path / "regrouped"))

    def key(items: list) -> list:
        return [(it.text, it.group, it.split) for it in items]

    assert key(again) == key(ds.items)
    assert {it.group for it in again} == {"g", None}
    manifest = tmp_path / "m.jsonl"
    rows = [{"path": "x.png", "label": "a", "slice": "s1"}, {"path": "y.png", "label": "b", "slice": None}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [it.group for it in read_manifest(manifest)] == ["s1", None]
    manifest.write_text(json.dumps({"path": "x.png", "label": "a", "group": "g", "slice": "h"}) + "\n")
    with pytest.raises(HeadstartError, match=r"m\.jsonl:1 names two slices"):
        read_manifest(manifest)
