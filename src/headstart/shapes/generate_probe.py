"""`probe --task generate`: the frozen base on the pairs, nothing trained.

    headstart probe examples/instructions/unicode_names.jsonl --task generate      # smollm2-135m as it is

The base scores the held-out pairs with fit's scorer of "before" (loss and perplexity of the response
tokens, exact match and ROUGE-L of greedy generations, each with its 95% interval), on val and on test,
and records `item_scores` per split (minus each pair's mean response-token loss): what `auto --task
generate` pairs with a fine-tune's. The run folder stores no weights (run.json references the base by
name and sha256), so predict, serve, evaluate, report and export answer with the base itself. There is no
behaviour check: nothing was tuned (generate_save.NO_BEHAVIOUR_CHECK says so in the run).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError

if TYPE_CHECKING:
    from headstart.config import ProbeConfig
    from headstart.shapes import ShapeReport


def base_split_scores(side: dict[str, Any], pairs: Sequence[Any], *, seed: int) -> dict[str, Any]:
    """One split's scores of the base (`side`: score_model's sums, counts and generations of `pairs`),
    with intervals, its item scores and examples: what a probe records and evaluate of a probe writes."""
    from headstart.shapes.generate_metrics import base_scores, examples, item_scores

    refs = [p.response for p in pairs]
    m = base_scores(side, refs, seed=seed)
    m["item_scores"] = item_scores(side["sums"], side["counts"])
    if side.get("generations") is not None:
        m["examples"] = examples([p.prompt for p in pairs], refs, base=side["generations"])
    return m


def probe_generate(cfg: ProbeConfig) -> ShapeReport:
    """The whole of `probe --task generate` (module docstring)."""
    from headstart.shapes.generate_fit import prepare, resolve_backbone, score_model
    from headstart.shapes.generate_save import NO_BEHAVIOUR_CHECK, PROBE_STRATEGY, save_probe_run
    from headstart.train.engine import resolve_device

    t0 = time.perf_counter()
    prep = prepare(cfg, resolve_backbone(cfg), "probe-generate")
    if not prep.enc["val"] and not prep.enc["test"]:
        raise HeadstartError(
            f"{cfg.data}: no val or test pair left to score the base on",
            fix="give --val/--test above 0, or rows with split val or test",
        )
    lm = prep.bb.lm.to(resolve_device(cfg.device)).eval()
    scored = score_model(
        lm, prep.tok, prep.enc, prep.kept, int(prep.tok.pad_token_id), prep.new_tokens, ("val", "test")
    )
    metrics: dict[str, Any] = {
        s: base_split_scores(scored[s], prep.kept[s], seed=cfg.seed) for s in ("val", "test")
    }
    metrics.update(
        {
            "strategy": PROBE_STRATEGY,
            "trainable_params": 0,
            "backbone_params": prep.bb.card.num_params,
            "warnings": [],
            "behaviour": {"not_run": NO_BEHAVIOUR_CHECK},
            "timings": {"total_s": time.perf_counter() - t0},
            "max_new_tokens": prep.new_tokens,
        }
    )
    lm.cpu()
    return save_probe_run(cfg, prep.out, prep.bb, prep.pairs, metrics, prep.new_tokens)
