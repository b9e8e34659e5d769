"""Embeddings as products: `embed` (a dataset's embeddings to a file), `search` (nearest items of a file)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.commands import api_options, console, fmt, print_data_notes, show, verb
from headstart.config import backend_option, device_option, json_option, option


@dataclass(kw_only=True)
class EmbedOptions:
    """export the embeddings of every item of a dataset (.parquet, or .npy with sidecars)

    The format is the suffix of --out: F.parquet (columns id, source, label, split, vector; the backbone,
    dim and modality in the file's metadata), or F.npy (the matrix) with F.npy.index.csv and F.npy.meta.json.
    Embeddings come from the feature cache when they are there. `headstart search F QUERY` searches it.
    """

    data: Path = option(
        help="image folder (class sub-folders, or train/ val/ test/), a CSV/JSONL manifest, or a text table"
    )
    backbone: str = option("efficientnet_lite0", help="registered name, hf:<id-or-dir>, timm:<name>")
    out: Path = option(required=True, help="the file to write: .parquet, or .npy (+ .index.csv, .meta.json)")
    overwrite: bool = option(False, help="replace an existing --out")
    backend: str = backend_option()
    device: str = device_option()
    seed: int = option(0, help="split seed (the split column)")
    json: bool = json_option("machine-readable output")


@dataclass(kw_only=True)
class SearchOptions:
    """the items of an embeddings file nearest to each query (cosine similarity)

    QUERY: an image or audio file, or for a text index a text (a query naming an existing file is that
    file's text). The query is embedded by the index's own backbone. With faiss installed (the [search]
    extra) and 50,000 items or more, an HNSW graph answers (approximate; built once and cached); otherwise,
    or with --exact, an exact search.
    """

    index: Path = option(help="an embeddings file written by `headstart embed` (.parquet or .npy)")
    queries: list[str] = option(
        parse=str, nargs="+", metavar="QUERY", help="files, or texts for a text index"
    )
    k: int = option(10, help="nearest items returned per query")
    exact: bool = option(False, help="exact search, even where an HNSW graph would answer")
    backend: str = backend_option()
    device: str = device_option()
    json: bool = json_option("machine-readable output")


@verb(EmbedOptions)
def cmd_embed(args: argparse.Namespace) -> int:
    from headstart.explore.index import export_embeddings

    def table(r: dict[str, Any]) -> None:
        from rich.markup import escape

        con = console()
        e = r["embed"]
        con.print(
            f"wrote {r['n']} embeddings of {r['dim']} ({r['modality']}, {escape(r['backbone'])}) to "
            f"[bold]{escape(r['out'])}[/bold] ({e['cache_hits']} from the cache, {e['forwards']} computed)"
        )
        for p in r["files"][1:]:
            con.print(f"  and {p}", markup=False)
        print_data_notes(con, r)

    return show(args, export_embeddings(**api_options(args, EmbedOptions)), table)


@verb(SearchOptions)
def cmd_search(args: argparse.Namespace) -> int:
    from headstart.explore.index import search

    def table(r: dict[str, Any]) -> None:
        from rich.markup import escape
        from rich.table import Table

        con = console()
        for res in r["results"]:
            t = Table(title=f"nearest to {_short(res['query'])}")
            for col in ("rank", "score", "source", "label", "split"):
                t.add_column(col, justify="right" if col in ("rank", "score") else "left")
            for h in res["hits"]:
                t.add_row(str(h["rank"]), fmt(h["score"]), _short(h["source"]), h["label"], h["split"])
            con.print(t)
        for q, why in r["errors"].items():
            con.print(f"[yellow]query not searched:[/yellow] {escape(_short(q))}: {escape(why)}")
        ef = f", efSearch {r['ef_search']}" if r["ef_search"] else ""
        con.print(f"{r['n_items']} items of {r['index']}, searched by {r['backend']}{ef}", markup=False)

    return show(args, search(**api_options(args, SearchOptions)), table)


def _short(text: str, width: int = 80) -> str:
    """One line of at most `width` characters (texts as sources or queries can be paragraphs)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"
