"""Atomic training checkpoints: everything needed to continue exactly where a crashed run stopped.

A checkpoint holds the model, the optimizer with all its parameter groups, the scheduler, the phase and
epoch, the best weights so far and the history. It is written to a temp file and renamed, so a kill during
the write leaves the previous checkpoint intact; it loads with `weights_only=True`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from headstart.errors import HeadstartError
from headstart.fileio import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    path = folder / CHECKPOINT_FILE
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise HeadstartError(
            f"cannot read checkpoint {path}: {e}", fix="delete it to start over, or drop --resume"
        ) from e
