"""One module per CLI verb group: each defines `register(subparsers)` and adds its own parsers.

`headstart.cli` discovers the modules here, so adding a verb never edits a shared file. Modules must stay
cheap to import (heavy libraries are imported inside the command functions).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any


def register_all(sub: argparse._SubParsersAction) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)


def add_backend_flags(parser: argparse.ArgumentParser, *, backend: bool = True) -> None:
    """--backend (what runs the backbone; `backend=False` for verbs that only train) and --device (where):
    the same on every verb that runs a network. The device is checked before any work by the verb's API
    function (headstart.features.forward_device)."""
    from headstart.train.engine import BACKEND_HELP, add_device_flag

    if backend:
        parser.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto", help=BACKEND_HELP)
    add_device_flag(parser)


def run_folder(ref: str | Path, store: str | Path | None = None) -> tuple[Path, bool]:
    """(folder, is a stored version) of a verb's RUN argument: a run folder as given, or a model-store
    reference (NAME, NAME:v2, NAME@alias) verified against its manifest first. Every verb that reads a
    run resolves it here, so each accepts the same references."""
    from headstart.errors import HeadstartError
    from headstart.store import CARD_FILE, MANIFEST_FILE, ModelStore

    text = str(ref)
    path = Path(text)
    if path.is_dir():
        return path, (path / MANIFEST_FILE).is_file() and (path / CARD_FILE).is_file()
    if "/" in text or path.suffix:
        return path, False  # looks like a path: loading it says it is missing
    model_store = ModelStore(store)
    try:
        return model_store.verify(*model_store.resolve(text)), True
    except HeadstartError as e:
        raise HeadstartError(
            f"{text!r} is not a run folder, and not usable as a stored model: {e.message}", fix=e.fix
        ) from e


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


def options(args: argparse.Namespace, *names: str, **extra: Any) -> dict[str, Any]:
    """Keyword arguments of a verb's API call named like its flags (`--keep-duplicates` -> keep_duplicates),
    plus `progress` (off under --json) and what the command decides itself (`extra`)."""
    return {"progress": not args.json, **{n: getattr(args, n) for n in names}, **extra}


# Width for output that is not a terminal (piped, redirected, captured): rich would fit it to 80 columns and
# cut backbone, model and alias names to "…"; a reader of a pipe (grep, a file, `less -S`) wants whole lines.
PIPED_WIDTH = 10_000


def console() -> Any:
    """The one rich console of the CLI: fitted to the terminal, or as wide as each line when piped."""
    from rich.console import Console

    con = Console(highlight=False)
    if not con.is_terminal:
        con.width = PIPED_WIDTH
    return con


def print_data_notes(con: Any, data: dict[str, Any], limit: int = 50) -> None:
    """What the data reader left out or changed, as probe and fit show it (a run's data.json has it all):
    skipped files and folders with the reason, inputs used only in part, warnings about the data."""
    from rich.markup import escape

    for title, listed in (
        ("skipped {n} file(s) or folder(s)", data.get("skipped") or {}),
        ("{n} input(s) used only in part", data.get("notes") or {}),
    ):
        if not listed:
            continue
        con.print(f"[yellow]{title.format(n=len(listed))}:[/yellow]")
        rows = sorted(listed.items())
        for p, r in rows[:limit]:
            con.print(f"  {p}: {r}", markup=False)
        if len(rows) > limit:
            con.print(f"  ... and {len(rows) - limit} more (all in the run's data.json)")
    for w in data.get("warnings") or []:
        con.print(f"[yellow]warning:[/yellow] {escape(w)}")
