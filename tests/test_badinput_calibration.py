"""Bad-input corpus, calibration: validation data that cannot support a temperature, a temperature that
does not help on held-out items, out-of-range temperatures, and evaluating a run on other data.

Each case builds its own input. A skipped calibration must say so (status, reason, T = 1, a visible
warning, the report's "not applied"); evaluating other data must leave the run's own files unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from badinput import assert_refused, run_cli, tree_digest
from conftest import TEST_BACKBONE, make_image_folder
from headstart.calibration import (
    T_MAX,
    T_MIN,
    applied_temperature,
    calibrate_temperature,
    ece,
    fit_temperature,
    nll,
    softmax,
)


# -- constructed logits ----------------------------------------------------------------------------------
def _calibrated(n: int, k: int, seed: int, scale: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution (labels are drawn from it): calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=scale, size=(n, k))
    return z, np.array([rng.choice(k, p=row) for row in softmax(z)])


def _no_errors() -> tuple[np.ndarray, np.ndarray]:
    # The speech example: every validation clip right. The NLL optimum is T -> 0 (certainty on anything).
    y = np.arange(18) % 3
    return 4.0 * np.eye(3)[y], y


def _all_wrong() -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(30) % 3
    return 2.0 * np.eye(3)[(y + 1) % 3], y


def _not_finite() -> tuple[np.ndarray, np.ndarray]:
    z, y = _calibrated(60, 3, seed=4)
    z[5, 1] = np.nan
    return z, y


def _one_sure_error() -> tuple[np.ndarray, np.ndarray]:
    """60 sure right items, 4 barely wrong ones and one wrong at margin 40: on all of val the fit likes
    T = 2.5, but each fold's T misjudges the held-out fold, so held-out NLL gets worse."""
    rng = np.random.default_rng(1)
    z = [[rng.uniform(2, 4), 0.0] for _ in range(60)] + [[m, 0.0] for m in (0.3, 0.5, 0.2, 0.4, 40.0)]
    return np.array(z), np.array([0] * 60 + [1] * 5)


def _ece_gets_worse() -> tuple[np.ndarray, np.ndarray]:
    """40 items, a little under-confident: held-out NLL improves slightly, held-out ECE does not."""
    z, y = _calibrated(40, 3, seed=8)
    return 0.7 * z, y


SKIPPED = [
    pytest.param(_no_errors, "only 0 of 18 validation items are wrong", id="val-has-no-errors"),
    pytest.param(_all_wrong, "only 0 of 30 validation items are right", id="val-has-no-right-items"),
    pytest.param(_not_finite, "not all finite", id="non-finite-logits"),
    pytest.param(_one_sure_error, "does not lower NLL on held-out", id="held-out-nll-worse"),
    pytest.param(_ece_gets_worse, "makes ECE worse on held-out", id="held-out-ece-worse"),
]


@pytest.mark.parametrize(("build", "why"), SKIPPED)
def test_calibration_is_skipped_with_its_reason(build: Any, why: str) -> None:
    z, y = build()
    rec = calibrate_temperature(z, y)
    assert rec["status"] == "skipped"
    assert why in rec["reason"] and "T = 1" in rec["reason"], rec["reason"]
    assert rec["temperature"] == rec["applied_temperature"] == 1.0
    assert rec["ece_after"] == rec["ece_before"] or np.isnan(rec["ece_before"])
    json.dumps(rec, allow_nan=True)  # calibration.json content


def test_held_out_check_rejects_what_the_in_sample_fit_would_accept() -> None:
    # The reason for cross-validating: on all of val, the fitted T does lower NLL.
    z, y = _one_sure_error()
    rec = calibrate_temperature(z, y)
    t = rec["fitted_temperature"]
    assert t is not None and t > 1.5
    assert nll(z, y, t) < nll(z, y, 1.0)
    assert rec["cv"]["nll_after"] > rec["cv"]["nll_before"]


def test_an_overconfident_model_is_calibrated() -> None:
    z, y = _calibrated(600, 5, seed=0)
    rec = calibrate_temperature(5.0 * z, y)  # same predictions, five times too sure
    assert rec["status"] == "applied", rec["reason"]
    assert rec["temperature"] == rec["applied_temperature"] == rec["fitted_temperature"]
    assert 4.0 < rec["temperature"] < 6.5
    assert rec["ece_after"] < rec["ece_before"] / 3
    assert (
        rec["cv"]["ece_after"] < rec["cv"]["ece_before"] and rec["cv"]["nll_after"] < rec["cv"]["nll_before"]
    )
    # And on fresh items from the same model.
    zt, yt = _calibrated(600, 5, seed=1)
    assert ece(softmax(5.0 * zt / rec["temperature"]), yt) < ece(softmax(5.0 * zt), yt) / 3


