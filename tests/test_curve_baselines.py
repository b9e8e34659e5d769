"""The curve's no-backbone baseline per modality, and `auto` checking before it spends (issue 12, item 7).

Text gets TF-IDF + logistic regression, audio log-mel statistics + logistic regression, images pixels; a
baseline that does not fit the data is refused before any backbone pass, and `auto` runs end to end on text.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from badinput import assert_refused, run_cli, tree_digest
from conftest import TEST_BACKBONE, make_image_folder
from headstart.errors import HeadstartError
from headstart.testing import TEST_WORDS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TEXT_BACKBONE = "test_text_encoder"
AUDIO_BACKBONE = "test_whisper_encoder"
ANIMALS = TEST_WORDS[TEST_WORDS.index("cat") : TEST_WORDS.index("paw") + 1]
VEHICLES = TEST_WORDS[TEST_WORDS.index("car") : TEST_WORDS.index("ride") + 1]
FILLER = TEST_WORDS[: TEST_WORDS.index("as") + 1]


def write_text_task(path: Path, per_split: dict[str, int], seed: int = 0) -> Path:
    """Animal vs vehicle sentences (topic words among filler words), with an explicit split column."""
    rng = random.Random(seed)
    rows = []
    for split, n in per_split.items():
        for label, words in (("animal", ANIMALS), ("vehicle", VEHICLES)):
            for _ in range(n):
                k = rng.randint(6, 12)
                text = " ".join(
                    rng.choice(words) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(k)
                )
                rows.append({"text": text, "label": label, "split": split})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def write_tone(path: Path, freq: float, seconds: float, amp: float, rate: int = 16_000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


def write_tone_task(root: Path, per_split: dict[str, int]) -> Path:
    """Low (150-400 Hz) vs high (2-4 kHz) tones of random length and level, in train/ val/ test/ folders."""
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for label, (lo, hi) in {"low": (150, 400), "high": (2_000, 4_000)}.items():
            for i in range(n):
                write_tone(
                    root / split / label / f"{label}_{i:02d}.wav",
                    float(rng.uniform(lo, hi)),
                    seconds=float(rng.uniform(0.3, 1.0)),
                    amp=float(rng.uniform(0.1, 0.8)),
                )
    return root


def baseline_accuracy(curve: dict, method: str, k: int) -> float:
    accs = [
        p["test_accuracy"] for p in curve["points"] if p["method"] == method and p["labels_per_class"] == k
    ]
    assert accs, f"no {method} points at k={k}: {curve['points']}"
    return float(np.mean(accs))


# -- the baselines -------------------------------------------------------------------------------------


def test_auto_picks_the_baseline_of_each_modality() -> None:
    from headstart.verdicts.curve import resolve_baseline

    assert [resolve_baseline("auto", m, "d") for m in ("image", "text", "audio")] == [
        "pixels",
        "tfidf",
        "logmel",
    ]
    assert (
        resolve_baseline("scratch", "text", "d") == "scratch"
        and resolve_baseline("none", "audio", "d") == "none"
    )


def test_tfidf_baseline_beats_chance_on_a_tiny_text_task(tmp_path: Path) -> None:
    from headstart.verdicts.curve import TFIDF, label_curve

    data = write_text_task(tmp_path / "topics.csv", {"train": 10, "val": 3, "test": 15})
    curve = label_curve(data, TEXT_BACKBONE, seeds=2, sizes=[2, 10], out=tmp_path / "out", progress=False)
    assert curve["baseline"] == "tfidf"  # picked by "auto" for text
    assert {p["method"] for p in curve["points"]} == {"probe", TFIDF}
    # chance is 0.5 on 30 test texts; topic words make this easy for word n-grams
    assert baseline_accuracy(curve, TFIDF, 10) >= 0.85
    assert json.loads((tmp_path / "out/curve.json").read_text())["baseline"] == "tfidf"


def test_logmel_stats_put_a_tone_in_its_band(tmp_path: Path) -> None:
    from headstart.verdicts.curve import LOGMEL_BANDS, logmel_stats

    low = logmel_stats(str(write_tone(tmp_path / "low.wav", 300, seconds=0.5, amp=0.5)))
    high = logmel_stats(str(write_tone(tmp_path / "high.wav", 3_000, seconds=0.5, amp=0.5)))
    short = logmel_stats(str(write_tone(tmp_path / "short.wav", 300, seconds=0.01, amp=0.5)))  # < 1 window
    assert low.shape == high.shape == short.shape == (2 * LOGMEL_BANDS,)
    assert np.isfinite(short).all()
    peak_low, peak_high = int(low[:LOGMEL_BANDS].argmax()), int(high[:LOGMEL_BANDS].argmax())
    assert peak_low < LOGMEL_BANDS // 3 < peak_high, (peak_low, peak_high)


def test_logmel_baseline_beats_chance_on_two_tones(tmp_path: Path) -> None:
    from headstart.verdicts.curve import LOGMEL, label_curve

    data = write_tone_task(tmp_path / "tones", {"train": 6, "val": 2, "test": 8})
    curve = label_curve(data, AUDIO_BACKBONE, seeds=2, sizes=[3, 6], progress=False)
    assert curve["baseline"] == "logmel"
    assert baseline_accuracy(curve, LOGMEL, 6) >= 0.9  # chance 0.5 on 16 clips


# -- refused before any work ---------------------------------------------------------------------------


@pytest.fixture
def no_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any backbone pass fails the test: the refusal must come before it."""

    def embed(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a backbone pass ran before the refusal")

    monkeypatch.setattr("headstart.features.embed", embed)


@pytest.mark.parametrize(
    ("modality", "baseline"),
    [("text", "pixels"), ("text", "logmel"), ("image", "tfidf"), ("image", "logmel"), ("audio", "pixels")],
)
def test_a_baseline_for_another_modality_is_refused_before_embedding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_embedding: None, modality: str, baseline: str
) -> None:
    if modality == "text":
        data, backbone = write_text_task(tmp_path / "t.csv", {"train": 4, "val": 2, "test": 2}), TEXT_BACKBONE
    elif modality == "audio":
        data, backbone = write_tone_task(tmp_path / "a", {"train": 3, "val": 1, "test": 1}), AUDIO_BACKBONE
    else:
        data, backbone = make_image_folder(tmp_path / "i", per_class=4), TEST_BACKBONE
    out = tmp_path / "out"
    before = tree_digest(tmp_path)
    res = run_cli(capsys, "curve", data, "--backbone", backbone, "--baseline", baseline, "--out", out)
    assert_refused(res, names=data)
    assert baseline in res.text and modality in res.text
    assert tree_digest(tmp_path) == before and not out.exists()


