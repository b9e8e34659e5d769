"""The folder of a generate run (run.json with `task: generate`, the adapter or tuned weights, split.csv of
the pairs, behaviour.json with its sha256 recorded) and what fit and evaluate print of it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.intervals import fmt_ci

if TYPE_CHECKING:
    from headstart.config import FitConfig
    from headstart.shapes import ShapeReport
    from headstart.shapes.generate_data import Pairs

#: (key, label) of the scores the tables show, in order.
SHOWN = (
    ("loss", "loss / response token"),
    ("perplexity", "perplexity"),
    ("exact_match", "exact match"),
    ("rouge_l", "ROUGE-L F1"),
)


def score_table(m: dict[str, Any], split: str) -> tuple[str, list[str], list[list[str]]]:
    """(title, columns, rows): each score before and after with its interval, and the paired difference."""
    rows = []
    for key, label in SHOWN:
        if key not in m.get("before", {}):
            continue
        b, a = m["before"], m["after"]
        d = m["difference"].get(key, {})
        diff = fmt_ci(d.get("diff"), d.get("ci")) if d else "-"
        rows.append(
            [
                label,
                fmt_ci(b[key], b.get(f"{key}_ci")),
                fmt_ci(a[key], a.get(f"{key}_ci")),
                diff,
                d.get("verdict", "-"),
            ]
        )
    n, tokens = m.get("n", 0), m.get("tokens", 0)
    title = f"{split}: base vs tuned ({n} pairs, {tokens} response tokens; 95% intervals)"
    return title, ["score", "base (before)", "tuned (after)", "after - before", "verdict"], rows


def report_of(
    run_dir: Path | None,
    strategy: str,
    backbone: str,
    metrics: dict[str, Any],
    data: dict[str, Any],
    check: dict,
) -> ShapeReport:
    from headstart.shapes import ShapeReport
    from headstart.shapes.generate_behaviour import summary_lines

    split = next((s for s in ("test", "val") if metrics.get(s, {}).get("n")), "val")
    lines = summary_lines(check)
    for ex in metrics.get(split, {}).get("examples", [])[:3]:
        lines.append(
            f"e.g. {ex['prompt'][:60]!r}: reference {ex['reference'][:40]!r}, tuned {ex['after'][:40]!r}"
        )
    t = metrics.get("timings", {})
    if t:
        lines.append(
            f"{t.get('total_s', 0):.0f} s in all: scoring the base {t.get('score_before_s', 0):.0f} s, "
            f"training {t.get('train_s', 0):.0f} s, scoring the tuned model and the behaviour check "
            f"{t.get('score_after_s', 0):.0f} s"
        )
    return ShapeReport(
        task="generate",
        strategy=strategy,
        backbone=backbone,
        metrics=metrics,
        run_dir=None if run_dir is None else str(run_dir),
        data=data,
        table=score_table(metrics.get(split, {}), split),
        lines=lines,
        warnings=list(metrics.get("warnings", [])),
        timings=dict(t),
    )


def save_generate_run(
    cfg: FitConfig,
    out: Path,
    bb: Any,
    pairs: Pairs,
    trainer: Any,
    recipe: Any,
    adapter: dict[str, Any] | None,
    tensors: dict[str, Any],
    metrics: dict[str, Any],
    check: dict[str, Any],
    max_new_tokens: int,
) -> ShapeReport:
    """Write the run in one rename (headstart.runs.write_run) and return fit's report."""
    from headstart.runs import (
        ADAPTER_FILE,
        BEHAVIOUR_FILE,
        DELTA_FILE,
        HISTORY_FILE,
        RECIPE_FILE,
        AdapterRef,
        BackboneRef,
        DeltaRef,
        RunInfo,
        SplitRow,
        library_versions,
        to_jsonable,
        write_run,
    )
    from headstart.shapes.generate_sft import MAX_LENGTH

    info = RunInfo(
        kind="fit",
        strategy=recipe.name,
        task="generate",
        backbone=BackboneRef(bb.name, bb.key, bb.card.weights_sha256, bb.card.to_dict()),
        preprocess={
            "format": "the tokenizer's chat template (user turn, assistant turn)",
            "max_length": MAX_LENGTH,
        },
        modality="text",
        params={"seed": cfg.seed, "batch_size": recipe.batch_size, "max_new_tokens": max_new_tokens},
        recipe=recipe.to_dict(),
        engine=trainer.engine.describe(),
        trained_groups=list(bb.group_names),
        trainable_params=metrics["trainable_params"],
        data_root=str(pairs.path.resolve().parent),
        versions=library_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        extra={"behaviour": metrics["behaviour"] | {"file": BEHAVIOUR_FILE}},
    )
    if adapter is not None:
        info.adapter = AdapterRef(ADAPTER_FILE, dict(adapter))
        files = {ADAPTER_FILE: tensors}
    else:  # every weight of the LM, under the transformers model's own names
        info.delta = DeltaRef(DELTA_FILE, whole=True)
        files = {DELTA_FILE: tensors}
    rows = [
        SplitRow(p.prompt, p.response, p.split, p.sha256)
        for s in ("train", "val", "test")
        for p in pairs.split(s)
    ]
    history = {"epochs": trainer.history, "best_epoch": trainer.best["epoch"], "warnings": trainer.warnings}
    saved = None
    if cfg.save:
        saved = write_run(
            out,
            run=info,
            head=None,
            metrics=to_jsonable(metrics),
            data=to_jsonable(pairs.summary()),
            split_rows=rows,
            tensors=files,
            json_files={
                BEHAVIOUR_FILE: to_jsonable(check),
                HISTORY_FILE: to_jsonable(history),
                RECIPE_FILE: recipe.to_dict(),
            },
            checked=[BEHAVIOUR_FILE],
            overwrite=cfg.overwrite,
        )
    return report_of(saved, recipe.name, bb.name, metrics, pairs.summary(), check)
