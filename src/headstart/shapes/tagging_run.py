"""A tagging run: train any recipe through the one Trainer, score it, write the run folder; load it back.

The folder holds what a classification run holds: run.json (task "tag", the base by name and hash, the
recipe, the BIO labels as `classes`), head.safetensors (the per-token head), delta.safetensors (the
trained groups) or adapter.safetensors (LoRA), metrics.json, data.json, history.json, recipe.json, and
split.csv with one row per sentence (`path`: its tokens, `label`: its tags, both space-joined), so
`evaluate` scores the run's own test split without the data folder.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError

if TYPE_CHECKING:
    from headstart.backbones.base import Backbone
    from headstart.config import FitConfig, ProbeConfig
    from headstart.recipes import Recipe
    from headstart.shapes import ShapeReport
    from headstart.shapes.tagging_data import Sentence, TagData
    from headstart.shapes.tagging_model import TokenTagger

#: The backbone a tagging run uses when --backbone is left at the (image) default.
TAG_BACKBONE = "minilm-l6"
ENCODER_FIX = "use a text encoder: --backbone minilm-l6 (the default for --task tag) or hf:<encoder>"


def backbone_name(cfg: Any) -> str:
    from headstart.config import RunConfig

    default = next(f.default for f in fields(RunConfig) if f.name == "backbone")
    return TAG_BACKBONE if cfg.backbone == default else str(cfg.backbone)


def check_encoder(bb: Backbone) -> None:
    from headstart.backbones.hf_text import EncoderBackbone

    if not isinstance(bb, EncoderBackbone):
        raise HeadstartError(
            f"--task tag reads every word in context: {bb.name} is a {bb.modality} "
            f"{'decoder' if bb.modality == 'text' else 'backbone'}, not a text encoder",
            fix=ENCODER_FIX,
        )


def check_recipe(recipe: Recipe) -> None:
    """What a tagging run trains: pretrained groups or adapters and the head, by cross-entropy per token."""
    bad = []
    if not recipe.pretrained:
        bad.append("from random init (scratch)")
    if recipe.objective != "cross-entropy":
        bad.append(f"the {recipe.objective} objective")
    if recipe.pooled != "last" or recipe.views:
        bad.append("pooled or augmented-view features")
    bad += [f"with {r}" for r in recipe.label_regularisers()]  # classification's (per item, not per token)
    if bad:
        raise HeadstartError(
            f"strategy {recipe.name!r} trains {' and '.join(bad)}, which --task tag does not run",
            fix="use head, partial:N, full, lp-ft, gradual, discriminative or lora",
        )


def check_out(cfg: Any, verb: str, bb_name: str) -> Path | None:
    """The run folder, refused before any work when it cannot be written or would replace a run."""
    from headstart.fileio import ensure_writable_dir
    from headstart.runs import default_run_dir

    if getattr(cfg, "resume", False):
        raise HeadstartError("--resume does not run --task tag yet", fix="start the run again (--overwrite)")
    if not cfg.save:
        return None
    out = Path(cfg.out) if cfg.out is not None else default_run_dir(verb, f"tag-{bb_name}")
    ensure_writable_dir(out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise HeadstartError(
            f"{out} already exists and is not empty", fix="choose another --out, or --overwrite"
        )
    return out


@dataclass
class Trained:
    """What a finished fit leaves: the model, the loop (history, engine), and what it records."""

    tagger: TokenTagger
    trainer: Any
    recipe: Recipe
    adapter: dict[str, Any] | None
    base_key: str
    labels: list[str]


def train(cfg: Any, strategy: Any, data: TagData, bb_name: str, timings: dict[str, float]) -> Trained:
    """Build the backbone and the recipe, train through the one Trainer (best val entity F1 kept)."""
    from headstart.adapters import inject_adapter
    from headstart.backbones import create_backbone
    from headstart.recipes import get_recipe
    from headstart.shapes.tagging_model import Tagging, TokenTagger, encode_sentences
    from headstart.train.loop import Trainer

    t0 = time.perf_counter()
    bb = create_backbone(bb_name)
    check_encoder(bb)
    recipe = get_recipe(strategy, len(bb.groups))
    check_recipe(recipe)
    lr = getattr(cfg, "lr", None)
    if lr == "auto":
        raise HeadstartError("--lr auto does not run --task tag", fix="give a number, e.g. --lr 1e-3")
    recipe = recipe.with_overrides(
        epochs=getattr(cfg, "epochs", None), lr=lr, batch_size=getattr(cfg, "batch_size", None)
    )
    base_key = bb.key
    adapter = None
    if recipe.adapter is not None:
        top = max(p.n_trainable(len(bb.groups)) for p in recipe.phases)
        adapter = inject_adapter(bb, recipe.adapter, top_groups=top, seed=cfg.seed)
    labels = data.labels
    encs = {s: encode_sentences(bb, data.splits[s], labels) for s in ("train", "val")}
    tagger = TokenTagger(bb, len(labels))
    task = Tagging(
        tagger, encs["train"], encs["val"], [s.tags for s in data.splits["val"]], labels, seed=cfg.seed
    )
    timings["load_s"] = time.perf_counter() - t0
    precision = getattr(cfg, "precision", "auto")
    trainer = Trainer.for_task(
        task,
        recipe,
        seed=cfg.seed,
        device=cfg.device,
        precision=precision if precision in ("auto", "fp32", "bf16") else "fp32",
        progress=cfg.progress,
        budget_s=getattr(cfg, "budget_s", None),
    )
    t0 = time.perf_counter()
    trainer.fit()
    timings["train_s"] = time.perf_counter() - t0
    return Trained(tagger, trainer, recipe, adapter, base_key, labels)


def score_splits(
    tagger: TokenTagger, data: TagData, labels: list[str], device: Any, seed: int
) -> tuple[dict[str, Any], dict[str, list[list[str]]]]:
    """Scores per split (intervals on val and test) and the predicted tags."""
    from headstart.shapes.tagging_metrics import tag_scores

    metrics: dict[str, Any] = {}
    preds: dict[str, list[list[str]]] = {}
    for s, sents in data.splits.items():
        if sents:
            preds[s], unseen = predict_tags(tagger, [x.tokens for x in sents], labels, device)
            m = tag_scores([x.tags for x in sents], preds[s], n_boot=0 if s == "train" else 1000, seed=seed)
            metrics[s] = {**m, "unseen_words": unseen}
    return metrics, preds


def predict_tags(
    tagger: TokenTagger, sentences: list[tuple[str, ...]] | list[list[str]], labels: list[str], device: Any
) -> tuple[list[list[str]], int]:
    """(tags per word of every sentence, how many words the model did not see: predicted O)."""
    from headstart.shapes.tagging_model import decode, encode_words, text_tokenizer, word_logits

    encs = encode_words(text_tokenizer(tagger.backbone), sentences)
    logits = word_logits(tagger, encs, device)
    return [decode(w, labels) for w in logits], sum(e.unseen for e in encs)


def run_tagging(cfg: FitConfig | ProbeConfig, strategy: Any, verb: str) -> ShapeReport:
    """probe / fit --task tag: read and check the data, train, score, save; the ShapeReport."""
    from headstart.shapes.tagging_data import load_tag_data

    started = time.perf_counter()
    bb_name = backbone_name(cfg)
    out = check_out(cfg, verb, bb_name)
    timings: dict[str, float] = {}
    data = load_tag_data(cfg.data, seed=cfg.seed, val=cfg.val, test=cfg.test)
    done = train(cfg, strategy, data, bb_name, timings)
    t0 = time.perf_counter()
    metrics, _ = score_splits(done.tagger, data, done.labels, done.trainer.engine.device, cfg.seed)
    timings["evaluate_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started
    metrics.update(_what_trained(done))
    metrics["timings"] = timings
    saved = save_run(out, cfg, verb, data, done, metrics) if out is not None else None
    return report_of(verb, done, metrics, data, saved)


def _what_trained(done: Trained) -> dict[str, Any]:
    bb = done.tagger.backbone
    trainable = sum(p.numel() for p in done.tagger.head.parameters())
    if done.adapter is not None:
        trainable += int(done.adapter["trainable_params"])
    else:
        groups = done.trainer.task.trained_groups
        trainable += sum(p.numel() for i in groups for p in bb.groups[i].parameters())
    return {
        "strategy": done.recipe.name,
        "alignment": "first-subword",
        "trainable_params": int(trainable),
        "best_epoch": done.trainer.best["epoch"],
        "engine": done.trainer.engine.describe(),
        "warnings": list(done.trainer.warnings),
    }


def save_run(out: Path, cfg: Any, verb: str, data: TagData, done: Trained, metrics: dict[str, Any]) -> Path:
    """The run folder (module docstring), written in one rename."""
    from headstart.head import LinearHead
    from headstart.runs import (
        ADAPTER_FILE,
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
    from headstart.train.save import delta_state

    bb, trainer = done.tagger.backbone, done.trainer
    groups = trainer.task.trained_groups
    info = RunInfo(
        kind=verb,
        strategy=done.recipe.name,
        task="tag",
        backbone=BackboneRef(bb.name, done.base_key, bb.card.weights_sha256, bb.card.to_dict()),
        preprocess=bb.preprocess.to_dict(),
        modality="text",
        classes=done.labels,
        params={"seed": cfg.seed, "batch_size": done.recipe.batch_size, "alignment": "first-subword"},
        recipe=done.recipe.to_dict(),
        engine=trainer.engine.describe(),
        trained_groups=[bb.group_names[i] for i in sorted(groups)],
        trainable_params=metrics["trainable_params"],
        data_root=str(data.root),
        versions=library_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    tensors: dict[str, Any] = {}
    if done.adapter is not None:
        from headstart.adapters import adapter_state

        info.adapter = AdapterRef(ADAPTER_FILE, dict(done.adapter))
        tensors[ADAPTER_FILE] = adapter_state(bb)
    elif groups:
        info.delta = DeltaRef(DELTA_FILE)
        tensors[DELTA_FILE] = delta_state(bb, groups)
    head = done.tagger.head
    rows = [
        SplitRow(s.text, " ".join(s.tags), name, hashlib.sha256(s.text.encode()).hexdigest())
        for name, sents in data.splits.items()
        for s in sents
    ]
    history = {"epochs": trainer.history, "best_epoch": trainer.best["epoch"], "warnings": trainer.warnings}
    return write_run(
        out,
        run=info,
        head=LinearHead(head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy()),
        metrics=to_jsonable(metrics),
        data=to_jsonable(data.summary()),
        split_rows=rows,
        tensors=tensors,
        json_files={HISTORY_FILE: to_jsonable(history), RECIPE_FILE: done.recipe.to_dict()},
        overwrite=cfg.overwrite,
    )


def score_table(m: dict[str, Any], title: str) -> tuple[str, list[str], list[list[str]]]:
    """(title, columns, rows): micro scores, then one row per type, each with its 95 % interval."""
    from headstart.intervals import fmt_ci

    rows = [
        [
            "all (micro)",
            fmt_ci(m["entity_precision"], m["entity_precision_ci"]),
            fmt_ci(m["entity_recall"], m["entity_recall_ci"]),
            fmt_ci(m["entity_f1"], m["entity_f1_ci"]),
            str(m["n_entities"]),
        ]
    ]
    for t, v in m["per_type"].items():
        rows.append(
            [
                t,
                fmt_ci(v["precision"], v["precision_ci"]),
                fmt_ci(v["recall"], v["recall_ci"]),
                fmt_ci(v["f1"], v["f1_ci"]),
                str(v["support"]),
            ]
        )
    return title, ["entity type", "precision", "recall", "F1", "support"], rows


def report_of(
    verb: str, done: Trained, metrics: dict[str, Any], data: TagData, saved: Path | None
) -> ShapeReport:
    from headstart.intervals import fmt_ci
    from headstart.shapes import ShapeReport

    split = "test" if "test" in metrics else "val"
    m = metrics[split]
    lines = [
        f"{split}: entity F1 {fmt_ci(m['entity_f1'], m['entity_f1_ci'])}, token accuracy "
        f"{fmt_ci(m['token_accuracy'], m['token_accuracy_ci'])} ({m['n_sentences']} sentences, "
        f"{m['n_entities']} entities; 95% bootstrap intervals over sentences)"
    ]
    warnings = list(metrics["warnings"])
    if m["unseen_words"]:
        warnings.append(
            f"{m['unseen_words']} {split} word(s) lie beyond the encoder's max length (or tokenize to "
            "nothing): predicted O"
        )
    return ShapeReport(
        task="tag",
        strategy=done.recipe.name,
        backbone=done.tagger.backbone.name,
        metrics=metrics,
        run_dir=str(saved) if saved else None,
        data=data.summary(),
        table=score_table(m, f"{verb} --task tag ({done.recipe.name}), {split} split"),
        lines=lines,
        warnings=warnings,
        timings=metrics["timings"],
    )


def load_tagger(run_dir: str | Path) -> tuple[TokenTagger, Any]:
    """(the run's model: base + delta or adapter + head, checked against every recorded hash; its Run)."""
    import torch

    from headstart.backbones import create_backbone
    from headstart.model import apply_delta
    from headstart.runs import check_base, load_run, load_tensors
    from headstart.shapes.tagging_model import TokenTagger

    run = load_run(run_dir)
    info = run.info
    if info.task != "tag":
        raise HeadstartError(f"{run_dir} is a --task {info.task} run, not a tagging run")
    bb = create_backbone(info.backbone.name, pretrained=info.pretrained)
    check_base(info, bb, run.path)
    if info.delta is not None:
        apply_delta(bb, load_tensors(run.path / info.delta.file), info.files.get(info.delta.file, ""))
    if info.adapter is not None:
        from headstart.adapters import load_adapter

        bb = load_adapter(bb, run.path, info.adapter)
    tagger = TokenTagger(bb, len(info.classes))
    with torch.no_grad():
        tagger.head.weight.copy_(torch.from_numpy(run.head.weight))
        tagger.head.bias.copy_(torch.from_numpy(run.head.bias))
    return tagger.eval(), run


def recorded_sentences(run_dir: Path, split: str) -> list[Sentence]:
    from headstart.runs import read_split_rows
    from headstart.shapes.tagging_data import sentences_of_rows

    sents = sentences_of_rows(read_split_rows(run_dir), split)
    if not sents:
        raise HeadstartError(
            f"{run_dir} has no {split!r} sentences in split.csv", fix="choose another --split"
        )
    return sents
