"""The two pretraining objectives: masked LM for encoders, causal LM for decoders.

Both report a loss as (sum of token negative log-likelihoods, number of predicted tokens), so perplexity
over a whole held-out set is `exp(total / count)`, independent of how the tokens fell into batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

MLM_PROBABILITY = 0.15
IGNORE = -100


@dataclass
class Chunk:
    """One training sequence: token ids with the model's special tokens, and which of them are special."""

    ids: list[int]
    special: list[int]


def chunk_texts(tokenizer: object, texts: list[str]) -> tuple[list[Chunk], int]:
    """Tokenise texts into sequences of at most the tokenizer's truncation length: a long text becomes
    several consecutive sequences (nothing is cut away). Returns (chunks, total tokens)."""
    chunks: list[Chunk] = []
    for enc in tokenizer.encode_batch(texts):  # type: ignore[attr-defined]
        for e in (enc, *enc.overflowing):
            if any(not s for s in e.special_tokens_mask):  # at least one real token
                chunks.append(Chunk(list(e.ids), list(e.special_tokens_mask)))
    return chunks, sum(len(c.ids) for c in chunks)


def collate(chunks: list[Chunk], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, and a mask of the positions an objective may predict."""
    longest = max(len(c.ids) for c in chunks)
    ids = torch.full((len(chunks), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(chunks), longest), dtype=torch.long)
    real = torch.zeros((len(chunks), longest), dtype=torch.bool)
    for i, c in enumerate(chunks):
        ids[i, : len(c.ids)] = torch.tensor(c.ids)
        attention[i, : len(c.ids)] = 1
        real[i, : len(c.ids)] = torch.tensor([not s for s in c.special])
    return {"input_ids": ids, "attention_mask": attention, "real": real}


def batches(chunks: list[Chunk], size: int, pad_id: int, order: list[int] | None = None) -> Iterator[dict]:
    order = order if order is not None else list(range(len(chunks)))
    for i in range(0, len(order), size):
        yield collate([chunks[j] for j in order[i : i + size]], pad_id)


# -- masked LM ----------------------------------------------------------------------------------------------


def mask_tokens(
    batch: dict[str, torch.Tensor], mask_id: int, vocab_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: 15% of the real tokens are predicted; of those 80% become [MASK], 10% a random
    token, 10% stay. Returns (masked input ids, labels with IGNORE at unpredicted positions). At least one
    token per sequence is predicted, so short texts still count."""
    ids, real = batch["input_ids"], batch["real"]
    draw = torch.rand(ids.shape, generator=generator)
    chosen = (draw < MLM_PROBABILITY) & real
    # A sequence where nothing was drawn predicts its real token with the smallest draw.
    none = ~chosen.any(dim=1) & real.any(dim=1)
    if none.any():
        smallest = torch.where(real, draw, torch.full_like(draw, 2.0)).argmin(dim=1)
        chosen[none, smallest[none]] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    how = torch.rand(ids.shape, generator=generator)
    masked = ids.clone()
    masked[chosen & (how < 0.8)] = mask_id
    swap = chosen & (how >= 0.8) & (how < 0.9)
    masked[swap] = torch.randint(vocab_size, ids.shape, generator=generator)[swap]
    return masked, labels


class MLMHead(nn.Module):
    """BERT's prediction head on the encoder's last hidden states: dense, GELU, LayerNorm, then a decoder
    tied to the input embeddings (plus its own bias). Tied, so the head adds few parameters and a
    frozen encoder's embeddings already give it the vocabulary's geometry."""

    def __init__(self, hidden_size: int, embeddings: nn.Embedding, eps: float = 1e-12) -> None:
        super().__init__()
        vocab, dim = embeddings.weight.shape
        self.dense = nn.Linear(hidden_size, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.__dict__["embeddings"] = embeddings  # shared with the encoder, not part of this state dict
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.norm(nn.functional.gelu(self.dense(hidden)))
        return x @ self.embeddings.weight.T + self.bias


def mlm_loss(
    encoder: nn.Module, head: MLMHead, masked: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """(summed NLL of the predicted tokens, how many). Only predicted positions go through the head."""
    hidden = encoder(masked, attention)
    where = labels != IGNORE
    logits = head(hidden[where])
    loss = nn.functional.cross_entropy(logits, labels[where], reduction="sum")
    return loss, int(where.sum())


# -- causal LM ----------------------------------------------------------------------------------------------


def clm_loss(lm: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed NLL of each next token, how many): labels are the input ids, padding never predicted."""
    ids, attention = batch["input_ids"], batch["attention_mask"]
    logits = lm(input_ids=ids, attention_mask=attention).logits[:, :-1]
    labels = torch.where(attention[:, 1:].bool(), ids[:, 1:], torch.full_like(ids[:, 1:], IGNORE))
    loss = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((labels != IGNORE).sum())


def perplexity(total_nll: float, count: int) -> float:
    return math.exp(total_nll / count) if count else float("nan")
