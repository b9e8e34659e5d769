"""The tagging model and its Task of the one training loop (headstart.train.loop.Trainer).

A text encoder's last hidden states -> dropout -> one linear head applied to every subword. Words are
aligned by their first subword (the fast tokenizer's word ids, the words given pre-split): the label sits
on each word's first subword, every other subword and the special tokens get IGNORE (-100, skipped by the
loss), and a word is read back from its first subword's logits. A word the model never sees (cut by the
encoder's max length, or a word the tokenizer turns into nothing) is predicted O and counted.

`Tagging` says what trains in each phase of any built-in recipe: the top groups (with LoRA, their
adapters) and the head, at the recipe's discriminative rates; `head_init: probe` fits the head in closed
form on the frozen encoder's token states (the `head` strategy is that alone); the activations entering
the first trained group are computed once per phase; an epoch is judged on validation entity F1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.recipes import Phase
from headstart.train.groups import first_trainable_group, param_groups, set_trainable
from headstart.train.task import StepOut, StepTotals, Task

if TYPE_CHECKING:
    from headstart.backbones.base import Backbone
    from headstart.shapes.tagging_data import Sentence
    from headstart.train.loop import Trainer

IGNORE = -100
DROPOUT = 0.1
ALIGNMENT = "first-subword"


@dataclass
class Encoded:
    """One sentence as the encoder reads it: subword ids, a label per subword (IGNORE but on first
    subwords), and each word's first subword position (-1: the model does not see that word)."""

    ids: list[int]
    labels: list[int]
    first: list[int]

    @property
    def unseen(self) -> int:
        return sum(p < 0 for p in self.first)


def encode_words(
    tokenizer: Any, sentences: Sequence[Sequence[str]], label_ids: Sequence[Sequence[int]] | None = None
) -> list[Encoded]:
    """First-subword alignment of pre-split words (`tokenizer`: a `tokenizers.Tokenizer`, truncating)."""
    out = []
    encs = tokenizer.encode_batch([list(s) for s in sentences], is_pretokenized=True) if sentences else []
    for n, enc in enumerate(encs):
        first = [-1] * len(sentences[n])
        for pos, w in enumerate(enc.word_ids):
            if w is not None and first[w] < 0:
                first[w] = pos
        labels = [IGNORE] * len(enc.ids)
        if label_ids is not None:
            for w, pos in enumerate(first):
                if pos >= 0:
                    labels[pos] = label_ids[n][w]
        out.append(Encoded(list(enc.ids), labels, first))
    return out


def encode_sentences(bb: Backbone, sentences: Sequence[Sentence], labels: Sequence[str]) -> list[Encoded]:
    index = {t: i for i, t in enumerate(labels)}
    ids = [[index.get(t, IGNORE) for t in s.tags] for s in sentences]  # a type train lacks: not learned
    return encode_words(text_tokenizer(bb), [s.tokens for s in sentences], ids)


def text_tokenizer(bb: Backbone) -> Any:
    """The backbone's own fast tokenizer (truncating at its max length)."""
    return bb._tokenizer  # type: ignore[attr-defined]


class TokenTagger(nn.Module):
    """backbone groups[start:] -> last hidden states -> dropout -> head: (N, T, labels) logits."""

    def __init__(self, backbone: Backbone, n_labels: int, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.embed_dim, n_labels)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def hidden(self, h: Any, start: int = 0) -> torch.Tensor:
        state = self.backbone.forward_groups(h, start)
        return getattr(self.backbone.pool, "norm", nn.Identity())(state["hidden"])

    def forward(self, h: Any, start: int = 0) -> torch.Tensor:
        return self.head(self.dropout(self.hidden(h, start)))


class Onnx(nn.Module):
    """(input_ids, attention_mask) -> token logits: the graph `export` writes."""

    def __init__(self, tagger: TokenTagger) -> None:
        super().__init__()
        self.tagger = tagger

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.tagger({"input_ids": input_ids, "attention_mask": attention_mask}, 0)


def batch_input(
    bb: Backbone, encs: Sequence[Encoded], idx: Sequence[int], states: list[torch.Tensor] | None
) -> tuple[Any, torch.Tensor]:
    """(the batch entering the network: token ids, or cached states {"hidden", "mask"}, padded right;
    the labels (B, T), IGNORE on padding)."""
    longest = max(len(encs[i].ids) for i in idx)
    y = torch.full((len(idx), longest), IGNORE, dtype=torch.long)
    for r, i in enumerate(idx):
        y[r, : len(encs[i].labels)] = torch.as_tensor(encs[i].labels)
    if states is None:
        return bb.collate([encs[i].ids for i in idx]), y
    hidden = torch.zeros(len(idx), longest, states[idx[0]].shape[-1], dtype=states[idx[0]].dtype)
    mask = torch.zeros(len(idx), longest, dtype=torch.long)
    for r, i in enumerate(idx):
        n = states[i].shape[0]
        hidden[r, :n] = states[i]
        mask[r, :n] = 1
    return {"hidden": hidden, "mask": mask}, y


