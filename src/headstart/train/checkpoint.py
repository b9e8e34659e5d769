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


def load_checkpoint(folder: Path, *, mmap: bool = False) -> dict[str, Any] | None:
    """The checkpoint in `folder` (None: none there); `mmap`: its tensors are read only when used, so
    looking at its metadata costs little whatever the model's size."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise HeadstartError(
            f"cannot read checkpoint {path}: {e}", fix="delete it to start over, or drop --resume"
        ) from e


def engine_record(device: torch.device, precision: str) -> dict[str, str]:
    """What a checkpoint records of the engine that wrote it: the device type and the precision that ran."""
    return {"device": device.type, "precision": precision}


def resumed_precision(saved: dict[str, str] | None, folder: Path, device: str, asked: str) -> str | None:
    """The precision a resumed run trains in: the checkpoint's (what `auto` means on resume, so the run goes
    on as it started). Refused when this command would run on another device type (`device`) or asks
    for another precision: its optimizer state, gradient scaling and numerics belong to the checkpoint's.
    None: a checkpoint from before the engine was recorded (nothing to check)."""
    if not saved:
        return None
    if saved["device"] == device and asked in ("auto", saved["precision"]):
        return saved["precision"]
    raise HeadstartError(
        f"cannot resume from {folder / CHECKPOINT_FILE}: it was written on {saved['device']} in "
        f"{saved['precision']}, and this command would train on {device} with --precision {asked}",
        fix=f"resume with --device {saved['device']} --precision {saved['precision']}, or start over with "
        "--overwrite",
    )


def check_resume_engine(folders: list[Path], device: str, precision: str) -> None:
    """Before any work: the checkpoints in `folders` can be resumed with --device `device` and --precision
    `precision` (see `resumed_precision`)."""
    from headstart.train.engine import resolve_device

    kind = resolve_device(device).type
    for folder in folders:
        state = load_checkpoint(folder, mmap=True)
        if state is not None:
            resumed_precision(state.get("engine"), folder, kind, precision)
