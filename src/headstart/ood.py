"""Out-of-distribution scores: how well a model's confidence separates its own items from a folder of
other data (`headstart evaluate RUN --ood FOLDER`): AUROC of the max softmax probability and of the energy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.calibration import softmax
from headstart.errors import HeadstartError


def auroc(positive: Sequence[float] | np.ndarray, negative: Sequence[float] | np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted half (Mann-Whitney U)."""
    from sklearn.metrics import roc_auc_score

    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    truth = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    return float(roc_auc_score(truth, np.concatenate([pos, neg])))


def energy_score(logits: np.ndarray) -> np.ndarray:
    """Negative free energy, logsumexp(logits): higher means more in-distribution (Liu et al. 2020)."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def visible_files(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted, except hidden ones and those inside hidden folders."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def ood_scores(
    model: Any,
    path: Path,
    id_logits: np.ndarray,
    T: float,
    *,
    backend: str,
    progress: bool,
    device: str = "auto",
) -> dict[str, Any]:
    """How well the model's confidence tells its own items (`id_logits`) from the files under `path`:
    AUROC of the max softmax probability (at temperature T) and of the energy; with the accuracy on the
    files that sit in a folder named like a known class."""
    if not path.is_dir():
        raise HeadstartError(f"--ood {path} is not a folder", fix="give a folder of files (any layout)")
    files = visible_files(path)
    if not files:
        raise HeadstartError(f"--ood {path} has no files", fix="give a folder of out-of-distribution files")
    z, kept, bad = model.logits([str(f) for f in files], backend=backend, progress=progress, device=device)
    out: dict[str, Any] = {"path": str(path), "n": len(kept), "n_skipped": len(bad)}
    # A file inside a folder named like a known class is labeled with it; anything else is unlabeled.
    t, known = model.targets([files[i].parent.name for i in kept])
    if known.any():
        out["n_labeled"] = int(known.sum())
        out["accuracy"] = float((z[known].argmax(1) == t[known]).mean())
    out["auroc_msp"] = auroc(softmax(id_logits / T).max(1), softmax(z / T).max(1)) if len(z) else None
    out["auroc_energy"] = auroc(energy_score(id_logits), energy_score(z)) if len(z) else None
    return out
