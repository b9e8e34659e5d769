"""`headstart merge RUN --out DIR`: fold a run's LoRA adapter into its base weights -> a plain fit run.

The merged run stores the changed groups as an ordinary `delta.safetensors` (no adapter layers, nothing
PEFT-specific), so `load_model`, `export --onnx` and `serve` treat it like any fine-tuned run. Its
predictions equal the adapter run's up to float rounding (W + alpha/r B A is summed once instead of per
call); run.json records the adapter it came from.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from headstart.commands import console, print_json, verb
from headstart.config import json_option, option


def merge_run(run: str | Path, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write the merged copy of adapter run `run` to `out`; returns a summary."""
    from headstart.adapters import merge_adapter, refuse_merge
    from headstart.errors import HeadstartError
    from headstart.model import load_model
    from headstart.runs import (
        ADAPTER_FILE,
        DATA_FILE,
        DELTA_FILE,
        METRICS_FILE,
        RUN_FILE,
        DeltaRef,
        load_run_info,
        read_json,
        write_run,
    )
    from headstart.train.save import delta_state

    src, dest = Path(run), Path(out)
    if src.resolve() == dest.resolve():
        raise HeadstartError("--out must differ from the run being merged", fix="give a new folder")
    recorded = load_run_info(src).adapter
    if recorded is not None:
        refuse_merge(recorded, src)  # prompt/prefix tuning: nothing to fold, said before the model loads
    model = load_model(src)
    source = model.run_info
    adapter = source.adapter
    if adapter is None:
        raise HeadstartError(
            f"{src} has no adapter to merge (it already stores plain weights)",
            fix="merge runs trained with --strategy lora",
        )
    bb = merge_adapter(model.backbone)
    groups = set(bb.merged_groups)
    delta = delta_state(bb, groups)
    adapter_file = adapter.file or ADAPTER_FILE
    info = replace(
        source,
        adapter=None,
        files={},
        head=None,
        delta=DeltaRef(DELTA_FILE, whole=False),
        trained_groups=[bb.group_names[i] for i in sorted(groups)],
        merged_from={
            "run": str(src),
            "adapter": adapter.to_dict(),
            "adapter_sha256": source.files.get(adapter_file),
        },
    )
    # The source's other .json and .csv files describe the training and stay true of the merged model
    # (run.json, metrics.json and data.json are written anew; the weights are not copied).
    json_files: dict[str, Any] = {}
    text_files: dict[str, str] = {}
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name in (RUN_FILE, METRICS_FILE, DATA_FILE):
            continue
        if f.suffix == ".json":
            json_files[f.name] = json.loads(f.read_text())
        elif f.suffix == ".csv":
            text_files[f.name] = f.read_text(encoding="utf-8")
    metrics = read_json(src / METRICS_FILE)
    data = read_json(src / DATA_FILE) or None
    saved = write_run(
        dest,
        run=info,
        head=model.head,
        metrics=metrics,
        data=data,
        tensors={DELTA_FILE: delta},
        json_files=json_files,
        text_files=text_files,
        overwrite=overwrite,
    )
    return {
        "run": str(src),
        "out": str(saved),
        "merged_groups": info.trained_groups,
        "adapter_bytes": (src / adapter_file).stat().st_size,
        "delta_bytes": (saved / DELTA_FILE).stat().st_size,
        "supports_onnx": bool(bb.supports_onnx),
    }


@dataclass(kw_only=True)
class MergeOptions:
    """fold a LoRA run's adapter into the base weights: a plain run for export and serving"""

    run: Path = option(help="a run folder trained with --strategy lora")
    out: Path = option(required=True, help="the merged run folder to write")
    overwrite: bool = option(False)
    json: bool = json_option()


@verb(MergeOptions)
def cmd_merge(args: argparse.Namespace) -> int:
    summary = merge_run(args.run, args.out, overwrite=args.overwrite)
    if args.json:
        print_json(summary)
        return 0
    from rich.markup import escape

    con = console()
    con.print(
        f"merged the adapter of {escape(summary['run'])} into {len(summary['merged_groups'])} groups: "
        f"[bold]{escape(summary['out'])}[/bold]"
    )
    con.print(
        f"adapter {summary['adapter_bytes'] / 1e6:.2f} MB -> plain weights of the changed groups "
        f"{summary['delta_bytes'] / 1e6:.1f} MB"
        + ("; `headstart export --onnx` takes it" if summary["supports_onnx"] else "")
    )
    return 0
