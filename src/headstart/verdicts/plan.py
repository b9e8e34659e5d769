"""Budgets as epoch plans: a share of seconds becomes a number of epochs before training starts.

The step time (images at their input size, texts at 64 tokens, audio at a full window) is measured once
per backbone, machine and thread count (verdicts.rank's memo in the
headstart cache) on a `full`-recipe step, the most expensive kind; every phase of every strategy is priced
at it, so a plan errs on the short side and the wall-clock cap (a safety net) rarely fires. With the memo
in place, the same data, seed, budget and machine give the same epochs, hence the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from headstart.errors import HeadstartError

# A forward pass (validation, prefix cache, final scoring) costs about a third of a training step.
FORWARD_SHARE = 1 / 3


def _step_seconds(backbone: Any, batch_size: int, device: str = "auto") -> float:
    """One `full`-recipe training step of `batch_size` items on `device` (the memoised timing);
    HeadstartError for a family without one."""
    from headstart.verdicts.rank import FINETUNE_BATCH, finetune_step_seconds

    return finetune_step_seconds(backbone, device=device) * batch_size / FINETUNE_BATCH


def _passes(recipe: Any) -> int:
    """Forward/backward passes per training item of the recipe's objective."""
    from headstart.train.setfit import CONTRASTIVE, ContrastivePairs

    return ContrastivePairs.passes if recipe.objective == CONTRASTIVE else 1


def probe_seconds(backbone: Any, n_items: int, device: str = "auto") -> float:
    """The priced cost of the probe's pass over every item (0 without a timed step, or without a backbone)."""
    if backbone is None:
        return 0.0
    try:
        return _step_seconds(backbone, 1, device) * FORWARD_SHARE * n_items
    except HeadstartError:
        return 0.0


def text_lengths(backbone: Any, sources: Sequence[str]) -> list[int] | None:
    """Token counts of a split's texts, for `padded_scale` (None for other modalities)."""
    if backbone.modality != "text":
        return None
    return [len(backbone.encode(s)) for s in sources]


def padded_scale(lengths: Sequence[int] | None, batch_size: int) -> float:
    """How much more a training step of these texts costs than the timed one of TIMED_TEXT_TOKENS tokens.

    A training batch is a random draw padded to its longest text, so the step runs at the expected longest
    of `batch_size` texts drawn without replacement, about linear in tokens at these lengths (projections
    and MLPs dominate). Never below 1: plans err short. On fortunes (median 20 tokens, longest 156) a batch
    of 32 pads to ~110 tokens, and steps priced at 64 took 2-3x their price."""
    from headstart.train.precision import TIMED_TEXT_TOKENS

    if not lengths:
        return 1.0
    xs, n = sorted(lengths), len(lengths)
    b = min(batch_size, n)
    # P(the longest of b is the i-th shortest) = (C(i, b) - C(i-1, b)) / C(n, b), i = 1..n.
    total = math.comb(n, b)
    expected = sum(x * (math.comb(i, b) - math.comb(i - 1, b)) for i, x in enumerate(xs, 1)) / total
    return max(1.0, expected / TIMED_TEXT_TOKENS)


def epoch_plan(
    backbone: Any,
    strategy: str,
    *,
    n_train: int,
    n_eval: int,
    share_s: float,
    n_test: int = 0,
    overhead_s: float = 0.0,
    device: str = "auto",
    train_lengths: Sequence[int] | None = None,
) -> dict[str, Any]:
    """{"epochs": E or None (no plan: the clock decides), "recipe_epochs", "epoch_s", "why"}, priced at a
    step timed on the `device` the fit will run on. `train_lengths`: the training texts' token counts
    (`text_lengths`), which price a text step at the length its batches pad to."""
    from headstart.recipes import get_recipe

    recipe = get_recipe(strategy, len(backbone.groups))
    total = sum(p.epochs for p in recipe.phases)
    if total == 0:
        return {"epochs": 0, "recipe_epochs": 0, "epoch_s": 0.0, "why": "no training epochs"}
    try:
        step = _step_seconds(backbone, recipe.batch_size, device)
    except HeadstartError as e:  # a family without a timed step: the clock decides, and the row says so
        return {"epochs": None, "recipe_epochs": total, "epoch_s": None, "why": f"no step timing: {e}"}
    batches = math.ceil(n_train / recipe.batch_size)
    forward = step * FORWARD_SHARE / recipe.batch_size  # seconds per item
    # Each epoch: the steps, the validation pass, and for from-scratch the BatchNorm pass over train. A
    # contrastive (setfit) step runs each item with its two pair partners: three items' worth.
    passes = _passes(recipe)
    padded = padded_scale(train_lengths, recipe.batch_size)
    steps_s = batches * step * padded * passes
    epoch_s = steps_s + forward * (n_eval + (n_train if not recipe.pretrained else 0))
    # Prefix caches and final scores per phase, and the run's closing score of the test split.
    fixed = overhead_s + forward * ((n_train + n_eval) * len(recipe.phases) + n_test)
    fits = int((share_s - fixed) // epoch_s) if epoch_s > 0 else total
    epochs = max(1, min(total, fits))
    why = f"{epochs} of {total} epochs fit {share_s:.0f} s at ~{epoch_s:.1f} s per epoch"
    if padded > 1:
        why += f" (steps priced {padded:.1f}x the timed one: batches pad to their longest text)"
    return {
        "epochs": epochs,
        "recipe_epochs": total,
        "epoch_s": epoch_s,
        "one_epoch_s": fixed + epoch_s,
        "why": why,
    }
