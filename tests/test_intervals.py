"""Interval and paired-test arithmetic against textbook values and scipy."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.intervals import (
    holm,
    items_to_settle,
    macro_f1_interval,
    mcnemar_exact,
    paired_difference,
    paired_likelihood,
    paired_verdict,
    wilson,
)
from headstart.metrics import classification_metrics


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        # Brown, Cai & DasGupta (2001) / Newcombe (1998) worked values.
        (0, 10, 0.0, 0.2775),
        (8, 10, 0.4902, 0.9433),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_interval_matches_textbook_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_of_nothing_is_undefined_not_certain() -> None:
    assert all(np.isnan(wilson(0, 0)))


def test_exact_mcnemar_is_the_binomial_test_on_discordant_items() -> None:
    from scipy.stats import binomtest

    a = np.array([1] * 9 + [0] * 1 + [1] * 20, bool)  # a alone right on 9, b alone right on 1
    b = np.array([0] * 9 + [1] * 1 + [1] * 20, bool)
    assert mcnemar_exact(a, b) == pytest.approx(binomtest(9, 10, 0.5).pvalue)
    assert mcnemar_exact(a, b) == pytest.approx(0.021484375)  # 2 * 11 / 1024
    assert mcnemar_exact(a, a) == 1.0  # no discordant items: no evidence either way


def test_paired_difference_interval_covers_the_difference_and_is_paired() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.8
    b = a.copy()
    flip = rng.choice(400, 20, replace=False)
    b[flip] = False  # b is a minus 20 items it got right: a paired difference of +5 points
    d = paired_difference(a, b)
    assert d["diff"] == pytest.approx((a.sum() - b.sum()) / 400)
    assert d["ci"][0] < d["diff"] < d["ci"][1]
    assert d["ci"][0] > 0  # paired: the shared items cancel, so +5 points on 400 items is clear
    assert d["only_a"] == int((a & ~b).sum()) and d["only_b"] == 0
    assert d["p"] < 1e-4


def test_paired_verdict_calls_a_difference_inside_the_noise_a_tie() -> None:
    a = np.array([1] * 9 + [0] * 1 + [1] * 20, bool)  # a alone right on 9 of 10 discordant: p 0.021
    b = np.array([0] * 9 + [1] * 1 + [1] * 20, bool)
    assert paired_verdict(paired_difference(a, b)) == "better"
    assert paired_verdict(paired_difference(b, a)) == "worse"
    close = np.array([1] * 6 + [0] * 4 + [1] * 20, bool)  # 6 against 4: p 0.75
    assert paired_verdict(paired_difference(close, ~close | (np.arange(30) >= 10))) == "tie"
    assert paired_verdict(paired_difference([], [])) == "tie"


def test_float_rounding_between_two_forwards_is_no_likelihood_evidence() -> None:
    """The same head scored through two forwards: per-item NLLs a few 1e-7 nats apart, all one way. That
    is rounding, not a model more likely on every item: no informative item and no p below 1."""
    b = np.random.default_rng(0).exponential(1.0, 54)
    t = paired_likelihood(b - 2.6e-7, b)
    assert t["informative"] == 0 and t["p"] == 1.0 and t["gain"] == 0.0
    assert paired_likelihood(b - 1e-3, b)["informative"] == 54  # a real, if small, gain still counts


def test_paired_likelihood_counts_every_item_and_is_signed_for_a() -> None:
    rng = np.random.default_rng(0)
    b = rng.exponential(1.0, 80)  # b's per-item NLL
    a = b - 0.1 + rng.normal(0, 0.05, 80)  # a makes the truth more likely on almost every item
    d = paired_likelihood(a, b)
    assert d["gain"] == pytest.approx(float((b - a).mean())) and d["ci"][0] > 0 and d["p"] < 1e-3
    assert d["n"] == d["informative"] == 80
    same = paired_likelihood(b, b)
    assert same["gain"] == 0 and same["p"] == 1.0 and same["informative"] == 0
    assert paired_likelihood(b, a)["gain"] == pytest.approx(-d["gain"])


def test_holm_adjustment_textbook_case() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def test_weighted_holm_spends_the_level_by_weight() -> None:
    assert holm([0.01, 0.04, 0.03], [1, 1, 1]) == pytest.approx(holm([0.01, 0.04, 0.03]))
    # 0.02 x (300+50+50)/300, then 0.3 x (50+50)/50, then 0.4 x 50/50 (held at the running max, 0.6).
    assert holm([0.02, 0.3, 0.4], [300, 50, 50]) == pytest.approx([0.02 * 400 / 300, 0.6, 0.6])
    assert holm([0.02, 0.3], [1, 3])[0] == pytest.approx(0.08)  # a light weight costs its test power
    with pytest.raises(ValueError, match="positive weight"):
        holm([0.1, 0.2], [1, 0])


def test_macro_f1_interval_brackets_the_score_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    t = rng.integers(0, 3, 90)
    p = np.where(rng.random(90) < 0.7, t, rng.integers(0, 3, 90))
    m = classification_metrics(t, p, ["a", "b", "c"])
    lo, hi = m["macro_f1_ci"]
    assert lo < m["macro_f1"] < hi
    assert (lo, hi) == macro_f1_interval(t, p, 3)
    assert m["accuracy_ci"] == list(wilson(int((t == p).sum()), 90))


def test_items_to_settle_scales_with_the_square_of_the_interval() -> None:
    # An interval twice as wide as the difference needs four times the items.
    assert items_to_settle(0.05, [-0.05, 0.15], 100) == 400
    assert items_to_settle(0.0, [-0.1, 0.1], 100) is None
