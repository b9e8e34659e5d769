"""Class imbalance (headstart.imbalance): detection, the weighted probe and loss, the balanced metric and its
interval, compare's rule on it; and balanced data left exactly as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TEST_BACKBONE, make_image_folder
from headstart.errors import HeadstartError
from headstart.imbalance import balanced_accuracy, detect, item_weights


def _skewed(n_major: int, n_minor: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping Gaussian classes in 8-D: class 0 has n_major items, class 1 n_minor."""
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(0.0, 1.0, (n_major, 8)), rng.normal(0.8, 1.0, (n_minor, 8))])
    return X.astype(np.float32), np.array([0] * n_major + [1] * n_minor)


def test_detect_balanced_and_ten_to_one() -> None:
    flat = detect([40, 38, 45])
    assert not flat.skewed and flat.metric == "accuracy" and flat.class_weight() is None
    skew = detect([200, 20, 20])
    assert skew.skewed and skew.ratio == 10.0 and skew.metric == "balanced_accuracy"
    w = skew.class_weight()
    assert w is not None and w[1] == w[2] == pytest.approx(10 * w[0])
    assert float(np.dot(w, [200, 20, 20])) == pytest.approx(240)  # mean 1 per training item
    off = detect([200, 20, 20], "off")
    assert off.skewed and off.metric == "accuracy" and off.class_weight() is None
    assert off.to_dict()["weights"] is None and skew.to_dict()["metric"] == "balanced_accuracy"
    with pytest.raises(HeadstartError, match="imbalance 'sometimes'"):
        detect([1, 2], "sometimes")


def test_balanced_accuracy_and_its_interval() -> None:
    from headstart.intervals import balanced_accuracy_interval, score_intervals

    t = np.array([0] * 90 + [1] * 10)
    p = np.zeros(100, dtype=int)  # always the majority: 90 % accuracy, 50 % balanced accuracy
    assert balanced_accuracy(t, p) == 0.5
    assert float(((t == p) * item_weights(t)).mean()) == pytest.approx(0.5)
    p[90:95] = 1
    assert balanced_accuracy(t, p) == pytest.approx(0.75)
    lo, hi = balanced_accuracy_interval(t, p, 2)
    assert lo < 0.75 < hi and hi - lo > 0.1  # five minority items: a wide interval
    assert score_intervals(t, p, 2)["balanced_accuracy_ci"] == [lo, hi]


def test_weighted_probe_raises_minority_recall() -> None:
    """Fails if the class weights are ignored: the unweighted head all but never predicts the minority."""
    from headstart.head import fit_head

    X, y = _skewed(300, 30, seed=0)
    Xt, yt = _skewed(300, 300, seed=1)  # a balanced test set
    imb = detect(np.bincount(y))
    plain, _, _ = fit_head(X, y, 2, Cs=(1.0,))
    weighted, _, _ = fit_head(X, y, 2, Cs=(1.0,), class_weight=imb.class_weight())
    recall = [float((h.logits(Xt).argmax(1)[yt == 1] == 1).mean()) for h in (plain, weighted)]
    assert recall[1] > recall[0] + 0.3, recall
    bal = [balanced_accuracy(yt, h.logits(Xt).argmax(1)) for h in (plain, weighted)]
    assert bal[1] > bal[0] + 0.05, bal


def test_probe_classifier_imbalance_auto_vs_off() -> None:
    from headstart.estimator import ProbeClassifier

    X, y = _skewed(300, 30, seed=0)
    auto = ProbeClassifier(imbalance="auto").fit(X, y)
    off = ProbeClassifier(imbalance="off").fit(X, y)
    assert auto.imbalance_.applied and not off.imbalance_.applied
    assert (auto.predict(X) == 1).sum() > (off.predict(X) == 1).sum()
    # Balanced classes: exactly today's head, whatever the mode.
    Xb, yb = _skewed(150, 150, seed=2)
    a, o = ProbeClassifier(imbalance="auto").fit(Xb, yb), ProbeClassifier(imbalance="off").fit(Xb, yb)
    assert a.C_ == o.C_ and a.selection_scores_ == o.selection_scores_
    np.testing.assert_array_equal(a.head_.weight, o.head_.weight)
    assert a.imbalance_.metric == "accuracy" and a.imbalance_.class_weight() is None


