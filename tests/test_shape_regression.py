"""--task regress: the ridge probe and its CV, the conformal interval, the scores, and the verbs end to end
on tiny backbones (images through a manifest, text through a CSV table)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder
from headstart.cli import main
from headstart.shapes.regression_fit import (
    _path_predictions,
    _solve,
    conformal_halfwidth,
    fit_ridge,
    regression_metrics,
)


def planted(n: int, d: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features of unequal scales and offsets, and y = X w + 7 + noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.2, 5.0, d) + rng.normal(size=d)
    return X.astype(np.float32), X @ rng.normal(size=d) + 7.0 + noise * rng.normal(size=n)


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


@pytest.mark.parametrize("n", [400, 60])  # more items than features (primal), and fewer (dual)
def test_ridge_recovers_a_planted_linear_target(n: int) -> None:
    X, y = planted(n + 300, 40, noise=0.05)
    head, state = fit_ridge(X[:n], y[:n], seed=0)
    pred = head.logits(X[n:])[:, 0]  # the head gives the value itself: both standardisations folded in
    assert r2(y[n:], pred) > 0.95 if n > 40 else r2(y[n:], pred) > 0.5
    assert state["lambda"] <= 1e-2  # little noise: CV keeps the penalty small
    assert state["target_mean"] == pytest.approx(y[:n].mean())


def test_ridge_on_pure_noise_is_no_better_than_the_mean() -> None:
    X, _ = planted(600, 40, noise=0.0)
    y = np.random.default_rng(1).normal(5.0, 2.0, size=600)
    head, state = fit_ridge(X[:400], y[:400], seed=0)
    m = regression_metrics(y[400:], head.logits(X[400:])[:, 0], baseline=y[:400].mean(), halfwidth=None)
    assert state["lambda"] >= 1.0  # CV reaches for a strong penalty
    assert m["r2"] < 0.05 and m["r2_ci"][0] < 0
    for k in ("mae", "rmse"):  # within 2 % of the mean's error (a strong penalty predicts about the mean)
        assert abs(m["vs_baseline"][k]["diff"]) < 0.02 * m["baseline"][k]


@pytest.mark.parametrize("shape", [(80, 12), (12, 80)])
def test_the_cv_path_matches_a_direct_ridge_solve(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    Z, y, Z_out = rng.normal(size=shape), rng.normal(size=shape[0]), rng.normal(size=(5, shape[1]))
    alphas = np.array([0.1, 3.0, 100.0])
    path = _path_predictions(Z, y, Z_out, alphas)
    for j, a in enumerate(alphas):
        w = _solve(Z - Z.mean(0), y - y.mean(), a)
        np.testing.assert_allclose(path[:, j], (Z_out - Z.mean(0)) @ w + y.mean(), rtol=1e-6, atol=1e-9)


def test_a_fixed_C_sets_the_strength() -> None:
    X, y = planted(200, 10, noise=0.5)
    _, state = fit_ridge(X, y, C=0.5)
    assert state["C"] == pytest.approx(0.5) and state["cv_folds"] == 0


def test_the_conformal_interval_covers_about_90_percent() -> None:
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(300):  # heavy-tailed residuals: the guarantee holds whatever their law
        q, _why = conformal_halfwidth(rng.standard_t(3, size=40))
        hits.append(np.mean(np.abs(rng.standard_t(3, size=200)) <= q))
    assert 0.88 <= float(np.mean(hits)) <= 0.94  # in theory ceil(41 * 0.9) / 41 = 0.9024 on average
    q, why = conformal_halfwidth(np.ones(8))
    assert q is None and "8 item(s)" in why and "at least 9" in why
    assert conformal_halfwidth(np.arange(9.0))[0] == 8.0  # n = 9: the largest residual


def test_scores_match_their_definitions_and_the_baseline_is_paired() -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(0)
    y = rng.normal(10, 3, 150)
    pred = y + rng.normal(0, 1, 150)
    m = regression_metrics(y, pred, baseline=9.0, halfwidth=1.645)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, pred))
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, pred)))
    assert m["r2"] == pytest.approx(r2_score(y, pred))
    for k in ("mae", "rmse", "r2"):
        assert m[f"{k}_ci"][0] < m[k] < m[f"{k}_ci"][1]
    assert m["baseline"]["mae"] == pytest.approx(np.abs(y - 9.0).mean())
    assert m["vs_baseline"]["mae"]["better"] and m["vs_baseline"]["mae"]["ci"][1] < 0
    assert 0.8 < m["coverage"]["rate"] < 0.97 and m["coverage"]["halfwidth"] == 1.645


# -- the verbs end to end ------------------------------------------------------------------------------
VALUE = {"red": 1.0, "blue": 5.0, "green": 9.0}


def value_manifest(root: Path) -> Path:
    """A manifest of the colour pictures whose target is a number per colour (plus a little spread)."""
    folder = make_image_folder(root / "pics", classes=tuple(VALUE), per_class=30)
    rng = np.random.default_rng(0)
    rows = [
        {"path": str(p.relative_to(root)), "label": f"{VALUE[p.parent.name] + rng.normal(0, 0.3):.3f}"}
        for p in sorted(folder.rglob("*.png"))
    ]
    return write_rows(root / "manifest.csv", rows)


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0, capsys.readouterr()
    return json.loads(capsys.readouterr().out)


def test_probe_evaluate_predict_export_and_report_on_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = value_manifest(tmp_path), tmp_path / "run"
    common = ("--backbone", TEST_BACKBONE, "--task", "regress", "--val", "0.2", "--test", "0.2")
    report = run_json(capsys, "probe", str(data), *common, "--out", str(run))
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "regress" and info["classes"] == ["value"]
    state = json.loads((run / "shape.json").read_text())
    assert state["halfwidth"] > 0 and state["calibration_n"] >= 9
    test = report["metrics"]["test"]
    assert test["vs_baseline"]["mae"]["better"]  # three well-separated values: better than the mean
    assert len(test["item_scores"]) == test["n"] and max(test["item_scores"]) <= 0

    evaluated = run_json(capsys, "evaluate", str(run))
    assert evaluated["metrics"]["mae"] == pytest.approx(test["mae"], rel=1e-4)
    assert (run / "evaluation.json").is_file()

    blue = sorted((tmp_path / "pics" / "blue").glob("*.png"))[0]
    (answer,) = run_json(capsys, "predict", str(run), str(blue), "--backend", "torch")
    assert abs(answer["value"] - 5.0) < 2.0
    assert answer["interval"] == pytest.approx(
        [answer["value"] - state["halfwidth"], answer["value"] + state["halfwidth"]]
    )
    assert answer["summary"].startswith(f"{answer['value']:.2f}"[:3])

    capsys.readouterr()
    assert main(["export", str(run), "--onnx", "--out", str(tmp_path / "m.onnx"), "--check", str(blue)]) == 0
    assert (tmp_path / "m.onnx").is_file()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert 'id="regression" data-computed="yes"' in page and "data:image/svg+xml" in page


def test_probe_on_a_text_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from headstart.testing import TEST_WORDS

    rng = np.random.default_rng(0)
    rows = []
    for _ in range(60):  # the target: how many words the text has
        n = int(rng.integers(2, 15))
        rows.append({"text": " ".join(rng.choice(TEST_WORDS, n)), "label": str(n)})
    data = write_rows(tmp_path / "texts.csv", rows)
    report = run_json(
        capsys,
        "probe",
        str(data),
        "--backbone",
        "test_text_encoder",
        "--task",
        "regress",
        "--out",
        str(tmp_path / "r"),
    )
    assert report["metrics"]["val"]["n"] > 0 and report["table"][1][2] == "MAE"
    (answer,) = run_json(capsys, "predict", str(tmp_path / "r"), "--text", "cat dog car")
    assert isinstance(answer["value"], float) and "summary" in answer


@pytest.mark.parametrize("kind", ["manifest", "text"])
def test_a_non_numeric_label_is_refused_naming_its_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    if kind == "manifest":
        data = value_manifest(tmp_path)
        lines = data.read_text().splitlines()
        bad = lines[5].split(",")[0]
        lines[5] = f"{bad},tall"
        data.write_text("\n".join(lines) + "\n")
        backbone = TEST_BACKBONE
    else:
        data = write_rows(
            tmp_path / "t.csv", [{"text": f"text {i}", "label": "3" if i != 4 else "many"} for i in range(20)]
        )
        bad, backbone = "t.csv:6", "test_text_encoder"  # the table and the line of the row
    capsys.readouterr()
    assert (
        main(["probe", str(data), "--backbone", backbone, "--task", "regress", "--out", str(tmp_path / "r")])
        == 2
    )
    err = capsys.readouterr().err
    assert bad in err and ("'tall'" in err or "'many'" in err) and "not a number" in err
    assert not (tmp_path / "r").exists()


def test_probe_on_audio_through_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import soundfile as sf

    rng, rows = np.random.default_rng(0), []
    for i in range(36):  # the target: a tone's pitch, in semitones above 220 Hz
        semis = float(rng.uniform(0, 24))
        t = np.arange(8000) / 16_000
        wave = 0.4 * np.sin(2 * np.pi * 220 * 2 ** (semis / 12) * t)
        sf.write(tmp_path / f"tone{i}.wav", wave.astype(np.float32), 16_000, subtype="PCM_16")
        rows.append({"path": f"tone{i}.wav", "label": f"{semis:.2f}"})
    data, run = write_rows(tmp_path / "tones.csv", rows), tmp_path / "run"
    report = run_json(
        capsys,
        "probe",
        str(data),
        "--backbone",
        "test_whisper_encoder",
        "--task",
        "regress",
        "--out",
        str(run),
    )
    assert (
        report["metrics"]["test"]["n"] > 0
        and json.loads((run / "run.json").read_text())["modality"] == "audio"
    )
    (answer,) = run_json(capsys, "predict", str(run), str(tmp_path / "tone0.wav"))
    assert math.isfinite(answer["value"]) and "summary" in answer


def test_too_small_a_val_gives_answers_without_an_interval_and_says_why() -> None:
    from headstart.shapes.regression import SHAPE

    X, y = planted(60, 8, noise=0.1)
    head, state = SHAPE.fit_head(X[:50], y[:50], X[50:55], y[50:55], seed=0, C=None)
    assert state["halfwidth"] is None and "5 item(s)" in state["no_interval"]
    (answer,) = SHAPE.answers(head.logits(X[59:]), state, ["value"])
    assert answer["interval"] is None and "at least 9" in answer["no_interval"]
    assert answer["summary"] == f"{answer['value']:.2f}"  # a spread of a few units: 2 decimals
    _, state = SHAPE.fit_head(X[:40], y[:40], X[40:], y[40:], seed=0, C=None)
    (answer,) = SHAPE.answers(head.logits(X[59:]), state, ["value"])
    lo, hi = answer["interval"]
    assert hi - lo == pytest.approx(2 * state["halfwidth"]) and "[" in answer["summary"]
    # A fine-tune's val outputs (fit: headstart.shapes.linear_fit) re-tune the half-width, flat or (N, 1).
    errors = np.arange(1.0, 21.0)
    tuned = SHAPE.readout(y[40:] + errors, y[40:], state)
    assert tuned["halfwidth"] == 19.0 and tuned["calibration_n"] == 20 and "no_interval" not in tuned
