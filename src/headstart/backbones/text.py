"""The text modality's backbone: strings in, token ids per example, padded batches, pooled hidden states.

Shared by the transformers encoders (`hf_text`) and the decoder LMs (`llm`): `TextBackbone` (inputs are
texts: `item_hash` is the sha256 of the UTF-8 text, `load_item` tokenises with the model's own tokenizer,
truncated to `max_length` and counted, `collate` pads to the longest text of the batch), its
`TextPreprocess`, and the pieces both families' groups end in. Between groups flows a state dict
`{"hidden": (N, T, D), "mask": (N, T)}`, so any prefix of groups can run once and be cached.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from headstart.backbones.base import Backbone
from headstart.errors import BadInput
from headstart.modality import Modality

MAX_LENGTH_CAP = 512  # CPU-friendly default when a model allows more (long texts cost quadratically)


@dataclass(frozen=True)
class TextPreprocess:
    """How a text becomes model input: which tokenizer, how long at most, how tokens are pooled."""

    tokenizer: str  # sha256 of the tokenizer files (identity, not a path)
    max_length: int
    pooling: str = "mean"  # "mean" over real tokens, or "last" (the last real token)
    normalize: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Tokenized(list):
    """Token ids of one text (a list), remembering whether the text was cut to fit `max_length`."""

    truncated: bool = False
    full_length: int = 0  # tokens before truncation (special tokens included)


class TextBackbone(Backbone[TextPreprocess]):
    """A backbone whose inputs are strings; see the module docstring for the state passed between groups."""

    # Decoder LMs run eager PyTorch; encoders (`hf_text.EncoderBackbone`) export with dynamic batch and
    # length axes and run through ONNX Runtime (headstart.onnx_forward), both on length-bucketed batches.
    supports_onnx = False

    def __init__(self, *, tokenizer: Any, pad_id: int, **kwargs: Any) -> None:
        super().__init__(modality=Modality.TEXT, **kwargs)
        self._tokenizer = tokenizer  # a `tokenizers.Tokenizer`: fast, thread-safe, no padding, truncating
        self.pad_id = int(pad_id)
        self._lock = threading.Lock()
        # Texts cut to max_length -> their full token count (the same shape as other families' notes).
        self.input_notes: dict[str, dict[str, float]] = {"truncated": {}}
        self._pending: dict[str, Tokenized] = {}  # encoded by sort_key, consumed by load_item

    @property
    def max_length(self) -> int:
        return self.preprocess.max_length

    @property
    def truncated_count(self) -> int:
        """How many distinct texts this backbone has cut to `max_length` tokens so far."""
        return len(self.input_notes["truncated"])

    def reset_truncated(self) -> None:
        with self._lock:
            self.input_notes["truncated"].clear()

    def item_hash(self, source: str) -> str:
        return hashlib.sha256(source.encode("utf-8", errors="surrogatepass")).hexdigest()

    def encode(self, text: str) -> Tokenized:
        """Token ids with the model's special tokens, truncated to `max_length`."""
        if not isinstance(text, str):
            raise BadInput(repr(text)[:60], f"not a text ({type(text).__name__})")
        if not text.strip():
            raise BadInput(text, "empty text")
        # encode_batch, not encode: the same encoding, but it lets go of the GIL while the Rust tokenizer
        # runs (a few ms for a long text, during which a server's other requests would otherwise wait).
        enc = self._tokenizer.encode_batch([text])[0]
        ids = Tokenized(enc.ids)
        ids.truncated = bool(enc.overflowing)
        ids.full_length = len(ids)
        if ids.truncated:
            specials = self._tokenizer.num_special_tokens_to_add(False)
            ids.full_length += sum(len(o.ids) - specials for o in enc.overflowing)
        return ids

    def sort_key(self, source: str) -> float:
        """Token count: `features.embed` batches texts of similar length so padding stays small."""
        ids = self.encode(source)
        with self._lock:
            if len(self._pending) > 200_000:  # never called back by load_item: do not grow without end
                self._pending.clear()
            self._pending[source] = ids
        return float(len(ids))

    def load_item(self, source: str, **options: Any) -> Tokenized:
        with self._lock:
            ids = self._pending.pop(source, None)
        if ids is None:
            ids = self.encode(source)
        if ids.truncated:
            with self._lock:
                self.input_notes["truncated"][source] = float(ids.full_length)
        return ids

    def load_item_bytes(self, data: bytes, *, name: str = "upload", **options: Any) -> Tokenized:
        """An uploaded text file: its UTF-8 text, encoded as `load_item` does."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadInput(name, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
        return self.load_item(text, **options)

    def collate(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        """Pad to the longest example of this batch (dynamic padding), right side."""
        longest = max(len(e) for e in examples)
        ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, : len(e)] = torch.as_tensor(list(e), dtype=torch.long)
            mask[i, : len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def example_input(self, batch: int = 1) -> dict[str, torch.Tensor]:
        ids = self.encode("a short example sentence")
        return self.collate([ids] * batch)


class WholeModel(nn.Module):
    """Fallback for encoders or decoders without a known layout: one group, the whole model's last hidden
    states (a decoder's base model applies its own final norm)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return {"hidden": out.last_hidden_state, "mask": batch["attention_mask"]}


class TokenPool(nn.Module):
    """State -> (N, D): optional final norm, then the mean over real tokens or the last real token."""

    def __init__(self, pooling: str = "mean", normalize: bool = False, norm: nn.Module | None = None) -> None:
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"unknown pooling {pooling!r}")
        self.pooling = pooling
        self.normalize = normalize
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.norm(state["hidden"])
        mask = state["mask"].to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        else:  # right padding: the last real token sits at length - 1
            last = (mask.sum(dim=1).long() - 1).clamp(min=0)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled
