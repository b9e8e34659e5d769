"""`headstart evaluate RUN [DATA]`: metrics, calibration, OOD detection, latency and memory of a run."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.commands import (
    api_options,
    console,
    fmt,
    print_json,
    print_shape_result,
    run_folder,
    show,
    verb,
)
from headstart.config import backend_option, device_option, json_option, option


@dataclass(kw_only=True)
class EvaluateOptions:
    """metrics, calibration (temperature on val), OOD AUROC, latency and memory of a run

    Evaluate a run. Without DATA the run's own split (split.csv) is used: the temperature is refitted on its
    val rows (kept at T = 1, with a warning and the reason, when val has too few errors or scaling does not
    help on held-out val folds) and calibration.json and evaluation.json are written into the run. With
    DATA (a class-folder DATA is evaluated whole; DATA with train/ val/ test/, or a manifest with a split
    column, gives its --split) the run's own T is used as it stands and nothing is written into the run:
    the result is printed, and written to --out FILE when given. Items with a slice (a `group` column of a
    manifest or text table, or --slices FILE) get every score per slice, with its gap to overall.
    """

    run: str = option(
        api=False,
        help="a run folder (probe or fit), or a stored model: NAME, NAME:v2, NAME@alias (read-only)",
    )
    data: Path | None = option(
        None, positional=True, nargs="?", help="labeled data to evaluate on (default: the run's split)"
    )
    split: str = option("test", choices=("train", "val", "test"))
    ood: Path | None = option(None, help="folder of out-of-distribution files (any layout)")
    latency: bool = option(True, help="skip the latency measurement")
    backend: str = backend_option()
    device: str = device_option()
    store: Path | None = option(
        None, api=False, help="model store for NAME references (default: $HEADSTART_MODELS)"
    )
    out: Path | None = option(
        None,
        metavar="FILE",
        help="also write the evaluation JSON to FILE (the only file written when DATA is given)",
    )
    slices: Path | None = option(
        None,
        metavar="FILE",
        help="CSV naming each item's slice: path,group (texts: text,group); default: the data's group column",
    )
    tta: int = option(
        0,
        metavar="K",
        help="images: also score each item averaged over K augmented views (test-time augmentation), "
        "against the plain prediction, with what one prediction then costs",
    )
    json: bool = json_option("machine-readable output")


def _print_json_result(res: dict[str, Any]) -> None:
    if res["calibration"]["status"] == "skipped":  # stdout is the JSON; the warning goes beside it
        print(
            f"warning: temperature scaling not applied (T=1): {res['calibration']['reason']}",
            file=sys.stderr,
        )
    print_json(res)


@verb(EvaluateOptions)
def cmd_evaluate(args: argparse.Namespace) -> int:
    from headstart.evaluate import evaluate_run
    from headstart.features import forward_device

    forward_device(args.backend, args.device)  # before a stored model's files are verified
    run, stored = run_folder(args.run, args.store)
    res = evaluate_run(run, save=not stored, **api_options(args, EvaluateOptions))
    if res.get("task", "classify") != "classify":  # a task shape's scores (headstart.shapes)
        return show(args, res, print_shape_result)
    if args.json:
        _print_json_result(res)
        return 0
    from rich.markup import escape
    from rich.table import Table

    from headstart.runs import EVALUATION_FILE

    con = console()
    m, cal = res["metrics"], res["calibration"]
    con.print(f"[bold]{escape(res['data'])}[/bold]: {res['n']} items (on {res['device']})")
    if res["skipped"]:
        con.print(f"[yellow]skipped {len(res['skipped'])} unreadable item(s)[/yellow]")
    if res["unknown_labels"]["n"]:
        labels = ", ".join(res["unknown_labels"]["labels"])
        con.print(
            f"[yellow]left out {res['unknown_labels']['n']} item(s) with unknown labels: {labels}[/yellow]"
        )
    from headstart.intervals import fmt_ci

    con.print(
        f"accuracy [bold]{fmt_ci(m['accuracy'], m.get('accuracy_ci'))}[/bold]   "
        f"macro-F1 [bold]{fmt_ci(m['macro_f1'], m.get('macro_f1_ci'))}[/bold]   (95% intervals)"
    )

    t = Table(title="Per class")
    for col in ("class", "precision", "recall", "F1", "support"):
        t.add_column(col, justify="right" if col != "class" else "left")
    for c, r in m["per_class"].items():
        t.add_row(escape(c), fmt(r["precision"]), fmt(r["recall"]), fmt(r["f1"]), str(r["support"]))
    con.print(t)

    _print_slices(con, res.get("slices"))
    fitted = f"fitted on {cal['n_fit']} val items" if cal["fitted_on"] else "the run's own T, not refitted"
    if cal["status"] == "skipped":
        con.print(
            f"[yellow]warning: temperature scaling not applied (T=1): {escape(cal['reason'])}[/yellow]\n"
            f"calibration (ECE, 15 bins): {fmt(cal['ece_before'])} without scaling"
        )
    else:
        con.print(
            f"calibration (ECE, 15 bins): {fmt(cal['ece_before'])} -> [bold]{fmt(cal['ece_after'])}[/bold] "
            f"with T={fmt(cal['temperature'], 2)} ({fitted})"
        )
    ood = res["ood"]
    if ood:
        line = f"OOD {escape(ood['path'])} ({ood['n']} files): AUROC max-softmax {fmt(ood['auroc_msp'])}, "
        line += f"energy {fmt(ood['auroc_energy'])}"
        if "accuracy" in ood:
            line += f"; accuracy on its {ood['n_labeled']} labeled files {fmt(ood['accuracy'])}"
        con.print(line)
    _print_latency_and_tta(con, res)
    con.print(f"peak memory (RSS): {fmt(res['memory']['peak_rss_mb'], 0)} MB")
    if res["mistakes"]:
        # Every recorded mistake is shown, and the title counts them against all wrong predictions.
        shown = res["mistakes"]
        conf_matrix = m.get("confusion") or []
        n_wrong = m["n"] - sum(row[i] for i, row in enumerate(conf_matrix)) if conf_matrix else len(shown)
        of = f"top {len(shown)} of {n_wrong}" if n_wrong > len(shown) else f"all {len(shown)}"
        w = Table(title=f"Most confident mistakes ({of})")
        for col in ("source", "label", "predicted", "confidence"):
            w.add_column(col, overflow="fold")
        for x in shown:
            w.add_row(escape(str(x["source"])), escape(x["label"]), escape(x["pred"]), fmt(x["confidence"]))
        con.print(w)
    written = [str(args.out)] if args.out else []
    if not stored and args.data is None:
        written.insert(0, str(Path(res["run"]) / EVALUATION_FILE))
    if written:
        con.print(f"written: {escape(', '.join(written))}")
    elif stored:
        con.print("stored versions are never modified: nothing written (use --out FILE or --json to keep it)")
    else:
        con.print("other data: nothing written into the run (use --out FILE or --json to keep the results)")
    return 0


def _print_latency(con: Any, lat: dict[str, Any]) -> None:
    con.print(
        f"latency ({lat['backend']} on {lat.get('device', 'cpu')}, {lat['torch_threads']} thread(s)): "
        f"one item p50 {fmt(lat['single_p50_ms'], 1)} ms, p95 {fmt(lat['single_p95_ms'], 1)} ms; "
        f"batch 32 {fmt(lat['batch32_per_item_ms'], 2)} ms/item; "
        f"with decode {fmt(lat['end_to_end_p50_ms'], 1)} ms"
    )
    if "onnx_single_p50_ms" in lat:
        con.print(
            f"latency (ONNX Runtime backbone on the CPU, what predict uses there): one item p50 "
            f"{fmt(lat['onnx_single_p50_ms'], 1)} ms, p95 {fmt(lat['onnx_single_p95_ms'], 1)} ms; "
            f"batch 32 {fmt(lat['onnx_batch32_per_item_ms'], 2)} ms/item"
        )


def _print_latency_and_tta(con: Any, res: dict[str, Any]) -> None:
    if res["latency"]:
        _print_latency(con, res["latency"])
    if res.get("tta"):
        _print_tta(con, res["tta"])


def _print_tta(con: Any, tta: dict[str, Any]) -> None:
    from headstart.intervals import fmt_ci

    g, lat = tta["gain"], tta["latency"]
    verdict = "beyond noise" if tta["beyond_noise"] else "a tie: inside the noise"
    con.print(
        f"test-time augmentation ({tta['k']} views): accuracy {fmt_ci(tta['accuracy'], tta['accuracy_ci'])} "
        f"against {fmt(tta['plain_accuracy'])} plain, {fmt_ci(g['diff'], g['ci'])} paired, p {fmt(g['p'])} "
        f"({verdict}); one image {fmt(lat['tta_p50_ms'], 1)} ms against {fmt(lat['plain_p50_ms'], 1)} ms "
        f"({fmt(lat['ratio'], 1)}x, {lat['backend']})"
    )


def _print_slices(con: Any, sl: dict[str, Any] | None) -> None:
    """Every headline score per slice with its gap to overall; slices below overall beyond noise in red."""
    if not sl:
        return
    from rich.markup import escape
    from rich.table import Table

    from headstart.intervals import fmt_ci
    from headstart.slices import SCORE_NAMES

    t = Table(title=f"Per slice ({escape(sl['origin'])}; gap = slice - overall, 95% intervals)")
    for col in ("slice", "n", "accuracy", "gap", "macro-F1", "gap", "below overall"):
        t.add_column(col, justify="left" if col in ("slice", "below overall") else "right")
    for name, r in sl["by_slice"].items():
        below = ", ".join(SCORE_NAMES.get(s, s) for s in r["below_overall"])
        t.add_row(
            escape(name),
            str(r["n"]),
            fmt_ci(r["accuracy"], r["accuracy_ci"]),
            fmt_ci(r["accuracy_gap"], r["accuracy_gap_ci"]),
            fmt_ci(r["macro_f1"], r["macro_f1_ci"]),
            fmt_ci(r["macro_f1_gap"], r["macro_f1_gap_ci"]),
            f"[red]{escape(below)}[/red]" if below else "-",
        )
    con.print(t)
    if sl["n_ungrouped"]:
        con.print(f"{sl['n_ungrouped']} item(s) are in no slice (counted in the overall scores only)")
