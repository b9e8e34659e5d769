"""Supervised fine-tuning of a decoder LM on instruction pairs, as a Task of the one training loop.

`InstructionTuning` is to `--task generate` what continued pretraining's `LanguageModeling`
(headstart.pretrain.lm) is to `adapt`: it says what trains (the LoRA adapter, or every weight for `full`),
what one batch costs (the summed negative log-likelihood of the response tokens: `encode_pair` labels
every prompt/template position IGNORE) and how an epoch is judged (validation loss per response token).
The loop (headstart.train.loop.Trainer) brings the optimizer, schedule, device, precision, budget and
best-weights keeping.

`load_base` builds the base LM as the backbone registry builds it (`smollm2-135m`, `hf:<folder>`): the
run references it by name and weights sha256, exactly as a classification run does.
"""

from __future__ import annotations

import random
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.recipes import Phase
from headstart.shapes.generate_data import IGNORE
from headstart.train.task import StepOut, StepTotals, Task

if TYPE_CHECKING:
    from headstart.train.loop import Trainer

Encoded = tuple[list[int], list[int]]  # (input ids, labels)
STRATEGIES = ("lora", "full")
#: Per strategy: learning rate, epochs, batch size. LoRA's adapter starts at zero and learns at a high
#: rate; full fine-tuning moves pretrained weights, so 50x lower. One epoch at 1e-3 so that a 2-core CPU
#: tunes the 300-pair example in about two minutes: there it reached ROUGE-L 0.29 where 5e-4 needed two
#: epochs for 0.28 (one epoch at 5e-4: no gain over the base beyond noise).
DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"lr": 1e-3, "epochs": 1, "batch_size": 8},
    "full": {"lr": 2e-5, "epochs": 1, "batch_size": 8},
}
#: Tokens per pair (template, prompt and response); a longer pair is cut, the response's end first.
MAX_LENGTH = 192


def load_base(name: str) -> tuple[Any, Any, Path]:
    """(backbone holding the causal LM as `.lm`, its transformers tokenizer, its folder) of a decoder."""
    from transformers import AutoTokenizer

    from headstart.backbones import create_backbone
    from headstart.backbones.hf_utils import quiet_transformers
    from headstart.pretrain.folder import parent_folder

    bb = create_backbone(name)
    if "lm" not in bb.__dict__:
        raise HeadstartError(
            f"{name} is a {bb.card.family} backbone, not a decoder language model",
            fix="--task generate tunes decoders: --backbone smollm2-135m, or hf:<causal LM folder>",
        )
    folder = parent_folder(bb)
    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token_id is None:  # right padding in training, left in generation: any id works (masked)
        tok.pad_token = tok.eos_token or tok.unk_token
    return bb, tok, folder


