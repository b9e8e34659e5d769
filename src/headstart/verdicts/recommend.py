"""Which adaptation to try first, from three measured signals and a few named thresholds.

The classic 2x2 of transfer learning (CS231n's "transfer learning" notes; Yosinski et al., NeurIPS 2014;
Kornblith et al., CVPR 2019): how many labels per class, and how far the data is from what the backbone
was pretrained on.

    small + similar   -> head         (the frozen features already fit; more trainable weights overfit)
    small + different -> partial:N    (re-learn only the last groups, where features are task-specific)
    large + similar   -> full         (enough labels to move every weight a little)
    large + different -> full         (from the pretrained init: it still converges faster than scratch)

A linear probe that is already near perfect overrides the table: nothing will beat it by much.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.verdicts.select import PROBE

# Labels per class at or above which a dataset counts as large. Below ~100 per class, full fine-tuning of
# millions of weights is reliably matched or beaten by a probe or a partial fine-tune (Kornblith et al.
# 2019, Fig. 5: gaps between fine-tuning and the probe grow with training-set size).
LARGE_PER_CLASS = 100
# Domain distance (0 = like the pretraining data, 1 = nothing like it, see verdicts.domain) from which the
# pretrained high-level features are considered off-target. 0.5 is the middle of the scale; measured with
# efficientnet_lite0: photo crops 0.20 below it; emoji 0.70, Fashion-MNIST 0.82, 8x8 digits 0.99 above.
FAR_DOMAIN = 0.5
# Probe accuracy at which the head alone is recommended whatever the table says: fine-tuning has at most
# a few points left to win and costs orders of magnitude more compute.
PROBE_GOOD_ENOUGH = 0.95
# How many final layer groups `partial` re-trains by default (EfficientNet-Lite: stage7 and the head conv).
PARTIAL_GROUPS = 2
# Validation accuracy within which a measured strategy counts as as good as the best one.
AGREE_TOLERANCE = 0.02


def recommend(
    labels_per_class: float, domain_distance: float | None, probe_accuracy: float | None = None
) -> dict[str, str]:
    """{"strategy", "reason"} for a dataset with `labels_per_class` training labels per class (the median),
    a domain distance in 0..1 (None: unknown, taken as similar) and a probe accuracy (None: unknown)."""
    large = labels_per_class >= LARGE_PER_CLASS
    far = domain_distance is not None and domain_distance >= FAR_DOMAIN
    size = f"{labels_per_class:g} labels per class"
    dist = "unknown domain distance" if domain_distance is None else f"domain distance {domain_distance:.2f}"
    if probe_accuracy is not None and probe_accuracy >= PROBE_GOOD_ENOUGH:
        return {
            "strategy": "head",
            "reason": f"The linear probe already reaches {probe_accuracy:.1%}, so fine-tuning has little "
            "left to gain for its cost.",
        }
    if not large and not far:
        return {
            "strategy": "head",
            "reason": f"With {size} and {dist} (similar to the pretraining data), the frozen features "
            "fit and more trainable weights would mostly overfit.",
        }
    if not large and far:
        return {
            "strategy": f"partial:{PARTIAL_GROUPS}",
            "reason": f"With only {size} but {dist} (far from the pretraining data), re-train just the "
            f"last {PARTIAL_GROUPS} layer groups, where features are task-specific.",
        }
    if not far:
        return {
            "strategy": "full",
            "reason": f"With {size} and {dist} (similar), there are enough labels to fine-tune every "
            "layer a little.",
        }
    return {
        "strategy": "full",
        "reason": f"With {size} and {dist} (far), fine-tune every layer, starting from the pretrained "
        "weights, which still converges faster and better than training from scratch.",
    }


def _family(strategy: str) -> str:
    return strategy.split(":", 1)[0]


def agree(recommendation: dict[str, Any], compare_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Did the recommended strategy do as well as the best measured one (compare.json rows)?

    Rows are matched by strategy name, else by family (`partial:3` stands in for `partial:2`). Returns
    {"agrees": bool | None (None: the recommended strategy was not measured), "best", "recommended_row",
    "gap": best val accuracy - recommended val accuracy}.
    """
    rows = [r for r in compare_rows if r.get("val_accuracy") is not None]
    if not rows:
        return {"agrees": None, "best": None, "recommended_row": None, "gap": None}
    best = max(rows, key=lambda r: r["val_accuracy"])
    want = recommendation["strategy"]
    match = [r for r in rows if r["strategy"] == want] or [
        r for r in rows if _family(r["strategy"]) == _family(want)
    ]
    if not match:
        return {"agrees": None, "best": best["strategy"], "recommended_row": None, "gap": None}
    mine = max(match, key=lambda r: r["val_accuracy"])
    gap = float(best["val_accuracy"] - mine["val_accuracy"])
    return {
        "agrees": gap <= AGREE_TOLERANCE,
        "best": best["strategy"],
        "recommended_row": mine["strategy"],
        "gap": gap,
    }


def rule_of_thumb(
    data: str | Path,
    backbone: str,
    per_class: float,
    probe_acc: float | None,
    seed: int,
    progress: bool,
    device: str = "auto",
) -> dict[str, Any]:
    """The recommendation from data size, domain distance and probe accuracy, before any fine-tune."""
    from headstart.verdicts.domain import domain_distance

    try:
        distance = domain_distance(data, backbone, seed=seed, progress=progress, device=device)["distance"]
    except HeadstartError:
        distance = None
    return {**recommend(per_class, distance, probe_acc), "domain_distance": distance}


def rule_verdict(rule: dict[str, Any], rows: list[dict[str, Any]], separated: bool) -> dict[str, Any]:
    """The rule's recommendation and whether the measured rows held it up. When no row separated from the
    probe beyond noise, any rule would "agree": that is reported as untested, not as agreement."""
    if not separated:
        return {
            **rule,
            "agrees": None,
            "untested": "no measured row separated from the probe beyond noise, so the rows cannot confirm "
            "or refute the rule",
        }
    rec = {k: v for k, v in rule.items() if k != "domain_distance"}
    # The rule's "head" is a linear head on frozen features: the probe stands in when "head" was not run.
    stand_in = not any(r["strategy"] == "head" for r in rows)
    if stand_in:
        measured = [dict(r, strategy="head") if r["strategy"] == PROBE else r for r in rows]
    else:
        measured = [r for r in rows if r["strategy"] != PROBE]
    verdict = agree(rec, measured)
    if stand_in:  # name the probe as the probe again
        for k in ("best", "recommended_row"):
            verdict[k] = PROBE if verdict[k] == "head" else verdict[k]
    return {**rule, **verdict}
