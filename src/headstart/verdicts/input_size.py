"""The input size a comparison's fine-tunes train at: the backbone's own, or a smaller one where the probe's
k-fold score says nothing is lost.

A convolutional backbone pools over any input size, and a step's cost falls with the pixel count (160 px is
about half of 224 px, 128 px a third). Small images (the emoji are 72 px) are upsampled to the weights' own
size today, so a smaller input may lose nothing. Whether it does is measured, not assumed: the probe is
scored at each candidate size by one stratified k-fold pass over train+val, on the same folds (each item
predicted once by a head that never saw it; C by CV per size), and the smallest size is taken whose paired
difference to the native size is neither below NATIVE_MARGIN nor negative beyond noise (exact McNemar, 5 %).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.intervals import ALPHA, paired_difference

# Candidate sizes as shares of the native one (224 px: 160 and 128), rounded to multiples of 32: the
# EfficientNet family pads for its native size ("same" padding fixed at build), which stays right at
# sizes with the same parity at every stride-2 step.
SCALES = (160 / 224, 128 / 224)
STEP = 32
# The largest loss of the point estimate a smaller input may show (on top of not losing beyond noise).
NATIVE_MARGIN = 0.01


def parse_input_size(text: str) -> str:
    """--input-size of compare/auto: native, auto, or a number of pixels."""
    from headstart.errors import HeadstartError

    if text in ("native", "auto") or (text.isdigit() and 8 <= int(text) <= 2048):
        return text
    raise HeadstartError(f"--input-size {text!r}", fix="give native, auto, or pixels from 8 to 2048")


def choose_input_size(
    data: str | Path, backbone: str, *, seed: int = 0, device: str = "auto", progress: bool = False
) -> dict[str, Any]:
    """{"chosen": pixels or None (the native size), "native", "scores": {size: k-fold accuracy},
    "tests": {size: paired difference to native}, "reason"}. Not an image backbone: chosen None."""
    from headstart.backbones import create_backbone
    from headstart.head import fit_head
    from headstart.verdicts.cheap_cv import cv_hits, embedded_train_val

    native_bb = create_backbone(backbone)
    if native_bb.modality != "image":
        return {
            "chosen": None,
            "reason": f"{native_bb.name} reads {native_bb.modality}: no input size to choose",
        }
    native = native_bb.image_preprocess.input_size
    smaller = {round(native * r / STEP) * STEP for r in SCALES} - {native, 0}
    sizes = [native, *sorted(smaller, reverse=True)]
    bbs = {s: native_bb if s == native else create_backbone(f"size:{s}:{backbone}") for s in sizes}
    tv = embedded_train_val(data, bbs, seed, device, progress)
    n_folds = tv.n_folds
    if n_folds < 2:
        return {"chosen": None, "native": native, "reason": "too few items per class for a k-fold score"}
    hits = {}
    for s in sizes:
        C = fit_head(tv.X[s], tv.y, tv.n_classes, cv=n_folds, seed=seed)[1]
        hits[s] = cv_hits(tv.X[s], tv.y, tv.n_classes, C=C, n_folds=n_folds, seed=seed, knn=False)["probe"]
    tests = {s: paired_difference(hits[s], hits[native]) for s in sizes if s != native}
    keeps = [
        s for s, t in tests.items() if t["diff"] >= -NATIVE_MARGIN and not (t["diff"] < 0 and t["p"] < ALPHA)
    ]
    chosen = min(keeps) if keeps else None
    scores = {s: float(h.mean()) for s, h in hits.items()}
    if chosen is None:
        reason = (
            f"every smaller input lost to {native} px on {len(tv.y)} train+val items: the fine-tunes keep it"
        )
    else:
        t = tests[chosen]
        reason = (
            f"{chosen} px scores {scores[chosen]:.3f} against {scores[native]:.3f} at {native} px "
            f"({t['diff']:+.3f}, 95% [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}], p={t['p']:.2g}) on {len(tv.y)} "
            f"train+val items: the fine-tunes train at {chosen} px"
        )
    return {
        "chosen": chosen,
        "native": native,
        "scores": {str(s): v for s, v in scores.items()},
        "tests": {str(s): {k: t[k] for k in ("diff", "ci", "p", "n")} for s, t in tests.items()},
        "reason": reason,
    }


def fine_tune_size(
    input_size: str, data: str | Path, backbone: str, seed: int, device: str, progress: bool
) -> tuple[int | None, dict[str, Any] | None]:
    """(the pixels compare's trained rows run at, None for the backbone's own; what was decided and why)
    for `--input-size` native | auto | N. The frozen heads keep the native size: the probe is the
    reference, and its cached embeddings are the native ones."""
    import time

    parse_input_size(input_size)
    if input_size == "native":
        return None, None
    if input_size != "auto":
        return int(input_size), {"chosen": int(input_size), "reason": "given (--input-size)"}
    t0 = time.perf_counter()
    decided = choose_input_size(data, backbone, seed=seed, device=device, progress=progress)
    decided["seconds"] = time.perf_counter() - t0
    return decided["chosen"], decided
