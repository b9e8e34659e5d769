"""Class imbalance, detected from the training counts, and everything that follows from it.

`detect(train_counts)` is the one place that decides whether the classes are skewed and what then changes:

- **Skewed** when the largest class has at least SKEW_RATIO times the items of the smallest. At 3:1 a
  model that always answers the majority class of two already scores 75 % accuracy, so accuracy stops
  telling a useful model from a useless one; and an unweighted loss's pull toward the majority (a prior
  shift of log 3 = 1.1 nats in the logits) is as large as a typical margin. Below it the two criteria
  rarely disagree and today's behaviour is kept exactly.
- **Class weights**: inverse frequency, `w_c = n / (K * n_c)` (scikit-learn's "balanced"), so every
  class carries the same total weight and the weights average 1 *per training item*: the loss keeps its
  scale, so the probe's C and the recipes' learning rates keep their meaning. (Inverse square root was
  measured against it in benchmarks/imbalance.py: see docs/imbalance.md.)
- **Selection metric**: balanced accuracy (the mean per-class recall) when skewed, accuracy otherwise. It
  chooses the probe's C, the Trainer's best epoch and compare's recommendation.

`mode="off"` records the counts but changes nothing (`--imbalance off`: today's behaviour).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError

if TYPE_CHECKING:  # numpy is imported where used: headstart.config (every --help) imports this module
    import numpy as np

SKEW_RATIO = 3.0
MODES = ("auto", "off")
IMBALANCE_HELP = (
    "auto: when the largest training class has >= 3x the items of the smallest, weight the loss by "
    "inverse class frequency and choose C, the best epoch and the recommendation by balanced accuracy; "
    "off: plain loss and accuracy"
)
ACCURACY, BALANCED = "accuracy", "balanced_accuracy"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise HeadstartError(f"imbalance {mode!r}: unknown mode", fix="give --imbalance auto or off")
    return mode


@dataclass(frozen=True)
class Imbalance:
    """What the training counts say and what is done about it."""

    counts: tuple[int, ...]  # training items per class, in class order
    ratio: float  # largest / smallest count over the classes present
    skewed: bool
    mode: str  # "auto" or "off"

    @property
    def applied(self) -> bool:
        """Whether the weighted loss and the balanced metric are in use."""
        return self.skewed and self.mode == "auto"

    @property
    def metric(self) -> str:
        """What selects (C, the best epoch, compare's row): "balanced_accuracy" or "accuracy"."""
        return BALANCED if self.applied else ACCURACY

    def class_weight(self) -> np.ndarray | None:
        """Inverse-frequency weights (item mean 1) when applied; None keeps the plain loss untouched."""
        if not self.applied:
            return None
        return inverse_frequency(self.counts)

    def to_dict(self) -> dict[str, Any]:
        """What metrics.json records."""
        w = self.class_weight()
        return {
            "ratio": self.ratio,
            "skewed": self.skewed,
            "mode": self.mode,
            "applied": self.applied,
            "weights": None if w is None else [round(float(x), 4) for x in w],
            "metric": self.metric,
            "counts": list(self.counts),
            "summary": self.describe(),
        }

    def describe(self) -> str:
        """One line for the report and the CLI: what was seen and what was done."""
        ratio = f"{self.ratio:.0f}:1" if self.ratio >= 10 else f"{self.ratio:.1f}:1"
        if not self.skewed:
            return f"classes balanced enough ({ratio} largest to smallest): plain loss, chosen by accuracy"
        if not self.applied:
            return f"classes skewed {ratio}, left as is (--imbalance off): plain loss, chosen by accuracy"
        return (
            f"classes skewed {ratio}: weighted loss; C, the best epoch and the recommendation chosen by "
            "balanced accuracy"
        )


def inverse_frequency(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """`n / (K * n_c)` over the classes present (a class without items gets 1: it never weighs an item)."""
    import numpy as np

    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    w = np.ones(len(counts))
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return w


def detect(train_counts: Sequence[int] | np.ndarray, mode: str = "auto") -> Imbalance:
    """The imbalance of these training counts (one per class, in class order)."""
    check_mode(mode)
    counts = tuple(int(c) for c in train_counts)
    present = [c for c in counts if c > 0]
    ratio = max(present) / min(present) if present else 1.0
    return Imbalance(counts=counts, ratio=float(ratio), skewed=ratio >= SKEW_RATIO, mode=mode)


def train_imbalance(y: Sequence[int] | np.ndarray, n_classes: int, mode: str) -> Imbalance:
    """`detect` on a training split's labels (class indices; -1, unlabeled, is not counted)."""
    import numpy as np

    y = np.asarray(y, dtype=np.int64)
    return detect(np.bincount(y[y >= 0], minlength=n_classes), mode)


def skewed_in(metrics: dict[str, Any]) -> str | None:
    """The one-line summary of a run's metrics.json `imbalance` when its classes were skewed (what the CLI
    and the report show beside balanced accuracy); None for balanced classes or a run from before it."""
    imb = metrics.get("imbalance") or {}
    return imb.get("summary") if imb.get("skewed") else None


def item_weights(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-item weights (mean 1) under which the mean of per-item correctness is the balanced accuracy."""
    import numpy as np

    y = np.asarray(labels, dtype=np.int64)
    if not len(y):
        return np.ones(0)
    return inverse_frequency(np.bincount(y))[y]


def balanced_accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """The mean recall over the classes present in y_true (nan without items)."""
    import numpy as np

    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if not len(t):
        return float("nan")
    support = np.bincount(t)
    hits = np.bincount(t, weights=(t == p).astype(float), minlength=len(support))
    present = support > 0
    return float((hits[present] / support[present]).mean())