@pytest.mark.parametrize("scale", [1e-3, 0.05, 1.0, 30.0, 1e4])
@pytest.mark.parametrize("labels", ["right", "random", "wrong"])
def test_temperature_never_leaves_its_bounds(scale: float, labels: str) -> None:
    z, y = _calibrated(200, 4, seed=2)
    if labels == "right":
        y = z.argmax(1)
    elif labels == "wrong":
        y = (z.argmax(1) + 1) % 4
    else:
        y = np.random.default_rng(3).integers(0, 4, len(y))
    t = fit_temperature(scale * z, y)
    assert T_MIN <= t <= T_MAX
    rec = calibrate_temperature(scale * z, y)
    assert T_MIN <= rec["temperature"] <= T_MAX
    if rec["fitted_temperature"] is not None:
        assert T_MIN <= rec["fitted_temperature"] <= T_MAX


def test_bounds_are_sane() -> None:
    assert (T_MIN, T_MAX) == (0.25, 10.0)
    y = np.arange(40) % 2
    assert fit_temperature(2.0 * np.eye(2)[y], y) == pytest.approx(T_MIN, rel=1e-3)  # wants T -> 0


@pytest.mark.parametrize(
    ("record", "expected", "warned"),
    [
        ({"temperature": 0.01}, 1.0, "0.01"),  # written before T was bounded: certainty on noise
        ({"temperature": 250.0}, 1.0, "250"),
        ({"temperature": float("nan")}, 1.0, "nan"),
        ({"temperature": "warm"}, 1.0, "warm"),
        ({"status": "skipped", "temperature": 1.0, "fitted_temperature": 0.3}, 1.0, None),
        ({"status": "applied", "temperature": 2.5, "applied_temperature": 2.5}, 2.5, None),
        ({"temperature": 1.7}, 1.7, None),  # an old record inside the bounds stays as it was
    ],
)
def test_applied_temperature_of_a_record(record: dict[str, Any], expected: float, warned: str | None) -> None:
    t, warning = applied_temperature(record)
    assert t == expected
    if warned is None:
        assert warning is None
    else:
        assert warning is not None and warned in warning and "T = 1" in warning


# -- a real (tiny) run -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A probe run evaluated on its own split (so evaluation.json and calibration.json exist)."""
    from headstart.api import probe
    from headstart.evaluate import evaluate_run

    root = tmp_path_factory.mktemp("badcal")
    data = make_image_folder(root / "data", classes=("red", "blue", "green"), per_class=14)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        probe(data, backbone=TEST_BACKBONE, out=root / "run", backend="torch", progress=False)
        evaluate_run(root / "run", latency=False, backend="torch")
    return root / "run"


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))


@pytest.fixture
def other(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "other", classes=("red", "blue", "green"), per_class=2, seed=5)


