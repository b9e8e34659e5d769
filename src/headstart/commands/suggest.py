"""`headstart suggest RUN UNLABELED --n K`: which unlabeled items to label next."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.commands import api_options, console, print_data_notes, run_folder, show, verb
from headstart.config import backend_option, device_option, json_option, option

# explore.suggest.STRATEGIES, spelled out so `headstart --help` need not import numpy (a test ties them)
_STRATEGIES = ("typical-margin", "margin-diverse", "badge", "margin-kcenter", "margin", "random")


@dataclass(kw_only=True)
class SuggestOptions:
    """which unlabeled items to label next (typical items first, then margin spread over clusters)

    Ranks the items of UNLABELED by how much a label would teach the run's head. While the run has fewer
    than 5 labels per class: the most typical item of each region no label covers yet (the head's
    uncertainty means little so early). Then the most uncertain (smallest gap between the two likeliest
    classes), spread over k-means clusters so the K picks are K different confusions. Items the run
    already has labels for (its split.csv) are never suggested.
    Label the picks, add them to the data, and probe or fit again.
    """

    run: str = option(
        api=False, help="a run folder (probe or fit), or a stored model: NAME, NAME:v2, NAME@alias"
    )
    unlabeled: Path = option(
        help="the candidates: a folder of files (images, audio), or for a text model a .txt file (one text "
        "per line), a folder of .txt files or a table with a `text` column"
    )
    n: int = option(20, help="how many items to suggest")
    strategy: str = option(
        "typical-margin",
        choices=_STRATEGIES,
        help="typical-margin (default): the densest item of each region no label covers (TypiClust) "
        "while under 5 labels per class, then margin-diverse: lowest margins spread by k-means; badge: "
        "k-means++ on the head's gradient embeddings; margin-kcenter: lowest margins spread by k-center "
        "greedy; margin: lowest margins alone; random: a seeded random draw (a baseline)",
    )
    seed: int = option(0, help="seed of the clustering and of `random`")
    out: Path | None = option(None, api=False, metavar="FILE", help="also write the ranked list as a CSV")
    backend: str = backend_option()
    device: str = device_option()
    store: Path | None = option(
        None, api=False, help="model store for NAME references (default: $HEADSTART_MODELS)"
    )
    json: bool = json_option("machine-readable output")


@verb(SuggestOptions)
def cmd_suggest(args: argparse.Namespace) -> int:
    from headstart.errors import HeadstartError
    from headstart.explore.suggest import suggest_for_run, write_suggestions
    from headstart.fileio import ensure_writable_file

    if args.n < 1:  # before the run is read or anything is embedded
        raise HeadstartError(f"--n {args.n} suggests nothing", fix="ask for 1 or more items (--n 20)")
    if args.out is not None:
        ensure_writable_file(args.out)
    run, _ = run_folder(args.run, args.store)
    result = suggest_for_run(run, **api_options(args, SuggestOptions))
    if args.out is not None:
        result["out"] = str(write_suggestions(result, args.out))
    return show(args, result, _table)


def _table(result: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    con = console()
    t = Table(
        title=f"Label these next: {len(result['suggestions'])} of {result['n_candidates']} candidates "
        f"({result['strategy']}; {result['n_labeled']} items already labeled)"
    )
    for col in ("rank", "source", "predicted", "p", "margin", "why chosen"):
        t.add_column(col, justify="right" if col in ("rank", "p", "margin") else "left")
    for s in result["suggestions"]:
        source = " ".join(s["source"].split())
        t.add_row(
            str(s["rank"]),
            escape(source if len(source) <= 80 else source[:79] + "…"),
            escape(s["predicted"]),
            f"{s['probability']:.2f}",
            f"{s['margin']:.3f}",
            escape(s["why"]),
        )
    con.print(t)
    print_data_notes(con, {"skipped": result["skipped"], "warnings": result["notes"]})
    if result.get("out"):
        con.print(f"written to {result['out']}", markup=False)
