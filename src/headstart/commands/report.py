"""`headstart report RUN`: write the run's self-contained HTML report and print where it is."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from headstart.commands import console, print_json, verb
from headstart.config import json_option, option


@dataclass(kw_only=True)
class ReportOptions:
    """write a self-contained HTML report of a run folder (data, curves, errors, model card)"""

    run: Path = option(help="a run folder written by probe, fit or evaluate")
    out: Path | None = option(None, help="where to write the page (default: RUN/report.html)")
    open_path_only: bool = option(
        False, help="print only the report's path (for `xdg-open $(headstart report RUN --open-path-only)`)"
    )
    json: bool = json_option("machine-readable output")


@verb(ReportOptions)
def cmd_report(args: argparse.Namespace) -> int:
    from headstart.fileio import atomic_write_text
    from headstart.report import REPORT_FILE, build_report

    report = build_report(args.run)
    path = args.out if args.out is not None else args.run / REPORT_FILE
    atomic_write_text(path, report.html)
    path = path.resolve()
    if args.open_path_only:
        print(path)
        return 0
    if args.json:
        print_json(
            {"path": str(path), "bytes": len(report.html.encode("utf-8")), "sections": report.sections}
        )
        return 0
    from rich.markup import escape

    con = console()
    shown = [s for s, ok in report.sections.items() if ok]
    missing = [s for s, ok in report.sections.items() if not ok]
    con.print(f"sections with data: {', '.join(shown)}")
    if missing:
        con.print(f"[dim]not computed: {', '.join(missing)} (see the page for the command)[/dim]")
    con.print(f"report written to [bold]{escape(str(path))}[/bold]")
    return 0
