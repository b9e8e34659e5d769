"""Verdicts that need no fine-tuning: `rank`, `curve`, `leakage`, `domain`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.commands import api_options, console, fmt, print_data_notes, print_json, verb
from headstart.config import backend_option, device_option, json_option, option

DATA_HELP = "image folder (class sub-folders, or train/ val/ test/) or a CSV/JSONL manifest"


def _sizes(text: str) -> list[int]:
    """--sizes: comma-separated labels per class."""
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give whole numbers, comma-separated (e.g. 5,10,20)"
        ) from None


@dataclass(kw_only=True)
class _Embeds:
    """What the verbs here that embed the data share (closing each one's list)."""

    data: Path = option(help=DATA_HELP)
    backend: str = backend_option()
    device: str = device_option()
    seed: int = option(0, help="split and sampling seed")
    json: bool = json_option("machine-readable output")


@dataclass(kw_only=True)
class RankOptions(_Embeds):
    """rank backbones for a dataset without fine-tuning (LogME, kNN, probe)"""

    backbones: str = option(
        "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2", help="comma-separated backbone names"
    )
    estimate_finetune: bool = option(
        True, flag="--no-estimate", help="skip timing a fine-tuning step per backbone"
    )


@dataclass(kw_only=True)
class CurveOptions(_Embeds):
    """label-efficiency curve: probe accuracy vs labels per class"""

    backbone: str = option("efficientnet_lite0")
    seeds: int = option(3, help="random subsets per point")
    sizes: list[int] | None = option(
        None, parse=_sizes, help="comma-separated labels per class (default 5,10,20,50,... up to the data)"
    )
    baseline: str = option(
        "auto",
        choices=("auto", "pixels", "tfidf", "logmel", "scratch", "none"),
        help="auto (default): the data's no-backbone baseline, pixels for images (logistic regression on "
        "16x16 pixels), tfidf for text (TF-IDF + logistic regression), logmel for audio (log-mel "
        "statistics + logistic regression); scratch: train the architecture from random init (slow)",
    )
    scratch_epochs: int | None = option(None, help="epochs of each from-scratch run")
    out: Path | None = option(None, help="folder for curve.json and curve.png")


@dataclass(kw_only=True)
class LeakageOptions:
    """exact and near-duplicate items across train/val/test"""

    data: Path = option(help=DATA_HELP)
    max_distance: int | None = option(
        None, help="pHash bits (of 64) that may differ for a near copy (default 6)"
    )
    dedupe: Path | None = option(None, help="write the split without later-split copies as OUT (.csv)")
    show: int = option(20, help="pairs listed per table")
    seed: int = option(0, help="split and sampling seed")
    json: bool = json_option("machine-readable output")


@dataclass(kw_only=True)
class DomainOptions(_Embeds):
    """how far the data is from the backbone's pretraining data (0..1)"""

    backbone: str = option("efficientnet_lite0")
    sample: int = option(300, help="items read (seeded sample)")


@verb(RankOptions, own_first=True)
def cmd_rank(args: argparse.Namespace) -> int:
    from headstart.verdicts.rank import rank_backbones, ranking_summary

    names = [b.strip() for b in args.backbones.split(",") if b.strip()]
    rows = rank_backbones(**api_options(args, RankOptions, backbones=names))
    summary = ranking_summary(rows)
    if args.json:
        print_json({"rows": rows, "summary": summary})
        return 0
    from rich.table import Table

    from headstart.intervals import fmt_ci

    t = Table(title=f"Backbones ranked for {args.data} (LogME; kNN and probe on train+val, 95% intervals)")
    for col in ("backbone", "LogME", "kNN LOO acc", "probe CV acc", "embed s", "score s", "fine-tune est. s"):
        t.add_column(col, justify="left" if col == "backbone" else "right", no_wrap=col == "backbone")
    for r in rows:
        t.add_row(
            r["backbone"],
            fmt(r["logme"], 4),
            fmt_ci(r["knn_accuracy"], r.get("knn_accuracy_ci")),
            fmt_ci(r["probe_cv_accuracy"], r.get("probe_cv_accuracy_ci"))
            + (" (tie with best)" if r.get("probe_cv_tied_with_best") and len(rows) > 1 else ""),
            fmt(r["embed_s"], 1),
            fmt(r["score_s"], 1),
            fmt(r["finetune_estimate_s"], 0),
        )
    con = console()
    con.print(t)
    line = f"ranking took {summary['rank_s']:.1f} s"
    if summary["finetune_estimate_s"] is not None:
        line += (
            f"; fine-tuning all {len(rows)} would take about {summary['finetune_estimate_s']:.0f} s "
            f"(estimate: {summary['estimate']})"
        )
    con.print(line, markup=False)
    return 0


@verb(CurveOptions, own_first=True)
def cmd_curve(args: argparse.Namespace) -> int:
    from headstart.verdicts.curve import intervals, label_curve, summarise

    out = args.out or Path("runs") / f"curve-{Path(args.data).name}-{args.backbone.replace(':', '_')}"
    curve = label_curve(**api_options(args, CurveOptions, out=out))
    if args.json:
        print_json({**curve, "intervals": intervals(curve), "out": str(out)})
        return 0
    from rich.table import Table

    summ, ci = summarise(curve), intervals(curve)
    t = Table(
        title=f"Test accuracy vs labels per class: mean [95% interval on {curve.get('n_test')} test items] "
        f"± std over {args.seeds} seeds"
    )
    t.add_column("labels/class", justify="right")
    for m in summ:
        t.add_column(m if m != "probe" else f"probe ({curve['backbone']})", justify="right")
    for i, k in enumerate(curve["labels_per_class"]):
        t.add_row(
            str(k),
            *[
                f"{summ[m][i][1]:.3f} [{ci[m][i][1]:.2f}, {ci[m][i][2]:.2f}] ± {summ[m][i][2]:.3f}"
                for m in summ
            ],
        )
    con = console()
    con.print(t)
    con.print(f"curve.json and curve.png written to {out}", markup=False)
    return 0


@verb(LeakageOptions)
def cmd_leakage(args: argparse.Namespace) -> int:
    from headstart.data import load_dataset
    from headstart.data.leakage import PHASH_MAX_DISTANCE, dedupe, find_leaks

    ds = load_dataset(args.data, seed=args.seed)
    report = find_leaks(
        ds, max_distance=PHASH_MAX_DISTANCE if args.max_distance is None else args.max_distance
    )
    written = None
    if args.dedupe:
        written = _write_split_manifest(dedupe(ds, report), args.dedupe)
    if args.json:
        print_json({**report, "deduped_manifest": str(written) if written else None, "skipped": ds.skipped})
        return 0
    from rich.table import Table

    con = console()
    con.print(
        f"{len(ds.items)} items: {report['n_exact']} exact and {report['n_near']} near copies across splits",
        markup=False,
    )
    print_data_notes(con, {"skipped": ds.skipped})  # copies within a split were kept once: listed here
    for kind in ("exact", "near"):
        if report[kind]:
            t = Table(title=f"{kind} copies (b is the later-split copy)")
            for col in ("a", "b", "splits", *(["bits"] if kind == "near" else [])):
                t.add_column(col)
            for r in report[kind][: args.show]:
                t.add_row(
                    r["a"], r["b"], "/".join(r["splits"]), *([str(r["distance"])] if kind == "near" else [])
                )
            con.print(t)
    if written:
        con.print(f"deduplicated split written to {written}", markup=False)
    return 0


def _write_split_manifest(ds: Any, out: Path) -> Path:
    """The deduplicated dataset as a path,label,split CSV manifest (paths absolute; files not copied)."""
    import csv
    import io

    from headstart.fileio import atomic_write_text

    out = Path(out)
    if out.suffix != ".csv":
        out = out / "manifest.csv"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "split"])
    w.writerows((str(Path(it.path).resolve()), it.label, it.split) for it in ds.items)
    atomic_write_text(out, buf.getvalue())
    return out


@verb(DomainOptions, own_first=True)
def cmd_domain(args: argparse.Namespace) -> int:
    from headstart.verdicts.domain import domain_distance

    r = domain_distance(**api_options(args, DomainOptions))
    if args.json:
        print_json(r)
        return 0
    con = console()
    con.print(
        f"domain distance of {args.data} from {r['backbone']}'s pretraining: "
        f"[bold]{r['distance']:.3f}[/bold] (0 = alike, 1 = unrelated; n={r['n']})"
    )
    for k, v in r["terms"].items():
        con.print(f"  {k}: {fmt(v)}")
    if r["classifier"]:
        c = r["classifier"]
        con.print(
            f"  pretrained classifier (not scored): confidence {c['confidence']:.3f}, entropy "
            f"{c['entropy']:.3f}, {c['effective_classes']:.1f} effective classes"
        )
    con.print(f"  formula: {r['formula']}", markup=False)
    return 0
