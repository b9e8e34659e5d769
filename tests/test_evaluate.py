from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder
from headstart.calibration import ece, fit_temperature, nll, reliability, softmax
from headstart.cli import main
from headstart.errors import HeadstartError
from headstart.evaluate import evaluate_run
from headstart.model import load_model
from headstart.ood import auroc, energy_score
from headstart.runs import item_sources, read_split_rows


# -- calibration and ranking on constructed numbers ------------------------------------------------------
def _calibrated_logits(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution (labels are drawn from it): calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, k))
    p = softmax(z)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z, y


def test_temperature_scaling_repairs_an_overconfident_model() -> None:
    z, y = _calibrated_logits(4000, 5, seed=0)
    over = 4.0 * z  # same predictions, far too sure of them
    val, test = slice(0, 2000), slice(2000, None)
    before = ece(softmax(over[test]), y[test])
    T = fit_temperature(over[val], y[val])
    after = ece(softmax(over[test] / T), y[test])
    assert before > 0.15
    assert after < 0.04 < before / 4
    assert 3.3 < T < 4.8  # the scale that was put in
    assert nll(over[val], y[val], T) < nll(over[val], y[val], 1.0)
    # Temperature never changes a prediction.
    assert (softmax(over / T).argmax(1) == over.argmax(1)).all()


def test_ece_and_reliability_by_hand() -> None:
    # Two items at confidence 0.9 (one right), two at 0.6 (both right).
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    r = reliability(proba, y)
    assert len(r["count"]) == 15 and sum(r["count"]) == 4
    b9, b6 = int(np.ceil(0.9 * 15)) - 1, int(np.ceil(0.6 * 15)) - 1
    assert r["count"][b9] == 2 and r["accuracy"][b9] == 0.5 and r["confidence"][b9] == pytest.approx(0.9)
    assert r["count"][b6] == 2 and r["accuracy"][b6] == 1.0 and r["confidence"][b6] == pytest.approx(0.6)
    assert r["confidence"][0] is None
    assert ece(proba, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_auroc_by_hand_with_ties_and_against_all_pairs() -> None:
    # Pairs (pos > neg): 0.9>0.7, 0.9>0.3, 0.8>0.7, 0.8>0.3, 0.4>0.3; 0.4<0.7  => 5 of 6.
    assert auroc([0.9, 0.8, 0.4], [0.7, 0.3]) == pytest.approx(5 / 6)
    assert auroc([0.5, 0.5], [0.5]) == pytest.approx(0.5)  # ties count half
    assert auroc([1, 2], [3, 4]) == 0.0 and auroc([3, 4], [1, 2]) == 1.0
    rng = np.random.default_rng(3)
    pos, neg = rng.integers(0, 20, 50).astype(float), rng.integers(0, 20, 70).astype(float) - 3
    diff = pos[:, None] - neg[None, :]  # every pair, ties half: the definition, O(n*m)
    ref = (diff > 0).mean() + 0.5 * (diff == 0).mean()
    assert auroc(pos, neg) == pytest.approx(ref)


def test_energy_score_is_logsumexp() -> None:
    z = np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]])
    assert energy_score(z) == pytest.approx([1000 + np.log(2), np.log(4)])


# -- evaluate_run on a real (tiny) run -------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from headstart.api import probe

    root = tmp_path_factory.mktemp("eval")
    data = make_image_folder(root / "data", classes=("red", "blue", "green"), per_class=14)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        probe(data, backbone=TEST_BACKBONE, out=root / "run", backend="torch", progress=False)
    return root / "run"


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))


