"""Learning-rate range test (Smith 2017, fastai's lr_find) for the head, on cached embeddings.

The head's rate grows exponentially each step while the loss is smoothed; the suggestion is the rate of the
steepest descent of the smoothed loss, capped at a tenth of the rate with the lowest loss. Recipes derive
the backbone groups' rates from the head's (`--lr auto`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def lr_find(
    E: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    start: float = 1e-6,
    end: float = 10.0,
    steps: int = 100,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Range test of AdamW on a linear head over embeddings `E`; returns lrs, losses and a suggestion."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # Raw embeddings, as the recipes' head sees them, so the suggested rate applies as is.
    X = torch.from_numpy(np.ascontiguousarray(E, dtype=np.float32))
    t = torch.from_numpy(np.asarray(y, dtype=np.int64))
    head = nn.Linear(X.shape[1], n_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(head.parameters(), lr=start, weight_decay=0.0)
    mult = (end / start) ** (1 / max(1, steps - 1))
    lrs, losses = [], []
    avg, best = 0.0, math.inf
    for step in range(steps):
        idx = torch.randint(len(t), (min(batch_size, len(t)),), generator=gen)
        loss = F.cross_entropy(head(X[idx]), t[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        avg = 0.9 * avg + 0.1 * loss.item()  # float(loss) warns on a tensor that requires grad
        smooth = avg / (1 - 0.9 ** (step + 1))
        lrs.append(opt.param_groups[0]["lr"])
        losses.append(smooth)
        best = min(best, smooth)
        if step > 10 and (smooth > 4 * best or not math.isfinite(smooth)):
            break
        for g in opt.param_groups:
            g["lr"] *= mult
    lr_arr, loss_arr = np.log10(np.asarray(lrs)), np.asarray(losses)
    slope = np.gradient(loss_arr, lr_arr) if len(loss_arr) > 2 else np.zeros_like(loss_arr)
    steepest = float(10 ** lr_arr[int(np.argmin(slope))])
    at_min = float(10 ** lr_arr[int(np.argmin(loss_arr))])
    suggestion = min(steepest, at_min / 10)
    return {
        "lrs": lrs,
        "losses": losses,
        "steepest": steepest,
        "min_loss_lr": at_min,
        "suggestion": suggestion,
        "seconds": time.perf_counter() - t0,
    }


def plot_lr_find(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from headstart.fileio import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"], color="#2b6cb0")
    ax.axvline(result["suggestion"], color="#c05621", ls="--", label=f"suggested {result['suggestion']:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("head learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.set_title("learning-rate range test")
    ax.legend()
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
