"""`headstart distill RUN --student B`: knowledge distillation from a trained run into a smaller backbone."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.commands import api_options, console, show, verb
from headstart.config import device_option, json_option, option, precision_option


def _fmt_bytes(n: int | None) -> str:
    return "-" if not n else f"{n / 1e6:.2f} MB"


def _fmt_ms(side: dict[str, Any], key: str) -> str:
    v = (side.get("latency") or {}).get(key)
    return "-" if v is None else f"{v:.1f} ms"


@dataclass(kw_only=True)
class DistillOptions:
    """train a smaller student backbone on a trained run's softened outputs (knowledge distillation)"""

    run: Path = option(api=False, help="the teacher: a run folder written by probe or fit")
    student: str = option(required=True, help="student backbone, e.g. efficientnet_lite0")
    strategy: str = option(
        "lp-ft",
        help="how the student trains (as for fit); `head` trains the head by gradient on the soft targets",
    )
    unlabeled: Path | None = option(
        None, help="extra unlabeled inputs (a folder): the student learns the teacher's outputs on them"
    )
    temperature: float | None = option(None, help="softening temperature T (default 4)")
    alpha: float | None = option(
        None, help="weight of the soft (teacher) loss, 1 - alpha on the labels (default 0.8)"
    )
    epochs: int | None = option(None, help="total epochs (the recipe's phases are scaled to it)")
    lr: float | None = option(None, help="head learning rate; groups follow the recipe")
    batch_size: int | None = option(None)
    augment: bool | None = option(
        None,
        off_help="no augmentation: the student sees exactly the inputs the teacher's targets were computed "
        "on",
    )
    out: Path | None = option(None, help="student run folder (default: runs/<time>-distill-<student>)")
    overwrite: bool = option(False)
    seed: int = option(0)
    backend: str = option("auto", choices=("auto", "torch", "onnx"))
    latency_repeats: int = option(20, help="timed single-item forwards per model (0: skip)")
    device: str = device_option()
    precision: str = precision_option()
    json: bool = json_option()


@verb(DistillOptions)
def cmd_distill(args: argparse.Namespace) -> int:
    from headstart.train.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, distill

    temperature = DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
    alpha = DEFAULT_ALPHA if args.alpha is None else args.alpha
    report = distill(args.run, **api_options(args, DistillOptions, temperature=temperature, alpha=alpha))
    return show(args, report, _print_distill)


def _print_distill(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from headstart.intervals import fmt_ci

    t, s = report.teacher, report.student
    tab = Table(title=f"distillation: {t['backbone']} -> {s['backbone']}")
    for col in ("", "teacher", "student"):
        tab.add_column(col, justify="right")
    rows = [
        ("backbone", t["backbone"], s["backbone"]),
        (
            f"test accuracy (n={t['test_n']}, 95%)",
            fmt_ci(t["test_accuracy"], t.get("test_accuracy_ci")),
            fmt_ci(s["test_accuracy"], s.get("test_accuracy_ci")),
        ),
        ("parameters", f"{t['params']:,}", f"{s['params']:,}"),
        ("model size (float32)", _fmt_bytes(t["model_bytes"]), _fmt_bytes(s["model_bytes"])),
        ("run folder stores", _fmt_bytes(t["stored_bytes"]), _fmt_bytes(s["stored_bytes"])),
        ("latency, 1 item (p50)", _fmt_ms(t, "single_p50_ms"), _fmt_ms(s, "single_p50_ms")),
        ("per item in a batch of 32", _fmt_ms(t, "batch32_per_item_ms"), _fmt_ms(s, "batch32_per_item_ms")),
    ]
    for tp in ("throughput_per_s",):
        if t.get(tp) and s.get(tp):
            rows.append(("throughput", f"{t[tp]:.0f} items/s", f"{s[tp]:.0f} items/s"))
    for r in rows:
        tab.add_row(*r)
    con = console()
    con.print(tab)
    o = report.objective
    con.print(
        f"student agrees with the teacher on {report.agreement:.1%} of the test items; "
        f"T={o['temperature']:g}, alpha={o['alpha']:g}, {o['n_unlabeled']} unlabeled inputs, "
        f"strategy {report.fit['strategy']}, trained {report.fit['train_s']:.1f} s"
    )
    d = report.student_vs_teacher
    if d.get("n"):
        con.print(
            f"student minus teacher: {d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] on "
            f"{d['n']} paired items, McNemar p={d['p']:.2g}: "
            + ("a tie (inside the noise)" if d["verdict"] == "tie" else f"the student is {d['verdict']}"),
            markup=False,
        )
    for w in report.warnings:
        con.print(f"[yellow]warning:[/yellow] {escape(w)}")
    con.print(f"student run saved to [bold]{escape(str(report.run_dir))}[/bold] (distill.json inside)")
