"""`headstart compare`: probe, scratch and fine-tuning strategies side by side under one time budget."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from headstart.commands import api_options, console, fmt, fmt_bytes, show, verb
from headstart.config import device_option, json_option, option, parse_budget, precision_option
from headstart.imbalance import IMBALANCE_HELP
from headstart.imbalance import MODES as IMBALANCE_MODES


def strategy_list(text: str) -> list[str]:
    """--strategies: comma-separated names (empty: the automatic choice)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def input_size_option(text: str) -> str:
    """--input-size: native, auto, or pixels."""
    from headstart.errors import HeadstartError
    from headstart.verdicts.input_size import parse_input_size

    try:
        return parse_input_size(text)
    except HeadstartError as e:
        raise argparse.ArgumentTypeError(f"{e.message}: {e.fix}") from None


@dataclass(kw_only=True)
class ComparisonOptions:
    """The options of `compare` and of `auto`, which runs it (they close each verb's list)."""

    seed: int = option(0)
    keep_duplicates: bool = option(
        False, help="keep exact and near copies where the split put them (default: moved into one split)"
    )
    device: str = device_option()  # where every row (every step of auto) runs
    precision: str = precision_option()  # what every fine-tune trains in
    imbalance: str = option("auto", choices=IMBALANCE_MODES, help=IMBALANCE_HELP)  # every row's; the rule's
    input_size: str = option(
        "native",
        parse=input_size_option,
        help="pixels the fine-tunes train at (image backbones): native (the weights' own), N, or auto (the "
        "smallest of 160/128 px where the probe's k-fold score loses nothing beyond noise)",
    )
    json: bool = json_option()


@dataclass(kw_only=True)
class CompareOptions(ComparisonOptions):
    """compare probe, scratch and fine-tuning strategies under one time budget

    Run the linear probe, a from-scratch baseline and the fine-tuning strategies that suit the data size,
    each with an even share of the time budget; flag negative transfer and overfitting and recommend one.
    Writes OUT/compare.json and one run folder per strategy.
    """

    data: str = option(help="dataset folder or CSV")
    backbone: str = option(required=True, help="backbone name (see `headstart models`)")
    budget_s: float = option(
        600.0, flag="--budget", parse=parse_budget, help="total time: 600, 90s, 10m (default 10m)"
    )
    strategies: list[str] | None = option(
        None,
        parse=strategy_list,
        help="comma-separated strategies to run instead of the automatic choice; adapt+S (text) continues "
        "pretraining on the training texts, then runs S",
    )
    out: str | None = option(None, help="output folder (default runs/compare-DATA-BACKBONE)")
    json: bool = json_option("print compare.json instead of the table")


@verb(CompareOptions, own_first=True)
def cmd_compare(args: argparse.Namespace) -> int:
    from headstart.verdicts.compare import compare

    result = compare(**api_options(args, CompareOptions))
    return show(args, result, lambda r: print_compare(r, str(args.data), args.budget_s))


