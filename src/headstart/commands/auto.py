"""`headstart auto`: leakage check, strategy comparison, evaluation, registration and report in one go."""

from __future__ import annotations

import argparse
from pathlib import Path

from headstart.commands import console, fmt, options, print_json
from headstart.commands.compare import add_comparison_flags, parse_budget


def cmd_auto(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from headstart.pipeline import auto

    con = console()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None
    say = (lambda msg: None) if args.json else (lambda msg: con.print(f"[yellow]{escape(msg)}[/yellow]"))
    names = ("backbone", "out", "store", "name", "alias", "seed", "keep_duplicates", "device")
    kw = options(args, *names, budget_s=args.budget, strategies=strategies, curve=not args.no_curve, say=say)
    result = auto(args.data, **kw)
    if args.json:
        print_json(result)
        return 0
    from headstart.commands.compare import print_compare

    print_compare(result["comparison"], str(args.data), args.budget)
    ev = result["evaluation"]
    if ev.get("calibration_status") == "skipped":
        con.print(
            f"[yellow]calibration not applied (T = 1):[/yellow] {escape(str(ev.get('calibration_reason')))}; "
            f"ECE {fmt(ev['ece_before'])}"
        )
    else:
        con.print(
            f"calibration: ECE {fmt(ev['ece_before'])} -> {fmt(ev['ece_after'])} "
            f"(temperature {fmt(ev['temperature'], 2)})"
        )
    reg = result["registered"]
    con.print(
        f"registered as [bold]{reg['name']}:v{reg['version']}[/bold] (alias {reg['alias']}) in "
        f"{escape(reg['store'])}; serve it with `headstart serve {reg['name']}@{reg['alias']}`"
    )
    con.print(f"report: [bold]{escape(result['report'])}[/bold]")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser(
        "auto",
        help="the whole job: leakage check, strategy comparison, calibrated evaluation, registration, report",
        description="Check the splits for leakage, compare the probe, the from-scratch baseline and the "
        "fine-tuning strategies under one time budget, evaluate and calibrate the recommended run, register "
        "it in the model store and write its HTML report.",
    )
    a.add_argument("data", type=Path, help="dataset folder or manifest (images, text or audio)")
    a.add_argument("--backbone", default="efficientnet_lite0")
    a.add_argument("--budget", type=parse_budget, default=parse_budget("5m"), help="for the comparison (5m)")
    a.add_argument("--strategies", help="comma-separated strategies instead of the automatic choice")
    a.add_argument("--out", type=Path, default=Path("runs/auto"), help="output folder (runs/auto)")
    a.add_argument(
        "--store", type=Path, help="model store (default: $HEADSTART_MODELS or ./headstart-models)"
    )
    a.add_argument("--name", help="model name in the store (default: the data folder's name)")
    a.add_argument("--alias", default="production", help="alias pointed at the new version")
    a.add_argument("--no-curve", action="store_true", help="skip the label-efficiency curve")
    add_comparison_flags(a)
    a.set_defaults(func=cmd_auto)
