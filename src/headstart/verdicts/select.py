"""Which measured strategy to recommend, and which flags to raise, when every score carries noise.

The rule (see docs/verdicts.md):
1. The probe is the reference: it is the cheapest use of the backbone and the score every other row is
   read against.
2. A challenger *beats the probe* only when it is better on the same items beyond noise: more likely to
   give the true labels (each item's NLL under logits tempered on these items, `calibration.tempered_nll`;
   a paired sign-flip test, which reads every item, not only the discordant ones) and not less accurate
   beyond noise (exact McNemar; an accuracy difference inside the noise is a tie). At 5 %, Holm-corrected
   over the challengers that differ from the probe on any item, each test weighted by the items it reads
   (a frozen head's k-fold test reads every labeled item, a fine-tune's the validation items). Rows
   without per-item likelihoods must be ahead on accuracy, by exact McNemar.
3. Among the probe and the challengers that beat it, the best by validation accuracy sets the bar; the
   recommendation is the cheapest of them (trainable parameters, then stored bytes, then training time)
   that is not significantly worse than that best one.
4. When nothing separates, the probe stays and the reason says so in plain words, with roughly how many
   validation items (and labels per class) would settle the closest call.

Skewed classes (headstart.imbalance): every "accuracy" above reads balanced accuracy (the rows'
`val_balanced_accuracy`), and the paired test weighs each validation item by the inverse of its class's
count (intervals.paired_difference with weights: a weighted sign-flip test in McNemar's place).

Flags are computed the same way for every row: overfitting is a train-minus-val gap above OVERFIT_GAP even
at the top of the val interval; negative transfer needs the from-scratch row better than the best transfer
row beyond noise, and a scratch row cut short by its budget makes that verdict "inconclusive".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headstart.imbalance import ACCURACY
from headstart.intervals import ALPHA, holm, items_to_settle, paired_difference, paired_likelihood

PROBE = "probe"
# The deciding paired test where both rows carry each item's tempered NLL (headstart.calibration).
LIKELIHOOD_TEST = "tempered log-likelihood sign-flip test"
#: Fold draws of the frozen heads' paired k-fold test (headstart.verdicts.cheap_cv.paired_head_hits), the
#: same for every head: each item's NLL is its mean over them. On emoji and Fashion-MNIST 20/class, 30 seeds
#: each, one draw found multi-depth's gain over the probe on 8 and 10 seeds at compare's level, the mean of
#: three on 13 and 13, and neither found one on fortunes, where multi-depth is worse (docs/compare.md).
TEST_PASSES = 3
# How the frozen heads' `cv_correct` and `cv_nll` are made, as the reason says it.
CV_TEST = (
    "each predicted by k-fold models that never saw it, "
    f"its likelihood averaged over {TEST_PASSES} fold draws"
)
SCRATCH = "scratch"
# Heads on the frozen backbone beside the probe, run first, each priced at `head_passes` probe passes.
HEAD_STRATEGIES = ("multi-depth", "views")
# The frozen heads compare runs unasked: `views` is opt-in (--strategies views) until a measurement shows it
# buys accuracy (4 image tasks x 3 seeds: no gain beyond noise, docs/augmented-views.md).
DEFAULT_HEADS = ("multi-depth",)
# Train-minus-val accuracy gap (beyond the val interval's upper end) above which a row overfits.
OVERFIT_GAP = 0.2


def frozen_head(strategy: str) -> bool:
    """A head on the frozen backbone beside the probe: a HEAD_STRATEGIES name, or one with its parameter
    (views:8)."""
    return strategy.partition(":")[0] in HEAD_STRATEGIES


def head_strategies(modality: str) -> list[str]:
    """The default frozen heads `modality` can take (augmented views are image augmentations)."""
    return [s for s in DEFAULT_HEADS if modality == "image" or s != "views"]


def head_passes(strategy: str) -> int:
    """What a frozen head costs, in passes of the probe's forward over the data: one for a new forward
    (multi-depth); views:K reads the probe's cached originals, embeds K views of each train+val item (the
    run's and its k-fold test's) and fits on 1 + K times the rows: priced 1 + K."""
    from headstart.recipes import get_recipe

    return 1 + get_recipe(strategy, 1).views


def cost_key(row: dict[str, Any]) -> tuple[float, float, float]:
    """Cheaper first: fewer trainable parameters, fewer stored bytes, less training time."""
    return (
        float(row.get("trainable_params") or 0),
        float(row.get("stored_bytes") or 0),
        float(row.get("train_s") or 0),
    )


def _paired(
    correct: dict[str, np.ndarray],
    a: str,
    b: str,
    weights: np.ndarray | None = None,
    nll: dict[str, np.ndarray] | None = None,
) -> dict[str, Any] | None:
    """a against b on the same items: the accuracy difference (McNemar), and where both have each item's
    tempered NLL, the likelihood test that then decides (`p_rule`, `rule_test`)."""
    if a not in correct or b not in correct or correct[a].shape != correct[b].shape:
        return None
    if weights is not None and len(weights) != len(correct[a]):
        weights = None  # not the items the weights were made for: nothing to weigh them by
    t = paired_difference(correct[a], correct[b], weights=weights)
    t["rule_test"], t["p_rule"] = ("McNemar" if weights is None else "weighted sign test"), t["p"]
    nll = nll or {}
    if a in nll and b in nll and np.shape(nll[a]) == correct[a].shape == np.shape(nll[b]):
        t["likelihood"] = paired_likelihood(nll[a], nll[b], weights=weights)
        t["rule_test"], t["p_rule"] = LIKELIHOOD_TEST, t["likelihood"]["p"]
    return t


def informative(t: dict[str, Any]) -> bool:
    """Whether a paired test has any item on which the two rows differ (in the deciding test's terms)."""
    lik = t.get("likelihood")
    return bool(lik["informative"]) if lik else t["only_a"] + t["only_b"] > 0


def separates(t: dict[str, Any] | None, p_key: str = "p_rule") -> bool:
    """The rule's "a is better than b beyond noise". Where both rows have each item's tempered NLL: a is
    more likely to give the true labels, significant at ALPHA, and not less accurate beyond noise (McNemar:
    an accuracy difference inside the noise is a tie, and a tie's sign decides nothing). Else: a is ahead
    on accuracy and McNemar is significant."""
    if t is None or not t[p_key] < ALPHA:
        return False
    lik = t.get("likelihood")
    if lik is None:
        return t["diff"] > 0
    return lik["gain"] > 0 and not (t["diff"] < 0 and t["p"] < ALPHA)


def select(
    rows: list[dict[str, Any]],
    correct: dict[str, np.ndarray],
    *,
    n_classes: int | None = None,
    val_fraction: float = 0.15,
    metric: str = ACCURACY,
    weights: np.ndarray | None = None,
    cv_correct: dict[str, np.ndarray] | None = None,
    nll: dict[str, np.ndarray] | None = None,
    cv_nll: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """{"strategy", "reason", "separated", "tests", "settle"} from compare's rows and each row's per-item
    validation correctness (`correct[strategy]`, aligned on the same items). `metric`: what the rows are
    compared on ("accuracy", or "balanced_accuracy" with `weights`: headstart.imbalance.item_weights of
    the validation labels). `cv_correct`: for the frozen heads (the probe and its kin), each train+val
    item's correctness in one k-fold pass on the same folds: where the reference and a challenger both
    have it (and rows are compared on accuracy), that test, on every labeled item, replaces the val one.
    `nll`, `cv_nll`: each row's per-item tempered NLL on the same items (val; k-fold): where a pair has
    it, the likelihood test decides (`separates`)."""
    key = f"val_{metric}"
    if metric != ACCURACY and weights is None:
        raise ValueError(f"select by {metric} needs the validation items' weights")
    scored = [r for r in rows if r.get(key) is not None and r["strategy"] != SCRATCH]
    if not scored:
        return {"strategy": None, "reason": "no strategy finished within the budget", "separated": False}
    ref = next((r for r in scored if r["strategy"] == PROBE), None) or min(scored, key=cost_key)
    challengers = [r for r in scored if r is not ref and r["strategy"] in correct]
    tests: dict[str, dict[str, Any]] = {}

    def test(a: str, b: str) -> dict[str, Any] | None:
        """a against b: on every labeled item where both are frozen heads, else on the val items."""
        t = _paired(cv_correct or {}, a, b, nll=cv_nll) if metric == ACCURACY else None
        if t is not None:
            t["on"] = f"{t['n']} train+val items, {CV_TEST}"
            return t
        return _paired(correct, a, b, weights, nll)

    for r in challengers:
        t = test(r["strategy"], ref["strategy"])
        if t is not None:
            tests[r["strategy"]] = t
    # Holm over the challengers that could differ from the reference on these items at all: a fine-tune
    # that kept the probe's head predicts exactly as the probe does, its test has no informative item
    # and no p below 1 to reach, and it is not counted (Tarone's rule for discrete tests, at its simplest).
    testable = {k: t for k, t in tests.items() if informative(t)}
    # Weighted by the items each test reads (fixed before any outcome is seen): a frozen head's k-fold
    # test on every labeled item can find a 3-point gain, a fine-tune's on a few dozen val items only a
    # ten-point one, so the level goes where the evidence is (the weighted Holm procedure, Holm 1979).
    items = [t["n"] for t in testable.values()]
    for name, p in zip(testable, holm([t["p_rule"] for t in testable.values()], items), strict=True):
        tests[name]["p_holm"] = p
    for t in tests.values():
        t.setdefault("p_holm", t["p_rule"])
        t["beats_reference"] = separates(t, "p_holm")
    winners = [r for r in challengers if tests.get(r["strategy"], {}).get("beats_reference")]
    n_val = len(correct.get(ref["strategy"], ()))
    by = "" if metric == ACCURACY else f" by {metric.replace('_', ' ')}"
    if not winners:
        reason = (
            f"no strategy beat the {ref['strategy']}{by} beyond noise on {n_val} validation items, so the "
            f"{ref['strategy']} (the cheapest) is recommended"
        )
        on_cv = [f"{k} on {t['on']}" for k, t in tests.items() if t.get("on")]
        if on_cv:
            reason += f" (tested: {'; '.join(on_cv)})"
        settle = _settle({k: t for k, t in tests.items() if not t.get("on")}, n_val, n_classes, val_fraction)
        if settle:
            per_class = settle["labels_per_class"]
            reason += (
                f"; the closest call, {settle['strategy']} ({settle['diff']:+.1%}), would need about "
                f"{settle['val_items']:,} validation items"
                + (f" (about {per_class:,} labels per class at this split)" if per_class else "")
                + " to be told from noise, if the difference held"
            )
        return {
            "strategy": ref["strategy"],
            "reason": reason + ".",
            "separated": False,
            "reference": ref["strategy"],
            "tests": tests,
            "settle": settle,
        }
    pool = [ref, *winners]
    # The bar is the best winner by validation score. Not the reference: a frozen head beats it on every
    # labeled item (k-fold) and may still trail it on the few validation items.
    best = max(winners, key=lambda r: (r[key], [-c for c in cost_key(r)]))
    chosen = best
    for r in sorted(pool, key=cost_key):
        if r is best:
            break
        vs_best = test(best["strategy"], r["strategy"])
        if vs_best is not None and not separates(vs_best):
            chosen = r
            break
    t = tests[chosen["strategy"]]  # a winner: the reference loses its own test against the best
    reason = (
        f"{chosen['strategy']} beats the {ref['strategy']}{by} beyond noise on "
        f"{t.get('on') or f'{n_val} validation items'} ({evidence_text(t)})"
    )
    if chosen is not best:
        reason += (
            f"; it is the cheapest strategy not significantly worse than the best, {best['strategy']} "
            f"({best[key]:.1%} vs {chosen[key]:.1%} on validation)"
        )
    return {
        "strategy": chosen["strategy"],
        "reason": reason + ".",
        "separated": True,
        "reference": ref["strategy"],
        "best": best["strategy"],
        "tests": tests,
    }


def evidence_text(t: dict[str, Any]) -> str:
    """One paired test as the reasons print it: the accuracy difference with its interval, and the
    deciding test's Holm-corrected p (with the likelihood gain where that test decided)."""
    acc = f"{t['diff']:+.1%}, 95% interval [{t['ci'][0]:+.1%}, {t['ci'][1]:+.1%}]"
    lik = t.get("likelihood")
    if lik is None:
        return f"{acc}, {t['rule_test']} p={t['p_holm']:.3g} Holm-corrected"
    alone = "" if t["p"] < ALPHA else f", inside the noise by McNemar alone (p={t['p']:.2g})"
    return (
        f"accuracy {acc}{alone}; log-likelihood {lik['gain']:+.3f} nats per item "
        f"[{lik['ci'][0]:+.3f}, {lik['ci'][1]:+.3f}], {t['rule_test']} p={t['p_holm']:.3g} Holm-corrected"
    )


def vs_reference_text(d: dict[str, Any]) -> str:
    """A row's paired test against the reference, as the compare tables show it: the accuracy difference
    with its interval, the likelihood gain where that test decided, and the deciding p (Holm-corrected)."""
    acc = f"{d['diff']:+.3f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"
    p = d.get("p_holm", d.get("p_rule", d["p"]))  # compare.json files from before the rule's p keys
    lik = d.get("likelihood")
    return f"{acc}, log-lik {lik['gain']:+.3f}, p(Holm) {p:.2g}" if lik else f"{acc}, p(Holm) {p:.2g}"


def _settle(
    tests: dict[str, dict[str, Any]], n_val: int, n_classes: int | None, val_fraction: float
) -> dict[str, Any] | None:
    """The challenger furthest ahead of the reference, and how many items would settle it at that gap."""
    if not tests:
        return None
    better = {k: t for k, t in tests.items() if t["diff"] > 0}
    if not better:
        return None
    name, t = max(better.items(), key=lambda kv: (kv[1]["diff"], -kv[1]["p"]))
    need = items_to_settle(t["diff"], t["ci"], n_val)
    if need is None:
        return None
    per_class = int(np.ceil(need / val_fraction / n_classes)) if n_classes else None
    return {"strategy": name, "diff": t["diff"], "val_items": need, "labels_per_class": per_class}


def overfitting(row: dict[str, Any]) -> bool:
    """Train accuracy above the top of the val interval by more than OVERFIT_GAP: the same test for every
    row (the probe's too), so a row is never flagged where its twin is not."""
    tr, ci = row.get("train_accuracy"), row.get("val_accuracy_ci")
    if tr is None or not ci or ci[1] is None:
        return False
    return tr - ci[1] > OVERFIT_GAP


def transfer_verdict(
    rows: list[dict[str, Any]],
    correct: dict[str, np.ndarray],
    *,
    metric: str = ACCURACY,
    weights: np.ndarray | None = None,
    cv_correct: dict[str, np.ndarray] | None = None,
    nll: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Negative transfer: from-scratch beats the best transfer row beyond noise, and ran its epochs
    (`metric`, `weights`, `nll`: as select's).

    {"negative_transfer": bool | None (None: inconclusive), "reason"}."""
    key = f"val_{metric}"
    scratch = next((r for r in rows if r["strategy"] == SCRATCH and r.get(key) is not None), None)
    transfer = [r for r in rows if r["strategy"] != SCRATCH and r.get(key) is not None]
    if scratch is None or not transfer:
        return {"negative_transfer": None, "reason": "no from-scratch baseline was measured"}
    best = max(transfer, key=lambda r: r[key])
    t = _paired(correct, SCRATCH, best["strategy"], weights, nll)
    # Cut short: its plan gave it fewer epochs than its recipe asks for, or the safety cap stopped it.
    ran, planned = scratch.get("epochs_run"), scratch.get("recipe_epochs") or scratch.get("epochs_planned")
    cut = bool(scratch.get("cut_short")) and ran is not None and planned is not None and ran < planned
    if separates(t):
        if cut:
            return {
                "negative_transfer": True,
                "reason": f"scratch beat {best['strategy']} beyond noise even though it ran only {ran} of "
                f"its {planned} epochs",
            }
        return {
            "negative_transfer": True,
            "reason": f"scratch beat {best['strategy']} beyond noise ({t['diff']:+.1%}, {t['rule_test']} "
            f"p={t['p_rule']:.3g})",
        }
    if cut:
        return {
            "negative_transfer": None,
            "reason": f"inconclusive: scratch ran {ran} of its {planned} epochs within its budget share",
        }
    diff = "" if t is None else f" ({t['diff']:+.1%}, {t['rule_test']} p={t['p_rule']:.3g})"
    return {
        "negative_transfer": False,
        "reason": f"scratch did not beat {best['strategy']} beyond noise{diff}",
    }
