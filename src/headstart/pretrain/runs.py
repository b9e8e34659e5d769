"""adapt's runs of the one training loop (headstart.train.loop.Trainer): the fresh head's warm-up, the
adaptation and the head-only control, in that order (see headstart.pretrain.pretrain for why).

Each run checkpoints into its own folder of adapt's work folder, so `--resume` replays the runs that
finished from their checkpoints and continues the one that was interrupted. `--budget` bounds the
adaptation; the control then replays exactly the steps the adaptation took, so "before" and "after"
stay matched however early the clock stopped it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headstart.pretrain.lm import CausalLM, LanguageModeling, MaskedLM, held_out_perplexity
from headstart.pretrain.objectives import Chunk
from headstart.recipes import Phase, Recipe
from headstart.train.callbacks import Budget, Callback, StepLimit
from headstart.train.loop import Trainer

HEAD_PLATEAU = 0.01  # the head warm-up stops when held-out perplexity improves by less than this fraction
# The runs, each checkpointing in its own folder of the work folder (what --resume looks for).
RUN_NAMES = ("head", "adapt", "control")


@dataclass
class Runs:
    """adapt's runs of the one training loop over the same data; their epochs join `history`.

    `work_dir`: where each run checkpoints (None: no checkpoints); `resume`: continue from them;
    `deadline`: the `time.perf_counter()` by which training must end (--budget; None: no clock)."""

    lm: MaskedLM | CausalLM
    chunks: dict[str, list[Chunk]]
    held_out: list[Any]
    pad: int
    mix_fraction: float
    batch_size: int
    seed: int
    device: str
    precision: str
    progress: bool
    work_dir: Path | None = None
    resume: bool = False
    deadline: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)  # where and how the last run trained

    def run(
        self,
        name: str,
        epochs: int,
        lr: float,
        offset: int,
        *,
        encoder_lr: float | None = None,
        plateau: float | None = None,
        replayed: bool = False,
        steps: int | None = None,
    ) -> int:
        """Train `epochs` at rate `lr` (the MLM head's, or the decoder's) and the encoder at `encoder_lr`
        (None: frozen); with `plateau`, stop when held-out perplexity improves by less than that fraction
        and keep the best (the warm-up). Runs with the same `offset` see the same batches and masks.
        `steps`: stop after that many steps (the control); otherwise the deadline stops it, keeping time
        for a replay of its steps when `replayed`. Returns the optimizer steps taken."""
        warm_up = plateau is not None
        task = LanguageModeling(
            self.lm,
            self.chunks,
            self.held_out,
            pad=self.pad,
            mix_fraction=self.mix_fraction,
            encoder_lr=encoder_lr,
            plateau=plateau or 0.0,
            evaluate_start=warm_up,
        )
        phase = Phase(
            name,
            train_top="all" if encoder_lr is not None else 0,
            epochs=epochs,
            lr=lr,
            schedule="constant" if warm_up else "linear",
            warmup=0.06,
            weight_decay=0.01,
            patience=1 if warm_up else None,
        )
        stops: list[Callback] = []
        if steps is not None:
            stops.append(StepLimit(steps))
        elif self.deadline is not None:
            stops.append(Budget(max(0.0, self.deadline - time.perf_counter()), replayed=replayed))
        trainer = Trainer.for_task(
            task,
            Recipe(f"adapt-{name}", (phase,), batch_size=self.batch_size),
            seed=self.seed + offset,
            device=self.device,
            precision=self.precision,
            progress=self.progress,
            keep_best=warm_up,
            work_dir=self.work_dir / name if self.work_dir is not None else None,
            resume=self.resume,
            callbacks=stops,
        ).fit()
        self.engine = trainer.engine.describe()
        self.warnings += [f"{name}: {w}" for w in trainer.warnings]
        rows = [r for r in trainer.history if r["kind"] == "train"]
        keys = ("steps", "train_loss", "held_out_perplexity", "seconds")
        self.history += [{"phase": name, "epoch": r["phase_epoch"], **{k: r[k] for k in keys}} for r in rows]
        return sum(r["steps"] for r in rows)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of `module`'s weights on the CPU (to return to after another run has trained them)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def train(
    runs: Runs, g_fixed: list[Any], *, epochs: int, lr: float, head_lr: float, head_epochs: int
) -> tuple[dict[str, Any], int, int]:
    """The runs (see headstart.pretrain.pretrain): (perplexity before/after, steps, warm-up steps)."""
    lm, dev = runs.lm, next(runs.lm.model.parameters()).device
    warm_steps = 0
    if isinstance(lm, MaskedLM):
        # 1. a fresh head learns on the frozen encoder until held-out perplexity plateaus.
        if lm.fresh and head_epochs > 0:
            warm_steps = runs.run("head", head_epochs, head_lr, 1, plateau=HEAD_PLATEAU)
        start = _snapshot(lm.model)  # the unchanged encoder and the warmed-up head: where both runs begin
        # 2. everything trains, the pretrained weights at a small rate (time kept for the control).
        steps = runs.run("adapt", epochs, head_lr, 2, encoder_lr=lr, replayed=True)
        after = runs.history[-1]["held_out_perplexity"]
        g_after = held_out_perplexity(lm, g_fixed, dev) if g_fixed else None
        adapted = _snapshot(lm.model)
        # 3. the control: from the same start, the head alone replays the adaptation's very steps
        # (batches, masks, rates, schedule) on the unchanged encoder; both heads have then trained equally.
        lm.model.load_state_dict(start)
        del start
        runs.run("control", epochs, head_lr, 2, steps=steps)
        before = runs.history[-1]["held_out_perplexity"]
        g_before = held_out_perplexity(lm, g_fixed, dev) if g_fixed else None
        lm.model.load_state_dict(adapted)
    else:
        before = held_out_perplexity(lm, runs.held_out, dev)
        g_before = held_out_perplexity(lm, g_fixed, dev) if g_fixed else None
        steps = runs.run("adapt", epochs, lr, 2, encoder_lr=lr)
        after = runs.history[-1]["held_out_perplexity"]
        g_after = held_out_perplexity(lm, g_fixed, dev) if g_fixed else None
    ppl = {
        "domain": {"before": before, "after": after},
        "general": None if g_before is None else {"before": g_before, "after": g_after},
    }
    return ppl, steps, warm_steps
