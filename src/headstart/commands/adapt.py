"""`headstart adapt`: continued pretraining of a text backbone on unlabeled domain text."""

from __future__ import annotations

import argparse
from pathlib import Path

from headstart.commands import console, options, print_json
from headstart.train.engine import add_engine_flags


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a fraction in [0, 1)")
    return v


def cmd_adapt(args: argparse.Namespace) -> int:
    from headstart.pretrain import adapt

    names = ("name", "out", "epochs", "lr", "head_lr", "head_epochs", "batch_size", "max_length")
    names += ("mix_general", "mix_fraction", "held_out", "txt_layout", "seed", "overwrite")
    names += ("device", "precision")
    report = adapt(args.backbone, args.unlabeled, **options(args, *names))
    if args.json:
        print_json(report.to_dict())
        return 0
    from rich.markup import escape
    from rich.table import Table

    con = console()
    d = report.data
    con.print(
        f"{d['texts']} texts from {escape(d['path'])} ({d['skipped_empty']} empty skipped): "
        f"{d['train_texts']} to train, {d['held_out_texts']} held out ({d['held_out_tokens']} tokens)"
    )
    if report.fresh_head:
        con.print(
            f"[yellow]fresh MLM head:[/yellow] {report.parent} ships none, so a new head was trained on the "
            f"frozen encoder first ({report.head_warmup_steps} steps, until held-out perplexity plateaued); "
            "'before' is that head on the unchanged encoder."
        )
    t = Table(title=f"{report.objective.upper()} perplexity on held-out text (lower is better)")
    for col in ("text", "before", "after", "change"):
        t.add_column(col, justify="left" if col == "text" else "right")
    for which, label in (("domain", "domain (held out)"), ("general", "general (forgetting check)")):
        p = report.perplexity.get(which)
        if p:
            t.add_row(
                label, f"{p['before']:.2f}", f"{p['after']:.2f}", f"{p['after'] / p['before'] - 1:+.1%}"
            )
    con.print(t)
    con.print(
        f"{report.steps} steps in {report.seconds:.1f} s; saved to [bold]{escape(str(report.folder))}[/bold]"
    )
    ref = report.backbone_ref
    con.print(f"use it: headstart fit DATA --backbone {escape(ref)}   (parent: {escape(report.parent)})")
    if not report.by_name:
        con.print("[dim]written outside the backbones home: refer to it by its folder path[/dim]")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt",
        help="continue a text backbone's pretraining on unlabeled domain text (MLM / causal LM)",
        description="Continue pretraining a text backbone on unlabeled domain text: masked LM for encoders "
        "(with a fresh MLM head, trained first on the frozen encoder), causal LM for decoder LMs. Reports "
        "held-out perplexity before and after and saves a new backbone, carded with its parent, under "
        "HEADSTART_BACKBONES (default ~/.cache/headstart/backbones), usable by name.",
    )
    p.add_argument(
        "--backbone", required=True, help="text backbone: minilm-l6, smollm2-135m, hf:<folder>, ..."
    )
    p.add_argument(
        "--unlabeled",
        type=Path,
        required=True,
        help=".txt (one text per line, or blank-line separated paragraphs), a folder of .txt, or a "
        "CSV/JSONL/Parquet with a `text` column",
    )
    p.add_argument(
        "--name",
        help="name of the new backbone (default: the --out folder's name, else <backbone>-<data stem>)",
    )
    p.add_argument("--out", type=Path, help="folder to write (default: the backbones home / NAME)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing backbone of that name")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument(
        "--lr", type=float, help="rate of the pretrained weights (default 5e-5 MLM, 2e-5 causal LM)"
    )
    p.add_argument("--head-lr", type=float, default=1e-3, help="rate of a fresh MLM head")
    p.add_argument("--head-epochs", type=int, default=10, help="most epochs of the fresh head's warm-up")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-length", type=int, default=128, help="tokens per sequence (longer texts are split)")
    p.add_argument("--mix-general", type=Path, help="general text mixed in against forgetting, and scored")
    p.add_argument(
        "--mix-fraction", type=_fraction, default=0.2, help="share of each epoch from --mix-general"
    )
    p.add_argument("--held-out", type=_fraction, default=0.1, help="share of texts held out for perplexity")
    p.add_argument(
        "--txt-layout",
        choices=("auto", "lines", "paragraphs"),
        default="auto",
        help=".txt files: one text per line, or blank-line separated paragraphs (auto: detected)",
    )
    p.add_argument("--seed", type=int, default=0)
    add_engine_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_adapt)
