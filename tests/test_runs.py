"""The run folder (headstart.runs): its typed records round-trip, every schema version reads, the one item
resolver finds a run's items after the run (or the run and its data) moved, and run folders written before
run.json had a schema version (split.csv paths relative to the working folder) still load, predict,
evaluate, register and report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder
from headstart.data import Item
from headstart.errors import HeadstartError
from headstart.fileio import sha256_file
from headstart.runs import (
    SCHEMA_VERSION,
    AdapterRef,
    BackboneRef,
    DeltaRef,
    FileRef,
    ObjectiveInfo,
    RunInfo,
    SplitRow,
    data_root_of,
    load_run_info,
    make_split_rows,
    read_split_rows,
    resolve_item,
    run_card,
    split_csv,
)

CLASSES = ("red", "blue", "green")


# -- the records ---------------------------------------------------------------------------------------
def test_run_info_round_trips_through_json_and_keeps_keys_it_does_not_know() -> None:
    info = RunInfo(
        kind="fit",
        strategy="lp-ft",
        pretrained=True,
        backbone=BackboneRef("b", "b@key", "ab" * 32, {"license": "MIT", "name": "b"}),
        preprocess={"input_size": 32},
        modality="image",
        classes=["a", "b"],
        params={"seed": 3, "batch_size": 8},
        recipe={"name": "lp-ft", "phases": []},
        trained_groups=["blocks.5"],
        trainable_params=1234,
        objective=ObjectiveInfo("distillation", {"teacher": {"run": "t"}, "alpha": 0.8}),
        engine={"device": "cpu", "precision": "fp32"},
        data_root="/data/pets",
        data_root_from_run="../data/pets",
        created="2026-01-01T00:00:00+0000",
        versions={"python": "3.12"},
        head=FileRef("head.safetensors", "cd" * 32),
        delta=DeltaRef("delta.safetensors", whole=False),
        files={"delta.safetensors": "ef" * 32},
        merged_from={"run": "runs/lora"},
        extra={"a_later_key": [1, 2]},
    )
    written = info.to_dict()
    assert written["schema_version"] == SCHEMA_VERSION == 2
    back = RunInfo.from_dict(json.loads(json.dumps(written)))
    assert back == info and back.to_dict() == written
    assert back.seed == 3 and back.stored_files == ["head.safetensors", "delta.safetensors"]
    # The JSON keeps every place older readers (and scripts) look in.
    assert (
        written["backbone"]["weights_sha256"] == "ab" * 32 and written["head"]["file"] == "head.safetensors"
    )
    assert written["objective"]["teacher"] == {"run": "t"} and written["a_later_key"] == [1, 2]


def test_an_adapter_record_round_trips() -> None:
    ref = AdapterRef("adapter.safetensors", {"method": "lora", "r": 8, "alpha": 16.0, "groups": ["layer.1"]})
    info = RunInfo(kind="fit", classes=["a", "b"], adapter=ref, files={"adapter.safetensors": "00" * 32})
    d = info.to_dict()
    assert d["adapter"] == {
        "file": "adapter.safetensors",
        "method": "lora",
        "r": 8,
        "alpha": 16.0,
        "groups": ["layer.1"],
    }
    back = RunInfo.from_dict(d)
    assert back.adapter == ref and back.adapter.groups == ["layer.1"] and back.adapter.method == "lora"


def test_split_rows_round_trip_through_split_csv(tmp_path: Path) -> None:
    rows = [
        SplitRow("red/a.png", "red", "train", "11" * 32),
        SplitRow("/elsewhere/b, c.png", "blue", "test", ""),
        SplitRow('a text, with "quotes"\nand a line break', "blue", "val", "22" * 32),
    ]
    (tmp_path / "split.csv").write_text(split_csv(rows), encoding="utf-8")
    assert (tmp_path / "split.csv").read_text().splitlines()[0] == "path,label,split,sha256"
    assert read_split_rows(tmp_path) == rows


@pytest.mark.parametrize(
    ("raw", "strategy"),
    [
        ({"strategy": "full"}, "full"),
        ({"params": {"strategy": "head", "C": 1.0}}, "head"),  # older probes
        ({"recipe": {"strategy": "gradual", "name": "mine"}}, "gradual"),
        ({"recipe": {"name": "lp-ft"}}, "lp-ft"),
        ({}, None),
    ],
)
def test_a_version_1_run_info_finds_the_strategy_where_it_was_kept(
    raw: dict[str, Any], strategy: str
) -> None:
    info = RunInfo.from_dict({"kind": "probe", "classes": ["a", "b"], **raw})
    assert info.schema_version == 1 and info.strategy == strategy and info.data_root is None


@pytest.mark.parametrize(
    ("version", "said", "fix"),
    [(SCHEMA_VERSION + 1, "newer headstart", "upgrade"), ("two", "schema_version 'two'", "damaged")],
)
def test_a_schema_version_it_cannot_read_is_refused_with_a_fix(version: Any, said: str, fix: str) -> None:
    with pytest.raises(HeadstartError, match=said) as e:
        RunInfo.from_dict({"schema_version": version, "kind": "probe"}, source="runs/x/run.json")
    assert "runs/x/run.json" in str(e.value) and fix in (e.value.fix or "")


def test_split_rows_are_relative_to_the_data_root_except_files_outside_it_and_texts(tmp_path: Path) -> None:
    manifest = tmp_path / "pets" / "labels.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label\n")
    root = data_root_of(manifest)
    assert root == tmp_path / "pets" and data_root_of(tmp_path / "pets") == root
    items = [
        Item(root / "img" / "a.png", "cat", "train"),
        Item(tmp_path / "other" / "b.png", "dog", "test"),
        Item(Path("t.csv:2"), "dog", "val", text="a dog, barking"),
    ]
    hashes = {str(root / "img" / "a.png"): "aa", "a dog, barking": "bb"}
    assert make_split_rows(items, hashes, root) == [
        SplitRow("img/a.png", "cat", "train", "aa"),
        SplitRow(str(tmp_path / "other" / "b.png"), "dog", "test", ""),
        SplitRow("a dog, barking", "dog", "val", "bb"),
    ]


# -- a run and its data move ----------------------------------------------------------------------------
def test_a_moved_run_still_finds_its_items(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart.api import probe
    from headstart.evaluate import evaluate_run

    project = tmp_path / "project"
    data = make_image_folder(project / "data", CLASSES, per_class=8)
    monkeypatch.chdir(project)
    probe(Path("data"), backbone=TEST_BACKBONE, out=Path("runs/a"), backend="torch", progress=False)
    run = project / "runs" / "a"
    info = load_run_info(run)
    assert info.schema_version == SCHEMA_VERSION and Path(info.data_root or "").resolve() == data.resolve()
    assert info.data_root_from_run == "../../data" and info.strategy == "head"
    rows = read_split_rows(run)
    assert len(rows) == 24 and all(r.sha256 for r in rows)
    assert all(r.path.split("/")[0] in CLASSES for r in rows)  # relative to the data root, not to the cwd

    # Only the run moves, and the command runs elsewhere: the recorded data root finds every item.
    moved = tmp_path / "elsewhere" / "a"
    shutil.copytree(run, moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    for r in rows:
        found = resolve_item(moved, r, load_run_info(moved), verify=True)
        assert found is not None and found.resolve() == (data / r.path).resolve()

    # The run and its data move together: found through the data root's place beside the run.
    shutil.move(project, tmp_path / "project2")
    run2 = tmp_path / "project2" / "runs" / "a"
    info2 = load_run_info(run2)
    for r in rows:
        found = resolve_item(run2, r, info2, verify=True)
        assert found is not None and found.resolve() == (tmp_path / "project2" / "data" / r.path).resolve()
    res = evaluate_run(run2, latency=False, backend="torch", save=False)
    assert res["n"] == sum(r.split == "test" for r in rows) > 0 and not res["skipped"]

    # A file changed since: passed over when its sha256 is checked; gone: nothing found, and named.
    first = rows[0]
    (tmp_path / "project2" / "data" / first.path).write_bytes(b"changed")
    assert resolve_item(run2, first, info2, verify=True) is None
    assert resolve_item(run2, first, info2) is not None
    shutil.rmtree(tmp_path / "project2" / "data")
    assert resolve_item(run2, first, info2) is None
    with pytest.raises(HeadstartError, match="could be read") as e:
        evaluate_run(run2, latency=False, backend="torch", save=False)
    assert info.data_root in str(e.value) and "data_root" in (e.value.fix or "")  # where it looked


# -- a run folder written before schema versions ------------------------------------------------------
def _split_of(i: int) -> str:
    return "train" if i < 4 else "val" if i < 6 else "test"


def _write_version_1_run(run: Path, shape: str) -> dict[str, Any]:
    """A run folder exactly as headstart wrote it before run.json had a schema_version: no data_root, and
    split.csv paths as given on the command line (`headstart probe data`: relative to the working folder).
    `shape`: "probe" (as main wrote it: strategy, recipe, objective), "older-probe" (no modality, strategy
    or recipe), "fit" (a trained group stored as delta.safetensors, the base by reference)."""
    from safetensors.numpy import save
    from safetensors.torch import save_file

    from headstart.backbones import create_backbone
    from headstart.recipes import get_recipe

    bb = create_backbone(TEST_BACKBONE)
    classes = sorted(CLASSES)
    rng = np.random.default_rng(0)
    weight = rng.normal(scale=0.1, size=(len(classes), bb.embed_dim)).astype(np.float32)
    run.mkdir(parents=True)
    head = save(
        {"weight": weight, "bias": np.zeros(len(classes), np.float32)}, {"classes": json.dumps(classes)}
    )
    (run / "head.safetensors").write_bytes(head)
    ref = {
        "name": bb.name,
        "key": bb.key,
        "weights_sha256": bb.card.weights_sha256,
        "card": bb.card.to_dict(),
    }
    info: dict[str, Any] = {"kind": "probe", "backbone": ref, "preprocess": bb.preprocess.to_dict()}
    if shape == "older-probe":
        info.update(classes=classes, params={"C": 1.0, "seed": 0, "selection_scores": {"1.0": 0.5}})
    else:
        info.update(pretrained=True, modality="image", classes=classes)
    if shape == "probe":
        info.update(
            params={"C": 1.0, "seed": 0, "selection_scores": {"1.0": 0.5}},
            trained_groups=[],
            strategy="head",
            recipe=get_recipe("head", len(bb.groups)).to_dict(),
            objective={"name": "cross-entropy"},
        )
    if shape == "fit":
        last = len(bb.groups) - 1
        state = {
            k: v.contiguous()
            for k, v in bb.state_dict().items()
            if k.startswith((f"groups.{last}.", "pool."))
        }
        save_file(state, run / "delta.safetensors")
        info.update(
            kind="fit",
            strategy="partial:1",
            params={"seed": 0, "batch_size": 8, "augment": True, "prefix_cache": True, "bf16": False},
            engine={"device": "cpu", "precision": "fp32", "world_size": 1},
            trained_groups=[bb.group_names[last]],
            objective={"name": "cross-entropy"},
            delta={"file": "delta.safetensors", "whole": False},
            files={"delta.safetensors": sha256_file(run / "delta.safetensors")},
        )
    info.update(
        trainable_params=int(weight.size + len(classes)),
        versions={"python": "3.12.0", "headstart": "0.9.0"},
        created="2026-01-01T12:00:00+0000",
        head={"file": "head.safetensors", "sha256": sha256_file(run / "head.safetensors")},
    )
    (run / "run.json").write_text(json.dumps(info, indent=2))
    lines = ["path,label,split,sha256"]
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for c in CLASSES:
        for i, f in enumerate(sorted(Path("data", c).glob("*.png"))):  # relative to the working folder
            lines.append(f"{f.as_posix()},{c},{_split_of(i)},{sha256_file(f)}")
            counts[_split_of(i)][c] = counts[_split_of(i)].get(c, 0) + 1
    (run / "split.csv").write_text("\n".join(lines) + "\n")
    metrics = {s: {"accuracy": 0.5, "macro_f1": 0.4, "n": sum(counts[s].values())} for s in ("val", "test")}
    (run / "metrics.json").write_text(json.dumps({**metrics, "strategy": info.get("strategy", "probe")}))
    summary = {"root": "data", "layout": "class-folders", "modality": "image", "classes": classes}
    summary.update(counts=counts, n_items=24, skipped={}, warnings=[], notes={}, n_cut=0, seed=0)
    (run / "data.json").write_text(json.dumps(summary))
    return info


@pytest.mark.parametrize("shape", ["probe", "older-probe", "fit"])
def test_a_version_1_run_loads_predicts_evaluates_registers_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    from headstart.evaluate import evaluate_run
    from headstart.model import load_model
    from headstart.report import build_report
    from headstart.report.loader import read_run_files, strategy_name
    from headstart.store import ModelStore

    monkeypatch.chdir(tmp_path)
    data = make_image_folder(tmp_path / "data", CLASSES, per_class=8)
    run = tmp_path / "run"
    written = _write_version_1_run(run, shape)
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    info = load_run_info(run)
    assert info.schema_version == 1 and info.data_root is None and info.kind == written["kind"]
    assert info.classes == sorted(CLASSES) and info.backbone.name == TEST_BACKBONE
    assert info.modality == "image"  # the older probe kept it only in data.json
    assert info.strategy == {"probe": "head", "older-probe": None, "fit": "partial:1"}[shape]

    model = load_model(run)
    files = sorted(str(p) for p in data.rglob("*.png"))[:5]
    proba, kept, bad = model.predict_proba(files, backend="torch")
    assert proba.shape == (5, 3) and kept == list(range(5)) and not bad
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)

    # Its own split, from paths relative to the folder it was made in, also from another working folder.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    own = evaluate_run(run, latency=False, backend="torch", save=False)
    assert own["n"] == 6 and not own["skipped"] and own["calibration"]["n_fit"] == 6
    other = evaluate_run(run, data, latency=False, backend="torch")
    assert other["n"] == 24 and not other["skipped"]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing of the run rewritten

    store = ModelStore(tmp_path / "models")
    assert store.register(run, "old") == 1
    vdir = tmp_path / "models" / "old" / "v1"
    card = json.loads((vdir / "card.json").read_text())
    assert card["base"]["name"] == TEST_BACKBONE and card["kind"] == written["kind"]
    assert card["metrics"]["test_accuracy"] == 0.5 and card["data"]["class_counts"] == dict.fromkeys(
        CLASSES, 8
    )
    assert card["base"] == run_card(run, info)["base"]  # the store's card is the run's card
    stored = load_model(vdir)
    np.testing.assert_allclose(stored.predict_proba(files, backend="torch")[0], proba, atol=1e-6)

    files_read = read_run_files(run)
    assert strategy_name(files_read) == info.strategy
    report = build_report(run)
    assert report.sections["card"] is True and TEST_BACKBONE in report.html
