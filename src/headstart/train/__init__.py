"""The fine-tuning engine: one loop (loop.Trainer) runs any recipe (headstart.recipes).

Names load lazily: the submodules import torch, and `headstart.train.engine`'s flag checks are read by
the CLI's parsers, which must stay cheap to build.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headstart.train.api import FitReport, fit
    from headstart.train.data import Split
    from headstart.train.loop import Trainer

__all__ = ["FitReport", "Split", "Trainer", "fit"]
_HOMES = {"FitReport": "api", "fit": "api", "Split": "data", "Trainer": "loop"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
