"""One module per CLI verb group: each defines `register(subparsers)` and adds its own parsers.

`headstart.cli` discovers the modules here, so adding a verb never edits a shared file. Modules must stay
cheap to import (heavy libraries are imported inside the command functions).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
from typing import Any


def register_all(sub: argparse._SubParsersAction) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: floats to `digits` places, None as "-", anything else as is."""
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def fmt_bytes(n: int | None) -> str:
    """A stored size: MB from 100 kB up, kB below, None as "-"."""
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False)
