"""Entity-level scores of tagged sentences, as seqeval defines them, with bootstrap intervals over sentences.

An entity is a chunk of IOB2 tags (conlleval's rules, seqeval's default mode): B-X starts one; I-X
continues an X chunk and starts one after O, at the start of a sentence or after another type. A predicted
entity counts only when its type and its span both match a gold one: a right span with the wrong type, or
the right type with a wrong boundary, is both a false positive and a false negative. Precision, recall and
F1 are micro over entities (and per type); token accuracy counts every token, O included. Each score gets
a percentile bootstrap 95 % interval over sentences (the unit a new test set would be drawn in).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from headstart.intervals import N_BOOT, bootstrap_indices


def chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) of every entity, `end` exclusive."""
    out: list[tuple[str, int, int]] = []
    typ: str | None = None
    start = 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, t = tag.partition("-") if tag != "O" else ("O", "", "")
        if typ is not None and (prefix in ("O", "B") or t != typ):
            out.append((typ, start, i))
            typ = None
        if prefix == "B" or (prefix == "I" and typ is None):
            typ, start = t, i
    return out


def _prf(tp: np.ndarray, n_pred: np.ndarray, n_gold: np.ndarray) -> tuple[np.ndarray, ...]:
    """Precision, recall, F1 (0 where undefined, as seqeval's zero_division default)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 0.0)
        r = np.where(n_gold > 0, tp / np.maximum(n_gold, 1), 0.0)
        f = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)
    return p, r, f


def sentence_counts(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], types: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(entities (n, T, 3): true positives, predicted, gold per sentence and type; tokens (n, 2): correct,
    total per sentence)."""
    index = {t: i for i, t in enumerate(types)}
    ents = np.zeros((len(gold), len(types), 3), dtype=np.int64)
    toks = np.zeros((len(gold), 2), dtype=np.int64)
    for n, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {n}: {len(g)} gold tags but {len(p)} predicted")
        gs, ps = set(chunks(g)), set(chunks(p))
        for col, found in ((0, gs & ps), (1, ps), (2, gs)):
            for typ, _, _ in found:
                ents[n, index[typ], col] += 1
        toks[n] = (sum(a == b for a, b in zip(g, p, strict=True)), len(g))
    return ents, toks


def _scores(ents: np.ndarray, toks: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of summed counts; ents (..., T, 3), toks (..., 2): leading axes are kept (resamples)."""
    micro = ents.sum(-2)
    p, r, f = _prf(micro[..., 0], micro[..., 1], micro[..., 2])
    tp, tr, tf = _prf(ents[..., 0], ents[..., 1], ents[..., 2])
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(toks[..., 1] > 0, toks[..., 0] / np.maximum(toks[..., 1], 1), np.nan)
    return {"precision": p, "recall": r, "f1": f, "token_accuracy": acc, "tp": tp, "tr": tr, "tf": tf}


def _sentence_f1(ents: np.ndarray) -> np.ndarray:
    tp, n_pred, n_gold = (ents[:, :, c].sum(1) for c in range(3))
    both = n_pred + n_gold
    return np.where(both > 0, 2 * tp / np.maximum(both, 1), 1.0)


def tag_scores(
    gold: Sequence[Sequence[str]],
    pred: Sequence[Sequence[str]],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Entity P/R/F1 (micro and per type), token accuracy, and (n_boot > 0) a 95 % interval for each."""
    types = sorted({t for seq in (*gold, *pred) for t, _, _ in chunks(seq)})
    ents, toks = sentence_counts(gold, pred, types)
    point = _scores(ents.sum(0), toks.sum(0))
    ci: dict[str, np.ndarray] = {}
    if n_boot > 0 and len(gold):
        idx = bootstrap_indices(len(gold), n_boot, seed)
        # Each resample as counts per sentence: the resampled sums are one matrix product.
        w = np.bincount((np.arange(n_boot)[:, None] * len(gold) + idx).ravel(), minlength=n_boot * len(gold))
        w = w.reshape(n_boot, len(gold)).astype(np.float64)
        boot = _scores(
            (w @ ents.reshape(len(gold), -1)).reshape(n_boot, len(types), 3), w @ toks.astype(np.float64)
        )
        ci = {k: np.nanpercentile(v, [2.5, 97.5], axis=0) for k, v in boot.items()}

    def interval(key: str, j: int | None = None) -> list[float] | None:
        if key not in ci:
            return None
        lo, hi = ci[key] if j is None else ci[key][:, j]
        return [float(lo), float(hi)]

    out: dict[str, Any] = {
        "entity_precision": float(point["precision"]),
        "entity_precision_ci": interval("precision"),
        "entity_recall": float(point["recall"]),
        "entity_recall_ci": interval("recall"),
        "entity_f1": float(point["f1"]),
        "entity_f1_ci": interval("f1"),
        "token_accuracy": float(point["token_accuracy"]),
        "token_accuracy_ci": interval("token_accuracy"),
        "n_sentences": len(gold),
        "n_tokens": int(toks[:, 1].sum()),
        "n_entities": int(ents[:, :, 2].sum()),
        "n_predicted": int(ents[:, :, 1].sum()),
        "per_type": {},
        # Each sentence's entity F1 (1 when it has no entity and none is predicted): what auto pairs
        # across strategies, sentence by sentence (headstart.shapes.auto).
        "item_scores": _sentence_f1(ents).tolist(),
    }
    for j, t in enumerate(types):
        out["per_type"][t] = {
            "precision": float(point["tp"][j]),
            "precision_ci": interval("tp", j),
            "recall": float(point["tr"][j]),
            "recall_ci": interval("tr", j),
            "f1": float(point["tf"][j]),
            "f1_ci": interval("tf", j),
            "support": int(ents[:, j, 2].sum()),
            "predicted": int(ents[:, j, 1].sum()),
        }
    return out


def spans(tokens: Sequence[str], tags: Sequence[str]) -> list[dict[str, Any]]:
    """The entities of a tagged sentence as {"text", "type", "start", "end"} (word offsets, end excluded)."""
    return [{"text": " ".join(tokens[s:e]), "type": t, "start": s, "end": e} for t, s, e in chunks(tags)]
