"""`headstart auto`: leakage, comparison, curve, evaluation, registration and report, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_auto_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from headstart.cli import main
    from headstart.model import load_model
    from headstart.report import build_report
    from headstart.store import ModelStore

    data = tmp_path / "shapes"
    for split, n in (("train", 10), ("val", 4), ("test", 4)):
        make_image_folder(data / split, classes=("red", "blue", "green"), per_class=n, seed=len(split))
    leaked = data / "test" / "red" / "copied.png"
    shutil.copy2(data / "train" / "red" / "red_000.png", leaked)  # an exact copy across splits
    out, store = tmp_path / "auto", tmp_path / "models"
    code = main(
        [
            "auto",
            str(data),
            "--backbone",
            TEST_BACKBONE,
            "--strategies",
            "head,scratch",
            "--budget",
            "20s",
            "--out",
            str(out),
            "--store",
            str(store),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["leakage"]["n_exact"] == 1
    assert set(result["compare"]) == {"probe", "head", "scratch"}
    run_dir = Path(result["recommended"]["run_dir"])
    assert result["recommended"]["strategy"] in result["compare"]
    for f in (
        "compare.json",
        "leakage.json",
        "curve.json",
        "evaluation.json",
        "calibration.json",
        "report.html",
    ):
        assert (run_dir / f).is_file(), f
    assert json.loads((out / "auto.json").read_text())["report"] == str(run_dir / "report.html")

    sections = build_report(run_dir).sections
    assert sections["compare"] and sections["curve"] and sections["calibration"]
    # The tiny backbone has no pretraining label space: the overlap check ran and says so in the report.
    assert result["overlap"]["supported"] is False and sections["overlap"]

    reg = result["registered"]
    assert reg["name"] == "shapes" and reg["alias"] == "production"
    stored = ModelStore(store).load("shapes@production")
    files = sorted(str(p) for p in (data / "test").rglob("*.png"))
    p_stored, _, _ = stored.predict_proba(files)
    p_run, _, _ = load_model(run_dir).predict_proba(files)
    np.testing.assert_array_equal(p_stored, p_run)  # the stored version is the evaluated, calibrated run
    assert (stored.path / "compare.json").is_file()
