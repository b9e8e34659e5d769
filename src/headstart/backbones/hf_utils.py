"""What every transformers-based family shares: finding a model's folder, reading its small files, loading
it with headstart's errors, its tokenizer, its license.

Nothing here imports transformers at module level (`headstart backbones` and routing `hf:` names read
only small JSON files); the functions that load models import it when called.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError
from headstart.fileio import sha256_file

if TYPE_CHECKING:
    import torch

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "merges.txt")


def quiet_transformers() -> None:
    """Loading is headstart's to report: no per-tensor progress bars or info chatter from transformers."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise HeadstartError("hf: backbones need transformers", fix="pip install transformers") from e


@contextmanager
def loading(ref: str) -> Iterator[None]:
    """Turn transformers' load failures (a missing folder, a config it cannot read) into one clear error."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise HeadstartError(
            f"cannot load transformers model {ref!r}: {str(e).splitlines()[0]}",
            fix="give a folder made by save_pretrained, or a hub id already in the local cache "
            "(this machine may have no network)",
        ) from e


def first_tensor(out: Any) -> torch.Tensor:
    """The hidden states of a transformers module's output (a tuple, a ModelOutput or a tensor)."""
    if isinstance(out, tuple | list):
        return out[0]
    return getattr(out, "last_hidden_state", out)


def read_config(folder: Path) -> dict[str, Any]:
    """A model folder's config.json as a dict ({} when missing or unreadable)."""
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def hub_snapshot(ref: str) -> Path | None:
    """The local hub-cache folder of `ref` when its config.json is cached (never downloads)."""
    if ref.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(ref, "config.json")
    except Exception:
        return None
    return Path(path).parent if isinstance(path, str) else None


def local_folder(ref: str) -> Path | None:
    """`ref` as a local folder: a directory path, or a hub id whose files are in the local cache."""
    folder = Path(ref).expanduser()
    return folder if folder.is_dir() else hub_snapshot(ref)


def weights_file(folder: Path | None) -> Path | None:
    return next((folder / f for f in WEIGHT_FILES if folder and (folder / f).is_file()), None)


def license_of(folder: Path | None) -> str:
    """The `license:` of a model card's front matter (README.md), else a pointer to the model page."""
    readme = folder / "README.md" if folder else None
    if readme and readme.is_file():
        m = re.search(r"^license:\s*(\S+)", readme.read_text(errors="replace"), re.MULTILINE)
        if m:
            return m.group(1)
    return "see the model page"


def package_folder(module: str, sub: str = "") -> Path | None:
    """A data folder inside an installed package, found without importing it (imports may need extras)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    return folder if folder.exists() else None


def tokenizer_identity(folder: Path) -> str:
    """sha256 over the tokenizer files of a folder: what a text backbone's cache key names."""
    h = hashlib.sha256()
    for name in (*TOKENIZER_FILES, "special_tokens_map.json"):
        f = folder / name
        if f.is_file():
            h.update(name.encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]


def load_tokenizer(src: str, max_length: int, **kwargs: Any) -> tuple[Any, int, int]:
    """(a truncating `tokenizers.Tokenizer` copy of the model's tokenizer, pad id, model max length)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:
        raise HeadstartError(
            f"cannot load the tokenizer of {src}: {str(e).splitlines()[0]}",
            fix="save the tokenizer beside the model (tokenizer.save_pretrained(folder))",
        ) from e
    fast = getattr(tok, "backend_tokenizer", None)
    if not isinstance(fast, Tokenizer):
        raise HeadstartError(
            f"{src} has no fast (Rust) tokenizer", fix="save a tokenizer.json with the model"
        )
    # This tokenizer instance is ours alone, so its padding/truncation settings can change in place.
    fast.no_padding()
    fast.enable_truncation(max_length)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return fast, int(pad), int(getattr(tok, "model_max_length", max_length) or max_length)
