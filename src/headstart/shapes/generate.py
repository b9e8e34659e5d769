"""`--task generate`: instruction tuning of a decoder LM (default the packaged smollm2-135m), with a
behaviour check after every fine-tune.

    headstart probe PAIRS.jsonl --task generate          # the frozen base's scores, nothing trained
    headstart fit PAIRS.jsonl --task generate            # LoRA SFT, loss on response tokens only
    headstart auto PAIRS.jsonl --task generate           # base vs LoRA pair by pair on val, then register
    headstart evaluate RUN                               # base vs tuned on the run's test split again
    headstart predict RUN --text "What is U+00E9?"       # {"response": ..., "summary": first line}
    headstart serve RUN                                  # text in, generated text out
    headstart report RUN                                 # before/after scores, examples, behaviour
    headstart export RUN --onnx                          # the LM forward (logits), parity-proven

The parts: generate_data (the JSONL pairs, split, chat-template encoding with response-only labels),
generate_sft (the Task of the one training loop), generate_fit, generate_probe and generate_save (fit,
probe and the run folder), generate_metrics (loss, perplexity, exact match, ROUGE-L, bootstrap
intervals, before/after, item scores), generate_behaviour (the versioned prompt set and the check),
generate_predict (generation, loading a run, the predictor), generate_export (ONNX).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError
from headstart.shapes import Shape, ShapePredictor

if TYPE_CHECKING:
    from headstart.config import FitConfig, ProbeConfig
    from headstart.report.loader import RunFiles
    from headstart.shapes import ShapeReport


def evaluation_pairs(run_dir: Path, data: str | Path | None, split: str) -> tuple[list[Any], str]:
    """The pairs to score: the run's own `split` (split.csv), or `data`'s (its `split` rows when the file
    names splits, else every pair)."""
    from headstart.runs import read_split_rows
    from headstart.shapes.generate_data import Pair, read_pairs

    if data is None:
        rows = [r for r in read_split_rows(run_dir) if r.split == split]
        pairs = [Pair(r.path, r.label, r.split, f"{run_dir}/split.csv") for r in rows]
        if not pairs:
            raise HeadstartError(f"{run_dir} has no {split} pairs", fix="evaluate --split val, or give DATA")
        return pairs, f"{split} split of {run_dir}"
    read = read_pairs(data, val=0.0, test=0.0, seed=0)
    chosen = read.split(split) if read.given_split else read.pairs
    if not chosen:
        raise HeadstartError(
            f"{data} has no {split} pairs", fix=f"give --split with rows in {data}, or omit split"
        )
    return chosen, str(data) if not read.given_split else f"{split} rows of {data}"


def _evaluate_probe(tuned: Any, pairs: list[Any], enc: dict[str, Any], device: str) -> tuple[dict, dict]:
    """A probe's run is the base itself: its scores alone (as probe recorded them), no behaviour check."""
    from headstart.shapes.generate_fit import score_model
    from headstart.shapes.generate_probe import base_split_scores
    from headstart.shapes.generate_save import NO_BEHAVIOUR_CHECK

    tok, new = tuned.tokenizer, int(tuned.info.params.get("max_new_tokens", 32))
    side = score_model(tuned.lm, tok, enc, {"val": [], "test": pairs}, int(tok.pad_token_id), new)["test"]
    metrics = base_split_scores(side, pairs, seed=int(tuned.info.seed or 0))
    return metrics, {"not_run": NO_BEHAVIOUR_CHECK, "lines": [NO_BEHAVIOUR_CHECK], "warnings": []}


def _evaluate_fit(tuned: Any, pairs: list[Any], enc: dict[str, Any], device: str) -> tuple[dict, dict]:
    """A fine-tune: the base (loaded again) and the tuned model on the same pairs, and the behaviour check."""
    from headstart.shapes.generate_behaviour import behaviour_check, summary_lines
    from headstart.shapes.generate_fit import score_model
    from headstart.shapes.generate_metrics import before_after, examples
    from headstart.shapes.generate_predict import generate
    from headstart.shapes.generate_sft import load_base
    from headstart.train.engine import resolve_device

    base_bb, _, _ = load_base(tuned.info.backbone.name)
    base = base_bb.lm.to(resolve_device(device)).eval()
    tok, pad = tuned.tokenizer, int(tuned.tokenizer.pad_token_id)
    new = int(tuned.info.params.get("max_new_tokens", 32))
    kept = {"val": [], "test": pairs}
    before = score_model(base, tok, enc, kept, pad, new)["test"]
    after = score_model(tuned.lm, tok, enc, kept, pad, new)["test"]
    refs = [p.response for p in pairs]
    metrics = before_after(before, after, refs, seed=int(tuned.info.seed or 0))
    metrics["examples"] = examples(
        [p.prompt for p in pairs], refs, before=before["generations"], after=after["generations"]
    )
    gen = lambda m: lambda ps: generate(m, tok, ps, max_new_tokens=32)  # noqa: E731
    check = behaviour_check(gen(base), gen(tuned.lm))
    return metrics, {**check, "lines": summary_lines(check)}


