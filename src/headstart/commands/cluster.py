"""`headstart cluster`: group a dataset by its embeddings, compare the groups with the labels, list suspected
mislabels (headstart.explore.clusters)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from headstart.commands import api_options, console, fmt, print_data_notes, print_json, verb
from headstart.commands.verdicts import _Embeds
from headstart.config import json_option, option

SHOWN_SUSPECTS = 20


def parse_k(text: str) -> int | str:
    """--k: a whole number or 'auto' (its range is checked against the data by `check_k`)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of clusters or 'auto'") from None


def _shown(source: str, text: bool) -> str:
    """An item as the table names it: a text as is, a file relative to the working folder when below it."""
    if text:
        return source
    try:
        return str(Path(source).relative_to(Path.cwd()))
    except ValueError:
        return source


@dataclass(kw_only=True)
class ClusterOptions(_Embeds):
    """group items by their embeddings; compare with the labels; list suspected mislabels

    k-means on the L2-normalised embeddings; --k auto picks k by the best silhouette over half to twice the
    number of labels. A suspected mislabel is an item whose label at least 70% of its 10 nearest
    neighbours (cosine) do not share. --out writes clusters.json, clusters.csv and clusters.html (a 2-D
    PCA map; a run folder's report then shows them)."""

    backbone: str = option("efficientnet_lite0", help="registered name, hf:<id-or-dir>, timm:<name>")
    k: int | str = option("auto", parse=parse_k, help="number of clusters (2..items), or auto")
    out: Path | None = option(
        None, help="folder for clusters.json, clusters.csv, clusters.html (default: print only)"
    )
    seed: int = option(0, help="split and k-means seed")
    json: bool = json_option("machine-readable output (without the per-item map coordinates)")


@verb(ClusterOptions, own_first=True)
def cmd_cluster(args: argparse.Namespace) -> int:
    from headstart.explore.clusters import K_NEIGHBOURS, MISLABEL_SHARE, cluster_dataset

    summary = cluster_dataset(**api_options(args, ClusterOptions))
    if args.json:
        print_json({k: v for k, v in summary.items() if k != "points"})
        return 0
    from rich.table import Table

    con = console()
    how = (
        f"chosen by silhouette over k = {', '.join(summary['silhouettes'])}"
        if summary["silhouettes"]
        else "given"
    )
    con.print(
        f"{summary['n']} items of {args.data} ({summary['backbone']}): {summary['k']} clusters ({how}); "
        f"adjusted Rand index with the {summary['n_labels']} labels: {summary['ari']:.3f}",
        markup=False,
    )
    print_data_notes(con, {"skipped": summary["skipped"]})
    t = Table(title="Clusters (by size)")
    for col in ("cluster", "items", "most common label", "its share"):
        t.add_column(col, justify="left" if col == "most common label" else "right")
    for c in summary["clusters"]:
        t.add_row(str(c["cluster"]), str(c["size"]), c["majority_label"], fmt(c["majority_share"], 2))
    con.print(t)
    sus = summary["mislabels"]
    t = Table(
        title=f"{len(sus)} suspected mislabels: >= {MISLABEL_SHARE:.0%} of the {K_NEIGHBOURS} nearest "
        "neighbours (cosine) carry another label"
    )
    for col in ("item", "label", "neighbours' label (share)", "disagreeing"):
        t.add_column(col, justify="right" if col == "disagreeing" else "left")
    for m in sus[:SHOWN_SUSPECTS]:
        theirs = f"{m['neighbours_label']} ({m['neighbours_label_share']:.0%})"
        t.add_row(_shown(m["source"], summary["modality"] == "text"), m["label"], theirs, f"{m['score']:.0%}")
    if sus:
        con.print(t)
    if len(sus) > SHOWN_SUSPECTS:
        con.print(f"... and {len(sus) - SHOWN_SUSPECTS} more (--out writes them all)", markup=False)
    if summary["written"]:
        con.print(f"written: {', '.join(summary['written'])}", markup=False)
    return 0
