"""Test-time augmentation (`headstart evaluate RUN --tta K`): each image's logits averaged over the image
and K augmented views of it, measured against the plain prediction on the same items.

The views are the `views` strategy's (headstart.views: random resized crop, flip, colour jitter through
the run's own frozen forward, each cached once), drawn with TTA_SEED so they are never the views a
`views` run trained on. Logits are averaged, not probabilities, so the run's temperature applies to the
average as it does to one forward. Evaluation reports both accuracies, their paired difference (exact
McNemar: a gain inside the noise is a tie) and what one prediction then costs: 1 + K forwards.
Images only, float forwards only (an int8 run's views would need the int8 forward: refused).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.errors import HeadstartError

if TYPE_CHECKING:
    from headstart.model import TrainedModel

TTA_SEED = 1_000_003  # training views use the recipe's seed (0, 1, ...): test views are another draw
MAX_TTA = 32


def check_tta(model: TrainedModel, k: int) -> None:
    """Refuse, before any embedding, a K or a run test-time augmentation cannot take."""
    if not isinstance(k, int) or not 0 <= k <= MAX_TTA:
        raise HeadstartError(
            f"--tta must be an integer from 0 to {MAX_TTA}, got {k!r}", fix="e.g. --tta 4 (4 views per image)"
        )
    if not k:
        return
    if model.modality != "image":
        raise HeadstartError(
            f"test-time augmentation draws image views (crop, flip, colour); {model.path} is a "
            f"{model.modality} run",
            fix="drop --tta for text and audio runs",
        )
    if model.precision != "fp32":
        raise HeadstartError(
            f"{model.path} predicts through its {model.precision} frozen forward; test-time views run "
            "through the float one, so they would not be this run's predictions",
            fix="drop --tta, or evaluate a run trained at --precision fp32",
        )


def tta_logits(
    model: TrainedModel, sources: list[str], z_plain: np.ndarray, k: int, **embed: Any
) -> np.ndarray:
    """(n, C) logits of `sources`, each averaged over the image (`z_plain`: its logits, as the caller has
    them from `model.logits`) and its K views."""
    from headstart.views import embed_views

    check_tta(model, k)
    hashes = []
    for s in sources:  # the caller read them a moment ago
        try:
            hashes.append(model.backbone.item_hash(s))
        except OSError as e:
            raise HeadstartError(f"{s} could not be read for test-time augmentation: {e}") from e
    V, _ = embed_views(model.backbone, sources, hashes, k, seed=TTA_SEED, **embed)
    return (z_plain + sum(model.head.logits(V[:, i]) for i in range(k))) / (k + 1)


def tta_report(
    model: TrainedModel, sources: list[str], y: np.ndarray, z_plain: np.ndarray, k: int, **embed: Any
) -> dict[str, Any]:
    """Accuracy with and without TTA on the same items, their paired difference, and what one prediction
    costs with it (`one_image_ms`)."""
    from headstart.intervals import paired_difference, wilson
    from headstart.metrics import classification_metrics

    z = tta_logits(model, sources, z_plain, k, **embed)
    plain_hits, hits = z_plain.argmax(1) == y, z.argmax(1) == y
    diff = paired_difference(hits.tolist(), plain_hits.tolist())
    lo, hi = wilson(int(hits.sum()), len(hits))
    return {
        "k": k,
        "seed": TTA_SEED,
        "accuracy": float(hits.mean()),
        "accuracy_ci": [lo, hi],
        "plain_accuracy": float(plain_hits.mean()),
        "gain": diff,
        "beyond_noise": bool(diff["p"] < 0.05),
        "metrics": classification_metrics(y, z.argmax(1), model.classes),
        # per item, in the evaluation's order: what the paired test compared
        "correct": hits.tolist(),
        "plain_correct": plain_hits.tolist(),
        "latency": one_image_ms(model, sources[0], k, backend=embed.get("backend", "auto")),
    }


def one_image_ms(model: TrainedModel, source: str, k: int, *, backend: str = "auto") -> dict[str, Any]:
    """p50 of 20 single-image predictions on the CPU through one frozen forward built beforehand: decode +
    forward, and decode + K views + one forward of the 1 + K images, as a server doing TTA would run it."""
    import torch

    from headstart.features import make_forward
    from headstart.latency import percentile_ms, timed
    from headstart.views import draw_view

    bb = model.backbone
    forward, used = make_forward(bb, backend)
    content = bb.item_hash(source)

    def plain(_: object) -> None:
        model.head.logits(forward(torch.from_numpy(bb.load_item(source))[None]))

    def with_views(_: object) -> None:
        x = torch.from_numpy(bb.load_item(source))
        batch = torch.stack([x, *(draw_view(bb, x, content, i, TTA_SEED) for i in range(k))])
        model.head.logits(forward(batch)).mean(0)

    out: dict[str, Any] = {"backend": used}
    for name, fn in (("plain_p50_ms", plain), ("tta_p50_ms", with_views)):
        fn(None)  # warm-up
        out[name] = percentile_ms(timed(fn, None, 20), 50)
    out["ratio"] = out["tta_p50_ms"] / out["plain_p50_ms"]
    return out
