from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder
from headstart.api import ProbeClassifier, probe
from headstart.cli import main
from headstart.errors import HeadstartError
from headstart.head import fit_head


def test_head_matches_sklearn_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 1).astype(int)
    head, _, _ = fit_head(X, y, 3, Cs=(0.5,))
    mu, sd = X.mean(0), X.std(0)
    ref = LogisticRegression(C=0.5, tol=1e-8, max_iter=5000).fit((X - mu) / sd, y)
    np.testing.assert_allclose(head.proba(X), ref.predict_proba((X - mu) / sd), atol=2e-3)


def test_regularisation_is_chosen_on_validation_or_by_cv() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, 40)).astype(np.float32)
    y = np.repeat([0, 1, 2], 30)
    X[:, 0] += y * 1.5
    idx = np.random.default_rng(2).permutation(90)
    tr, va = idx[:60], idx[60:]
    _, C_val, scores = fit_head(X[tr], y[tr], 3, X_val=X[va], y_val=y[va])
    assert C_val in scores
    head, C_cv, cv_scores = fit_head(X, y, 3)
    assert C_cv in cv_scores and (head.proba(X).argmax(1) == y).mean() > 0.6


def test_probe_end_to_end_writes_a_complete_run(three_class_folder: Path, tmp_path: Path) -> None:
    report = probe(
        three_class_folder, backbone=TEST_BACKBONE, out=tmp_path / "run", backend="torch", progress=False
    )
    m = report.metrics
    assert m["test"]["accuracy"] > 0.6 and m["val"]["accuracy"] > 0.6  # chance is 1/3
    assert 0 <= m["test"]["knn_accuracy"] <= 1 and set(m["test"]["per_class"]) == {"blue", "green", "red"}
    assert m["trainable_params"] == 3 * (1280 + 1)
    assert {"load_backbone_s", "embed_s", "fit_head_s", "evaluate_s"} <= set(m["timings"])
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {
        "run.json",
        "head.safetensors",
        "metrics.json",
        "data.json",
        "split.csv",
    }
    info = json.loads((run / "run.json").read_text())
    assert info["backbone"]["name"] == TEST_BACKBONE and info["classes"] == ["blue", "green", "red"]
    assert (run / "head.safetensors").stat().st_size < 30_000  # the head only, never the backbone
    rows = (run / "split.csv").read_text().splitlines()
    assert rows[0] == "path,label,split,sha256" and len(rows) == 1 + 36


def test_second_probe_does_no_backbone_work(image_folder: Path) -> None:
    first = probe(image_folder, backbone=TEST_BACKBONE, save=False, backend="torch", progress=False)
    second = probe(image_folder, backbone=TEST_BACKBONE, save=False, backend="torch", progress=False)
    assert first.metrics["embed"]["forwards"] == 20 and second.metrics["embed"]["forwards"] == 0
    assert first.metrics["test"] == second.metrics["test"]


