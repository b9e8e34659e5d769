"""`headstart fit`, `headstart lr-find`, `headstart recipes`: the fine-tuning engine's verbs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.commands import console, fmt_bytes, print_data_notes, print_json, show, verb
from headstart.config import FitConfig, backend_option, device_option, from_args, json_option, option


@dataclass
class FitOptions(FitConfig):
    """fine-tune with a strategy (recipe): head, partial:N, full, gradual, lp-ft, ..."""

    json: bool = json_option()


@dataclass(kw_only=True)
class LrFindOptions:
    """learning-rate range test for the head; plots loss vs rate"""

    data: Path = option()
    backbone: str = option("efficientnet_lite0")
    seed: int = option(0)
    plot: str = option("lr_find.png", help="where to write the plot (PNG)")
    backend: str = backend_option()
    device: str = device_option()
    json: bool = json_option()


@dataclass(kw_only=True)
class RecipesOptions:
    """show the built-in strategies as recipes (phases, rates, epochs)"""

    strategy: str | None = option(None, positional=True, nargs="?", help="one strategy, e.g. partial:2")
    backbone: str = option("efficientnet_lite0")
    schema: bool = option(False, help="print the JSON schema of a recipe file (for --strategy my.yaml)")
    json: bool = json_option()


@verb(FitOptions)
def cmd_fit(args: argparse.Namespace) -> int:
    from headstart.commands import print_shape_result
    from headstart.train.api import run_fit

    report = run_fit(from_args(FitConfig, args, progress=not args.json))
    return show(args, report, _print_fit if args.task == "classify" else print_shape_result)


def _print_fit(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    con = console()
    print_data_notes(con, report.data)
    m = report.metrics
    from headstart.imbalance import skewed_in
    from headstart.intervals import fmt_ci

    skew = skewed_in(m)  # skewed classes: balanced accuracy (what chose the best epoch) beside accuracy
    t = Table(title=f"{report.strategy} on {report.backbone}")
    for col in (
        "split",
        "n",
        "accuracy (95%)",
        "macro-F1 (95%)",
        "loss",
        *(["balanced acc"] if skew else []),
    ):
        t.add_column(col, justify="right")
    for s in ("train", "val", "test"):
        if s in m:
            bal = [fmt_ci(m[s].get("balanced_accuracy"), m[s].get("balanced_accuracy_ci"))] if skew else []
            t.add_row(
                s,
                str(m[s]["n"]),
                fmt_ci(m[s]["accuracy"], m[s].get("accuracy_ci")),
                fmt_ci(m[s]["macro_f1"], m[s].get("macro_f1_ci")),
                f"{m[s]['loss']:.3f}",
                *bal,
            )
    con.print(t)
    if skew:
        con.print(skew, markup=False)
    con.print(
        (f"greedy soup of epochs {m['soup']}" if m.get("soup") else f"best epoch {m['best_epoch']}")
        + f"; trained {m['train_s']:.1f} s; "
        f"trainable parameters {m['trainable_params']:,} of {m['backbone_params'] + m['trainable_params']:,}"
    )
    a = m.get("adapter")
    if a and a.get("method", "lora") != "lora":  # prompt/prefix tuning: learned tokens, no adapted layer
        con.print(f"{a['method']}: {a['n_tokens']} learned tokens in {escape(', '.join(a['groups']))}")
    elif a:
        con.print(
            f"LoRA r={a['r']} alpha={a['alpha']:g} dropout={a['dropout']:g} on {a['n_modules']} layers: "
            f"{escape(', '.join(a['target_modules']))} ({escape(a['targets_reason'])})"
        )
    if a:
        con.print(
            f"trainable: {m['trainable_params']:,} (adapter + head) vs {m['full_trainable_params']:,} for "
            f"full fine-tuning ({m['trainable_params'] / m['full_trainable_params']:.2%})"
        )
    if "stored_bytes" in m and a:
        con.print(
            f"stored: {fmt_bytes(m['stored_bytes'])} (adapter + head; the base is referenced) vs "
            f"{fmt_bytes(m['full_bytes'])} for a full fine-tune"
        )
    elif "stored_bytes" in m:
        con.print(f"stored: {m['stored_bytes'] / 1e6:.2f} MB (head + trained groups; the base is referenced)")
    for w in report.warnings:
        con.print(f"[yellow]warning:[/yellow] {escape(w)}")
    if report.run_dir:
        con.print(f"run saved to [bold]{escape(str(report.run_dir))}[/bold]")


@verb(LrFindOptions)
def cmd_lr_find(args: argparse.Namespace) -> int:
    import numpy as np

    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.features import embed, forward_device
    from headstart.train.lr_find import lr_find, plot_lr_find

    forward_device(args.backend, args.device)  # before the data is read
    ds = load_dataset(args.data, seed=args.seed)
    bb = create_backbone(args.backbone)
    train = ds.split("train")
    feats = embed(
        bb, [it.source for it in train], progress=not args.json, backend=args.backend, device=args.device
    )
    row = {p: i for i, p in enumerate(feats.paths)}
    kept = [it for it in train if it.source in row]
    index = {c: i for i, c in enumerate(ds.classes)}
    E = feats.X[[row[it.source] for it in kept]]
    y = np.array([index[it.label] for it in kept])
    result = lr_find(E, y, len(ds.classes), seed=args.seed)
    out = Path(args.plot)
    plot_lr_find(result, out)
    summary: dict[str, Any] = {k: result[k] for k in ("suggestion", "steepest", "min_loss_lr", "seconds")}
    summary["plot"] = str(out)
    summary["embed"] = {k: feats.stats[k] for k in ("backend", "device")}
    if args.json:
        print_json(summary)
    else:
        console().print(
            f"suggested head learning rate: [bold]{result['suggestion']:.2g}[/bold] "
            f"(steepest descent {result['steepest']:.2g}, lowest loss at {result['min_loss_lr']:.2g}); "
            f"plot: {out}"
        )
    return 0


@verb(RecipesOptions)
def cmd_recipes(args: argparse.Namespace) -> int:
    from headstart.backbones import create_backbone
    from headstart.recipes import BUILT_IN, get_recipe, recipe_schema

    if args.schema:
        print_json(recipe_schema())
        return 0
    n_groups = len(create_backbone(args.backbone).groups)
    names = [args.strategy] if args.strategy else [s.replace("partial:N", "partial:2") for s in BUILT_IN]
    recipes = [get_recipe(s, n_groups) for s in names]
    if args.json:
        print_json([r.to_dict() for r in recipes])
        return 0
    from rich.table import Table

    t = Table(title=f"Recipes (for {args.backbone}: {n_groups} layer groups)")
    for col in ("strategy", "phases", "what it is"):
        t.add_column(col)
    for r in recipes:
        t.add_row(r.name, r.summary(), r.description)
    console().print(t)
    return 0
