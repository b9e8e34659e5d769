"""Scores of a generative fine-tune, before (the base) and after (tuned), on the same held-out pairs.

- **Loss and perplexity** per response token (prompt and template tokens are not scored): the interval is
  a percentile bootstrap over *pairs* (1,000 resamples, seeded), each resample's loss being its summed
  NLL over its token count, so a long response weighs by its length, as in the point estimate.
- **Exact match** (after normalising case, spaces and final punctuation) and **ROUGE-L F1** (Lin 2004:
  the longest common subsequence of the reference's and the generation's word tokens, F with beta = 1)
  of greedy generations, with the same bootstrap over pairs.
- **Before/after difference**: a paired bootstrap (the same resampled pairs for both models). A
  difference whose interval holds 0 is a tie: the data cannot tell the two apart.
- **Item scores** (`item_scores`): per pair, minus its mean loss per response token, higher is better:
  what `auto --task generate` pairs between the frozen base (the probe) and a fine-tune.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from headstart.intervals import bootstrap_indices

SCORES = ("loss", "perplexity", "exact_match", "rouge_l")
LOWER_IS_BETTER = {"loss", "perplexity"}
N_EXAMPLES = 8  # generations kept per split for the report


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def rouge_l(reference: str, generated: str) -> float:
    """ROUGE-L F1 of word tokens: 2PR / (P + R) with P = LCS/|generated|, R = LCS/|reference|."""
    ref, gen = words(reference), words(generated)
    lcs = lcs_length(ref, gen)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(gen), lcs / len(ref)
    return 2 * p * r / (p + r)


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!?;, ")


def exact_match(reference: str, generated: str) -> float:
    return float(normalise(reference) == normalise(generated))


def _ci(values: np.ndarray) -> list[float]:
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _resampled(
    sums: np.ndarray, counts: np.ndarray, per_item: dict[str, np.ndarray], idx: np.ndarray
) -> dict:
    """Each score over each bootstrap resample of pairs (rows of `idx`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = sums[idx].sum(1) / counts[idx].sum(1)
    out = {"loss": loss, "perplexity": np.exp(loss)}
    out.update({k: v[idx].mean(1) for k, v in per_item.items()})
    return out


def _side(
    sums: Sequence[float], counts: Sequence[int], refs: Sequence[str], gens: Sequence[str] | None
) -> tuple:
    s, c = np.asarray(sums, float), np.asarray(counts, float)
    per_item: dict[str, np.ndarray] = {}
    if gens is not None:
        per_item["exact_match"] = np.array([exact_match(r, g) for r, g in zip(refs, gens, strict=True)])
        per_item["rouge_l"] = np.array([rouge_l(r, g) for r, g in zip(refs, gens, strict=True)])
    loss = float(s.sum() / c.sum()) if c.sum() else math.nan
    point = {"loss": loss, "perplexity": math.exp(loss) if math.isfinite(loss) else math.nan}
    point.update({k: float(v.mean()) for k, v in per_item.items()})
    return s, c, per_item, point


def verdict(score: str, diff: float, ci: Sequence[float]) -> str:
    """'better', 'worse' (after vs before) or 'tie' when the interval holds 0."""
    if not (ci[0] > 0 or ci[1] < 0):
        return "tie"
    up = ci[0] > 0
    return "worse" if up == (score in LOWER_IS_BETTER) else "better"


def _with_ci(point: dict[str, float], boots: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in point.items():
        out[k] = v
        out[f"{k}_ci"] = _ci(boots[k])
    return out


def base_scores(side: dict[str, Any], refs: Sequence[str], *, seed: int = 0) -> dict[str, Any]:
    """The frozen base's scores on the pairs (a probe's), each with its 95% interval, under "base": the
    scorer of `before_after`'s sides, with the same resampled pairs for the same seed."""
    s = _side(side["sums"], side["counts"], refs, side.get("generations"))
    out: dict[str, Any] = {"n": len(refs), "tokens": int(s[1].sum())}
    if refs:
        out["base"] = _with_ci(s[3], _resampled(*s[:3], bootstrap_indices(len(refs), seed=seed)))
    return out


def item_scores(sums: Sequence[float], counts: Sequence[int]) -> list[float]:
    """Per pair: minus its mean loss per response token (higher is better), what auto pairs item by item."""
    return [-float(s) / max(int(c), 1) for s, c in zip(sums, counts, strict=True)]


def before_after(
    before: dict[str, Any], after: dict[str, Any], refs: Sequence[str], *, seed: int = 0
) -> dict[str, Any]:
    """Scores of both models on the same pairs, each with its 95% interval, and their paired difference.

    `before`/`after`: {"sums", "counts"} per pair (response NLL and tokens), and "generations" (or None)."""
    sb = _side(before["sums"], before["counts"], refs, before.get("generations"))
    sa = _side(after["sums"], after["counts"], refs, after.get("generations"))
    n = len(refs)
    out: dict[str, Any] = {"n": n, "tokens": int(sb[1].sum()), "before": {}, "after": {}, "difference": {}}
    if n == 0:
        return out
    idx = bootstrap_indices(n, seed=seed)
    rb, ra = _resampled(*sb[:3], idx), _resampled(*sa[:3], idx)
    out["before"], out["after"] = _with_ci(sb[3], rb), _with_ci(sa[3], ra)
    for k in sb[3]:
        if k not in sa[3]:
            continue
        diff = sa[3][k] - sb[3][k]
        ci = _ci(ra[k] - rb[k])
        out["difference"][k] = {"diff": diff, "ci": ci, "verdict": verdict(k, diff, ci)}
    return out


def examples(
    prompts: Sequence[str], refs: Sequence[str], **generations: Sequence[str]
) -> list[dict[str, Any]]:
    """The first N_EXAMPLES held-out pairs with each model's generation (`before=`/`after=` of a fine-tune,
    `base=` of a probe) and its ROUGE-L: what the report shows."""
    rows = []
    for i, (p, r) in enumerate(list(zip(prompts, refs, strict=True))[:N_EXAMPLES]):
        row: dict[str, Any] = {"prompt": p, "reference": r}
        for side, gens in generations.items():
            row |= {side: gens[i], f"rouge_l_{side}": rouge_l(r, gens[i])}
        rows.append(row)
    return rows
