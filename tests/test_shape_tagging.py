"""--task tag: the CoNLL reader, first-subword alignment, seqeval's entity scores, and runs end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from badinput import assert_refused, run_cli, tree_digest
from headstart.errors import HeadstartError
from headstart.shapes.tagging_data import labels_of, load_tag_data, read_conll
from headstart.shapes.tagging_metrics import chunks, tag_scores

ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow", "sheep", "mouse", "lion", "tiger"]
VEHICLES = ["car", "bus", "train", "plane", "ship", "bike", "truck"]


def tiny_conll(path: Path, n: int = 60, seed: int = 0) -> Path:
    """Sentences of the tiny encoder's words: an animal (ANI, with an optional adjective) and a vehicle
    (VEH) in varying places, `-DOCSTART-` first."""
    rng = random.Random(seed)
    lines = ["-DOCSTART- O", ""]
    for _ in range(n):
        animal = rng.choice(ANIMALS)
        adjective = [(rng.choice(["big", "small", "red"]), "B-ANI")] if rng.random() < 0.5 else []
        ani = [*adjective, (animal, "I-ANI" if adjective else "B-ANI")]
        veh = [(rng.choice(VEHICLES), "B-VEH")]
        first, second = (ani, veh) if rng.random() < 0.5 else (veh, ani)
        sent = [("the", "O"), *first, ("was", "O"), ("in", "O"), ("the", "O"), *second]
        lines += [f"{w} {t}" for w, t in sent] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# -- the reader ---------------------------------------------------------------------------------------------
def test_reader_skips_docstart_repairs_i_after_o_and_lists_the_repair(tmp_path: Path) -> None:
    f = tmp_path / "a.conll"
    f.write_text("-DOCSTART- -X- O\n\nParis I-LOC\nis O\nbig O\n\nthe O\nEU B-ORG\n", encoding="utf-8")
    notes: dict[str, str] = {}
    sents = read_conll(f, notes)
    assert [s.tokens for s in sents] == [("Paris", "is", "big"), ("the", "EU")]
    assert sents[0].tags == ("B-LOC", "O", "O")
    assert list(notes) == [f"{f}:3"] and "I-LOC" in notes[f"{f}:3"] and "B-LOC" in notes[f"{f}:3"]


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("Paris B-LOC\nis\n", 2, "one column"),
        ("Paris LOC\n", 1, "not IOB2"),
        ("Paris S-LOC\n", 1, "IOBES"),
    ],
)
def test_reader_refuses_bad_lines_naming_file_and_line(
    tmp_path: Path, text: str, line: int, says: str
) -> None:
    f = tmp_path / "bad.txt"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(HeadstartError) as e:
        read_conll(f)
    assert f"{f}:{line}" in str(e.value) and says in str(e.value) and e.value.fix


def test_folder_with_dev_file_and_drawn_test_split(tmp_path: Path) -> None:
    tiny_conll(tmp_path / "train.txt", 40)
    tiny_conll(tmp_path / "dev.txt", 10, seed=1)
    data = load_tag_data(tmp_path, seed=0, test=0.25)
    assert (
        len(data.splits["val"]) == 10 and len(data.splits["test"]) == 10 and len(data.splits["train"]) == 30
    )
    assert data.types == ["ANI", "VEH"] and data.labels == ["O", "B-ANI", "I-ANI", "B-VEH", "I-VEH"]
    assert "dev.txt" in data.layout and "test drawn" in data.layout
    (tmp_path / "train.txt").unlink()
    with pytest.raises(HeadstartError, match=r"train\.txt"):
        load_tag_data(tmp_path)


# -- alignment ---------------------------------------------------------------------------------------------
def test_first_subword_alignment_on_a_known_sentence() -> None:
    from headstart.backbones import create_backbone
    from headstart.shapes.tagging_model import IGNORE, encode_words, text_tokenizer

    tok = text_tokenizer(create_backbone("test_text_encoder"))
    labels = labels_of(["ANI"])  # O, B-ANI, I-ANI
    enc = encode_words(tok, [["The", "big", "dogs", "ran"]], [[0, 1, 2, 0]])[0]
    assert [tok.id_to_token(i) for i in enc.ids] == [
        "[CLS]",
        "the",
        "big",
        "dog",
        "##s",
        "r",
        "##a",
        "##n",
        "[SEP]",
    ]
    assert enc.labels == [IGNORE, 0, 1, 2, IGNORE, 0, IGNORE, IGNORE, IGNORE]
    assert enc.first == [1, 2, 3, 5] and labels[enc.labels[3]] == "I-ANI"


# -- entity scores (seqeval's definition; the expected numbers are worked by hand) ---------------------------
def test_seqeval_readme_example() -> None:
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    s = tag_scores(gold, pred, n_boot=0)
    assert (s["entity_precision"], s["entity_recall"], s["entity_f1"]) == (0.5, 0.5, 0.5)
    assert s["per_type"]["MISC"]["f1"] == 0.0 and s["per_type"]["PER"]["f1"] == 1.0
    assert s["token_accuracy"] == pytest.approx(8 / 10)  # seqeval accuracy_score: 0.80


def test_type_and_boundary_mismatches_each_count_as_false_positive_and_false_negative() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"]]
    pred = [["B-PER", "O", "O", "B-ORG", "O", "B-ORG"]]  # PER cut short, LOC typed ORG, ORG right
    s = tag_scores(gold, pred, n_boot=0)
    assert s["entity_precision"] == pytest.approx(1 / 3) and s["entity_recall"] == pytest.approx(1 / 3)
    assert s["entity_f1"] == pytest.approx(1 / 3)
    org, per, loc = s["per_type"]["ORG"], s["per_type"]["PER"], s["per_type"]["LOC"]
    assert (org["precision"], org["recall"], org["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    assert (per["precision"], per["recall"], loc["recall"], loc["predicted"]) == (0.0, 0.0, 0.0, 0)
    assert s["token_accuracy"] == pytest.approx(4 / 6)


def test_i_after_o_starts_an_entity_and_intervals_bracket_the_score() -> None:
    assert chunks(["O", "I-PER", "I-PER", "I-LOC", "B-LOC"]) == [("PER", 1, 3), ("LOC", 3, 4), ("LOC", 4, 5)]
    assert tag_scores([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]], n_boot=0)["entity_f1"] == 1.0
    rng = random.Random(0)
    gold = [["B-X", "O", "B-Y"] for _ in range(60)]
    pred = [[rng.choice(["B-X", "O"]), "O", rng.choice(["B-Y", "B-X"])] for _ in range(60)]
    s = tag_scores(gold, pred, n_boot=500)
    lo, hi = s["entity_f1_ci"]
    assert lo < s["entity_f1"] < hi and hi - lo > 0.05
    assert tag_scores(gold, gold, n_boot=200)["entity_f1_ci"] == [1.0, 1.0]


# -- runs end to end ----------------------------------------------------------------------------------------
def test_probe_and_lora_runs_evaluate_predict_spans_and_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tiny_conll(tmp_path / "tags.conll", 80)
    runs = {}
    for verb, extra in (("probe", []), ("fit", ["--strategy", "lora", "--epochs", "2", "--device", "cpu"])):
        out = tmp_path / verb
        res = run_cli(
            capsys, verb, data, "--task", "tag", "--backbone", "test_text_encoder", "--out", out, *extra
        )
        assert res.code == 0, res.text
        info = json.loads((out / "run.json").read_text())
        assert info["task"] == "tag" and info["classes"] == ["O", "B-ANI", "I-ANI", "B-VEH", "I-VEH"]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["test"]["entity_f1"] > 0.5 and len(metrics["test"]["entity_f1_ci"]) == 2
        runs[verb] = out
    assert (runs["fit"] / "adapter.safetensors").is_file() and not (
        runs["probe"] / "delta.safetensors"
    ).exists()
    for out in runs.values():
        res = run_cli(capsys, "evaluate", out, "--json")
        assert res.code == 0, res.text
        ev = json.loads((out / "evaluation.json").read_text())
        assert ev["task"] == "tag" and set(ev["metrics"]["per_type"]) == {"ANI", "VEH"}
        saved = json.loads((out / "metrics.json").read_text())["test"]  # the reloaded run scores as trained
        assert ev["metrics"]["entity_f1"] == saved["entity_f1"] and ev["n"] == saved["n_sentences"]
    res = run_cli(capsys, "predict", runs["fit"], "--text", "the big cat was in the bus", "--json")
    assert res.code == 0, res.text
    answer = json.loads(res.out)[0]
    assert answer["tokens"] == ["the", "big", "cat", "was", "in", "the", "bus"] and len(answer["tags"]) == 7
    assert {"text", "type", "start", "end"} <= set(answer["spans"][0]) and answer["summary"]
    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    served = TestClient(create_app(runs["fit"])).post("/predict", json={"text": "the big cat was in the bus"})
    assert served.status_code == 200, served.text  # serve answers with the spans predict gives
    assert served.json()["spans"] == answer["spans"] and served.json()["tags"] == answer["tags"]
    res = run_cli(capsys, "export", runs["fit"], "--onnx", "--json")
    assert res.code == 0, res.text
    exported = json.loads(res.out)
    assert exported["parity"]["top1_agreement"] == 1.0 and exported["parity"]["max_abs_diff"] < 1e-3
    card = json.loads((runs["fit"] / "model.card.json").read_text())
    assert "first-subword" in card["decoding"] and card["task"] == "tag"


def test_an_image_backbone_or_a_bad_tag_file_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tiny_conll(tmp_path / "tags.conll", 20)
    res = run_cli(
        capsys,
        "probe",
        data,
        "--task",
        "tag",
        "--backbone",
        "test_efficientnet_lite",
        "--out",
        tmp_path / "r",
    )
    assert_refused(res, names="test_efficientnet_lite")
    bad = tmp_path / "bad.conll"
    bad.write_text("Paris B-LOC\nis\n", encoding="utf-8")
    before = tree_digest(tmp_path)
    res = run_cli(
        capsys, "probe", bad, "--task", "tag", "--backbone", "test_text_encoder", "--out", tmp_path / "r"
    )
    assert_refused(res, names=f"{bad}:2")
    assert tree_digest(tmp_path) == before