class GenerateShape(Shape):
    name = "generate"
    modalities = ("text",)
    strategies = ("lora", "full")
    #: auto compares the frozen base (the probe: its "head" row) with the LoRA fine-tune, pair by pair.
    auto_strategies = ("head", "lora")
    item_score_name = "negative loss per response token"
    headline = (("rouge_l", "ROUGE-L"), ("loss", "response loss"), ("perplexity", "perplexity"))

    def headline_scores(self, split_metrics: dict[str, Any]) -> list[tuple[Any, Any, str]]:
        """The tuned model's scores (a fit run's "after"), or the base's (a probe run)."""
        return super().headline_scores(split_metrics.get("after") or split_metrics.get("base") or {})

    def probe(self, cfg: ProbeConfig) -> ShapeReport:
        from headstart.shapes.generate_probe import probe_generate

        return probe_generate(cfg)

    def fit(self, cfg: FitConfig) -> ShapeReport:
        from headstart.shapes.generate_fit import fit_generate

        return fit_generate(cfg)

    def evaluate(
        self,
        run_dir: Path,
        *,
        data: str | Path | None = None,
        split: str = "test",
        save: bool = True,
        out: str | Path | None = None,
        device: str = "auto",
        **_: Any,
    ) -> dict[str, Any]:
        """A fine-tune: base and tuned model on the same pairs (loss, perplexity, exact match, ROUGE-L,
        with intervals and the paired difference) and the behaviour check again. A probe: the base's
        scores alone. evaluation.json for the run's own split."""
        from headstart.fileio import atomic_write_json
        from headstart.runs import EVALUATION_FILE, to_jsonable
        from headstart.shapes.generate_data import encode_pair
        from headstart.shapes.generate_predict import load_tuned
        from headstart.shapes.generate_save import score_table
        from headstart.shapes.generate_sft import MAX_LENGTH

        run_dir = Path(run_dir)
        writes_run = save and data is None  # evaluate_run refused a stored version and checked `out`
        out_path = None if out is None else Path(out)
        pairs, described = evaluation_pairs(run_dir, data, split)  # cheap checks before the models load
        t0 = time.perf_counter()
        tuned = load_tuned(run_dir, device=device)
        enc = {
            "val": [],
            "test": [encode_pair(tuned.tokenizer, p.prompt, p.response, MAX_LENGTH) for p in pairs],
        }
        scored = _evaluate_probe if tuned.info.kind == "probe" else _evaluate_fit
        metrics, check = scored(tuned, pairs, enc, device)
        result: dict[str, Any] = to_jsonable(
            {
                "task": self.name,
                "run": str(run_dir),
                "evaluated": described,
                "split": split,
                "n": len(pairs),
                "metrics": metrics,
                "behaviour": {k: v for k, v in check.items() if k not in ("rows", "lines")},
                "seconds": time.perf_counter() - t0,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        result["table"] = score_table(metrics, split)
        result["lines"] = check["lines"]
        result["warnings"] = check.get("warnings", [])
        if writes_run:
            atomic_write_json(run_dir / EVALUATION_FILE, result)
        if out_path is not None:
            atomic_write_json(out_path, result)
        return result

    def predictor(self, run_dir: Path, **kw: Any) -> ShapePredictor:
        from headstart.shapes.generate_predict import GeneratePredictor

        return GeneratePredictor(run_dir, device=kw.get("device") or "auto")

    def export(self, run_dir: Path, out: Path | None, **kw: Any) -> dict[str, Any]:
        from headstart.shapes.generate_export import export_generate

        return export_generate(
            run_dir, out, quantize=kw.get("quantize", False), check_inputs=kw.get("check_inputs")
        )

    def report_sections(self) -> list[tuple[str, str, Callable[[RunFiles], tuple[Any, bool]]]]:
        from headstart.report.sections import generate

        return [
            ("generate", "Instruction tuning: before and after", generate.section),
            ("behaviour", "Behaviour check", generate.behaviour_section),
        ]


SHAPE = GenerateShape()
