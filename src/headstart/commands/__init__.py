"""One module per CLI verb group: each declares its verbs with `@verb(Options)` on `cmd_NAME(args)`, the
options a dataclass of `headstart.config.option` fields (a module whose verb needs more, such as nested
actions, defines `register(subparsers)` instead).

`headstart.cli` discovers the modules here, so adding a verb never edits a shared file. Modules must stay
cheap to import (heavy libraries are imported inside the command functions).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def register_all(sub: argparse._SubParsersAction) -> None:
    """Every module's verbs: those it declares with @verb, then what its own `register(sub)` adds."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            add_verbs(sub, module.__name__)
            if hasattr(module, "register"):
                module.register(sub)


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


def _finite(obj: Any) -> Any:
    """`obj` with NaN and infinities as None: --json output is strict JSON (`NaN` is not)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    from headstart.runs import to_jsonable

    print(json.dumps(_finite(to_jsonable(obj)), indent=2, default=str, allow_nan=False))


Command = Callable[[argparse.Namespace], int]
# The verbs each module declares with @verb, by module, in the order declared.
_DECLARED: dict[str, list[tuple[Command, type, dict[str, Any]]]] = {}


def verb(config: type, *, own_first: bool = False, **about: str) -> Callable[[Command], Command]:
    """Declares `cmd_NAME(args) -> int` as the verb NAME (`_` read as `-`), taking one argument per option of
    `config`: a dataclass of `headstart.config.option` fields, so each option is declared once, with its
    default and help. The first paragraph of `config`'s docstring is the verb's help, the rest its
    description (`about` overrides them: help=, description=). `own_first`: the options `config` declares
    come before those it inherits (a group shared with other verbs)."""

    def declare(func: Command) -> Command:
        _DECLARED.setdefault(func.__module__, []).append((func, config, {"own_first": own_first, **about}))
        return func

    return declare


def add_verbs(sub: argparse._SubParsersAction, module: str) -> None:
    """The parsers of the verbs `module` declares with @verb."""
    import inspect

    from headstart.config import add_options

    for func, config, about in _DECLARED.get(module, []):
        help, _, description = inspect.cleandoc(config.__doc__ or "").partition("\n\n")
        kw = {"help": help, "description": description or None, **about}
        own_first = kw.pop("own_first")
        p = sub.add_parser(func.__name__.removeprefix("cmd_").replace("_", "-"), **kw)
        add_options(p, config, own_first=own_first)
        p.set_defaults(func=func)


def api_options(args: argparse.Namespace, config: type, **extra: Any) -> dict[str, Any]:
    """Keyword arguments of a verb's API call: the options of `config` that the API takes, named as its
    parameters, plus `progress` (off under --json) and what the command decides itself (`extra`)."""
    from headstart.config import cli_fields

    given = {f.name: getattr(args, f.name) for f in cli_fields(config) if f.metadata["api"]}
    return {"progress": not args.json, **given, **extra}


def show(args: argparse.Namespace, result: Any, table: Callable[[Any], None]) -> int:
    """A verb's output: `result` as JSON under --json (its `to_dict()` when it has one), else `table(result)`
    (rich). Exit code 0."""
    if args.json:
        print_json(result.to_dict() if hasattr(result, "to_dict") else result)
    else:
        table(result)
    return 0


def print_shape_result(result: Any) -> None:
    """The plain output of a task shape's probe, fit or evaluate (headstart.shapes): its one table, then its
    lines, warnings and run folder. `result`: a ShapeReport, or evaluate's dict with the same keys."""
    from rich.markup import escape
    from rich.table import Table

    get = result.get if isinstance(result, dict) else lambda k, d=None: getattr(result, k, d)
    con = console()
    if isinstance(get("data"), dict):  # evaluate's `data` is a description (a string), not a summary
        print_data_notes(con, get("data"))
    if get("table"):
        title, columns, rows = get("table")
        t = Table(title=title)
        for c in columns:
            t.add_column(c, justify="right")
        for row in rows:
            t.add_row(*[escape(str(v)) for v in row])
        con.print(t)
    for line in get("lines") or []:
        con.print(line, markup=False)
    for w in get("warnings") or []:
        con.print(f"[yellow]warning:[/yellow] {escape(w)}")
    if get("run_dir"):
        con.print(f"run saved to [bold]{escape(str(get('run_dir')))}[/bold]")


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
