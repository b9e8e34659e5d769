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

from typing import Any

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
