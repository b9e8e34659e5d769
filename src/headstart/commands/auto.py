"""`headstart auto`: leakage check, strategy comparison, evaluation, registration and report in one go."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.commands import api_options, console, fmt, print_json, verb
from headstart.commands.compare import ComparisonOptions, strategy_list
from headstart.config import option, parse_budget
from headstart.data.targets import TASKS


@dataclass(kw_only=True)
class AutoOptions(ComparisonOptions):
    """the whole job: leakage check, strategy comparison, calibrated evaluation, registration, report

    Check the splits for leakage, compare the probe, the from-scratch baseline and the fine-tuning
    strategies under one time budget, evaluate and calibrate the recommended run, register it in the model
    store and write its HTML report.
    """

    data: Path = option(help="dataset folder or manifest (images, text or audio)")
    backbone: str = option("efficientnet_lite0")
    budget_s: float = option(300.0, flag="--budget", parse=parse_budget, help="for the comparison (5m)")
    strategies: list[str] | None = option(
        None, parse=strategy_list, help="comma-separated strategies instead of the automatic choice"
    )
    out: Path = option(Path("runs/auto"), help="output folder (runs/auto)")
    store: Path | None = option(None, help="model store (default: $HEADSTART_MODELS or ./headstart-models)")
    name: str | None = option(None, help="model name in the store (default: the data folder's name)")
    alias: str = option("production", help="alias pointed at the new version")
    curve: bool = option(True, help="skip the label-efficiency curve")
    task: str = option(
        "classify",
        choices=TASKS,
        help="the task shape (as fit's --task): multilabel, regress, tag and generate compare their probe "
        "(generate: the base model) with their fine-tune, item by item on val",
    )


@verb(AutoOptions, own_first=True)
def cmd_auto(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from headstart.pipeline import auto

    con = console()
    say = (lambda msg: None) if args.json else (lambda msg: con.print(f"[yellow]{escape(msg)}[/yellow]"))
    result = auto(**api_options(args, AutoOptions, say=say))
    if args.json:
        print_json(result)
        return 0
    if args.task != "classify":
        _print_shape_auto(result)
        return 0
    from headstart.commands.compare import print_compare

    print_compare(result["comparison"], str(args.data), args.budget_s)
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


def _print_shape_auto(result: dict[str, Any]) -> None:
    """auto --task T: each strategy's mean per-item val and test score, its paired gain over the probe on
    val with the interval (a tie when it holds 0), the recommendation, where it went."""
    from rich.markup import escape
    from rich.table import Table

    con = console()
    cmp = result["comparison"]
    t = Table(title=f"{result['task']} on {result['backbone']}: mean {cmp['item_score']} per item")
    for col in ("strategy", "val", "test", "gain over probe on val [95% CI]", "verdict", "seconds"):
        t.add_column(col, justify="right")
    for r in cmp["rows"]:
        if "error" in r:
            t.add_row(r["strategy"], "-", "-", escape(r["error"]), "failed", "-")
            continue
        g = r.get("vs_probe_val") or {}
        gain = f"{g['diff']:+.4f} [{g['ci'][0]:+.4f}, {g['ci'][1]:+.4f}]" if g.get("ci") else "reference"
        t.add_row(
            r["strategy"],
            fmt(r["val_score"], 4),
            fmt(r["test_score"], 4),
            gain,
            g.get("verdict", "-"),
            fmt(r["seconds"], 1),
        )
    con.print(t)
    rec, reg = result["recommended"], result["registered"]
    con.print(f"recommended: [bold]{escape(rec['strategy'])}[/bold]: {escape(rec['reason'])}")
    con.print(f"registered as [bold]{reg['name']}:v{reg['version']}[/bold] (alias {reg['alias']})")
    con.print(f"report: [bold]{escape(result['report'])}[/bold]")
