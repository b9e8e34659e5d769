"""Label-efficiency curve: test accuracy of the probe against labels per class, next to a baseline.

The probe is fitted on cached embeddings (one backbone pass for the whole curve) from k seeded labels per
class of the training split, with its L2 strength chosen by cross-validation on those k labels only (the
validation split is not used, so small k is not flattered). The baseline on the same axes and the same
subsets is, by default (`auto`), the modality's no-backbone model, what one would try before any pretrained
weights, each labelled "(no backbone)":
- images: "pixels", logistic regression on the images reduced to 16x16 RGB;
- text: "tfidf", TF-IDF of word 1-2 grams and character 2-4 grams (fitted on the k labelled texts only),
  logistic regression with C chosen by the same cross-validation;
- audio: "logmel", the mean and standard deviation over time of 64 log-mel bands, logistic regression.
Or "scratch": the backbone's architecture trained from random init with headstart.train (slow on a CPU),
or "none". A baseline that does not fit the data's modality is refused before any backbone work.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError
from headstart.runs import CURVE_FILE

LADDER = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
PROBE = "probe"
PIXELS = "pixels (no backbone)"
TFIDF = "tfidf (no backbone)"
LOGMEL = "log-mel (no backbone)"
SCRATCH = "scratch"
# The no-backbone baseline `auto` picks for each modality, and the method name its points carry.
BASELINES = {"image": "pixels", "text": "tfidf", "audio": "logmel"}
BASELINE_METHODS = {"pixels": PIXELS, "tfidf": TFIDF, "logmel": LOGMEL}
BASELINE_CHOICES = ("auto", *BASELINE_METHODS, "scratch", "none")
PIXEL_SIDE = 16  # pixels baseline: images reduced to 16x16 RGB (768 numbers)
# log-mel baseline: 25 ms Hann windows every 10 ms at 16 kHz, 64 mel bands up to 8 kHz
LOGMEL_RATE, LOGMEL_WINDOW, LOGMEL_HOP, LOGMEL_BANDS = 16_000, 400, 160, 64
# Inverse L2 strengths tried for the TF-IDF baseline (its rows are unit length, so C is larger than a probe's)
TFIDF_CS = (1.0, 10.0, 100.0)
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


def check_baseline_name(baseline: str) -> None:
    if baseline not in BASELINE_CHOICES:
        raise HeadstartError(
            f"unknown curve baseline {baseline!r}", fix=f"use one of {', '.join(BASELINE_CHOICES)}"
        )


def resolve_baseline(baseline: str, modality: str, data: str | Path) -> str:
    """The baseline `baseline` means for `modality` data ("auto": the modality's no-backbone one).

    Raises HeadstartError, naming the baseline and the data, when it cannot run on them: callers call this
    before any backbone work, so a wrong choice costs nothing.
    """
    check_baseline_name(baseline)
    fits = BASELINES.get(modality)
    if baseline == "auto":
        if fits is None:
            raise HeadstartError(
                f"no no-backbone curve baseline for {modality} data ({data})",
                fix="use --baseline scratch or none",
            )
        return fits
    if baseline in BASELINE_METHODS and baseline != fits:
        needs = next(m for m, b in BASELINES.items() if b == baseline)
        raise HeadstartError(
            f"the {baseline} curve baseline needs {needs} data; {data} holds {modality} data",
            fix=f"use --baseline {fits or 'scratch'} (or auto, which picks it), scratch or none",
        )
    return baseline


def check_backbone_modality(backbone: Any, modality: str, data: str | Path) -> None:
    """Refuse a backbone that reads another modality than the data holds (before embedding anything)."""
    if backbone.modality != modality:
        raise HeadstartError(
            f"{data} holds {modality} data but {backbone.name} is a backbone for {backbone.modality}",
            fix=f"pick a {modality} backbone (`headstart backbones` lists them)",
        )


def _mel_filters(n_fft: int, rate: int, bands: int) -> np.ndarray:
    """(bands, n_fft // 2 + 1) triangular filters, evenly spaced on the HTK mel scale from 0 to rate / 2."""
    mel = np.linspace(0.0, 2595.0 * np.log10(1.0 + rate / 2 / 700.0), bands + 2)
    edges = 700.0 * (10 ** (mel / 2595.0) - 1.0)
    freqs = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up, down = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def logmel_stats(path: str) -> np.ndarray:
    """Mean and standard deviation over time of each log-mel band of a clip (2 * LOGMEL_BANDS numbers)."""
    from headstart.data.audio import read_audio

    x = read_audio(path, sample_rate=LOGMEL_RATE).samples
    if len(x) < LOGMEL_WINDOW:  # a clip shorter than one window is one zero-padded frame
        x = np.pad(x, (0, LOGMEL_WINDOW - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, LOGMEL_WINDOW)[::LOGMEL_HOP]
    power = np.abs(np.fft.rfft(frames * np.hanning(LOGMEL_WINDOW).astype(np.float32), axis=1)) ** 2
    logmel = np.log10(np.maximum(power @ _mel_filters(LOGMEL_WINDOW, LOGMEL_RATE, LOGMEL_BANDS).T, 1e-10))
    return np.concatenate([logmel.mean(axis=0), logmel.std(axis=0)]).astype(np.float32)


def _file_features(baseline: str, sources: list[str], progress: bool) -> np.ndarray:
    """Per-item features of the file-based baselines (pixels, logmel), read once for the whole curve."""
    from headstart.errors import BadInput
    from headstart.progress import progress_bar

    if baseline == "pixels":
        return _pixels(sources)
    out = np.zeros((len(sources), 2 * LOGMEL_BANDS), np.float32)
    with progress_bar(len(sources), "curve baseline: log-mel", enabled=progress) as advance:
        for i, src in enumerate(sources):
            try:
                out[i] = logmel_stats(src)
            except BadInput as e:  # the backbone read it, so this is rare: name the clip
                raise HeadstartError(
                    f"log-mel baseline: {e}", fix="remove the clip or use --baseline none"
                ) from e
            advance(1)
    return out


def _tfidf_accuracy(
    texts: list[str], y: np.ndarray, test_texts: list[str], yt: np.ndarray, k: int, seed: int
) -> float:
    """TF-IDF (word 1-2 grams + character 2-4 grams) fitted on the k labelled texts per class, then logistic
    regression with C chosen by stratified CV on them, as the probe's is."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    words = TfidfVectorizer(ngram_range=(1, 2)).build_analyzer()
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)).build_analyzer()
    vec = TfidfVectorizer(analyzer=lambda t: [*words(t), *chars(t)], sublinear_tf=True)
    try:
        X = vec.fit_transform(texts)
    except ValueError as e:  # "empty vocabulary": nothing but whitespace in the subset
        raise HeadstartError(f"tfidf baseline: {e}", fix="use --baseline none") from e
    Xt = vec.transform(test_texts)

    def fitted(C: float, rows: np.ndarray) -> LogisticRegression:
        return LogisticRegression(C=C, max_iter=1000).fit(X[rows], y[rows])

    # One BLAS thread: these fits are small, and on a busy machine extra threads made them 3-10x slower.
    with threadpool_limits(1):
        C = 10.0
        folds = min(CURVE_FOLDS, k)
        if folds >= 2:
            split = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
            scores = [
                np.mean([(fitted(c, tr).predict(X[te]) == y[te]).mean() for tr, te in split])
                for c in TFIDF_CS
            ]
            C = TFIDF_CS[int(np.argmax(scores))]  # ties go to the stronger regularisation
        return float((fitted(C, np.arange(len(y))).predict(Xt) == yt).mean())


def _probe_accuracy(X: np.ndarray, y: np.ndarray, Xt: np.ndarray, yt: np.ndarray, k: int, seed: int) -> float:
    from headstart.head import fit_head

    head, _, _ = fit_head(X, y, int(max(y.max(), yt.max())) + 1, cv=min(CURVE_FOLDS, k), seed=seed)
    return float((head.proba(Xt).argmax(1) == yt).mean())


def _scratch_accuracy(
    train: list[Any],
    val: list[Any],
    test: list[Any],
    backbone: str,
    seed: int,
    epochs: int | None,
    device: str = "auto",
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
            device=device,
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
    device: str = "auto",
) -> dict[str, Any]:
    """Compute the curve (and write curve.json + curve.png into `out` when given). `device`: where the
    backbone embeds and a scratch baseline trains (recorded as `device`).

    baseline: "auto" (the data's no-backbone baseline: pixels for images, tfidf for text, logmel for audio),
    one of those by name, "scratch" (headstart.train) or "none"; one that does not fit the data is refused
    before the backbone pass. Returns the curve.json object:
    {"labels_per_class": [...], "points": [{"method", "labels_per_class", "seed", "test_accuracy"}],
    "backbone", "baseline", "n_test", "chance"}.
    """
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.features import embed, forward_device
    from headstart.progress import progress_bar

    check_baseline_name(baseline)  # before reading the data
    forward_device(backend, device)
    if out is not None:
        from headstart.fileio import ensure_writable_dir

        ensure_writable_dir(out)
    ds = load_dataset(data, seed=seed)
    baseline = resolve_baseline(baseline, ds.modality, data)
    bb = create_backbone(backbone)
    check_backbone_modality(bb, ds.modality, data)
    feats = embed(bb, [it.source for it in ds.items], backend=backend, progress=progress, device=device)
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
    if baseline in ("pixels", "logmel"):
        P = _file_features(baseline, [it.source for it in train], progress)
        Pt = _file_features(baseline, [it.source for it in test], progress)
    texts = [it.source for it in train]
    test_texts = [it.source for it in test]
    points = []
    with progress_bar(len(sizes) * seeds, f"curve: {bb.name} vs {baseline}", enabled=progress) as advance:
        for k in sizes:
            for s in range(seed, seed + seeds):
                idx = subsample(y, k, s)
                acc = _probe_accuracy(X[idx], y[idx], Xt, yt, k, s)
                points.append({"method": PROBE, "labels_per_class": k, "seed": s, "test_accuracy": acc})
                if P is not None and Pt is not None:
                    acc = _probe_accuracy(P[idx], y[idx], Pt, yt, k, s)
                elif baseline == "tfidf":
                    acc = _tfidf_accuracy([texts[i] for i in idx], y[idx], test_texts, yt, k, s)
                elif baseline == "scratch":
                    acc = _scratch_accuracy(
                        [train[i] for i in idx], ds.split("val"), test, backbone, s, scratch_epochs, device
                    )
                if baseline != "none":
                    method = BASELINE_METHODS.get(baseline, SCRATCH)
                    points.append({"method": method, "labels_per_class": k, "seed": s, "test_accuracy": acc})
                advance(1)
    curve = {
        "labels_per_class": sizes,
        "points": points,
        "backbone": bb.name,
        "baseline": baseline,
        "n_test": len(yt),
        "chance": 1.0 / len(ds.classes),
        "device": feats.stats["device"],
    }
    if out is not None:
        write_curve(curve, out)
    return curve


def intervals(curve: dict[str, Any]) -> dict[str, list[list[float]]]:
    """{method: [[labels per class, lo, hi]]}: the 95 % Wilson interval of each point's mean accuracy on the
    n_test items (the test set's noise; the spread over seeds is the subsets' noise, shown beside it)."""
    from headstart.intervals import wilson

    n = int(curve.get("n_test") or 0)
    return {
        m: [[k, *wilson(round(mean * n), n)] for k, mean, _std in pts] for m, pts in summarise(curve).items()
    }


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
    json_path = atomic_write_json(folder / CURVE_FILE, {**curve, "intervals": intervals(curve)})
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
