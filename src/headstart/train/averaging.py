"""Weight averaging as callbacks of the one loop: an exponential moving average of the weights a phase
trains (`Phase.ema`), and a greedy soup of the best evaluated weights of a fit (`Recipe.soup`).

- **EMA** (Polyak averaging; timm's ModelEmaV2 keeps one too): after every step the average moves toward
  the weights by (1 - d), d = min(ema, (1 + n) / (10 + n)) after n steps, a warm-up so that the few dozen
  steps of a small-data phase are not spent averaging the phase's start. Each epoch is evaluated, kept by
  best-weights and early stopping on the *averaged* weights; training goes on from its own weights.
- **Greedy soup** (Wortsman et al., ICML 2022, "model soups"; AutoGluon's multimodal default): the `soup`
  best-scoring evaluations of the fit (epochs, and the phase start where it counts, e.g. LP-FT's probe
  head) are kept; at the end, in order of score, each is added to the average when the average's score
  does not drop. The fit returns the soup when it has more than one member (the history's "soup" row
  says which epochs), else the best weights as before. Cooking it costs up to `soup` - 1 evaluations
  after the last epoch, which a time budget keeps in reserve (callbacks.Budget's `closing_evals`).

Both states travel in checkpoints (`state_dict`), so a resumed fit averages what an uninterrupted one would.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from headstart.train.callbacks import Callback, CandidateWatcher

if TYPE_CHECKING:
    from headstart.train.loop import Trainer

EMA_WARMUP = 10  # d = (1 + n) / (EMA_WARMUP + n) caps the decay for the first steps


class Ema(Callback):
    """Per phase with `ema` > 0: the moving average of the trained parameters, swapped in for evaluation
    (after the steps, before precise BatchNorm and validation) and out again once the epoch is judged."""

    def __init__(self) -> None:
        self.shadow: list[torch.Tensor] | None = None
        self.live: list[torch.Tensor] | None = None  # the training weights while the average is in
        self.steps = 0

    def _on(self, trainer: Trainer) -> bool:
        return trainer.phase.ema > 0

    def before_train(self, trainer: Trainer) -> None:
        if not self._on(trainer):
            self.shadow = None
            return
        if self.shadow is not None and len(self.shadow) == len(trainer.params) and trainer.pos.done_in_phase:
            # resumed inside the phase: the checkpoint's average goes on (read onto the CPU: back beside
            # the weights)
            self.shadow = [s.to(p.device) for s, p in zip(self.shadow, trainer.params, strict=True)]
            return
        self.shadow = [p.detach().clone() for p in trainer.params]
        self.steps = 0

    @torch.no_grad()
    def after_step(self, trainer: Trainer) -> None:
        if self.shadow is None:
            return
        self.steps += 1
        d = min(trainer.phase.ema, (1 + self.steps) / (EMA_WARMUP + self.steps))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in trainer.params], 1.0 - d)

    @torch.no_grad()
    def after_train(self, trainer: Trainer) -> None:
        if self.shadow is None:
            return
        self.live = [p.detach().clone() for p in trainer.params]
        for p, s in zip(trainer.params, self.shadow, strict=True):
            p.copy_(s)

    @torch.no_grad()
    def after_epoch(self, trainer: Trainer) -> None:
        """The epoch is judged (best weights, soup and early stopping ran): training goes on from its own
        weights, and a checkpoint written next holds them."""
        if self.live is None:
            return
        for p, w in zip(trainer.params, self.live, strict=True):
            p.copy_(w)
        self.live = None

    @torch.no_grad()
    def after_fit(self, trainer: Trainer) -> None:
        """Without best-weights (keep_best=False: the last weights), the last phase's average is returned."""
        if self.shadow is not None and trainer.best["state"] is None and not trainer.best.get("soup"):
            for p, s in zip(trainer.params, self.shadow, strict=True):
                p.copy_(s)

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.shadow is None else {"shadow": self.shadow, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow, self.steps = list(state["shadow"]), int(state["steps"])


class Soup(CandidateWatcher):
    """Keeps the `k` best-scoring evaluations' weights and cooks the greedy soup at the end of the fit."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.kept: list[dict[str, Any]] = []  # {"score", "epoch", "state"}, best first

    def consider(self, trainer: Trainer) -> None:
        score = tuple(trainer.score)
        if len(self.kept) >= self.k and score <= tuple(self.kept[-1]["score"]):
            return
        # on the CPU: k copies of the weights need not take accelerator memory
        state = {k: v.detach().to("cpu", copy=True) for k, v in trainer.task.state_dict().items()}
        self.kept.append({"score": list(score), "epoch": trainer.pos.epoch, "state": state})
        self.kept.sort(key=lambda c: tuple(c["score"]), reverse=True)
        del self.kept[self.k :]

    def after_fit(self, trainer: Trainer) -> None:
        if len(self.kept) < 2:
            return
        t0 = time.perf_counter()
        members = [self.kept[0]]
        best_score, best_metrics = tuple(self.kept[0]["score"]), None
        for cand in self.kept[1:]:
            trainer.task.load_state_dict(average([m["state"] for m in [*members, cand]]))
            metrics = trainer.task.evaluate(trainer, None)
            score = trainer.task.score(metrics)
            if score >= best_score:  # greedy soup: a member stays when the average does not get worse
                members.append(cand)
                best_score, best_metrics = score, metrics
        trainer.task.load_state_dict(average([m["state"] for m in members]))
        self.kept = []  # the kept weights are no longer needed; free them
        if best_metrics is None:  # no average scored as well as the best evaluation alone: that one stands
            return
        epochs = [m["epoch"] for m in members]
        row = {"epoch": trainer.pos.epoch, "phase": "soup", "phase_epoch": 0, "kind": "soup"}
        seconds = time.perf_counter() - t0
        trainer.history.append({**row, **best_metrics, "lr": None, "seconds": seconds, "members": epochs})
        trainer.best = {**trainer.best, "score": list(best_score), "soup": epochs}

    def state_dict(self) -> dict[str, Any] | None:
        return {"kept": self.kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept = list(state["kept"])


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of `states` (floating tensors; others, e.g. BatchNorm's step count, are the
    first state's)."""
    first = states[0]
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k].to(torch.float32) for s in states]).mean(0).to(v.dtype)
        else:
            out[k] = v.clone()
    return out
