"""`headstart adapt`: continued pretraining of a text backbone on unlabeled domain text."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.commands import api_options, console, show, verb
from headstart.config import device_option, json_option, option, parse_budget, precision_option


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a fraction in [0, 1)")
    return v


@dataclass(kw_only=True)
class AdaptOptions:
    """continue a text backbone's pretraining on unlabeled domain text (MLM / causal LM)

    Continue pretraining a text backbone on unlabeled domain text: masked LM for encoders (with a fresh MLM
    head, trained first on the frozen encoder), causal LM for decoder LMs. Reports held-out perplexity
    before and after and saves a new backbone, carded with its parent, under HEADSTART_BACKBONES (default
    ~/.cache/headstart/backbones), usable by name.
    """

    backbone: str = option(required=True, help="text backbone: minilm-l6, smollm2-135m, hf:<folder>, ...")
    unlabeled: Path = option(
        required=True,
        help=".txt (one text per line, or blank-line separated paragraphs), a folder of .txt, or a "
        "CSV/JSONL/Parquet with a `text` column",
    )
    name: str | None = option(
        None, help="name of the new backbone (default: the --out folder's name, else <backbone>-<data stem>)"
    )
    out: Path | None = option(None, help="folder to write (default: the backbones home / NAME)")
    overwrite: bool = option(False, help="replace an existing backbone of that name")
    resume: bool = option(
        False,
        help="continue the interrupted adaptation of that name from its checkpoints (same texts and "
        "options; refused for a finished one)",
    )
    budget_s: float | None = option(
        None,
        flag="--budget",
        parse=parse_budget,
        help="stop training after this many seconds: 600, 90s, 10m (the control keeps its share)",
    )
    epochs: int = option(3)
    lr: float | None = option(None, help="rate of the pretrained weights (default 5e-5 MLM, 2e-5 causal LM)")
    head_lr: float = option(1e-3, help="rate of a fresh MLM head")
    head_epochs: int = option(10, help="most epochs of the fresh head's warm-up")
    batch_size: int | None = option(None)
    max_length: int = option(128, help="tokens per sequence (longer texts are split)")
    mix_general: Path | None = option(None, help="general text mixed in against forgetting, and scored")
    mix_fraction: float = option(0.2, parse=_fraction, help="share of each epoch from --mix-general")
    held_out: float = option(0.1, parse=_fraction, help="share of texts held out for perplexity")
    txt_layout: str = option(
        "auto",
        choices=("auto", "lines", "paragraphs"),
        help=".txt files: one text per line, or blank-line separated paragraphs (auto: detected)",
    )
    seed: int = option(0)
    device: str = device_option()
    precision: str = precision_option()
    json: bool = json_option()


@verb(AdaptOptions)
def cmd_adapt(args: argparse.Namespace) -> int:
    from headstart.pretrain import adapt

    return show(args, adapt(**api_options(args, AdaptOptions)), _print_adapt)


def _print_adapt(report: Any) -> None:
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
    for w in report.warnings:
        con.print(f"[yellow]warning:[/yellow] {escape(w)}")
    if not report.by_name:
        con.print("[dim]written outside the backbones home: refer to it by its folder path[/dim]")
