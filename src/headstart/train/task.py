"""What the one training loop trains: a Task says what trains in a phase, what one step computes, and how
an epoch is judged. The loop (headstart.train.loop.Trainer) owns everything else: optimizer and schedule,
device, precision and processes, and the callbacks.

Two tasks exist: `Classification` (headstart.train.classify: a backbone's layer groups and a linear head,
the loss an Objective; float targets: its subclass in headstart.train.targets_task) and continued
pretraining's `LanguageModeling` (headstart.pretrain.lm: masked LM for encoders, causal LM for decoders).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from headstart.recipes import Phase

if TYPE_CHECKING:
    from headstart.train.loop import Trainer


@dataclass
class StepOut:
    """One step's loss to train on (None: nothing to learn from this batch, no optimizer step) and what the
    epoch's training metrics sum: `total` over `count` is the mean loss, `correct` over `labeled` the
    accuracy."""

    loss: torch.Tensor | None
    total: float = 0.0
    count: int = 0
    correct: int = 0
    labeled: int = 0


@dataclass
class StepTotals:
    """The sums of an epoch's StepOuts (and the optimizer steps taken)."""

    total: float = 0.0
    count: int = 0
    correct: int = 0
    labeled: int = 0
    steps: int = 0

    def add(self, out: StepOut) -> None:
        self.total += out.total
        self.count += out.count
        self.correct += out.correct
        self.labeled += out.labeled
        self.steps += out.loss is not None


class Task:
    """The hooks the loop calls, with the defaults most tasks keep."""

    # Whether the phase's evaluated starting point may be kept as the best weights.
    start_is_candidate = True
    # Whether early stopping measures the first epoch against the phase's evaluated start.
    start_seeds_patience = False
    max_grad_norm: float | None = None  # gradient-norm clipping of each step
    model: nn.Module  # what one step runs forward: the engine wraps it (processes, autocast)

    def setup(self, trainer: Trainer, train: Any, val: Any) -> None:
        """Once, before training."""

    def modules(self) -> list[nn.Module]:
        """Every module the task trains or runs: the engine places them on its device."""
        return [self.model]

    def begin_phase(self, trainer: Trainer, phase: Phase) -> None:
        """What trains in `phase` (also when a checkpoint resumes inside it)."""

    def init_phase(self, trainer: Trainer, phase: Phase) -> bool:
        """The phase's starting point (e.g. a probe head); True when it is worth evaluating."""
        return False

    def prepare_phase(self, trainer: Trainer, phase: Phase) -> None:
        """Before the phase's first epoch (and its clock): precompute what every epoch reuses."""

    def param_groups(self, phase: Phase) -> list[dict[str, Any]]:
        raise NotImplementedError

    def n_items(self) -> int:
        """Items per epoch (before they are shared out among processes)."""
        raise NotImplementedError

    def epoch_order(self, seed: int, gen: torch.Generator) -> Sequence[Any]:
        """The epoch's items in training order; the loop shares them out among processes and batches them."""
        raise NotImplementedError

    def begin_epoch(self, trainer: Trainer, phase: Phase) -> None:
        """Train/eval modes before the epoch's steps (evaluation leaves everything in eval mode)."""

    def micro_batch(self, trainer: Trainer, n: int) -> int:
        """Items per forward/backward within a step of n (one optimizer step either way); n: unsplit."""
        return n

    def prefetch(self, batch: Sequence[Any]) -> None:
        """Start reading `batch` (the next step's) in the background; streamed data only."""

    def step(
        self, trainer: Trainer, model: nn.Module, batch: Any, gen: torch.Generator, progress: float
    ) -> StepOut:
        raise NotImplementedError

    def end_epoch(self, trainer: Trainer, phase: Phase) -> None:
        """After the steps (and the BatchNorm pass), before evaluation."""

    def evaluate(self, trainer: Trainer, totals: StepTotals | None) -> dict[str, float]:
        """The history row's metrics: of the epoch (`totals`: its training steps) or of the start (None)."""
        raise NotImplementedError

    def score(self, metrics: dict[str, float]) -> tuple[float, ...]:
        """Higher is better; tuples compare left to right."""
        raise NotImplementedError

    def improved(self, new: tuple[float, ...], old: tuple[float, ...]) -> bool:
        """Whether early stopping counts `new` as progress over `old`."""
        return new > old

    def describe_metrics(self, row: dict[str, Any]) -> str:
        return " | ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float) and k != "seconds")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights best-weights keeps and restores."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def checkpoint_state(self) -> dict[str, Any]:
        return {"model": self.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["model"])

    def timing(self, trainer: Trainer) -> tuple[str, Callable[[str], float]] | None:
        """(memo key, timer) for precision `auto` on a CPU: `timer(precision)` is the seconds of one
        training step, without side effects. None: nothing worth timing."""
        return None

    def end_fit(self, trainer: Trainer) -> None:
        """After training (best weights restored): leave the modules in eval mode."""