def test_probe_skips_bad_files_and_keeps_earlier_runs(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "run"
    r = probe(image_folder, backbone=TEST_BACKBONE, out=out, backend="torch", progress=False)
    assert list(r.data["skipped"]) == [str(image_folder / "red" / "broken.png")]
    before = (out / "head.safetensors").read_bytes()
    with pytest.raises(HeadstartError, match="already exists"):
        probe(image_folder, backbone=TEST_BACKBONE, out=out, backend="torch", progress=False)
    with pytest.raises(HeadstartError, match="unreadable"):
        probe(
            image_folder,
            backbone=TEST_BACKBONE,
            out=tmp_path / "strict",
            strict=True,
            backend="torch",
            progress=False,
        )
    assert (out / "head.safetensors").read_bytes() == before and not (tmp_path / "strict").exists()


def test_estimator_contract_and_save_load_roundtrip(three_class_folder: Path, tmp_path: Path) -> None:
    files = sorted(three_class_folder.rglob("*.png"))
    labels = [f.parent.name for f in files]
    clf = ProbeClassifier(TEST_BACKBONE, C=0.1, backend="torch")
    assert not hasattr(clf, "classes_")
    with pytest.raises(HeadstartError, match="not fitted"):
        clf.predict(files[:1])
    assert clf.fit(files[::2], labels[::2]) is clf
    assert clf.classes_.tolist() == ["blue", "green", "red"] and clf.C_ == 0.1
    proba = clf.predict_proba(files[1::2])
    assert proba.shape == (len(files[1::2]), 3) and np.allclose(proba.sum(1), 1)
    assert clf.score(files[1::2], labels[1::2]) > 0.6
    clf.save(tmp_path / "saved")
    loaded = ProbeClassifier.load(tmp_path / "saved")
    np.testing.assert_array_equal(loaded.predict_proba(files[1::2]), proba)


def test_tampered_or_mismatched_runs_are_refused(image_folder: Path, tmp_path: Path) -> None:
    probe(image_folder, backbone=TEST_BACKBONE, out=tmp_path / "run", backend="torch", progress=False)
    head = tmp_path / "run" / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    with pytest.raises(HeadstartError, match="sha256"):
        ProbeClassifier.load(tmp_path / "run")
    with pytest.raises(HeadstartError, match="not a headstart run"):
        ProbeClassifier.load(tmp_path)


def test_cli_probe_and_predict_with_json(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert (
        main(
            [
                "probe",
                str(image_folder),
                "--backbone",
                TEST_BACKBONE,
                "--out",
                str(out),
                "--backend",
                "torch",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["run_dir"] == str(out) and "test" in report["metrics"]
    files = sorted(image_folder.rglob("*.png"))[:2]
    (tmp_path / "bad.jpg").write_bytes(b"")
    code = main(
        ["predict", str(out), *map(str, files), str(tmp_path / "bad.jpg"), "--backend", "torch", "--json"]
    )
    preds = json.loads(capsys.readouterr().out)
    assert code == 1  # one file could not be read
    assert [p["label"] for p in preds[:2]] and all(0 < p["probability"] <= 1 for p in preds[:2])
    assert preds[2]["file"].endswith("bad.jpg") and "empty" in preds[2]["error"]
    assert main(["probe", str(tmp_path / "nope"), "--backbone", TEST_BACKBONE]) == 2
    assert "data path not found" in capsys.readouterr().err
    assert main(["probe", str(image_folder), "--backbone", "resnet9000", "--json"]) == 2
    assert "unknown backbone" in json.loads(capsys.readouterr().out)["error"]


def test_cli_probe_prints_every_score_with_its_interval(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from headstart.intervals import wilson

    out = tmp_path / "run"
    assert main(["probe", str(image_folder), "--backbone", TEST_BACKBONE, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    test = json.loads((out / "metrics.json").read_text())["test"]
    knn_right = round(test["knn_accuracy"] * test["n"])
    assert test["knn_accuracy_ci"] == list(wilson(knn_right, test["n"]))
    lo, hi = test["accuracy_ci"]
    assert f"test accuracy: {test['accuracy']:.3f} [{lo:.2f}, {hi:.2f}]" in text
    for key in ("macro_f1", "knn_accuracy"):  # the table's row for test
        lo, hi = test[f"{key}_ci"]
        assert f"{test[key]:.3f} [{lo:.2f}, {hi:.2f}]" in text


def test_cli_help_is_instant_without_heavy_imports() -> None:
    code = (
        "import sys; from headstart.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'sklearn') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_backbones_verb_lists_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["efficientnet_lite0"]["installed"] and rows["efficientnet_lite0"]["size_mb"] > 10


def test_explicit_train_test_layout_uses_cross_validation(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "d" / "train", per_class=10)
    make_image_folder(tmp_path / "d" / "test", per_class=4, seed=3)
    r = probe(tmp_path / "d", backbone=TEST_BACKBONE, save=False, backend="torch", progress=False)
    assert "val" not in r.metrics and r.metrics["test"]["n"] == 8 and r.metrics["val_selection"]


def test_a_nearly_constant_feature_gets_no_explosive_weight() -> None:
    """Folding the standardisation into the weights must not divide by a near-zero spread: the weight of a
    channel that barely varies on the training set would blow up once fine-tuning moves that channel."""
    from headstart.head import fit_head

    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 16)).astype(np.float32)
    y = (X[:, 1] + X[:, 2] > 0).astype(int) + (X[:, 3] > 1).astype(int)
    X[:, 0] = 1e-5 * rng.normal(size=90)  # a nearly dead channel: pure noise at a tiny scale
    head, _, _ = fit_head(X, y, 3, cv=3)
    assert np.abs(head.weight[:, 0]).max() < 10, head.weight[:, 0]
    assert np.abs(head.weight[:, 1:]).max() < 10
    assert (head.proba(X).argmax(1) == y).mean() > 0.8


def test_head_only_runs_of_either_kind_load_and_fine_tuned_ones_are_refused(
    image_folder: Path, tmp_path: Path
) -> None:
    """Run folders from before probe and `fit --strategy head` were one pipeline still load: a "probe"
    run, and a "fit" run of the head strategy (no C recorded). A fine-tuned run is refused: its head on
    the untouched base would answer wrongly."""
    from headstart.model import load_model

    probe(image_folder, backbone=TEST_BACKBONE, out=tmp_path / "run", backend="torch", progress=False)
    files = sorted(image_folder.rglob("*.png"))[:4]
    expected = ProbeClassifier.load(tmp_path / "run").predict_proba(files)
    info_file = tmp_path / "run" / "run.json"
    info = json.loads(info_file.read_text())
    for key in ("strategy", "recipe", "modality", "pretrained", "trained_groups", "objective"):
        info.pop(key)  # what a probe run of the earlier layout did not record
    info_file.write_text(json.dumps(info))
    np.testing.assert_array_equal(ProbeClassifier.load(tmp_path / "run").predict_proba(files), expected)
    params = {"seed": 0, "batch_size": 32, "augment": None, "prefix_cache": True, "bf16": False}
    old_fit = {**info, "kind": "fit", "strategy": "head", "trained_groups": [], "params": params}
    info_file.write_text(json.dumps(old_fit))
    np.testing.assert_array_equal(ProbeClassifier.load(tmp_path / "run").predict_proba(files), expected)
    proba, _, _ = load_model(tmp_path / "run").predict_proba(files)
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    info_file.write_text(json.dumps({**old_fit, "delta": {"file": "delta.safetensors", "whole": False}}))
    with pytest.raises(HeadstartError, match="fine-tuned run"):
        ProbeClassifier.load(tmp_path / "run")
