"""`--task tag`: token classification (NER, chunking) on text encoders, one tag per word.

    headstart probe examples/tags --task tag                      # frozen encoder, closed-form head
    headstart fit examples/tags --task tag --strategy lora        # or partial:N, full, lp-ft
    headstart evaluate RUN                                        # entity P/R/F1 per type, intervals
    headstart predict RUN --text "Paris is nice" --json           # tags and spans
    headstart export RUN                                          # token logits in ONNX

The pieces: tagging_data (the CoNLL reader, IOB2 checks and repairs, splits), tagging_model (first-
subword alignment, the per-token head, the Task of the one Trainer), tagging_metrics (seqeval's entity
scores with bootstrap intervals over sentences), tagging_run (train, score, save, load), tagging_predict
(predict/serve answers with spans, ONNX export); the report's section is headstart.report.sections.tagging.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError
from headstart.shapes import Shape, ShapePredictor, ShapeReport

if TYPE_CHECKING:
    from headstart.config import FitConfig, ProbeConfig
    from headstart.report.loader import RunFiles


class TaggingShape(Shape):
    name = "tag"
    modalities = ("text",)
    strategies = ("lora", "head", "partial:N", "full", "lp-ft")
    auto_strategies = ("head", "lora")
    item_score_name = "sentence entity F1"
    headline = (("entity_f1", "entity F1"), ("token_accuracy", "token accuracy"))

    def probe(self, cfg: ProbeConfig) -> ShapeReport:
        from headstart.shapes.tagging_run import run_tagging

        return run_tagging(cfg, "head", "probe")

    def fit(self, cfg: FitConfig) -> ShapeReport:
        from headstart.shapes.tagging_run import run_tagging
        from headstart.train.api import lora_strategy

        return run_tagging(cfg, lora_strategy(cfg), "fit")

    def evaluate(self, run_dir: Path, **kw: Any) -> dict[str, Any]:
        return evaluate_tagging(run_dir, **kw)

    def predictor(self, run_dir: Path, **kw: Any) -> ShapePredictor:
        from headstart.shapes.tagging_predict import TagPredictor

        return TagPredictor(Path(run_dir), device=kw.get("device", "auto"))

    def export(self, run_dir: Path, out: Path | None, **kw: Any) -> dict[str, Any]:
        from headstart.shapes.tagging_predict import export_tagger

        return export_tagger(
            run_dir, out, quantize=kw.get("quantize", False), check_inputs=kw.get("check_inputs")
        )

    def report_sections(self) -> list[tuple[str, str, Callable[[RunFiles], tuple[Any, bool]]]]:
        from headstart.report.sections import tagging

        return [("tagging", "Entities found, per type", tagging.section)]


def evaluate_tagging(
    run_dir: Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    save: bool = True,
    out: str | Path | None = None,
    device: str = "auto",
    **_: Any,
) -> dict[str, Any]:
    """Entity scores of the run on its own split (split.csv; written to evaluation.json unless `save` is
    False or the run is a stored version), or on other CoNLL data (its `split` file, or every sentence of
    one file; nothing written into the run). `out`: the result is also written there."""
    from headstart.features import forward_device
    from headstart.fileio import atomic_write_json
    from headstart.runs import EVALUATION_FILE, to_jsonable
    from headstart.shapes.tagging_data import load_tag_data, read_conll
    from headstart.shapes.tagging_metrics import tag_scores
    from headstart.shapes.tagging_run import load_tagger, predict_tags, recorded_sentences, score_table

    run_dir = Path(run_dir)
    own = data is None
    out_path = None if out is None else Path(out)  # checked by evaluate_run, as a stored version is
    dev = forward_device("torch", device)
    notes: dict[str, str] = {}
    if own:
        sents, where = recorded_sentences(run_dir, split), f"{run_dir}/split.csv ({split} split)"
    elif Path(data).is_file():
        sents, where = read_conll(Path(data), notes), str(data)
    else:
        sents, where = load_tag_data(data).splits.get(split, []), f"{data} ({split} split)"
    if not sents:
        raise HeadstartError(f"{where} holds no sentence", fix="give CoNLL data with sentences to score")
    tagger, run = load_tagger(run_dir)
    from headstart.train.engine import place

    place(tagger, dev)
    labels = list(run.info.classes)
    pred, unseen = predict_tags(tagger, [s.tokens for s in sents], labels, dev)
    m = tag_scores([s.tags for s in sents], pred, seed=int(run.info.seed or 0))
    warnings = []
    if unseen:
        warnings.append(f"{unseen} word(s) lie beyond the encoder's max length: predicted O")
    known = {lab.partition("-")[2] for lab in labels if lab != "O"}
    missing = sorted(set(m["per_type"]) - known)
    if missing:
        warnings.append(f"entity type(s) {missing} are not among the run's labels: they count as missed")
    result = {
        "task": "tag",
        "split": split if own or not Path(data).is_file() else "all",
        "n": len(sents),
        "data": {"source": where, "notes": notes},  # what print_shape_result lists of the data
        "device": str(dev),
        "metrics": {**m, "unseen_words": unseen},
        "table": score_table(m, f"evaluate --task tag: {where}"),
        "lines": [
            f"entity F1 {m['entity_f1']:.3f}; token accuracy {m['token_accuracy']:.3f} "
            f"({m['n_sentences']} sentences, {m['n_entities']} entities)"
        ],
        "warnings": warnings,
        "run": str(run_dir),
    }
    result = to_jsonable(result)
    if save and own:
        atomic_write_json(run_dir / EVALUATION_FILE, result)
    if out_path is not None:
        atomic_write_json(out_path, result)
    return result


SHAPE = TaggingShape()