def _by_length(encs: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
    return [order[b : b + batch_size] for b in range(0, len(order), batch_size)]


@torch.no_grad()
def prefix_states(
    tagger: TokenTagger, encs: Sequence[Encoded], k: int, device: torch.device, batch_size: int
) -> list[torch.Tensor]:
    """The hidden states entering group k of every sentence (its own length, on the CPU)."""
    from headstart.train.engine import place

    tagger.eval()
    out: list[torch.Tensor] = [torch.empty(0)] * len(encs)
    for idx in _by_length(encs, batch_size):
        x, _ = batch_input(tagger.backbone, encs, idx, None)
        state = tagger.backbone.forward_groups(place(x, device), 0, k)
        for r, i in enumerate(idx):
            out[i] = state["hidden"][r, : len(encs[i].ids)].float().cpu()
    return out


@torch.no_grad()
def word_logits(
    tagger: TokenTagger,
    encs: Sequence[Encoded],
    device: torch.device,
    batch_size: int = 32,
    states: list[torch.Tensor] | None = None,
    start: int = 0,
) -> list[np.ndarray]:
    """Per sentence, (words, labels) logits read at each word's first subword (NaN rows: unseen words)."""
    from headstart.train.engine import place

    tagger.eval()
    k = tagger.head.out_features
    out: list[np.ndarray] = [np.zeros((0, k), np.float32)] * len(encs)
    for idx in _by_length(encs, batch_size):
        x, _ = batch_input(tagger.backbone, encs, idx, states)
        z = tagger(place(x, device), start).float().cpu().numpy()
        for r, i in enumerate(idx):
            first = encs[i].first
            w = np.full((len(first), k), np.nan, np.float32)
            seen = [j for j, p in enumerate(first) if p >= 0]
            w[seen] = z[r, [first[j] for j in seen]]
            out[i] = w
    return out


def decode(logits: np.ndarray, labels: Sequence[str]) -> list[str]:
    """Tags of one sentence's words: the argmax label; O for a word the model did not see."""
    return ["O" if np.isnan(row[0]) else labels[int(row.argmax())] for row in logits]


def word_loss(logits: Sequence[np.ndarray], encs: Sequence[Encoded]) -> float:
    """Mean cross-entropy over the labeled words the model sees (a type train lacks is not counted)."""
    total, n = 0.0, 0
    for w, e in zip(logits, encs, strict=True):
        y = np.array([e.labels[p] if p >= 0 else IGNORE for p in e.first], dtype=np.int64)
        keep = y != IGNORE
        if keep.any():
            z = w[keep].astype(np.float64)
            m = z.max(1, keepdims=True)
            lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
            total += float((lse - z[np.arange(len(z)), y[keep]]).sum())
            n += int(keep.sum())
    return total / n if n else float("nan")


class Tagging(Task):
    """The Task of a tagging run: see the module docstring. `val_gold`: the val sentences' tags."""

    def __init__(
        self,
        tagger: TokenTagger,
        train: list[Encoded],
        val: list[Encoded],
        val_gold: list[tuple[str, ...]],
        labels: Sequence[str],
        *,
        seed: int = 0,
        eval_batch_size: int = 32,
    ) -> None:
        self.tagger = self.model = tagger
        self.train, self.val, self.val_gold = train, val, val_gold
        self.labels = list(labels)
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.n_groups = len(tagger.backbone.groups)
        self.trained_groups: set[int] = set()
        self._k = self.n_groups
        self._n = 0
        self._states: dict[str, list[torch.Tensor]] = {}
        self.engine: Any = None

    def setup(self, trainer: Trainer, train: Any, val: Any) -> None:
        self.engine = trainer.engine

    def _set_trainable(self) -> None:
        set_trainable(self.tagger.backbone, self.tagger.head, self._n, freeze_batchnorm=True)

    def begin_phase(self, trainer: Trainer, phase: Phase) -> None:
        self._n = phase.n_trainable(self.n_groups)
        self._set_trainable()
        self._k = first_trainable_group(self.tagger.backbone, self._n)
        self._states.clear()

    def init_phase(self, trainer: Trainer, phase: Phase) -> bool:
        if phase.head_init == "zeros":
            nn.init.zeros_(self.tagger.head.weight)
            nn.init.zeros_(self.tagger.head.bias)
        elif phase.head_init == "probe":
            self._probe_head()
        return phase.head_init == "probe" or (phase.head_init == "keep" and phase.epochs == 0)

    def _features(self, encs: list[Encoded]) -> tuple[np.ndarray, np.ndarray]:
        """Token states of the labeled first subwords under the current encoder, and their labels."""
        from headstart.train.engine import place

        self.tagger.eval()
        xs, ys = [], []
        with torch.no_grad():
            for idx in _by_length(encs, self.eval_batch_size):
                x, y = batch_input(self.tagger.backbone, encs, idx, None)
                h = self.tagger.hidden(place(x, self.engine.device)).float().cpu()
                keep = y != IGNORE
                xs.append(h[keep].numpy())
                ys.append(y[keep].numpy())
        d = self.tagger.head.in_features
        return (np.concatenate(xs) if xs else np.zeros((0, d), np.float32)), (
            np.concatenate(ys) if ys else np.zeros(0, np.int64)
        )

    def _probe_head(self) -> None:
        """The closed-form linear probe on token states (C chosen on val by balanced token accuracy: the O
        tag would otherwise outvote every entity)."""
        from headstart.head import fit_head
        from headstart.imbalance import BALANCED

        X, y = self._features(self.train)
        Xv, yv = self._features(self.val) if self.val else (None, None)
        lin, _, _ = fit_head(X, y, len(self.labels), X_val=Xv, y_val=yv, seed=self.seed, metric=BALANCED)
        with torch.no_grad():
            self.tagger.head.weight.copy_(torch.from_numpy(lin.weight))
            self.tagger.head.bias.copy_(torch.from_numpy(lin.bias))

    def _cached(self, name: str) -> list[torch.Tensor] | None:
        if self._k == 0:
            return None
        if name not in self._states:
            encs = self.train if name == "train" else self.val
            self._states[name] = prefix_states(
                self.tagger, encs, self._k, self.engine.device, self.eval_batch_size
            )
        return self._states[name]

    def prepare_phase(self, trainer: Trainer, phase: Phase) -> None:
        self._cached("train")  # once per phase, before epoch 1's clock

    def param_groups(self, phase: Phase) -> list[dict[str, Any]]:
        return param_groups(self.tagger.backbone, self.tagger.head, phase)

    def n_items(self) -> int:
        return len(self.train)

    def epoch_order(self, seed: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.n_items(), generator=gen)

    def begin_epoch(self, trainer: Trainer, phase: Phase) -> None:
        self._set_trainable()
        self.tagger.dropout.train()

    def step(
        self, trainer: Trainer, model: nn.Module, batch: torch.Tensor, gen: torch.Generator, progress: float
    ) -> StepOut:
        x, y = batch_input(self.tagger.backbone, self.train, batch.tolist(), self._cached("train"))
        x, y = self.engine.place(x), self.engine.place(y)
        with self.engine.autocast():
            z = model(x, self._k)
        labeled = y != IGNORE
        n = int(labeled.sum())
        if n == 0:
            return StepOut(None)
        z = z.float()
        loss = F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), ignore_index=IGNORE)
        correct = int(((z.argmax(-1) == y) & labeled).sum())
        return StepOut(loss, float(loss.detach()) * n, n, correct, n)

    def end_epoch(self, trainer: Trainer, phase: Phase) -> None:
        if self._n > 0:
            self.trained_groups.update(range(self._k, self.n_groups))

    def evaluate(self, trainer: Trainer, totals: StepTotals | None) -> dict[str, float]:
        from headstart.shapes.tagging_metrics import tag_scores

        tl = totals.total / totals.count if totals and totals.count else float("nan")
        ta = totals.correct / totals.labeled if totals and totals.labeled else float("nan")
        row = {
            "train_loss": tl,
            "train_acc": ta,
            "val_loss": math.nan,
            "val_acc": math.nan,
            "val_f1": math.nan,
        }
        if self.val:
            w = word_logits(
                self.tagger, self.val, self.engine.device, self.eval_batch_size, self._cached("val"), self._k
            )
            s = tag_scores(self.val_gold, [decode(x, self.labels) for x in w], n_boot=0)
            row.update(val_loss=word_loss(w, self.val), val_acc=s["token_accuracy"], val_f1=s["entity_f1"])
        return row

    def score(self, metrics: dict[str, float]) -> tuple[float, float]:
        if math.isnan(metrics["val_f1"]):  # no validation split: the lowest training loss
            tl = metrics["train_loss"]
            return (0.0, -tl if not math.isnan(tl) else -math.inf)
        return (metrics["val_f1"], -metrics["val_loss"])

    def describe_metrics(self, row: dict[str, Any]) -> str:
        return (
            f"train loss {row['train_loss']:.3f} | val loss {row['val_loss']:.3f} token acc "
            f"{row['val_acc']:.3f} entity F1 {row['val_f1']:.3f}"
        )

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.tagger.load_state_dict(state)
        self._states.clear()  # states cached under other weights

    def end_fit(self, trainer: Trainer) -> None:
        self._k = self.n_groups
        self.tagger.eval()
