"""Label-efficiency curve: test accuracy of the probe against labels per class, next to a baseline.

The probe is fitted on cached embeddings (one backbone pass for the whole curve) from k seeded labels per
class of the training split, with its L2 strength chosen by cross-validation on those k labels only (the
validation split is not used, so small k is not flattered). The baseline on the same axes is either a
network trained from scratch with headstart.train (`strategy="scratch"`, the honest comparison, slow on a
CPU) or, labelled as such, logistic regression on raw downsampled pixels, "pixels (no backbone)".
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError

LADDER = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
PROBE = "probe"
PIXELS = "pixels (no backbone)"
SCRATCH = "scratch"
PIXEL_SIDE = 16  # pixels baseline: images reduced to 16x16 RGB (768 numbers)
# Folds choosing C on the k labels per class (3, not 5: the curve fits dozens of probes)
CURVE_FOLDS = 3


def label_sizes(min_per_class: int, ladder: tuple[int, ...] = LADDER) -> list[int]:
    """Ladder steps the training split can fill for every class, plus the full amount as the last point."""
    sizes = [k for k in ladder if k <= min_per_class]
    if min_per_class >= 1 and (not sizes or sizes[-1] < min_per_class):
        sizes.append(min_per_class)
    return sizes


def subsample(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of k seeded random items of every class (sorted)."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c in np.unique(y)]
    return np.sort(np.concatenate(picks))


def _pixels(paths: list[str]) -> np.ndarray:
    from PIL import Image

    from headstart.data.images import open_image

    out = np.zeros((len(paths), PIXEL_SIDE * PIXEL_SIDE * 3), np.float32)
    for i, p in enumerate(paths):
        img = open_image(p, draft_to=PIXEL_SIDE * 2).resize((PIXEL_SIDE, PIXEL_SIDE), Image.Resampling.BOX)
        out[i] = np.asarray(img, np.float32).ravel() / 255.0
    return out


def _probe_accuracy(X: np.ndarray, y: np.ndarray, Xt: np.ndarray, yt: np.ndarray, k: int, seed: int) -> float:
    from headstart.head import fit_head

    head, _, _ = fit_head(X, y, int(max(y.max(), yt.max())) + 1, cv=min(CURVE_FOLDS, k), seed=seed)
    return float((head.proba(Xt).argmax(1) == yt).mean())


def _scratch_accuracy(
    train: list[Any], val: list[Any], test: list[Any], backbone: str, seed: int, epochs: int | None
) -> float:
    """Train the backbone's architecture from random init (headstart.train, strategy "scratch")."""
    from headstart.train import fit

    with tempfile.TemporaryDirectory(prefix="headstart-curve-") as tmp:
        manifest = Path(tmp) / "subset.csv"
        with open(manifest, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "split"])
            for split, items in (("train", train), ("val", val), ("test", test)):
                w.writerows((str(Path(it.path).resolve()), it.label, split) for it in items)
        report = fit(
            manifest,
            backbone=backbone,
            strategy="scratch",
            seed=seed,
            epochs=epochs,
            save=False,
            progress=False,
        )
    return float(report.metrics["test"]["accuracy"])