def test_curve_refuses_a_backbone_of_another_modality_before_embedding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_embedding: None
) -> None:
    data = write_text_task(tmp_path / "t.csv", {"train": 4, "val": 2, "test": 2})
    res = run_cli(capsys, "curve", data, "--backbone", TEST_BACKBONE, "--out", tmp_path / "out")
    assert_refused(res, names=data)
    assert "text data" in res.text


# -- auto ----------------------------------------------------------------------------------------------


def test_auto_on_text_runs_end_to_end_with_the_tfidf_curve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.cli import main

    data = write_text_task(tmp_path / "topics" / "topics.csv", {"train": 8, "val": 4, "test": 6})
    out, store = tmp_path / "auto", tmp_path / "models"
    argv = ["auto", str(data), "--backbone", TEXT_BACKBONE, "--strategies", "head", "--budget", "20s"]
    code = main([*argv, "--out", str(out), "--store", str(store), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    run_dir = Path(result["recommended"]["run_dir"])
    assert (run_dir / "report.html").is_file()
    # Every step ran but the pretraining-overlap check, listed: for text it is a minutes-long LM pass.
    assert [s["step"] for s in result["skipped"]] == ["overlap"]
    curve = json.loads((run_dir / "curve.json").read_text())
    assert curve["baseline"] == "tfidf" and any(p["method"].startswith("tfidf") for p in curve["points"])
    saved = json.loads((out / "auto.json").read_text())
    assert saved["report"] == str(run_dir / "report.html") and saved["registered"]["version"] == 1


@pytest.fixture
def no_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    def compare(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the comparison (backbone passes, the budget) ran before the refusal")

    monkeypatch.setattr("headstart.verdicts.compare.compare", compare)


def test_auto_refuses_a_backbone_of_another_modality_before_spending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_compare: None
) -> None:
    data = write_text_task(tmp_path / "t.csv", {"train": 4, "val": 2, "test": 2})
    out = tmp_path / "auto"
    res = run_cli(capsys, "auto", data, "--backbone", TEST_BACKBONE, "--out", out, "--store", tmp_path / "m")
    assert_refused(res, names=data)
    assert "text data" in res.text and not out.exists()


def test_auto_refuses_an_unwritable_out_before_spending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_compare: None
) -> None:
    data = write_text_task(tmp_path / "t.csv", {"train": 4, "val": 2, "test": 2})
    out = tmp_path / "taken"
    out.write_text("not a folder")
    before = tree_digest(tmp_path)
    res = run_cli(capsys, "auto", data, "--backbone", TEXT_BACKBONE, "--out", out, "--store", tmp_path / "m")
    assert_refused(res, names=out)
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("flag", ["--name", "--alias"])
def test_auto_refuses_a_bad_model_name_before_spending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_compare: None, flag: str
) -> None:
    data = write_text_task(tmp_path / "t.csv", {"train": 4, "val": 2, "test": 2})
    out = tmp_path / "auto"
    argv = ["auto", data, "--backbone", TEXT_BACKBONE, "--out", out, "--store", tmp_path / "m"]
    res = run_cli(capsys, *argv, flag, "no/such name")
    assert_refused(res, names="no/such name")
    assert not out.exists()


def test_auto_plans_the_curve_as_skipped_when_the_modality_has_no_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headstart.pipeline import preflight
    from headstart.verdicts import curve

    data = write_text_task(tmp_path / "t.csv", {"train": 4, "val": 2, "test": 2})
    common = {"backbone": TEXT_BACKBONE, "out": tmp_path / "o", "store": tmp_path / "m", "name": None}
    plan = preflight(data, **common, alias="production", curve=True, seed=0)
    assert plan["curve_baseline"] == "tfidf" and plan["skipped"] == []
    monkeypatch.setattr(curve, "BASELINES", {"image": "pixels"})  # as if text had no baseline
    plan = preflight(data, **common, alias="production", curve=True, seed=0)
    assert plan["curve_baseline"] is None
    assert [s["step"] for s in plan["skipped"]] == ["curve"] and "text data" in plan["skipped"][0]["reason"]
    plan = preflight(data, **common, alias="production", curve=False, seed=0)
    assert plan["skipped"] == [{"step": "curve", "reason": "turned off (--no-curve)"}]


def test_unknown_baseline_names_itself() -> None:
    from headstart.verdicts.curve import resolve_baseline

    with pytest.raises(HeadstartError, match="'pixel'") as e:
        resolve_baseline("pixel", "image", "d")
    assert e.value.fix and "pixels" in e.value.fix