def test_evaluate_run_writes_evaluation_and_calibration_and_load_model_applies_t(
    run: Path, tmp_path: Path
) -> None:
    ood = make_image_folder(tmp_path / "ood" / "nested", classes=("red", "blue"), per_class=3, seed=7)
    (ood / "blue").rename(ood / "purple")  # a class the run does not know: unlabeled for OOD purposes
    res = evaluate_run(run, ood=ood.parent, backend="torch")

    saved = json.loads((run / "evaluation.json").read_text())
    assert saved["n"] == res["n"] == 6 and saved["split"] == "test"  # 2 test items per class
    m = saved["metrics"]
    assert set(m["per_class"]) == {"red", "blue", "green"}
    assert np.asarray(m["confusion"]).sum() == 6 and np.asarray(m["confusion"]).shape == (3, 3)
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1

    cal = json.loads((run / "calibration.json").read_text())
    assert cal["fitted_on"] == "val" and cal["n"] == 6
    T = cal["temperature"]
    assert saved["calibration"]["temperature"] == T and 0.25 <= T <= 10
    rb = saved["calibration"]["reliability_before"]
    assert len(rb["confidence"]) == len(rb["accuracy"]) == len(rb["count"]) == 15 and sum(rb["count"]) == 6

    # load_model picks the temperature up, and predict_proba applies it to the logits.
    model = load_model(run)
    assert model.temperature == pytest.approx(T)
    test_rows = [r for r in read_split_rows(run) if r.split == "test"]
    sources = item_sources(run, test_rows, model.run_info)
    z, _, _ = model.logits(sources, backend="torch")
    p, _, _ = model.predict_proba(sources, backend="torch")
    np.testing.assert_allclose(p, softmax(z / T), atol=1e-6)

    # Mistakes: the wrong ones, most confident first.
    wrong = int((z.argmax(1) != np.array([model.classes.index(r.label) for r in test_rows])).sum())
    conf = [x["confidence"] for x in saved["mistakes"]]
    assert len(conf) == min(wrong, 16) and conf == sorted(conf, reverse=True)
    assert all(x["label"] != x["pred"] for x in saved["mistakes"])

    # OOD: 6 files, the 3 in a folder named like a known class are labeled; AUROCs are probabilities.
    o = saved["ood"]
    assert o["n"] == 6 and o["n_labeled"] == 3 and 0 <= o["accuracy"] <= 1
    assert 0 <= o["auroc_msp"] <= 1 and 0 <= o["auroc_energy"] <= 1

    lat = saved["latency"]
    assert 0 < lat["single_p50_ms"] <= lat["single_p95_ms"] and lat["batch32_per_item_ms"] > 0
    assert lat["end_to_end_p50_ms"] > 0 and saved["memory"]["peak_rss_mb"] > 50


def test_evaluate_on_other_data_counts_unknown_labels(run: Path, tmp_path: Path) -> None:
    other = make_image_folder(tmp_path / "other", classes=("red", "blue", "green"), per_class=2, seed=3)
    (other / "green").rename(other / "pink")
    res = evaluate_run(run, other, latency=False, backend="torch")
    assert res["n"] == 4 and res["data"].endswith("(all items)")  # 2 per class, too few to split: all used
    assert res["unknown_labels"] == {"labels": ["pink"], "n": 2}
    assert res["latency"] is None
    # A folder with its own splits gives the requested one.
    split = tmp_path / "split"
    make_image_folder(split / "train", per_class=3)
    make_image_folder(split / "test", per_class=2, seed=9)
    assert evaluate_run(run, split, latency=False, backend="torch")["n"] == 4
    with pytest.raises(HeadstartError, match="no 'val' items"):
        evaluate_run(run, split, split="val", latency=False, backend="torch")


def test_evaluate_reports_unreadable_split_paths(run: Path, base_run: Path) -> None:
    for name in ("split.csv", "run.json"):  # the items' paths, and the data root they are relative to
        text = (run / name).read_text().replace(str(base_run.parent), "/nonexistent")
        (run / name).write_text(text)
    with pytest.raises(HeadstartError, match="could be read"):
        evaluate_run(run, latency=False, backend="torch")


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("no_label_column", r"lacks column\(s\) \['label'\]"),
        ("latin1", "is not UTF-8 CSV"),
        ("short_row", r"split\.csv:3 has too few fields"),
        ("missing", "has no split.csv"),
    ],
)
def test_a_damaged_split_csv_is_a_clear_error(
    run: Path, capsys: pytest.CaptureFixture[str], damage: str, said: str
) -> None:
    """split.csv is read by one reader (runs.read_split_rows): damage is named, never a traceback."""
    f = run / "split.csv"
    lines = f.read_text().splitlines()
    if damage == "no_label_column":
        f.write_text("\n".join([lines[0].replace("label", "class"), *lines[1:]]) + "\n")
    elif damage == "latin1":
        f.write_bytes(f.read_bytes() + "caf\xe9,red,test,\n".encode("latin-1"))
    elif damage == "short_row":
        f.write_text("\n".join([lines[0], lines[1], "only-a-path"]) + "\n")
    else:
        f.unlink()
    assert main(["evaluate", str(run), "--no-latency", "--backend", "torch"]) == 2
    err = capsys.readouterr().err
    assert re.search(said, err) and str(run) in err and "Traceback" not in err


def test_evaluate_cli(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(run), "--no-latency", "--backend", "torch", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 6 and out["latency"] is None and "ece_after" in out["calibration"]
    assert main(["evaluate", str(run), "--no-latency", "--backend", "torch"]) == 0
    text = capsys.readouterr().out
    assert "macro-F1" in text and "ECE" in text and "T=" in text
    assert main(["evaluate", str(run / "missing")]) == 2
