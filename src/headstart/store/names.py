"""The names of the model store: what a model or alias may be called, and the default name of a model made
from a data folder or a run."""

from __future__ import annotations

import re
from pathlib import Path

from headstart.errors import HeadstartError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: Data folders (and manifest files) named like this say nothing about the model: `data_model_name` names
#: it after the folder they sit in.
GENERIC_FOLDER_NAMES = frozenset({"images", "data", "train", "dataset"})
GENERIC_FILE_STEMS = frozenset({"manifest", "labels", "data", "train", "dataset"})


def is_valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise HeadstartError(
            f"invalid model name {name!r}", fix="use letters, digits, '.', '_' or '-' (starting alphanumeric)"
        )
    return name


def check_name(name: str) -> str:
    """A model or alias name the store accepts, or a HeadstartError naming it (for checks before work)."""
    return _check_name(name)


def default_name(path: Path) -> str:
    """A model name from a run folder's or data folder's name; a data file (`data.csv`) gives its stem."""
    path = Path(path).resolve()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem if path.is_file() else path.name).strip("-._")
    return safe or "model"


def data_model_name(data: str | Path) -> str:
    """The default model name of a run made from `data` (auto's): the data folder's name, or its parent's
    when the folder is generically named (`emoji/images` -> `emoji`)."""
    path = Path(data).resolve()
    generic = path.stem in GENERIC_FILE_STEMS if path.is_file() else path.name in GENERIC_FOLDER_NAMES
    return default_name(path.parent if generic else path)
