"""`fit --task generate`: read the pairs, score the base, tune it through the one loop, score it again, run
the behaviour check, and write the run (only the adapter, or the tuned weights for `full`; the base is
referenced by name and sha256).

    headstart fit examples/instructions/unicode_names.jsonl --task generate          # LoRA on smollm2-135m
    headstart fit PAIRS.jsonl --task generate --strategy full --epochs 1 --budget 5m

"before" is the base itself: scored before training on the same held-out pairs, with the same greedy
decoding, so the difference is the fine-tune's. For LoRA the adapter is already injected then (B = 0:
the network computes exactly what the base does).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError
from headstart.shapes.generate_data import Pairs, encode_pair, read_pairs
from headstart.shapes.generate_sft import DEFAULTS, MAX_LENGTH, STRATEGIES, Encoded, load_base

if TYPE_CHECKING:
    from headstart.config import FitConfig, RunConfig
    from headstart.shapes import ShapeReport

DEFAULT_BACKBONE = "smollm2-135m"
EVAL_NEW_TOKENS = (16, 64)  # generations on held-out prompts: the longest train response + 8, within these


def resolve_backbone(cfg: RunConfig) -> str:
    """The run verbs' default backbone (an image one) means this shape's: smollm2-135m."""
    from dataclasses import fields

    from headstart.config import RunConfig

    default = next(f.default for f in fields(RunConfig) if f.name == "backbone")
    return DEFAULT_BACKBONE if cfg.backbone == default else cfg.backbone


def resolve_options(cfg: FitConfig) -> tuple[str, str]:
    """(backbone, strategy): the run verbs' defaults (an image backbone, lp-ft) mean this shape's."""
    from dataclasses import fields

    from headstart.config import FitConfig

    defaults = {f.name: f.default for f in fields(FitConfig)}
    backbone = resolve_backbone(cfg)
    strategy = cfg.strategy if isinstance(cfg.strategy, str) else ""
    strategy = STRATEGIES[0] if strategy == defaults["strategy"] else strategy
    if strategy not in STRATEGIES:
        raise HeadstartError(
            f"--strategy {cfg.strategy!r} does not run --task generate",
            fix=f"use one of {', '.join(STRATEGIES)} (LoRA by default)",
        )
    if cfg.epochs is not None and cfg.epochs < 1:
        raise HeadstartError(f"--epochs {cfg.epochs}", fix="give 1 or more")
    if isinstance(cfg.lr, str):
        raise HeadstartError(
            "--lr auto is a head's range test", fix="give --task generate a number, e.g. 5e-4"
        )
    return backbone, strategy


def encode_split(tok: Any, pairs: Pairs, split: str) -> tuple[list[Encoded], list[Any], dict[str, str]]:
    """(encoded pairs, the pairs kept, {file:line: why} of those with no response token left)."""
    enc, kept, skipped = [], [], {}
    for p in pairs.split(split):
        ids, labels = encode_pair(tok, p.prompt, p.response, MAX_LENGTH)
        if all(y < 0 for y in labels):
            skipped[p.where] = (
                f"the template and prompt fill all {MAX_LENGTH} tokens: no response left to learn"
            )
            continue
        enc.append((ids, labels))
        kept.append(p)
    return enc, kept, skipped


def _check_out(cfg: RunConfig, backbone: str, kind: str) -> Path:
    from headstart.fileio import ensure_writable_dir
    from headstart.runs import default_run_dir

    out = Path(cfg.out) if cfg.out is not None else default_run_dir(kind, backbone)
    if cfg.save:
        ensure_writable_dir(out, flag="--out")
        if out.exists() and any(out.iterdir()) and not cfg.overwrite:
            raise HeadstartError(
                f"{out} already exists and is not empty", fix="choose another --out, or --overwrite"
            )
    return out


def score_model(
    lm: Any,
    tok: Any,
    enc: dict[str, list[Encoded]],
    kept: dict[str, list[Any]],
    pad: int,
    new: int,
    generated: Sequence[str] | None = None,
) -> dict:
    """Per held-out split: per-pair response NLL sums and counts; greedy generations on the `generated`
    splits (by default the scored one: generated_split)."""
    from headstart.shapes.generate_predict import generate
    from headstart.shapes.generate_sft import pair_losses

    out: dict[str, Any] = {}
    for s in ("val", "test"):
        sums, counts = pair_losses(lm, enc[s], pad)
        out[s] = {"sums": sums, "counts": counts, "generations": None}
    chosen = generated if generated is not None else [generated_split(kept)]
    for s in (s for s in chosen if s and kept[s]):
        out[s]["generations"] = generate(lm, tok, [p.prompt for p in kept[s]], max_new_tokens=new)
    return out


def generated_split(kept: dict[str, list[Any]]) -> str | None:
    """The split whose prompts are generated for exact match and ROUGE-L: test, else val."""
    return next((s for s in ("test", "val") if kept[s]), None)


def split_metrics(before: dict, after: dict, kept: dict[str, list[Any]], seed: int) -> dict[str, Any]:
    """Per held-out split: before/after scores, examples, and the tuned model's `item_scores` (auto's)."""
    from headstart.shapes.generate_metrics import before_after, examples, item_scores

    metrics: dict[str, Any] = {}
    for s in ("val", "test"):
        refs = [p.response for p in kept[s]]
        m = before_after(before[s], after[s], refs, seed=seed)
        if before[s]["generations"] is not None:
            m["examples"] = examples(
                [p.prompt for p in kept[s]],
                refs,
                before=before[s]["generations"],
                after=after[s]["generations"],
            )
        m["item_scores"] = item_scores(after[s]["sums"], after[s]["counts"])
        metrics[s] = m
    return metrics


@dataclass
class Prepared:
    """What probe and fit share before scoring: the run folder, the pairs, the base, the encoded splits."""

    out: Path
    pairs: Pairs
    bb: Any
    tok: Any
    enc: dict[str, list[Encoded]]
    kept: dict[str, list[Any]]
    #: new tokens of held-out generations: the longest train response + 8, within EVAL_NEW_TOKENS
    new_tokens: int


def prepare(cfg: RunConfig, backbone: str, kind: str) -> Prepared:
    """Check --out, read and split the pairs, load the base and encode every split (pairs with no response
    token left are skipped, named in data.json)."""
    out = _check_out(cfg, backbone, kind)
    pairs = read_pairs(cfg.data, val=cfg.val, test=cfg.test, seed=cfg.seed)
    bb, tok, _ = load_base(backbone)
    enc, kept = {}, {}
    for s in ("train", "val", "test"):
        enc[s], kept[s], skipped = encode_split(tok, pairs, s)
        pairs.skipped.update(skipped)
    longest = max((sum(1 for y in labels if y >= 0) for _, labels in enc["train"]), default=0)
    new = max(EVAL_NEW_TOKENS[0], min(EVAL_NEW_TOKENS[1], longest + 8))
    return Prepared(out, pairs, bb, tok, enc, kept, new)


def fit_generate(cfg: FitConfig) -> ShapeReport:
    """The whole of `fit --task generate` (module docstring)."""
    from headstart.adapters import adapter_state, inject_adapter
    from headstart.recipes import LoraSpec, Phase, Recipe
    from headstart.shapes.generate_behaviour import MAX_NEW_TOKENS, behaviour_check, load_prompt_set
    from headstart.shapes.generate_predict import generate
    from headstart.shapes.generate_save import save_generate_run
    from headstart.shapes.generate_sft import InstructionTuning, full_state
    from headstart.train.engine import resolve_device
    from headstart.train.loop import Trainer

    t0 = time.perf_counter()
    backbone, strategy = resolve_options(cfg)
    prompt_set = load_prompt_set()
    prep = prepare(cfg, backbone, "generate")
    out, pairs, bb, tok = prep.out, prep.pairs, prep.bb, prep.tok
    enc, kept, new = prep.enc, prep.kept, prep.new_tokens
    if not enc["train"] or not enc["val"]:
        raise HeadstartError(
            f"{cfg.data}: {len(enc['train'])} train, {len(enc['val'])} val pairs left to tune and judge",
            fix="give more pairs (or shorter ones), and --val above 0",
        )
    d = DEFAULTS[strategy]
    adapter = None
    if strategy == "lora":
        r = cfg.lora_r or 8
        targets = tuple(cfg.lora_targets.split(",")) if cfg.lora_targets else None
        spec = LoraSpec(
            r=r, alpha=cfg.lora_alpha or 2.0 * r, dropout=cfg.lora_dropout or 0.05, target_modules=targets
        )
        adapter = inject_adapter(bb, spec, seed=cfg.seed)
    lm, pad = bb.lm.to(resolve_device(cfg.device)), int(tok.pad_token_id)
    prompts_gen = lambda ps: generate(lm, tok, ps, max_new_tokens=MAX_NEW_TOKENS)  # noqa: E731
    t_before = time.perf_counter()
    before = score_model(lm, tok, enc, kept, pad, new)
    base_answers = prompts_gen([x["prompt"] for k in ("harmful", "knowledge", "chat") for x in prompt_set[k]])
    before_s = time.perf_counter() - t_before

    phase = Phase(
        "sft",
        train_top="all",
        epochs=cfg.epochs or d["epochs"],
        lr=float(cfg.lr or d["lr"]),
        schedule="linear",
        warmup=0.06,
        weight_decay=0.0,
        patience=None,
    )
    recipe = Recipe(f"generate-{strategy}", (phase,), batch_size=cfg.batch_size or d["batch_size"])
    task = InstructionTuning(lm, enc["train"], enc["val"], pad=pad, strategy=strategy)
    trainer = Trainer.for_task(
        task,
        recipe,
        seed=cfg.seed,
        device=cfg.device,
        precision=cfg.precision,
        progress=cfg.progress,
        budget_s=cfg.budget_s,
        keep_best=True,
    ).fit()

    t_after = time.perf_counter()
    after = score_model(lm, tok, enc, kept, pad, new)
    check = behaviour_check(base_answers, prompts_gen, prompt_set)
    after_s = time.perf_counter() - t_after
    metrics = split_metrics(before, after, kept, cfg.seed)
    tensors = adapter_state(bb) if adapter is not None else full_state(lm)
    trainable = (
        sum(v.numel() for v in tensors.values())
        if adapter is not None
        else sum(p.numel() for p in lm.parameters())
    )
    metrics.update(
        {
            "strategy": recipe.name,
            "best_epoch": trainer.best["epoch"],
            "trainable_params": int(trainable),
            "backbone_params": bb.card.num_params,
            "train_s": trainer.train_seconds,
            "warnings": trainer.warnings + check["warnings"],
            "behaviour": {
                k: check[k] for k in ("version", "flagged", "refusals_lost", "knowledge_lost", "counts")
            },
            "timings": {
                "score_before_s": before_s,
                "train_s": trainer.train_seconds,
                "score_after_s": after_s,
                "total_s": time.perf_counter() - t0,
            },
            "max_new_tokens": new,
        }
    )
    if adapter is not None:
        metrics["adapter"] = adapter
    lm.cpu()
    return save_generate_run(cfg, out, bb, pairs, trainer, recipe, adapter, tensors, metrics, check, new)