def label_curve(
    data: str | Path,
    backbone: str = "efficientnet_lite0",
    *,
    seeds: int = 3,
    sizes: list[int] | None = None,
    baseline: str = "auto",
    scratch_epochs: int | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    backend: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Compute the curve (and write curve.json + curve.png into `out` when given).

    baseline: "scratch" (headstart.train), "pixels" (logistic regression on raw 16x16 pixels), "none",
    or "auto" (scratch when headstart.train is installed, else pixels). Returns the curve.json object:
    {"labels_per_class": [...], "points": [{"method", "labels_per_class", "seed", "test_accuracy"}],
    "backbone", "baseline", "n_test", "chance"}.
    """
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.features import embed

    if baseline == "auto":
        try:
            import headstart.train  # noqa: F401

            baseline = "scratch"
        except ImportError:
            baseline = "pixels"
    if baseline not in ("scratch", "pixels", "none"):
        raise HeadstartError(f"unknown baseline {baseline!r}", fix="use scratch, pixels, none or auto")
    ds = load_dataset(data, seed=seed)
    if baseline == "pixels" and ds.modality != "image":
        raise HeadstartError("the pixels baseline needs images", fix="use --baseline scratch or none")
    bb = create_backbone(backbone)
    feats = embed(bb, [it.source for it in ds.items], backend=backend, progress=progress)
    ds = ds.drop(feats.bad)
    row = {p: i for i, p in enumerate(feats.paths)}
    index = {c: i for i, c in enumerate(ds.classes)}
    train = ds.split("train")
    test = ds.split("test") or ds.split("val")
    if not test:
        raise HeadstartError(f"{data} has no test or val split to measure on", fix="give a test split")
    y = np.array([index[it.label] for it in train])
    yt = np.array([index[it.label] for it in test])
    X = feats.X[[row[it.source] for it in train]]
    Xt = feats.X[[row[it.source] for it in test]]
    present = np.bincount(y, minlength=len(ds.classes))
    if sizes is None:
        sizes = label_sizes(int(present.min()))
    too_big = [k for k in sizes if k > present.min()]
    if too_big or not sizes:
        raise HeadstartError(
            f"labels per class {too_big or sizes} not available: the smallest class has {present.min()} "
            "training items",
            fix=f"use sizes up to {present.min()}",
        )
    P = Pt = None
    if baseline == "pixels":
        P, Pt = _pixels([it.source for it in train]), _pixels([it.source for it in test])
    points = []
    for k in sizes:
        for s in range(seed, seed + seeds):
            idx = subsample(y, k, s)
            points.append(
                {
                    "method": PROBE,
                    "labels_per_class": k,
                    "seed": s,
                    "test_accuracy": _probe_accuracy(X[idx], y[idx], Xt, yt, k, s),
                }
            )
            if P is not None and Pt is not None:
                acc = _probe_accuracy(P[idx], y[idx], Pt, yt, k, s)
                points.append({"method": PIXELS, "labels_per_class": k, "seed": s, "test_accuracy": acc})
            elif baseline == "scratch":
                acc = _scratch_accuracy(
                    [train[i] for i in idx], ds.split("val"), test, backbone, s, scratch_epochs
                )
                points.append({"method": SCRATCH, "labels_per_class": k, "seed": s, "test_accuracy": acc})
    curve = {
        "labels_per_class": sizes,
        "points": points,
        "backbone": bb.name,
        "baseline": baseline,
        "n_test": len(yt),
        "chance": 1.0 / len(ds.classes),
    }
    if out is not None:
        write_curve(curve, out)
    return curve


def summarise(curve: dict[str, Any]) -> dict[str, list[tuple[int, float, float]]]:
    """{method: [(labels per class, mean accuracy, std over seeds)]}."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    methods = list(dict.fromkeys(p["method"] for p in curve["points"]))
    for m in methods:
        for k in curve["labels_per_class"]:
            accs = [
                p["test_accuracy"] for p in curve["points"] if p["method"] == m and p["labels_per_class"] == k
            ]
            if accs:
                out.setdefault(m, []).append((k, float(np.mean(accs)), float(np.std(accs))))
    return out


def write_curve(curve: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """curve.json and curve.png (mean ± std over seeds per method) into the folder `out`."""
    import io

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from headstart.fileio import atomic_write_bytes, atomic_write_json

    folder = Path(out)
    json_path = atomic_write_json(folder / "curve.json", curve)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for method, pts in summarise(curve).items():
        ks, mean, std = (np.array(v) for v in zip(*pts, strict=True))
        label = f"{method} ({curve.get('backbone')})" if method == PROBE else method
        ax.plot(ks, mean, marker="o", label=label)
        ax.fill_between(ks, mean - std, mean + std, alpha=0.2)
    if curve.get("chance"):
        ax.axhline(curve["chance"], color="grey", linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(curve["labels_per_class"], [str(k) for k in curve["labels_per_class"]])
    ax.set_xlabel("labels per class")
    ax.set_ylabel(f"test accuracy (n={curve.get('n_test')})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    png_path = atomic_write_bytes(folder / "curve.png", buf.getvalue())
    return json_path, png_path
