"""`headstart` command line: verbs only (parse, call the API, print). Every verb takes --json."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart import __version__
from headstart.commands import add_verbs, console, print_data_notes, print_json, show, verb
from headstart.config import ProbeConfig, backend_option, device_option, from_args, json_option, option

# Set before torch loads (it is imported lazily, below; OpenMP reads it once): with both cores busy,
# spin-waiting threads make small ops many times slower (a Lite0 training step measured 7.5x slower while
# another process ran); sleeping costs little.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(kw_only=True)
class BackbonesOptions:
    """list the available backbones"""

    pattern: str = option("*", positional=True, nargs="?", help="shell-style filter, e.g. '*lite*'")
    all: bool = option(False, help="include tiny test models")
    json: bool = json_option("machine-readable output")


@dataclass
class ProbeOptions(ProbeConfig):
    """linear probe on frozen embeddings (cached): what the backbone is worth"""

    json: bool = json_option("machine-readable output")


@dataclass(kw_only=True)
class PredictOptions:
    """label files (or texts, for a text model) with a saved run

    Label each input with a run's classes. FILEs are always files: for a text model each one is read as
    one UTF-8 text (as training reads .txt class folders). Literal texts go in --text TEXT (repeatable), or
    - reads one text per non-blank line of stdin. An input that cannot be read gets an ERROR line with the
    reason and the exit code is 1.
    """

    run: str = option(help="a run folder (probe or fit), or a stored model: NAME, NAME:v2, NAME@alias")
    files: list[str] | None = option(
        None,
        parse=str,
        positional=True,
        nargs="*",
        metavar="FILE",
        help="files to label (text models: - reads texts from stdin)",
    )
    text: list[str] | None = option(
        None, parse=str, action="append", metavar="TEXT", help="a text to label as given (text models)"
    )
    top: int = option(3, help="classes listed per input in --json output")
    max_pixels: int | None = option(None, help="refuse images larger than this (default 64,000,000)")
    store: Path | None = option(None, help="model store for NAME references (default: $HEADSTART_MODELS)")
    backend: str = backend_option()
    device: str = device_option()
    json: bool = json_option("machine-readable output")


@verb(BackbonesOptions)
def cmd_backbones(args: argparse.Namespace) -> int:
    from headstart.backbones import list_backbones

    specs = list_backbones(args.pattern, include_test=args.all)
    rows = [
        {
            "name": s.name,
            "family": s.family,
            "embed_dim": s.embed_dim,
            "license": s.license,
            "size_mb": round(s.size_mb(), 1) if s.size_mb() else None,
            "installed": s.available(),
            "description": s.description,
        }
        for s in specs
    ]
    if args.json:
        print_json(rows)
        return 0
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Backbones (also: hf:<model-id-or-folder>, timm:<name> with the \\[timm] extra)")
    for col in ("name", "embed dim", "weights MB", "license", "installed", "description"):
        # A name is what the user types next: in a narrow terminal it wraps, it is never cut to "…".
        table.add_column(col, overflow="fold" if col == "name" else "ellipsis")
    for r in rows:
        table.add_row(
            escape(r["name"]),
            str(r["embed_dim"]),
            str(r["size_mb"] or "-"),
            escape(r["license"]),
            "yes" if r["installed"] else "no",
            escape(r["description"]),
        )
    console().print(table)
    return 0


@verb(ProbeOptions)
def cmd_probe(args: argparse.Namespace) -> int:
    from headstart.api import run_probe
    from headstart.commands import print_shape_result

    report = run_probe(from_args(ProbeConfig, args, progress=not args.json))
    return show(args, report, _print_probe if args.task == "classify" else print_shape_result)


def _print_probe(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    con = console()
    m, d = report.metrics, report.data
    counts = d["counts"]
    t = Table(title=f"Data: {d['root']} ({d['layout']}, {d['n_items']} items, {len(report.classes)} classes)")
    t.add_column("class")
    for s in counts:
        t.add_column(s, justify="right")
    for c in report.classes:
        t.add_row(c, *[str(counts[s].get(c, 0)) for s in counts])
    con.print(t)
    print_data_notes(con, d)
    from headstart.imbalance import skewed_in
    from headstart.intervals import fmt_ci

    skew = skewed_in(m)  # skewed classes: balanced accuracy (what chose C) beside accuracy
    r = Table(title=f"Linear probe on {report.backbone} (L2: C={m['C']})")
    for col in (
        "split",
        "n",
        "accuracy (95%)",
        "macro-F1 (95%)",
        "kNN accuracy (95%)",
        *(["balanced acc"] if skew else []),
    ):
        r.add_column(col, justify="right")
    for s in ("val", "test"):
        if s in m:
            bal = [fmt_ci(m[s].get("balanced_accuracy"), m[s].get("balanced_accuracy_ci"))] if skew else []
            r.add_row(
                s,
                str(m[s]["n"]),
                fmt_ci(m[s]["accuracy"], m[s].get("accuracy_ci")),
                fmt_ci(m[s]["macro_f1"], m[s].get("macro_f1_ci")),
                fmt_ci(m[s]["knn_accuracy"], m[s].get("knn_accuracy_ci")),
                *bal,
            )
    con.print(r)
    if skew:
        con.print(skew, markup=False)
    e = m["embed"]
    total = m["backbone_params"] + m["trainable_params"]
    con.print(f"trainable parameters: {m['trainable_params']:,} (head) of {total:,}")
    con.print(f"embeddings: {e['forwards']} computed ({e['backend']}), {e['cache_hits']} from cache")
    ff = m.get("frozen_forward") or {}
    if ff:
        gate = ff.get("gate") or {}
        scores = [
            f"{k} {fmt_ci(gate[k]['accuracy'], gate[k]['accuracy_ci'])}"
            for k in ("fp32", "int8")
            if k in gate
        ]
        shown = f"; probe CV accuracy {', '.join(scores)}" if scores else ""
        con.print(f"frozen forward: {ff.get('precision')} ({escape(str(ff.get('reason')))}){shown}")
    con.print("seconds: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in report.timings.items()))
    if "test" in m:
        t = m["test"]
        con.print(
            f"[bold]test accuracy: {fmt_ci(t['accuracy'], t.get('accuracy_ci'))}[/bold] (95 %, n={t['n']})"
        )
    con.print(f"run saved to [bold]{escape(str(report.run_dir))}[/bold]")


def _stdin_texts() -> list[str]:
    """`-`: one text per non-blank line of stdin, read as UTF-8 whatever the locale."""
    from headstart.data.text import NotUTF8, decode_utf8
    from headstart.errors import HeadstartError

    try:
        text = decode_utf8(sys.stdin.buffer.read())
    except NotUTF8 as e:
        raise HeadstartError(
            f"stdin (-) is {e}", fix="pipe UTF-8 text (e.g. through `iconv -f latin1 -t utf-8`)"
        ) from None
    return [line for line in text.splitlines() if line.strip()]


def _shown(text: str, width: int = 60) -> str:
    """A text as one short line for the plain output (the --json output keeps it whole)."""
    one = " ".join(text.split())
    if not one:
        return repr(text)  # an empty or blank --text still shows as something
    return one if len(one) <= width else one[: width - 1] + "…"


def _predict_inputs(args: argparse.Namespace, model: Any) -> list[tuple[dict[str, Any], Any]]:
    """(how each input is named in the output, what the backbone reads or the BadInput why not).

    Positional inputs are always files: for a text model each file is read as one text (never its name
    classified); literal texts come only through --text or `-` (stdin lines), so nothing is guessed."""
    from headstart.errors import HeadstartError

    modality = model.modality
    if modality != "text" and (args.text or "-" in args.files):
        raise HeadstartError(
            f"--text and - (texts from stdin) are for text models; {args.run} is a {modality} model",
            fix=f"pass the {modality} files to label",
        )
    inputs: list[tuple[dict[str, Any], Any]] = []
    for f in args.files:
        if f == "-":
            inputs += [({"text": t, "line": n}, t) for n, t in enumerate(_stdin_texts(), 1)]
        else:
            inputs.append(({"file": f}, model.read_files([f])[0]))
    inputs += [({"text": t}, t) for t in args.text]
    return inputs


@verb(PredictOptions)
def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from headstart.commands import run_folder
    from headstart.errors import HeadstartError
    from headstart.features import forward_device
    from headstart.model import load_model

    forward_device(args.backend, args.device)  # an absent device is refused before the run is read
    args.text = args.text or []  # --text is repeatable: none given is no text
    if not args.files and not args.text:
        raise HeadstartError(
            f"nothing to label: no FILE given for {args.run}",
            fix="headstart predict RUN FILE... (text models also take --text TEXT, or - for stdin lines)",
        )
    if args.top < 1:
        raise HeadstartError(f"--top {args.top} lists no class", fix="give --top 1 or more")
    run, _ = run_folder(args.run, args.store)
    from headstart.shapes import shape_of_run

    shape = shape_of_run(run)
    if shape is not None:  # a task shape's answers: label sets, numbers, tagged spans, generated text
        return _predict_shape(args, shape.predictor(run, device=args.device, backend=args.backend))
    model = load_model(run)
    classes = model.classes
    inputs = _predict_inputs(args, model)
    usable = [i for i, (_, src) in enumerate(inputs) if isinstance(src, str)]
    sources = [inputs[i][1] for i in usable]
    proba, kept, bad = (
        model.predict_proba(sources, backend=args.backend, device=args.device, max_pixels=args.max_pixels)
        if sources
        else (None, [], {})
    )
    answers = {}
    for k, p in zip(kept, proba if proba is not None else [], strict=True):
        top = np.argsort(-p)[: args.top]
        answers[usable[k]] = {
            "label": classes[top[0]],
            "probability": float(p[top[0]]),
            "top": [{"label": classes[j], "probability": float(p[j])} for j in top],
        }
    results = _joined(inputs, answers, bad)
    return _print_results(args, results, model.modality, "labeled", _class_line)


def _predict_shape(args: argparse.Namespace, predictor: Any) -> int:
    """predict for a task shape (headstart.shapes): each answer is the shape's JSON; the plain output shows
    its `summary`. Inputs read as for a classifier (files always files; texts by --text or -)."""
    inputs = _predict_inputs(args, predictor)
    usable = [i for i, (_, src) in enumerate(inputs) if isinstance(src, str)]
    answers, kept, bad = predictor.answer([inputs[i][1] for i in usable]) if usable else ([], [], {})
    by_index = {usable[k]: a for k, a in zip(kept, answers, strict=True)}
    results = _joined(inputs, by_index, bad)
    return _print_results(args, results, predictor.modality, "answered", lambda r: str(r.get("summary", "")))


def _class_line(r: dict[str, Any]) -> str:
    return f"{r['label']}\t{r['probability']:.3f}"


def _joined(
    inputs: list[tuple[dict[str, Any], Any]], answers: dict[int, dict[str, Any]], bad: dict[str, str]
) -> list[dict[str, Any]]:
    """One result per input, in order: how it is named plus its answer, or plus the reason it has none."""
    from headstart.errors import BadInput

    results: list[dict[str, Any]] = []
    for i, (named, src) in enumerate(inputs):
        if i in answers:
            results.append({**named, **answers[i]})
        else:
            reason = src.reason if isinstance(src, BadInput) else bad.get(src, "unreadable")
            results.append({**named, "error": reason})
    return results


def _print_results(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    modality: str,
    done: str,
    answer_line: Callable[[dict[str, Any]], str],
) -> int:
    """predict's output: JSON, or a line per input (`answer_line` of its answer: a class and its
    probability, or a shape's summary); exit 1 when an input got no answer, with the fix on stderr."""
    n_bad = sum("error" in r for r in results)
    if args.json:
        print_json(results)
        return 1 if n_bad else 0
    for r in results:
        shown = r["file"] if "file" in r else _shown(r["text"])
        print(f"{shown}\tERROR\t{r['error']}" if "error" in r else f"{shown}\t{answer_line(r)}")
    if n_bad:
        fix = (
            "give existing UTF-8 text files (one file = one text); pass literal texts with --text TEXT, "
            "or - for one text per line of stdin"
            if modality == "text"
            else "check the files listed with ERROR"
        )
        print(
            f"error: {n_bad} of {len(results)} input(s) not {done} (ERROR lines)\n  fix: {fix}",
            file=sys.stderr,
        )
    return 1 if n_bad else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="headstart",
        description="Transfer learning for small labeled datasets: measure what a pretrained backbone is "
        "worth on your data, adapt it, and prove it.",
    )
    p.add_argument("--version", action="version", version=f"headstart {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    add_verbs(sub, __name__)  # backbones, probe, predict: then every module of headstart.commands
    from headstart.commands import register_all

    register_all(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from headstart.errors import HeadstartError

    try:
        return int(args.func(args) or 0)
    except HeadstartError as e:
        if getattr(args, "json", False):
            print_json({"error": e.message, "fix": e.fix})
        else:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`| head`): what it wanted was printed; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
