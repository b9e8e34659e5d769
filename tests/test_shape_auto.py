"""auto --task: a shape's probe and fine-tune judged item by item on val (headstart.shapes.auto)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE
from headstart.shapes.auto import paired_gain
from test_shape_regression import run_json, value_manifest


def test_paired_gain_says_win_tie_or_loss_from_the_interval() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=300)
    assert paired_gain(base + 0.5 + 0.1 * rng.normal(size=300), base)["verdict"] == "win"
    assert paired_gain(base - 0.5 + 0.1 * rng.normal(size=300), base)["verdict"] == "loss"
    tie = paired_gain(base + rng.normal(size=300), base)  # noise around the same scores
    assert tie["verdict"] == "tie" and tie["ci"][0] < 0 < tie["ci"][1]
    with pytest.raises(ValueError):
        paired_gain(base, base[:10])


def test_auto_regress_compares_on_val_registers_the_choice_and_reports_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = value_manifest(tmp_path)
    out, store = tmp_path / "auto", tmp_path / "store"
    argv = ("auto", str(data), "--task", "regress", "--backbone", TEST_BACKBONE, "--budget", "60")
    res = run_json(capsys, *argv, "--strategies", "head,lp-ft", "--out", str(out), "--store", str(store))
    assert isinstance(res, dict)
    rows = {r["strategy"]: r for r in res["comparison"]["rows"]}
    assert set(rows) == {"head", "lp-ft"} and "vs_probe_val" not in rows["head"]
    gain = rows["lp-ft"]["vs_probe_val"]
    # The gain is the mean paired difference of the two runs' own per-item val scores (minus |error|).
    val = {s: json.loads((Path(rows[s]["run_dir"]) / "metrics.json").read_text())["val"] for s in rows}
    diff = np.mean(np.asarray(val["lp-ft"]["item_scores"]) - np.asarray(val["head"]["item_scores"]))
    assert gain["diff"] == pytest.approx(diff) and gain["ci"][0] <= diff <= gain["ci"][1]
    chosen = "lp-ft" if gain["verdict"] == "win" else "head"  # a tie or a loss keeps the probe
    assert res["recommended"]["strategy"] == chosen
    run_dir = Path(res["recommended"]["run_dir"])
    assert (run_dir / "shape_compare.json").is_file() and (run_dir / "evaluation.json").is_file()
    assert res["registered"]["version"] == 1 and res["registered"]["name"] == tmp_path.name
    report = run_json(capsys, "report", str(run_dir))
    assert isinstance(report, dict) and report["sections"]["shape_compare"] is True