def test_too_small_val_skips_with_a_visible_warning(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 6 val items: never 5 errors and 5 right ones, so T is not fitted at all.
    res = run_cli(capsys, "evaluate", run, "--no-latency", "--backend", "torch")
    assert res.code == 0 and "Traceback" not in res.text
    assert "warning: temperature scaling not applied (T=1)" in res.out
    cal = json.loads((run / "calibration.json").read_text())
    assert cal["status"] == "skipped" and "T = 1" in cal["reason"] and cal["n"] == 6
    assert cal["temperature"] == cal["applied_temperature"] == 1.0 and cal["fitted_temperature"] is None
    ev = json.loads((run / "evaluation.json").read_text())["calibration"]
    assert ev["status"] == "skipped" and ev["reason"] == cal["reason"] and ev["ece_after"] == ev["ece_before"]
    # --json keeps stdout machine-readable and still warns, on stderr.
    res = run_cli(capsys, "evaluate", run, "--no-latency", "--backend", "torch", "--json")
    assert json.loads(res.out)["calibration"]["status"] == "skipped"
    assert "temperature scaling not applied" in res.err


def test_predictions_use_the_applied_temperature(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from headstart.model import load_model

    cal = run / "calibration.json"
    cal.write_text(json.dumps({"status": "skipped", "temperature": 1.0, "fitted_temperature": 0.3}))
    assert load_model(run).temperature == 1.0
    cal.write_text(json.dumps({"temperature": 0.01}))  # an old run: T ran to the old bound
    capsys.readouterr()
    assert load_model(run).temperature == 1.0
    assert str(cal) in capsys.readouterr().err
    cal.write_text(json.dumps({"status": "applied", "temperature": 2.0, "applied_temperature": 2.0}))
    assert load_model(run).temperature == 2.0


def test_unreadable_calibration_json_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run / "calibration.json").write_text("{not json")
    res = run_cli(capsys, "evaluate", run, "--no-latency", "--backend", "torch")
    assert_refused(res, names=run / "calibration.json")


def test_evaluating_other_data_leaves_the_run_unchanged(
    run: Path, other: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The run's own T (as if applied earlier) is used as it stands, never refitted on the other data.
    (run / "calibration.json").write_text(json.dumps({"status": "applied", "temperature": 2.0}))
    before = tree_digest(run)
    res = run_cli(capsys, "evaluate", run, other, "--no-latency", "--backend", "torch", "--json")
    assert res.code == 0, res.text
    assert tree_digest(run) == before
    cal = json.loads(res.out)["calibration"]
    assert cal["temperature"] == 2.0 and cal["status"] == "applied" and cal["n_fit"] == 0
    assert "not refitted" in cal["source"]

    res = run_cli(capsys, "evaluate", run, other, "--no-latency", "--backend", "torch")
    assert res.code == 0 and "nothing written into the run" in res.out
    assert tree_digest(run) == before


def test_evaluating_other_data_with_out_writes_only_there(
    run: Path, other: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_digest(run)
    out = tmp_path / "eval-other.json"
    res = run_cli(capsys, "evaluate", run, other, "--no-latency", "--backend", "torch", "--out", out)
    assert res.code == 0, res.text
    assert tree_digest(run) == before
    saved = json.loads(out.read_text())
    assert saved["n"] == 6 and saved["data"].endswith("(all items)")


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(lambda run, tmp: run / "evaluation.json", id="out-is-runs-evaluation"),
        pytest.param(lambda run, tmp: run / "calibration.json", id="out-is-runs-calibration"),
        pytest.param(lambda run, tmp: tmp / "missing" / "e.json", id="out-folder-missing"),
        pytest.param(lambda run, tmp: tmp, id="out-is-a-folder"),
    ],
)
def test_bad_out_is_refused_before_any_work(
    run: Path, other: Path, tmp_path: Path, target: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    out = target(run, tmp_path)
    before = tree_digest(run)
    res = run_cli(capsys, "evaluate", run, other, "--no-latency", "--backend", "torch", "--out", out)
    assert_refused(res, names=out)
    assert tree_digest(run) == before


# -- the report ------------------------------------------------------------------------------------------
def _report_for(tmp_path: Path, calibration: dict[str, Any]) -> str:
    from headstart.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"classes": ["a", "b"]}))
    rel = {"confidence": [0.9], "accuracy": [1.0], "count": [5], "edges": [0.0, 1.0]}
    cal = {"reliability_before": rel, "reliability_after": rel, **calibration}
    (run / "evaluation.json").write_text(json.dumps({"calibration": cal}))
    return build_report(run).html


def test_report_says_not_applied_with_the_reason(tmp_path: Path) -> None:
    html = _report_for(
        tmp_path,
        {
            "status": "skipped",
            "reason": "only 0 of 18 validation items are wrong; predictions keep T = 1 (uncalibrated)",
            "temperature": 1.0,
            "fitted_temperature": None,
            "ece_before": 0.045,
            "ece_after": 0.045,
        },
    )
    assert "not applied: only 0 of 18 validation items are wrong" in html
    assert "ECE after scaling" not in html and "ECE (not scaled)" in html


@pytest.mark.parametrize(
    "cal",
    [
        pytest.param({"temperature": 0.01, "ece_before": 0.2, "ece_after": 0.0}, id="old-t-at-0.01"),
        pytest.param(
            {"status": "applied", "temperature": 1.4, "ece_before": 0.038, "ece_after": 0.052}, id="worse"
        ),
    ],
)
def test_report_never_claims_success_without_a_gain(tmp_path: Path, cal: dict[str, Any]) -> None:
    html = _report_for(tmp_path, cal)
    if cal.get("status") == "applied":
        assert "did not lower ECE" in html and "ECE after scaling (no gain)" in html  # split disagrees
    else:
        assert "not applied: temperature 0.01 is outside" in html and "ECE after scaling" not in html


def test_report_shows_a_real_gain_as_one(tmp_path: Path) -> None:
    html = _report_for(
        tmp_path, {"status": "applied", "temperature": 1.8, "ece_before": 0.2, "ece_after": 0.05}
    )
    assert "ECE after scaling" in html and "not applied" not in html and "did not lower" not in html
