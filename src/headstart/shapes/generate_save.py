"""The folder of a generate run (run.json with `task: generate`, the adapter or tuned weights, split.csv of
the pairs, behaviour.json with its sha256 recorded; a probe's holds no weights: the base is referenced by
name and sha256) and what probe, fit and evaluate print of it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.intervals import fmt_ci
from headstart.shapes.generate_data import SPLITS

if TYPE_CHECKING:
    from headstart.config import FitConfig, RunConfig
    from headstart.shapes import ShapeReport
    from headstart.shapes.generate_data import Pairs

#: (key, label) of the scores the tables show, in order.
SHOWN = (
    ("loss", "loss / response token"),
    ("perplexity", "perplexity"),
    ("exact_match", "exact match"),
    ("rouge_l", "ROUGE-L F1"),
)
#: (key, column) of the models a split's scores hold: a probe's frozen base, or a fine-tune's two.
SIDES = (("base", "base (frozen, no training)"), ("before", "base (before)"), ("after", "tuned (after)"))
#: run.json's strategy of a probe: the frozen base answers (auto's "head" row of this shape).
PROBE_STRATEGY = "base"
#: What a probe run says in place of the behaviour check (its metrics, its printout, its report).
NO_BEHAVIOUR_CHECK = (
    "no behaviour check: a probe tunes nothing, so the base answers as it always did (fit --task generate "
    "checks every fine-tune against it)"
)


def score_table(m: dict[str, Any], split: str) -> tuple[str, list[str], list[list[str]]]:
    """(title, columns, rows): each score of each model with its interval (a probe: the base alone; a
    fine-tune: before and after), and a fine-tune's paired difference with its verdict."""
    sides = [(k, label) for k, label in SIDES if m.get(k)]
    tuned = "difference" in m
    rows = []
    for key, label in SHOWN:
        if not sides or key not in m[sides[0][0]]:
            continue
        row = [label, *(fmt_ci(m[k][key], m[k].get(f"{key}_ci")) for k, _ in sides)]
        if tuned:
            d = m["difference"].get(key, {})
            row += [fmt_ci(d.get("diff"), d.get("ci")) if d else "-", d.get("verdict", "-")]
        rows.append(row)
    n, tokens = m.get("n", 0), m.get("tokens", 0)
    what = "base vs tuned" if tuned else "the frozen base"
    title = f"{split}: {what} ({n} pairs, {tokens} response tokens; 95% intervals)"
    columns = ["score", *(label for _, label in sides), *(["after - before", "verdict"] if tuned else [])]
    return title, columns, rows


def report_of(
    run_dir: Path | None,
    strategy: str,
    backbone: str,
    metrics: dict[str, Any],
    data: dict[str, Any],
    check: dict | None,
) -> ShapeReport:
    """What probe and fit print and return (`check` None: a probe, which has no behaviour check)."""
    from headstart.shapes import ShapeReport
    from headstart.shapes.generate_behaviour import summary_lines

    split = next((s for s in ("test", "val") if metrics.get(s, {}).get("n")), "val")
    lines = summary_lines(check) if check is not None else [NO_BEHAVIOUR_CHECK]
    side = "after" if check is not None else "base"
    for ex in metrics.get(split, {}).get("examples", [])[:3]:
        lines.append(
            f"e.g. {ex['prompt'][:60]!r}: reference {ex['reference'][:40]!r}, "
            f"{'tuned' if check is not None else 'base'} {ex[side][:40]!r}"
        )
    t = metrics.get("timings", {})
    if t and check is None:
        lines.append(f"{t.get('total_s', 0):.0f} s in all, scoring the base on val and test")
    elif t:
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


def run_record(bb: Any, pairs: Pairs, **fields: Any) -> Any:
    """run.json of a generate run (a RunInfo): the base by name and sha256, the template, the data root;
    `fields` adds what the verb made (kind, strategy, params, recipe, ...)."""
    from headstart.runs import BackboneRef, RunInfo, library_versions
    from headstart.shapes.generate_sft import MAX_LENGTH

    return RunInfo(
        task="generate",
        backbone=BackboneRef(bb.name, bb.key, bb.card.weights_sha256, bb.card.to_dict()),
        preprocess={
            "format": "the tokenizer's chat template (user turn, assistant turn)",
            "max_length": MAX_LENGTH,
        },
        modality="text",
        data_root=str(pairs.path.resolve().parent),
        versions=library_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
    )


def split_rows(pairs: Pairs) -> list[Any]:
    """split.csv: each pair (prompt as path, response as label), its split and sha256."""
    from headstart.runs import SplitRow

    return [SplitRow(p.prompt, p.response, p.split, p.sha256) for s in SPLITS for p in pairs.split(s)]


def _write(
    cfg: RunConfig, out: Path, info: Any, pairs: Pairs, metrics: dict[str, Any], **files: Any
) -> Path | None:
    """The run folder in one rename (headstart.runs.write_run), unless the verb saves nothing."""
    from headstart.runs import to_jsonable, write_run

    if not cfg.save:
        return None
    return write_run(
        out,
        run=info,
        head=None,
        metrics=to_jsonable(metrics),
        data=to_jsonable(pairs.summary()),
        split_rows=split_rows(pairs),
        overwrite=cfg.overwrite,
        **files,
    )


def save_probe_run(
    cfg: RunConfig, out: Path, bb: Any, pairs: Pairs, metrics: dict[str, Any], max_new_tokens: int
) -> ShapeReport:
    """A probe's folder: run.json (kind probe, no weights: the base by name and sha256), split.csv,
    data.json, metrics.json; returns probe's report."""
    info = run_record(
        bb,
        pairs,
        kind="probe",
        strategy=PROBE_STRATEGY,
        params={"seed": cfg.seed, "max_new_tokens": max_new_tokens},
        trained_groups=[],
        trainable_params=0,
    )
    saved = _write(cfg, out, info, pairs, metrics)
    return report_of(saved, PROBE_STRATEGY, bb.name, metrics, pairs.summary(), None)


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
        DeltaRef,
        to_jsonable,
    )

    info = run_record(
        bb,
        pairs,
        kind="fit",
        strategy=recipe.name,
        params={"seed": cfg.seed, "batch_size": recipe.batch_size, "max_new_tokens": max_new_tokens},
        recipe=recipe.to_dict(),
        engine=trainer.engine.describe(),
        trained_groups=list(bb.group_names),
        trainable_params=metrics["trainable_params"],
        extra={"behaviour": metrics["behaviour"] | {"file": BEHAVIOUR_FILE}},
    )
    if adapter is not None:
        info.adapter = AdapterRef(ADAPTER_FILE, dict(adapter))
        files = {ADAPTER_FILE: tensors}
    else:  # every weight of the LM, under the transformers model's own names
        info.delta = DeltaRef(DELTA_FILE, whole=True)
        files = {DELTA_FILE: tensors}
    history = {"epochs": trainer.history, "best_epoch": trainer.best["epoch"], "warnings": trainer.warnings}
    json_files = {
        BEHAVIOUR_FILE: to_jsonable(check),
        HISTORY_FILE: to_jsonable(history),
        RECIPE_FILE: recipe.to_dict(),
    }
    saved = _write(
        cfg, out, info, pairs, metrics, tensors=files, json_files=json_files, checked=[BEHAVIOUR_FILE]
    )
    return report_of(saved, recipe.name, bb.name, metrics, pairs.summary(), check)
