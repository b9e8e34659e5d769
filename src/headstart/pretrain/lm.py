"""Continued pretraining as a Task of the one training loop (headstart.train.loop.Trainer).

`MaskedLM` (encoders: a fresh or inherited MLM head on the backbone's hidden states) and `CausalLM`
(decoders: their own LM head) say what one batch costs; `LanguageModeling` is the Task: one of adapt's
runs (the head's warm-up, the head-only control, the adaptation) over the domain text, with general text
mixed in, judged by held-out perplexity. The loop brings device, precision, processes, budget and resume.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.pretrain.objectives import (
    MLM_PROBABILITY,
    Chunk,
    MLMHead,
    batches,
    clm_loss,
    collate,
    mask_tokens,
    mlm_loss,
    perplexity,
)
from headstart.recipes import Phase
from headstart.train.precision import side_effect_free, time_step
from headstart.train.task import StepOut, StepTotals, Task

if TYPE_CHECKING:
    from headstart.train.loop import Trainer

HEAD_FILE = "mlm_head.safetensors"
EVAL_TOKENS, EVAL_MASKINGS = 2000, 10


class _MLMForward(nn.Module):
    """(summed NLL of the masked tokens, how many) of an encoder and its MLM head: what a step runs."""

    def __init__(self, bb: nn.Module, head: MLMHead) -> None:
        super().__init__()
        self.bb = bb
        self.head = head

    def encoder(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return self.bb.forward_groups({"input_ids": ids, "attention_mask": attention})["hidden"]

    def forward(self, masked: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor) -> Any:
        return mlm_loss(self.encoder, self.head, masked, attention, labels)


class _CLMForward(nn.Module):
    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor, attention: torch.Tensor) -> Any:
        return clm_loss(self.lm, {"input_ids": ids, "attention_mask": attention})


class MaskedLM:
    """Masked LM over a text encoder backbone: the backbone's own groups give the hidden states."""

    objective = "mlm"

    def __init__(self, bb: Any, folder: Path, seed: int) -> None:
        from safetensors.torch import load_file

        model = bb.hf_model
        self.bb = bb
        self.mask_id = _mask_id(folder)
        self.vocab = int(model.get_input_embeddings().weight.shape[0])
        eps = float(getattr(model.config, "layer_norm_eps", 1e-12))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = MLMHead(bb.embed_dim, model.get_input_embeddings(), eps=eps)
        self.fresh = not (folder / HEAD_FILE).is_file()
        if not self.fresh:  # an adapted parent: continue with its trained head
            self.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        self.model = _MLMForward(bb, self.head)

    @property
    def encoder(self) -> nn.Module:
        """The pretrained weights (at the small rate)."""
        return self.bb

    def fixed_eval(self, chunks: list[Chunk], size: int, pad: int, seed: int) -> list[tuple]:
        """Held-out batches masked once with a fixed seed: before and after score the same positions. A
        small held-out set is masked several times (up to EVAL_MASKINGS) so that about EVAL_TOKENS
        predictions are scored: 15% of a few hundred tokens would make a noisy perplexity."""
        gen = torch.Generator().manual_seed(seed)
        real = sum(sum(1 for s in c.special if not s) for c in chunks)
        repeats = min(EVAL_MASKINGS, max(1, math.ceil(EVAL_TOKENS / max(1.0, MLM_PROBABILITY * real))))
        out = []
        for _ in range(repeats):
            for b in batches(chunks, size, pad):
                masked, labels = mask_tokens(b, self.mask_id, self.vocab, gen)
                out.append((masked, b["attention_mask"], labels))
        return out

    def inputs(self, item: Any, gen: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        """The forward's arguments: of a fixed evaluation batch (masked once), or of a collated training
        batch, masked now with `gen`."""
        if isinstance(item, tuple):
            return item
        masked, labels = mask_tokens(item, self.mask_id, self.vocab, gen)  # type: ignore[arg-type]
        return masked, item["attention_mask"], labels


class CausalLM:
    """Causal LM over a decoder backbone: its own LM head (tied or not), labels are the input ids."""

    objective = "clm"
    fresh = False
    head = None

    def __init__(self, bb: Any) -> None:
        self.bb = bb
        self.lm = bb.lm
        self.model = _CLMForward(self.lm)

    @property
    def encoder(self) -> nn.Module:
        return self.lm  # the LM head too when it is not tied to the embeddings

    def fixed_eval(self, chunks: list[Chunk], size: int, pad: int, seed: int) -> list[Any]:
        return list(batches(chunks, size, pad))

    def inputs(self, item: Any, gen: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        return item["input_ids"], item["attention_mask"]


def _mask_id(folder: Path) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.mask_token_id is None:
        raise HeadstartError(
            f"the tokenizer of {folder} has no mask token, so masked-LM pretraining cannot run",
            fix="adapt an encoder whose tokenizer defines [MASK] / <mask>",
        )
    return int(tok.mask_token_id)


def n_general(n_domain: int, n_general: int, mix: float) -> int:
    """General chunks per epoch so that they make up `mix` of it."""
    return round(mix / (1 - mix) * n_domain) if n_general and mix > 0 else 0


def epoch_order(n_domain: int, n_gen: int, mix: float, rng: random.Random) -> list[tuple[str, int]]:
    """One epoch: every domain chunk once, plus general chunks making up `mix` of the epoch (rehearsal)."""
    order = [("domain", i) for i in range(n_domain)]
    want = n_general(n_domain, n_gen, mix)
    if want:
        picks = [i for _ in range(math.ceil(want / n_gen)) for i in rng.sample(range(n_gen), n_gen)]
        order += [("general", i) for i in picks[:want]]
    rng.shuffle(order)
    return order


@torch.no_grad()
def held_out_perplexity(lm: MaskedLM | CausalLM, fixed: list[Any], device: torch.device) -> float:
    """Perplexity over fixed held-out batches, every module in eval mode, in float32."""
    from headstart.train.engine import place

    lm.model.eval()
    total, count = 0.0, 0
    for item in fixed:
        loss, n = lm.model(*place(lm.inputs(item, None), device))
        total += float(loss)
        count += n
    return perplexity(total, count)


@dataclass(eq=False)
class LanguageModeling(Task):
    """One of adapt's runs: the encoder trains at `encoder_lr` (None: frozen), an MLM head at the phase's
    rate; each epoch is every domain chunk plus general chunks making up `mix_fraction` of it; judged by
    the perplexity of `held_out`. `plateau`: early stopping counts an epoch as progress only when it
    lowers the perplexity by at least this fraction (the head warm-up), measured from the evaluated start
    when `evaluate_start`."""

    max_grad_norm = 1.0
    start_seeds_patience = True

    lm: MaskedLM | CausalLM
    chunks: dict[str, list[Chunk]]
    held_out: list[Any]
    _: KW_ONLY
    pad: int
    mix_fraction: float = 0.0
    encoder_lr: float | None = None
    plateau: float = 0.0
    evaluate_start: bool = False
    engine: Any = field(default=None, init=False)  # the trainer's, from setup

    def __post_init__(self) -> None:
        self.model = self.lm.model

    def setup(self, trainer: Trainer, train: Any, val: Any) -> None:
        self.engine = trainer.engine
        self.lm.encoder.requires_grad_(self.encoder_lr is not None)
        if self.lm.head is not None:
            self.lm.head.requires_grad_(True)

    def init_phase(self, trainer: Trainer, phase: Phase) -> bool:
        return self.evaluate_start

    def param_groups(self, phase: Phase) -> list[dict[str, Any]]:
        wd = phase.weight_decay
        groups = []
        if self.encoder_lr is not None:
            groups.append(
                {"params": list(self.lm.encoder.parameters()), "lr": self.encoder_lr, "weight_decay": wd}
            )
        if self.lm.head is not None:
            groups.append({"params": list(self.lm.head.parameters()), "lr": phase.lr, "weight_decay": wd})
        return groups

    def n_items(self) -> int:
        n_domain, n_gen = len(self.chunks["domain"]), len(self.chunks.get("general", []))
        return n_domain + n_general(n_domain, n_gen, self.mix_fraction)

    def epoch_order(self, seed: int, gen: torch.Generator) -> list[tuple[str, int]]:
        n_gen = len(self.chunks.get("general", []))
        return epoch_order(len(self.chunks["domain"]), n_gen, self.mix_fraction, random.Random(seed))

    def begin_epoch(self, trainer: Trainer, phase: Phase) -> None:
        self.model.train(self.encoder_lr is not None)  # a frozen encoder keeps dropout off
        if self.lm.head is not None:
            self.lm.head.train()

    def step(
        self, trainer: Trainer, model: nn.Module, batch: Any, gen: torch.Generator, progress: float
    ) -> StepOut:
        item = collate([self.chunks[src][j] for src, j in batch], self.pad)
        args = self.engine.place(self.lm.inputs(item, gen))
        with self.engine.autocast():
            loss, n = model(*args)
        if n == 0:
            return StepOut(None)
        return StepOut(loss / n, float(loss.detach()), n)

    def evaluate(self, trainer: Trainer, totals: StepTotals | None) -> dict[str, float]:
        train_loss = totals.total / totals.count if totals and totals.count else float("nan")
        ppl = held_out_perplexity(self.lm, self.held_out, self.engine.device)
        return {"train_loss": train_loss, "held_out_perplexity": ppl}

    def score(self, metrics: dict[str, float]) -> tuple[float]:
        return (-metrics["held_out_perplexity"],)

    def improved(self, new: tuple[float, ...], old: tuple[float, ...]) -> bool:
        return -new[0] < -old[0] * (1 - self.plateau)

    def describe_metrics(self, row: dict[str, Any]) -> str:
        return f"train loss {row['train_loss']:.3f} | held-out perplexity {row['held_out_perplexity']:.2f}"

    def _trained(self) -> nn.Module:
        return self.model if self.encoder_lr is not None or self.lm.head is None else self.lm.head

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._trained().state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._trained().load_state_dict(state)

    def timing(self, trainer: Trainer) -> tuple[str, Callable[[str], float]] | None:
        """One step on the first batch of an epoch."""
        order = self.epoch_order(trainer.seed, torch.Generator())[: trainer.recipe.batch_size]
        if not order:
            return None
        item = collate([self.chunks[src][j] for src, j in order], self.pad)
        args = self.engine.place(self.lm.inputs(item, torch.Generator().manual_seed(0)))
        trains = "encoder" if self.encoder_lr is not None else "head"
        key = f"{self.lm.bb.key}|{self.lm.objective} {trains}|batch {len(order)}x{args[0].shape[1]}"

        def timer(precision: str) -> float:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32

            def once() -> None:
                with torch.autocast(self.engine.device.type, dtype=dtype, enabled=precision != "fp32"):
                    loss, n = self.model(*args)
                (loss / max(1, n)).backward()

            with side_effect_free([self.model]):
                self.begin_epoch(trainer, trainer.phase)
                return time_step(once)

        return key, timer

    def end_fit(self, trainer: Trainer) -> None:
        self.model.eval()
