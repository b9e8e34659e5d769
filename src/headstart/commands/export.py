"""`headstart export RUN --onnx`: one ONNX file with its model card, checked against PyTorch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from headstart.commands import console, print_json, verb
from headstart.config import json_option, option


@dataclass(kw_only=True)
class ExportOptions:
    """export a run to ONNX (logits + calibrated probabilities), parity-checked on real inputs"""

    run: Path = option(help="a run folder (probe or fit)")
    onnx: bool = option(False, required=True, help="export format (ONNX, opset 17)")
    out: Path | None = option(None, help="output .onnx file (default: RUN/model.onnx)")
    quantize: bool = option(
        False, help="also write a dynamic-int8 copy (*.int8.onnx) and report its test accuracy and latency"
    )
    check: list[Path] | None = option(
        None,
        parse=Path,
        nargs="+",
        metavar="FILE",
        help="inputs for the parity check (default: the run's own test/val files, up to 32)",
    )
    json: bool = json_option("machine-readable output")


@verb(ExportOptions)
def cmd_export(args: argparse.Namespace) -> int:
    from headstart.export import export_onnx_model

    report = export_onnx_model(
        args.run, args.out, quantize=args.quantize, check_inputs=[str(f) for f in args.check or []] or None
    )
    if args.json:
        print_json(report)
        return 0
    from rich.markup import escape

    con = console()
    par = report["parity"]
    con.print(f"wrote [bold]{escape(report['onnx'])}[/bold] ({report['bytes'] / 1e6:.1f} MB) and its card")
    agree = "" if report.get("task") == "regress" else f"top-1 agreement {par['top1_agreement']:.0%}, "
    con.print(
        f"parity with PyTorch on {par['n']} real inputs ({par['inputs']}): {agree}"
        f"max |output diff| {par['max_abs_diff']:.2e}"
    )
    g = par.get("greedy")  # a language model's export (a mismatch is refused, nothing written)
    if g:
        con.print(
            f"greedy decoding through ONNX Runtime ({g['prompts']} prompts, {g['new_tokens']} new tokens): "
            "the same tokens as PyTorch"
        )
    q = report.get("quantized")
    if q:
        from headstart.intervals import fmt_ci

        con.print(f"int8 ({q['method']}): [bold]{escape(q['onnx'])}[/bold] ({q['bytes'] / 1e6:.1f} MB)")
        lat = ", ".join(f"{k} {v:.2f} ms" for k, v in q["latency_single_p50_ms"].items())
        con.print(f"  one-item latency p50: {lat}")
        t = q.get("test")
        if t:
            d = t["int8_minus_float"]
            con.print(
                f"  test accuracy (n={t['n']}, 95 % Wilson): float "
                f"{fmt_ci(t['accuracy_float'], t['accuracy_float_ci'])}, int8 "
                f"{fmt_ci(t['accuracy_int8'], t['accuracy_int8_ci'])}; int8 - float "
                f"{fmt_ci(d['diff'], d['ci'])}, McNemar p {d['p']:.2g}"
            )
        else:
            con.print("  no test split files found: accuracy change not measured")
        if q.get("warning"):
            con.print(f"  [yellow]warning: {escape(q['warning'])}[/yellow]")
    return 0
