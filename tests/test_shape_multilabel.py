"""--task multilabel: thresholds tuned per label, the probe -> evaluate -> predict -> export -> serve round
trip on an image folder whose items are linked into several class folders, and bad label rows refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from badinput import assert_refused, run_cli
from conftest import TEST_BACKBONE, make_image_folder


def test_thresholds_tuned_per_label_beat_a_fixed_half() -> None:
    """A rare label whose positives score below 0.5 (p 0.27 vs negatives' 0.05): 0.5 never predicts it;
    the threshold tuned on val does, and micro-F1 on test goes from 20/23 to 1."""
    from headstart.shapes.multilabel_fit import multilabel_scores, tune_readout

    def outputs(n: int, rare: list[int]) -> tuple[np.ndarray, np.ndarray]:
        Y = np.zeros((n, 2), np.float32)
        Y[: n // 2, 0] = 1  # "common": half the items, cleanly separated at 0.5
        Y[rare, 1] = 1
        Z = np.where(Y[:, :1] > 0, 2.0, -2.0) * np.ones((1, 2))
        Z[:, 1] = np.where(Y[:, 1] > 0, -1.0, -3.0)  # "rare": below 0.5 either way
        return Z.astype(np.float32), Y

    Z_val, Y_val = outputs(20, [3, 12, 17])
    Z_test, Y_test = outputs(20, [1, 11, 15])
    state = {"outputs": ["common", "rare"], **tune_readout(Z_val, Y_val)}
    assert state["temperature"] == [1.0, 1.0]  # 3 val errors: too few to fit T (calibration's rule)
    assert 0.05 < state["thresholds"][1] < 0.27  # between the rare label's negatives and positives
    fixed = {**state, "thresholds": [0.5, 0.5]}
    tuned_f1 = multilabel_scores(Z_test, Y_test, state)["micro_f1"]
    fixed_f1 = multilabel_scores(Z_test, Y_test, fixed)["micro_f1"]
    assert tuned_f1 == pytest.approx(1.0)
    assert fixed_f1 == pytest.approx(20 / 23)  # 10 common TP, the 3 rare positives missed


def test_a_label_without_val_positives_keeps_half_and_says_so() -> None:
    from headstart.shapes.multilabel_fit import FALLBACK_THRESHOLD, tune_threshold

    assert tune_threshold(np.array([0.1, 0.9]), np.array([0, 0])) == FALLBACK_THRESHOLD
    assert tune_threshold(np.array([0.1, 0.3, 0.9]), np.array([0, 1, 1])) == pytest.approx(0.2)


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """red/blue/green folders, every other picture also linked into `odd`: two labels on those items."""
    root = make_image_folder(tmp_path_factory.mktemp("ml") / "data", ("red", "blue", "green"), per_class=12)
    (root / "odd").mkdir()
    for c in ("red", "blue", "green"):
        for i in range(0, 12, 2):
            os.link(root / c / f"{c}_{i:03d}.png", root / "odd" / f"{c}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def run_dir(linked: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from headstart.api import probe

    out = tmp_path_factory.mktemp("ml-run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(out.parent / "cache"))
        report = probe(linked, backbone=TEST_BACKBONE, task="multilabel", out=out, progress=False)
    assert report.task == "multilabel"
    return out


def test_probe_writes_a_run_every_verb_loads(run_dir: Path, linked: Path) -> None:
    from headstart.model import load_model
    from headstart.runs import SHAPE_FILE, load_run_info

    info = load_run_info(run_dir)
    assert (info.kind, info.task, info.classes) == ("probe", "multilabel", ["blue", "green", "odd", "red"])
    assert SHAPE_FILE in info.files  # its sha256 is checked like the head's, and the store keeps it
    rows = (run_dir / "split.csv").read_text().splitlines()
    assert sum("|odd" in r or "odd|" in r for r in rows) == 18  # linked copies merged into one item
    assert len(rows) - 1 == 36
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("map", "micro_f1", "macro_f1"):
        lo, hi = metrics["test"][f"{key}_ci"]
        assert lo <= metrics["test"][key] <= hi
    assert set(metrics["test"]["per_label"]) == set(info.classes)
    model = load_model(run_dir)
    assert model.head.weight.shape[0] == 4


def test_a_changed_readout_is_refused(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    from headstart.errors import HeadstartError
    from headstart.model import load_model

    copy = shutil.copytree(run_dir, tmp_path / "run")
    state = json.loads((copy / "shape.json").read_text())
    state["thresholds"] = [0.0] * len(state["thresholds"])
    (copy / "shape.json").write_text(json.dumps(state))
    with pytest.raises(HeadstartError, match=r"shape\.json does not match its recorded sha256"):
        load_model(copy)


def test_evaluate_predict_export_round_trip(run_dir: Path, linked: Path, capsys, tmp_path: Path) -> None:
    res = run_cli(capsys, "evaluate", run_dir, "--json")
    assert res.code == 0, res.text
    ev = json.loads(res.out)
    assert ev["task"] == "multilabel" and ev["n"] == 6
    assert json.loads((run_dir / "evaluation.json").read_text())["metrics"]["map"] == ev["metrics"]["map"]
    per = ev["metrics"]["per_label"]["odd"]
    assert per["ece_before"] is not None and per["threshold"] > 0

    both = linked / "odd" / "red_000.png"
    res = run_cli(capsys, "predict", run_dir, both, "--json")
    assert res.code == 0, res.text
    (answer,) = json.loads(res.out)
    state = json.loads((run_dir / "shape.json").read_text())
    on = [
        lab
        for lab, t in zip(state["outputs"], state["thresholds"], strict=True)
        if answer["scores"][lab] >= t
    ]
    assert sorted(answer["labels"]) == sorted(on)
    assert answer["summary"] == (", ".join(answer["labels"]) or "(no label)")

    res = run_cli(capsys, "export", run_dir, "--onnx", "--json")
    assert res.code == 0, res.text
    card = json.loads((run_dir / "model.card.json").read_text())
    assert card["task"] == "multilabel"
    assert card["readout"]["thresholds"] == state["thresholds"]
    assert json.loads(res.out)["parity"]["top1_agreement"] == 1.0


def test_serve_answers_the_label_set(run_dir: Path, linked: Path) -> None:
    from fastapi.testclient import TestClient

    from headstart.serve import create_app
    from headstart.shapes import shape_of_run

    picture = linked / "odd" / "blue_002.png"
    (expected,), _, _ = shape_of_run(run_dir).predictor(run_dir).answer([str(picture)])
    client = TestClient(create_app(run_dir))
    r = client.post("/predict", files={"file": ("x.png", picture.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == expected["labels"]
    assert r.json()["scores"] == pytest.approx(expected["scores"], abs=1e-4)
    assert client.get("/health").json()["classes"] == 4
    assert client.get("/model").json()["readout"]["outputs"] == ["blue", "green", "odd", "red"]
    bad = client.post("/predict", files={"file": ("x.png", b"not a picture", "image/png")})
    assert bad.status_code == 422 and "error" in bad.json()


def test_a_row_without_a_label_is_refused_naming_it(linked: Path, tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "labels.csv"
    rows = [f"{p},{p.parent.name}" for p in sorted(linked.glob("red/*.png"))[:6]]
    rows += [f"{p},{p.parent.name}|odd" for p in sorted(linked.glob("blue/*.png"))[:6]]
    rows.append(f"{linked / 'green' / 'green_001.png'}, | ")
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    res = run_cli(capsys, "probe", manifest, "--task", "multilabel", "--backbone", TEST_BACKBONE)
    assert_refused(res, names="green_001.png")


def test_the_probe_tunes_thresholds_on_cross_fitted_train_too() -> None:
    """Two val positives that score low would pull a val-only cut to near 0; with the cross-fitted train
    outputs (40 positives, cleanly separated) beside them the cut stays where the positives are."""
    from headstart.shapes.multilabel import SHAPE
    from headstart.shapes.multilabel_fit import tune_readout

    rng = np.random.default_rng(0)

    def items(n: int, pos: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        Y = np.zeros((n, 2), np.float32)
        Y[:pos, 1] = 1
        Y[:, 0] = rng.integers(0, 2, n)
        X = rng.normal(size=(n, 8)).astype(np.float32)
        X[:, 0] += np.where(Y[:, 1] > 0, shift, -2.0)  # the rare label lives on feature 0
        X[:, 1] += np.where(Y[:, 0] > 0, 2.0, -2.0)
        return X, Y

    X_tr, Y_tr = items(200, 40, 2.0)
    X_val, Y_val = items(30, 2, -1.0)  # two val positives that look like negatives
    head, state = SHAPE.fit_head(X_tr, Y_tr, X_val, Y_val, seed=0, C=1.0)
    val_only = tune_readout(head.logits(X_val), Y_val)["thresholds"][1]
    assert val_only < 0.1  # the two low val positives alone would drag the cut down
    assert state["thresholds"][1] > 0.2 and "cross-fitted" in state["threshold_source"][1]
    X_te, Y_te = items(200, 40, 2.0)
    on = 1 / (1 + np.exp(-head.logits(X_te)[:, 1] / state["temperature"][1])) >= state["thresholds"][1]
    on_val_only = 1 / (1 + np.exp(-head.logits(X_te)[:, 1])) >= val_only
    f1 = [2 * (o & (Y_te[:, 1] > 0)).sum() / (o.sum() + Y_te[:, 1].sum()) for o in (on, on_val_only)]
    assert f1[0] > f1[1]  # and it pays on new items