def print_compare(result: dict, data: str, budget: float) -> None:
    """The comparison table (every score with its 95 % interval, each row's paired difference from the
    probe) and the verdicts under it; `compare` and `auto` print the same."""
    from rich.markup import escape
    from rich.table import Table

    from headstart.imbalance import skewed_in
    from headstart.intervals import fmt_ci
    from headstart.verdicts.select import vs_reference_text

    rec = result["recommendation"]
    tests = (result.get("selection") or {}).get("tests") or {}
    overfit = set(result["flags"]["overfitting"])
    title = f"Strategies for {escape(data)} on {result['backbone']} (budget {budget:.0f} s, 95% intervals)"
    t = Table(title=title)
    cols = (
        "strategy",
        "val acc",
        "vs probe (paired)",
        "test acc",
        "test macro-F1",
        "epochs run/plan",
        "time s",
    )
    for col in (*cols, "trainable params", "stored"):
        t.add_column(col, justify="left" if col == "strategy" else "right")
    for r in result["rows"]:
        name = r["strategy"]
        marks = ["recommended"] if name == rec["strategy"] else []
        marks += ["overfits"] if name in overfit else []
        label = f"[bold]{name}[/bold]" if name == rec["strategy"] else name
        if marks:
            label += f" [dim]({', '.join(marks)})[/dim]"
        d = tests.get(name)
        vs = "-" if d is None else vs_reference_text(d)
        epochs = "-" if r.get("epochs_run") is None else f"{r['epochs_run']}/{r['epochs_planned']}"
        if r.get("recipe_epochs") and r.get("epochs_planned") and r["epochs_planned"] < r["recipe_epochs"]:
            epochs += f" of {r['recipe_epochs']}"
        t.add_row(
            label,
            fmt_ci(r["val_accuracy"], r.get("val_accuracy_ci")),
            vs,
            fmt_ci(r["test_accuracy"], r.get("test_accuracy_ci")),
            fmt_ci(r["test_macro_f1"], r.get("test_macro_f1_ci")),
            epochs,
            fmt(r["train_s"], 1),
            f"{r['trainable_params']:,}" if r["trainable_params"] is not None else "-",
            fmt_bytes(r["stored_bytes"]),
        )
    con = console()
    con.print(t)
    skew = skewed_in(result)  # what the rows were compared on, when the classes are skewed
    if skew:
        bal = ", ".join(
            f"{r['strategy']} {fmt_ci(r.get('val_balanced_accuracy'), r.get('val_balanced_accuracy_ci'))}"
            for r in result["rows"]
        )
        con.print(f"{skew}; val balanced accuracy: {bal}", markup=False)
    probe_cv = (result["rows"][0].get("cv") or {}) if result["rows"] else {}
    if probe_cv.get("probe"):
        pr, kn = probe_cv["probe"], probe_cv["knn"]
        con.print(
            f"probe by {probe_cv['scheme']}: {fmt_ci(pr['accuracy'], pr['accuracy_ci'])}; "
            f"kNN {fmt_ci(kn['accuracy'], kn['accuracy_ci'])}",
            markup=False,
        )
    lk = result.get("leakage") or {}
    if lk.get("regrouped"):
        raw, grouped = lk.get("probe_raw") or {}, lk.get("probe_grouped") or {}
        con.print(
            f"[yellow]copies across splits:[/yellow] {lk['n_exact']} exact, {lk['n_near']} near; "
            f"{lk['moved']} item(s) in {lk['groups']} group(s) moved into one split. Probe test accuracy "
            f"{fmt(raw.get('test'))} on the raw split, {fmt(grouped.get('test'))} regrouped."
        )
    reasons = result.get("skip_reasons") or {}
    for name in result["skipped"]:
        con.print(f"not run: {name} ({reasons.get(name, 'budget spent')})", markup=False)
    if result.get("input_size"):
        con.print(f"input size: {result['input_size']['reason']}", markup=False)
    flags = result["flags"]
    transfer = flags.get("transfer")
    if flags["negative_transfer"]:
        con.print(f"[red]negative transfer:[/red] {escape(transfer)}; this backbone does not suit the data.")
    elif transfer:
        con.print(f"transfer: {escape(transfer)}", markup=False)
    if overfit:
        con.print(f"[yellow]overfitting:[/yellow] {', '.join(sorted(overfit))} (train-val gap beyond noise)")
    con.print(f"recommended: [bold]{rec['strategy']}[/bold]. {escape(rec['reason'])}")
    rb = result.get("rule_based")
    if rb:
        if rb.get("untested"):
            con.print(
                f"rule-based recommendation {rb['strategy']}: untested ({rb['untested']})", markup=False
            )
        else:
            verdict = {True: "agrees", False: "disagrees", None: "was not measured"}[rb["agrees"]]
            con.print(f"rule-based recommendation {rb['strategy']} {verdict}: {rb['reason']}", markup=False)
    con.print(f"took {result['elapsed_s']:.0f} s; runs and compare.json in {escape(result['out'])}")
