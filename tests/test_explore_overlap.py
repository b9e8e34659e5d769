"""The pretraining-overlap check: the name match, a planted overlap counted (and its accuracy split), the
report section, and the listed skips (no label space, no LM head)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder
from headstart.cli import main
from headstart.explore import overlap
from headstart.explore.label_names import imagenet1k_classes, label_matches, matching_classes

CLASSES = imagenet1k_classes()
BY_WNID = {c.wnid: c for c in CLASSES}
TABBY, HOTDOG, ESKIMO_DOG, TOASTER = "n02123045", "n07697537", "n02109961", "n04442312"


def test_imagenet_classes_are_the_classifier_order() -> None:
    wnids = [c.wnid for c in CLASSES]
    assert len(set(wnids)) == 1000 and wnids == sorted(wnids)  # the outputs are the sorted WordNet IDs
    assert CLASSES[281].synonyms == ("tabby", "tabby cat") and CLASSES[0].synonyms == ("tench", "Tinca tinca")


@pytest.mark.parametrize(
    ("label", "wnid", "matches"),
    [
        ("cat", TABBY, True),  # the head of "tabby cat": a tabby cat is a cat
        ("Cats", TABBY, True),  # case and a plural
        ("tabby-cat", TABBY, True),
        ("tiger", TABBY, False),
        ("hot_dog", HOTDOG, True),  # the whole phrase is a synonym
        ("dog", HOTDOG, False),  # "hot dog" is also spelt "hotdog": lexicalised, no kind of dog
        ("dog", ESKIMO_DOG, True),
        ("hot_dog", ESKIMO_DOG, False),  # the label is one phrase, never word by word
        ("toasters", TOASTER, True),
        ("toast", TOASTER, False),
    ],
)
def test_label_names_a_class(label: str, wnid: str, matches: bool) -> None:
    assert label_matches(label, BY_WNID[wnid]) is matches
    assert (BY_WNID[wnid].index in matching_classes(label, CLASSES)) is matches


def _planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, p_toaster: float = 0.3) -> Path:
    """A folder of three classes and a fake ImageNet classifier over its embeddings: `tabby_cats` items
    confidently tabby (an overlap), `dog` items confidently hotdog (no overlap: not a dog), `toaster` items
    toaster at p_toaster."""
    from headstart.backbones import create_backbone
    from headstart.features import embed

    data = make_image_folder(tmp_path / "data", classes=("red", "blue", "green"), per_class=10)
    for old, new in (("red", "tabby_cats"), ("blue", "dog"), ("green", "toaster")):
        (data / old).rename(data / new)
    paths = sorted(str(p) for p in data.rglob("*.png"))
    feats = embed(create_backbone(TEST_BACKBONE), paths, backend="torch", progress=False)
    label_of = [Path(p).parent.name for p in feats.paths]

    def head(x):  # the fake classifier: logits by the label of the nearest known embedding
        import torch

        d = ((x[:, None, :].numpy() - feats.X[None]) ** 2).sum(-1)
        z = np.zeros((len(x), 1000))
        for i, j in enumerate(d.argmin(1)):
            lab = label_of[j]
            if lab == "toaster":  # p_toaster on toaster, the rest spread evenly
                z[i, BY_WNID[TOASTER].index] = np.log(p_toaster * 999 / (1 - p_toaster))
            else:
                z[i, BY_WNID[TABBY if lab == "tabby_cats" else HOTDOG].index] = 20.0
        return torch.from_numpy(z)

    monkeypatch.setattr(overlap, "label_space", lambda bb: ("fake ImageNet", head, CLASSES))
    return data


def test_a_planted_overlap_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _planted(tmp_path, monkeypatch)
    r = overlap.check_overlap(data, TEST_BACKBONE, backend="torch", progress=False)
    assert r["supported"] and r["kind"] == "data" and r["n"] == 30
    assert {k: v["n_overlap"] for k, v in r["per_class"].items()} == {
        "dog": 0,
        "tabby_cats": 10,
        "toaster": 0,
    }
    assert r["n_overlap"] == 10 and {it["label"] for it in r["items"]} == {"tabby_cats"}
    assert r["per_class"]["dog"]["top_confident"] == [{"class": "hotdog", "n": 10}]  # confident, not named
    assert r["accuracy"] is None  # data alone: no probe to score
    # A lower threshold: the toaster items (0.3 on their named class) overlap too.
    r = overlap.check_overlap(data, TEST_BACKBONE, threshold=0.25, backend="torch", progress=False)
    assert r["per_class"]["toaster"]["n_overlap"] == 10


def test_a_run_gets_the_accuracy_split_and_a_report_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headstart.api import probe
    from headstart.report import build_report
    from headstart.runs import read_split_rows

    data = _planted(tmp_path, monkeypatch)
    run = probe(data, backbone=TEST_BACKBONE, out=tmp_path / "run", backend="torch", progress=False).run_dir
    assert build_report(run).sections["overlap"] is False
    r = overlap.check_overlap(run, backend="torch", progress=False)
    saved = json.loads((run / "overlap.json").read_text())
    test_labels = [row.label for row in read_split_rows(run) if row.split == "test"]
    assert saved["n"] == len(test_labels) and saved["n_overlap"] == test_labels.count("tabby_cats") > 0
    acc = saved["accuracy"]
    assert acc["overlap"]["n"] + acc["rest"]["n"] == saved["n"]
    lo, hi = acc["overlap"]["accuracy_ci"]
    assert lo <= acc["overlap"]["accuracy"] <= hi and acc["test"].startswith("Fisher")
    report = build_report(run)
    assert report.sections["overlap"] is True
    assert f"{r['n_overlap']} of {r['n']} test items overlap" in report.html


def test_a_multi_depth_run_is_checked_through_its_plain_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`auto` can recommend a multi-depth run; its features are every depth side by side, which the
    pretrained classifier cannot read (this once crashed the demo: 54x2096 against 1280x1000)."""
    from headstart.train import fit

    data = _planted(tmp_path, monkeypatch)
    run = fit(data, backbone=TEST_BACKBONE, strategy="multi-depth", out=tmp_path / "run", progress=False)
    assert run.backbone == f"depths:{TEST_BACKBONE}"
    r = overlap.check_overlap(run.run_dir, backend="torch", progress=False)
    assert r["supported"] and r["backbone"] == TEST_BACKBONE and r["n_overlap"] > 0
    assert r["accuracy"]["overlap"]["n"] + r["accuracy"]["rest"]["n"] == r["n"]  # scored by its own model