def collate(items: list[Encoded], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (ids, attention mask, labels); padding is never a target."""
    longest = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), longest), pad, dtype=torch.long)
    attention = torch.zeros((len(items), longest), dtype=torch.long)
    labels = torch.full((len(items), longest), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(items):
        ids[i, : len(x)] = torch.tensor(x)
        attention[i, : len(x)] = 1
        labels[i, : len(y)] = torch.tensor(y)
    return ids, attention, labels


def token_nll(
    lm: nn.Module, ids: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL of each row's target tokens, how many per row): position t predicts label t + 1."""
    logits = lm(input_ids=ids, attention_mask=attention).logits[:, :-1]
    targets = labels[:, 1:]
    nll = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(targets.shape)
    return nll.sum(1), (targets != IGNORE).sum(1)


class _SFTForward(nn.Module):
    """What a step runs: the LM (the engine wraps this module), returning per-row NLL sums and counts."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor) -> Any:
        return token_nll(self.lm, ids, attention, labels)


@torch.no_grad()
def pair_losses(
    lm: nn.Module, encoded: list[Encoded], pad: int, batch: int = 8
) -> tuple[list[float], list[int]]:
    """Per pair: (summed response NLL, response tokens), in eval mode and float32."""
    device = next(lm.parameters()).device
    was = lm.training
    lm.eval()
    sums: list[float] = []
    counts: list[int] = []
    for i in range(0, len(encoded), batch):
        ids, att, lab = (t.to(device) for t in collate(encoded[i : i + batch], pad))
        s, n = token_nll(lm, ids, att, lab)
        sums += s.tolist()
        counts += n.tolist()
    lm.train(was)
    return sums, counts


def trainable_names(lm: nn.Module, strategy: str) -> set[str]:
    from headstart.adapters.lora import is_adapter_param

    names = {n for n, _ in lm.named_parameters()}
    return {n for n in names if is_adapter_param(n)} if strategy == "lora" else names


@dataclass(eq=False)
class InstructionTuning(Task):
    """SFT over `train` pairs, judged by the loss per response token of `val` (lower is better; the start
    is evaluated, so an epoch that makes the base worse is not kept)."""

    max_grad_norm = 1.0

    lm: nn.Module
    train: list[Encoded]
    val: list[Encoded]
    _: KW_ONLY
    pad: int
    strategy: str = "lora"
    engine: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.model = _SFTForward(self.lm)
        self.names = trainable_names(self.lm, self.strategy)

    def setup(self, trainer: Trainer, train: Any, val: Any) -> None:
        self.engine = trainer.engine
        for n, p in self.lm.named_parameters():
            p.requires_grad_(n in self.names)

    def init_phase(self, trainer: Trainer, phase: Phase) -> bool:
        return True

    def param_groups(self, phase: Phase) -> list[dict[str, Any]]:
        params = [p for n, p in self.lm.named_parameters() if n in self.names]
        return [{"params": params, "lr": phase.lr, "weight_decay": phase.weight_decay}]

    def n_items(self) -> int:
        return len(self.train)

    def epoch_order(self, seed: int, gen: torch.Generator) -> list[int]:
        order = list(range(len(self.train)))
        random.Random(seed).shuffle(order)
        return order

    def begin_epoch(self, trainer: Trainer, phase: Phase) -> None:
        self.model.train()

    def step(
        self, trainer: Trainer, model: nn.Module, batch: Any, gen: torch.Generator, progress: float
    ) -> StepOut:
        args = self.engine.place(collate([self.train[i] for i in batch], self.pad))
        with self.engine.autocast():
            sums, counts = model(*args)
        n = int(counts.sum())
        if n == 0:
            return StepOut(None)
        loss = sums.sum()
        return StepOut(loss / n, float(loss.detach()), n)

    def evaluate(self, trainer: Trainer, totals: StepTotals | None) -> dict[str, float]:
        train_loss = totals.total / totals.count if totals and totals.count else float("nan")
        sums, counts = pair_losses(self.lm, self.val, self.pad)
        val_loss = sum(sums) / max(1, sum(counts))
        return {"train_loss": train_loss, "val_loss": val_loss}

    def score(self, metrics: dict[str, float]) -> tuple[float]:
        return (-metrics["val_loss"],)

    def describe_metrics(self, row: dict[str, Any]) -> str:
        return f"train loss {row['train_loss']:.3f} | val loss {row['val_loss']:.3f} (response tokens)"

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.lm.state_dict().items() if k in self.names}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.lm.load_state_dict(state, strict=False)

    def end_fit(self, trainer: Trainer) -> None:
        self.model.eval()


def full_state(lm: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of a fully tuned LM (a tied LM head once, as the embeddings)."""
    tied = getattr(lm.config, "tie_word_embeddings", False)
    return {k: v.detach().clone() for k, v in lm.state_dict().items() if not (tied and k == "lm_head.weight")}


def load_full_state(lm: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    missing, unexpected = lm.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise HeadstartError(
            f"{where} does not fit the base model: missing {missing[:3]}, unexpected {unexpected[:3]}",
            fix="load the run with the base it was trained on",
        )
