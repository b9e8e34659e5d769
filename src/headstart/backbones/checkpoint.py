"""Loading weights files safely: safetensors, or torch.load with weights_only=True. Never pickle."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from headstart.errors import HeadstartError


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors`, or from a `.pt`/`.pth`/`.bin` that holds only tensors."""
    path = Path(path)
    if not path.is_file():
        raise HeadstartError(f"weights file not found: {path}", fix="check the path")
    if path.stat().st_size == 0:
        raise HeadstartError(f"weights file is empty: {path}", fix="re-download or re-export it")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise HeadstartError(f"cannot read safetensors file {path}: {e}", fix="re-export it") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise HeadstartError(
            f"{path} holds more than tensors, and headstart does not unpickle arbitrary objects",
            fix="save only the state dict (torch.save(model.state_dict(), ...)) or convert to .safetensors",
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise HeadstartError(f"cannot read {path}: {e}", fix="the file looks truncated or corrupt") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HeadstartError(f"{path} is not a state dict of tensors", fix="save model.state_dict()")
    return obj


def check_published_sha256(
    path: str | Path, actual: str | None, published: str | None, name: str, fix: str
) -> None:
    """Refuse installed weights whose sha256 is not the one published for `name` (a corrupt or substituted
    file); `published` None (local weights, a test model) checks nothing."""
    if published and actual != published:
        raise HeadstartError(
            f"{path} does not match the published sha256 of {name} "
            f"({(actual or '')[:12]}… != {published[:12]}…)",
            fix=fix,
        )
