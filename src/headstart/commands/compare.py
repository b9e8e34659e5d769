"""`headstart compare`: probe, scratch and fine-tuning strategies side by side under one time budget."""

from __future__ import annotations

import argparse

from headstart.commands import console, fmt, fmt_bytes, print_json

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_budget(text: str) -> float:
    """'600', '90s', '10m', '1.5h' -> seconds."""
    t = text.strip().lower()
    scale = _UNITS.get(t[-1:])
    try:
        value = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds or a duration like 90s, 10m, 1h") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the budget must be positive")
    return value


def cmd_compare(args: argparse.Namespace) -> int:
    from headstart.verdicts.compare import compare

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None
    result = compare(
        args.data,
        args.backbone,
        budget_s=args.budget,
        strategies=strategies,
        seed=args.seed,
        out=args.out,
        progress=not args.json,
    )
    if args.json:
        print_json(result)
        return 0
    from rich.markup import escape
    from rich.table import Table

    rec = result["recommendation"]
    overfit = set(result["flags"]["overfitting"])
    title = f"Strategies for {escape(str(args.data))} on {args.backbone} (budget {args.budget:.0f} s)"
    t = Table(title=title)
    for col in ("strategy", "val acc", "test acc", "test macro-F1", "time s", "trainable params", "stored"):
        t.add_column(col, justify="left" if col == "strategy" else "right")
    for r in result["rows"]:
        name = r["strategy"]
        marks = ["recommended"] if name == rec["strategy"] else []
        marks += ["overfits"] if name in overfit else []
        label = f"[bold]{name}[/bold]" if name == rec["strategy"] else name
        if marks:
            label += f" [dim]({', '.join(marks)})[/dim]"
        t.add_row(
            label,
            fmt(r["val_accuracy"]),
            fmt(r["test_accuracy"]),
            fmt(r["test_macro_f1"]),
            fmt(r["train_s"], 1),
            f"{r['trainable_params']:,}" if r["trainable_params"] is not None else "-",
            fmt_bytes(r["stored_bytes"]),
        )
    con = console()
    con.print(t)
    if result["skipped"]:
        con.print(f"[yellow]not run (budget spent):[/yellow] {', '.join(result['skipped'])}")
    if result["flags"]["negative_transfer"]:
        con.print(
            "[red]negative transfer:[/red] training from scratch matches or beats every use of the "
            "pretrained weights on val; this backbone does not suit the data."
        )
    if overfit:
        con.print(f"[yellow]overfitting:[/yellow] {', '.join(sorted(overfit))} (train-val gap)")
    con.print(f"recommended: [bold]{rec['strategy']}[/bold]. {escape(rec['reason'])}")
    rb = result.get("rule_based")
    if rb:
        verdict = {True: "agrees", False: "disagrees", None: "was not measured"}[rb["agrees"]]
        con.print(f"rule-based recommendation {rb['strategy']} {verdict}: {rb['reason']}", markup=False)
    con.print(f"took {result['elapsed_s']:.0f} s; runs and compare.json in {escape(result['out'])}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare probe, scratch and fine-tuning strategies under one time budget",
        description="Run the linear probe, a from-scratch baseline and the fine-tuning strategies that "
        "suit the data size, each with an even share of the time budget; flag negative transfer and "
        "overfitting and recommend one. Writes OUT/compare.json and one run folder per strategy.",
    )
    p.add_argument("data", help="dataset folder or CSV")
    p.add_argument("--backbone", required=True, help="backbone name (see `headstart models`)")
    p.add_argument(
        "--budget", type=parse_budget, default=600.0, help="total time: 600, 90s, 10m (default 10m)"
    )
    p.add_argument(
        "--strategies",
        help="comma-separated strategies to run instead of the automatic choice; adapt+S (text) continues "
        "pretraining on the training texts, then runs S",
    )
    p.add_argument("--out", help="output folder (default runs/compare-DATA-BACKBONE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print compare.json instead of the table")
    p.set_defaults(func=cmd_compare)