def test_auto_carries_a_recommended_multi_depth_run_through_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every step after the comparison (curve, evaluation, overlap, report, registration) on the run a
    multi-depth recommendation points at (the rule's choice is forced: the data are too small to win)."""
    from headstart.verdicts import compare as compare_module

    data = _planted(tmp_path, monkeypatch)
    real = compare_module.select

    def forced(*a, **k):
        return {**real(*a, **k), "strategy": "multi-depth"}

    monkeypatch.setattr(compare_module, "select", forced)
    argv = ["auto", str(data), "--backbone", TEST_BACKBONE, "--strategies", "multi-depth", "--budget", "30s"]
    code = main([*argv, "--out", str(tmp_path / "auto"), "--store", str(tmp_path / "models"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["recommended"]["strategy"] == "multi-depth"
    assert result["overlap"]["n_overlap"] > 0 and result["registered"]["version"] == 1
    assert (Path(result["recommended"]["run_dir"]) / "report.html").is_file()


def test_unknown_label_space_is_a_listed_skip(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tiny test model is a random init: no pretrained classifier, so no label space. Exit 0.
    assert (
        main(["overlap", str(image_folder), "--backbone", TEST_BACKBONE, "--json", "--backend", "torch"]) == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["supported"] is False
    assert r["reason"].startswith(f"no known pretraining label space for {TEST_BACKBONE}")


def _texts(tmp_path: Path) -> Path:
    words = ["cat", "dog", "bird", "fox", "owl", "hen"]
    rows = [f"the {w} sat on the mat {i} times and looked out,{'ab'[i % 2]}" for i, w in enumerate(words * 2)]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(["text,label", *rows]))
    return path


def test_a_text_encoder_without_lm_head_is_a_listed_skip(tmp_path: Path) -> None:
    r = overlap.check_overlap(_texts(tmp_path), "test_text_encoder", backend="torch", progress=False)
    assert r["supported"] is False and r["reason"] == "not available: no LM head for test_text_encoder"


def test_a_causal_lm_gives_the_memorisation_signal(tmp_path: Path) -> None:
    from headstart.backbones import create_backbone

    r = overlap.check_overlap(_texts(tmp_path), "test_llama", backend="torch", progress=False)
    assert r["supported"] and r["check"] == "lm-memorisation" and r["n"] == 12
    assert r["ratio"] == pytest.approx(r["loss_real"] / r["loss_shuffled"])
    assert r["reference"]["n"] == len(overlap.REFERENCE_TEXTS)
    # One padded batch scores each text as it scores alone (padding after a text changes nothing).
    bb = create_backbone("test_llama")
    texts = ["a short one", "a much longer text with many more words in it than the first"]
    together = overlap.token_losses(bb, texts)
    assert together == pytest.approx([overlap.token_losses(bb, [t])[0] for t in texts], rel=1e-4)