def test_trainer_loss_is_the_weighted_cross_entropy(tmp_path: Path) -> None:
    """One Classification step on a skewed batch: the loss is the class-weighted mean, not the plain one."""
    from headstart.backbones import create_backbone
    from headstart.recipes import get_recipe
    from headstart.train.data import Split
    from headstart.train.loop import Trainer
    from headstart.train.objective import labeled_cross_entropy

    bb = create_backbone(TEST_BACKBONE)
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    imb = detect(np.bincount(y.numpy()))
    trainer = Trainer(bb, 2, get_recipe("head", len(bb.groups)), imbalance=imb)
    assert trainer.task.score_key == "val_bal_acc"  # what judges an epoch (and keeps the best weights)
    row = {"train_loss": 0.5, "val_loss": 0.9, "val_acc": 0.9, "val_bal_acc": 0.6}
    assert trainer.task.score(row) == (0.6, -0.9)
    gen = torch.Generator().manual_seed(0)
    folder = make_image_folder(tmp_path / "d", ("red", "blue"), per_class=4)
    examples = [bb.load_item(str(f)) for f in sorted(folder.rglob("*.png"))]
    split = Split(examples=examples, y=y)
    trainer.task.setup(trainer, split, split)
    with torch.no_grad():
        trainer.head.weight.normal_(generator=gen)
    out = trainer.task.step(trainer, trainer.task.model, torch.arange(8), gen, 0.0)
    z = trainer.task.logits("train", split)
    ce = F.cross_entropy(z, y, reduction="none")
    w = torch.tensor(imb.class_weight(), dtype=torch.float32)[y]
    assert out.loss is not None
    assert float(out.loss.detach()) == pytest.approx(float((ce * w).mean()), rel=1e-4)
    assert abs(float(out.loss.detach()) - float(ce.mean())) > 1e-3  # the weights changed it
    # -1 (unlabeled) items weigh nothing and are not counted.
    y2 = torch.tensor([0, 1, -1])
    manual = (F.cross_entropy(z[:2], y2[:2], reduction="none") * torch.tensor([0.5, 2.0])).sum() / 2
    got = labeled_cross_entropy(z[:3], y2, torch.tensor([0.5, 2.0]))
    assert float(got) == pytest.approx(float(manual), rel=1e-5)
    # Balanced classes: no weights, accuracy judges the epoch (today's Trainer).
    flat = Trainer(bb, 2, get_recipe("head", len(bb.groups)), imbalance=detect([4, 4]))
    assert flat.task.class_weight is None and flat.task.score_key == "val_acc"


def test_select_compares_rows_by_balanced_accuracy_when_skewed() -> None:
    """Val: 90 majority items, 10 minority. The probe answers the majority everywhere; the challenger gets
    every minority item right and loses 12 majority ones: worse by accuracy, far better by balanced."""
    from headstart.intervals import mcnemar_exact, paired_difference, weighted_sign_test
    from headstart.verdicts.select import select

    t = np.array([0] * 90 + [1] * 10)
    probe = np.r_[np.ones(90, bool), np.zeros(10, bool)]
    tuned = np.r_[np.ones(78, bool), np.zeros(12, bool), np.ones(10, bool)]
    bal = (78 / 90 + 1) / 2
    rows = [
        {"strategy": "probe", "val_accuracy": 0.9, "val_balanced_accuracy": 0.5, "trainable_params": 10},
        {"strategy": "lp-ft", "val_accuracy": 0.88, "val_balanced_accuracy": bal, "trainable_params": 99},
    ]
    correct = {"probe": probe, "lp-ft": tuned}
    by_acc = select(rows, correct)  # today's rule: 10 vs 12 discordant items, nothing separates
    assert by_acc["strategy"] == "probe" and not by_acc["separated"]
    by_bal = select(rows, correct, metric="balanced_accuracy", weights=item_weights(t))
    assert by_bal["strategy"] == "lp-ft" and "balanced accuracy" in by_bal["reason"], by_bal
    assert by_bal["tests"]["lp-ft"]["diff"] == pytest.approx(bal - 0.5)
    # With equal weights the weighted sign test is McNemar's exact test.
    a, b = tuned, probe
    d = a.astype(float) - b.astype(float)
    assert weighted_sign_test(d) == pytest.approx(mcnemar_exact(a, b))
    assert paired_difference(a, b)["p"] == pytest.approx(mcnemar_exact(a, b))
    # Unequal weights, few discordant items: every sign enumerated; 2 of the 8 sign patterns are as extreme.
    assert weighted_sign_test(np.array([3.0, 1.0, 1.0, 0.0])) == pytest.approx(0.25)
    assert weighted_sign_test(np.array([3.0, -1.0, -1.0])) == 1.0


def test_probe_records_imbalance_and_the_report_says_what_was_done(tmp_path: Path) -> None:
    from headstart.api import probe
    from headstart.report import build_report

    data = make_image_folder(tmp_path / "d", ("red",), per_class=40)
    make_image_folder(data, ("blue",), per_class=6, seed=1)
    r = probe(data, backbone=TEST_BACKBONE, out=tmp_path / "run", progress=False)
    imb = r.metrics["imbalance"]
    assert imb["skewed"] and imb["applied"] and imb["metric"] == "balanced_accuracy", imb
    assert "balanced_accuracy_ci" in r.metrics["test"]
    html = build_report(tmp_path / "run").html
    assert "Classes skewed" in html and "balanced accuracy (95%)" in html
    off = probe(data, backbone=TEST_BACKBONE, imbalance="off", save=False, progress=False)
    assert off.metrics["imbalance"]["metric"] == "accuracy" and off.metrics["imbalance"]["weights"] is None
    with pytest.raises(HeadstartError, match="imbalance 'maybe'"):
        probe(data, backbone=TEST_BACKBONE, imbalance="maybe", save=False, progress=False)
