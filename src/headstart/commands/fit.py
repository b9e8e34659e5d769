"""`headstart fit`, `headstart lr-find`, `headstart recipes`: the fine-tuning engine's verbs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from headstart.commands import console, fmt_bytes, print_data_notes, print_json


def _lr(v: str) -> float | str:
    return v if v == "auto" else float(v)


def _strategy(args: argparse.Namespace) -> Any:
    """The strategy name, or its recipe with the --lora-* options applied."""
    options = (args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_targets)
    if all(v is None for v in options):
        return args.strategy
    from dataclasses import replace

    from headstart.errors import HeadstartError
    from headstart.recipes import get_recipe

    recipe = get_recipe(args.strategy, 10_000)  # the group count only bounds partial:N
    spec = recipe.adapter
    if spec is None:
        raise HeadstartError(
            f"--lora-* options need a LoRA strategy, not {args.strategy!r}", fix="add --strategy lora"
        )
    r = args.lora_r if args.lora_r is not None else spec.r
    alpha = args.lora_alpha if args.lora_alpha is not None else spec.alpha * r / spec.r  # same alpha/r
    dropout = args.lora_dropout if args.lora_dropout is not None else spec.dropout
    targets = spec.target_modules
    if args.lora_targets:
        targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    spec = replace(spec, r=r, alpha=alpha, dropout=dropout, target_modules=targets)
    spec.validate()
    return replace(recipe, adapter=spec)


def cmd_fit(args: argparse.Namespace) -> int:
    from headstart.train import fit

    report = fit(
        args.data,
        backbone=args.backbone,
        strategy=_strategy(args),
        out=args.out,
        seed=args.seed,
        val=args.val,
        test=args.test,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        augment=args.augment,
        prefix_cache=not args.no_prefix_cache,
        bf16=args.bf16,
        budget_s=args.budget,
        resume=args.resume,
        strict=args.strict,
        overwrite=args.overwrite,
        progress=not args.json,
        target_unlabeled=args.target_unlabeled,
        domain_weight=args.domain_weight,
    )
    if args.json:
        print_json(report.to_dict())
        return 0
    from rich.markup import escape
    from rich.table import Table

    con = console()
    print_data_notes(con, report.data)
    m = report.metrics
    t = Table(title=f"{report.strategy} on {report.backbone}")
    for col in ("split", "n", "accuracy", "macro-F1", "loss"):
        t.add_column(col, justify="right")
    for s in ("train", "val", "test"):
        if s in m:
            t.add_row(
                s, str(m[s]["n"]), f"{m[s]['accuracy']:.3f}", f"{m[s]['macro_f1']:.3f}", f"{m[s]['loss']:.3f}"
            )
    con.print(t)
    con.print(
        f"best epoch {m['best_epoch']}; trained {m['train_s']:.1f} s; "
        f"trainable parameters {m['trainable_params']:,} of {m['backbone_params'] + m['trainable_params']:,}"
    )
    a = m.get("adapter")
    if a:
        con.print(
            f"LoRA r={a['r']} alpha={a['alpha']:g} dropout={a['dropout']:g} on {a['n_modules']} layers: "
            f"{escape(', '.join(a['target_modules']))} ({escape(a['targets_reason'])})"
        )
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
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    import numpy as np

    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.features import embed
    from headstart.train.lr_find import lr_find, plot_lr_find

    ds = load_dataset(args.data, seed=args.seed)
    bb = create_backbone(args.backbone)
    train = ds.split("train")
    feats = embed(bb, [it.source for it in train], progress=not args.json)
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
    if args.json:
        print_json(summary)
    else:
        console().print(
            f"suggested head learning rate: [bold]{result['suggestion']:.2g}[/bold] "
            f"(steepest descent {result['steepest']:.2g}, lowest loss at {result['min_loss_lr']:.2g}); "
            f"plot: {out}"
        )
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from headstart.backbones import create_backbone
    from headstart.recipes import BUILT_IN, get_recipe

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


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser(
        "fit", help="fine-tune with a strategy (recipe): head, partial:N, full, gradual, lp-ft, ..."
    )
    f.add_argument("data", type=Path, help="image folder or manifest (as for probe)")
    f.add_argument("--backbone", default="efficientnet_lite0")
    f.add_argument(
        "--strategy",
        default="lp-ft",
        help="head | partial:N | full | discriminative | gradual | lp-ft | scratch | lora | lora:R | "
        "a recipe .json/.yaml",
    )
    f.add_argument("--lora-r", type=int, help="LoRA rank (strategy lora; default 8)")
    f.add_argument("--lora-alpha", type=float, help="LoRA scale alpha (default 2 x rank)")
    f.add_argument("--lora-dropout", type=float, help="dropout on the LoRA input (default 0.05)")
    f.add_argument(
        "--lora-targets",
        help="comma-separated linear layer names to adapt (e.g. q_proj,v_proj), or all-linear; default: "
        "every attention projection of the architecture",
    )
    f.add_argument("--out", type=Path, help="run folder (default: runs/<time>-fit-<backbone>)")
    f.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out, or start an interrupted one over"
    )
    f.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last checkpoint (same data and options; "
        "refused for a finished run)",
    )
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--val", type=float, default=0.15)
    f.add_argument("--test", type=float, default=0.15)
    f.add_argument("--epochs", type=int, help="total epochs (the recipe's phases are scaled to it)")
    f.add_argument(
        "--lr", type=_lr, help="head learning rate, or 'auto' (range test); groups follow the recipe"
    )
    f.add_argument("--batch-size", type=int)
    aug = f.add_mutually_exclusive_group()
    aug.add_argument(
        "--augment", dest="augment", action="store_true", default=None, help="augment every phase"
    )
    aug.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="no augmentation: enables frozen-prefix caching",
    )
    f.add_argument("--no-prefix-cache", action="store_true", help="always run the frozen groups forward")
    f.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward")
    f.add_argument("--budget", type=float, help="stop training after this many seconds (best weights kept)")
    f.add_argument("--strict", action="store_true", help="fail on any unreadable file")
    f.add_argument(
        "--target-unlabeled",
        type=Path,
        help="unlabeled inputs from the deployment domain: domain-adversarial training (DANN) aligns the "
        "features of the labeled data with them",
    )
    f.add_argument(
        "--domain-weight", type=float, default=1.0, help="weight of the domain-adversarial loss (DANN)"
    )
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_fit)

    lf = sub.add_parser("lr-find", help="learning-rate range test for the head; plots loss vs rate")
    lf.add_argument("data", type=Path)
    lf.add_argument("--backbone", default="efficientnet_lite0")
    lf.add_argument("--seed", type=int, default=0)
    lf.add_argument("--plot", default="lr_find.png", help="where to write the plot (PNG)")
    lf.add_argument("--json", action="store_true")
    lf.set_defaults(func=cmd_lr_find)

    r = sub.add_parser("recipes", help="show the built-in strategies as recipes (phases, rates, epochs)")
    r.add_argument("strategy", nargs="?", help="one strategy, e.g. partial:2")
    r.add_argument("--backbone", default="efficientnet_lite0")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_recipes)
