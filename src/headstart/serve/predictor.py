"""The model side of `headstart serve`: load the model once, decode uploads, predict, format the answer.

Uploads are decoded from memory (no temp files for images) with exactly the preprocessing the backbone's
own loader applies; the forward runs under a lock (one at a time: the cores are better used by one batch
than by two competing ones). On the CPU it is the fast forward `predict` uses, at the run's precision: a run
trained on int8 features answers through that very int8 backbone (ONNX Runtime) and the head; otherwise an
export of this very model in the run folder (`headstart export RUN --onnx`) when there is one, else the
cached ONNX export of the backbone and the head (images always; text where ONNX Runtime is faster here,
as `embed` decides). PyTorch in inference mode answers on a GPU (`--device`: the model moves there once;
each batch goes there, its logits come back) and where ONNX Runtime does not pay. `forward` says which
answered (/health, the card, and each answer's X-Headstart-Forward header). A text is
tokenized only as far as the model reads it (`encode_head`): a 10 MB text would otherwise keep the Rust
tokenizer, which holds the GIL, busy for seconds. Nothing here knows about HTTP (that is
`headstart.serve.http`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import BadInput, HeadstartError
from headstart.model import TrainedModel, softmax

log = logging.getLogger(__name__)

DEFAULT_TOP = 5
#: Uploads are untrusted: a small PNG can claim a huge canvas. 40 MP is larger than any phone photo.
SERVE_MAX_PIXELS = 40_000_000
#: Characters of a text tokenized at first, per token the model reads: tokens average 3-5 characters.
CHARS_PER_TOKEN = 16


def load_served_model(ref: str | Path) -> TrainedModel:
    """A run folder, else a model-store reference such as "emoji@production"."""
    from headstart.model import load_model

    path = Path(ref)
    if path.is_dir():
        return load_model(path)
    try:
        from headstart import store  # type: ignore[attr-defined]
    except ImportError:
        store = None
    if store is not None and hasattr(store, "load"):
        return store.load(str(ref))
    return load_model(path)  # raises the "not a headstart run" error with its fix


class Predictor:
    """The loaded model behind the server: decode one upload, predict a batch, format the answer."""

    def __init__(
        self,
        model: TrainedModel,
        *,
        engine: str = "auto",
        max_pixels: int = SERVE_MAX_PIXELS,
        device: str = "auto",
        max_text_chars: int | None = None,
    ) -> None:
        """`max_text_chars`: a longer text is refused (BadInput), like an image over `max_pixels`."""
        from headstart.features import forward_device

        if engine not in ("auto", "onnx", "torch"):
            raise HeadstartError(f"unknown engine {engine!r}", fix="use auto, onnx or torch")
        # ONNX Runtime is the CPU build: on a GPU `auto` serves through PyTorch there.
        self.device = forward_device(engine, device)
        self.model = model
        self.classes = model.classes
        self.max_pixels, self.max_text_chars = max_pixels, max_text_chars
        self.lock = threading.Lock()
        self.session: Any = None  # RUN/model.onnx (the whole classifier), when that is what answers
        self.onnx_path: Path | None = None  # the ONNX file ONNX Runtime runs, whichever it is
        # The frozen forward (ONNX Runtime) whose embeddings the head then scores, as `predict` does.
        self.backbone_forward: Callable[[Any], np.ndarray] | None = None
        # A head trained on int8 features is served on that very forward (rebuilt exactly, or refused).
        self.int8 = model.int8_forward()
        self.precision = "fp32" if self.int8 is None else "int8"
        if self.int8 is not None:
            if engine == "torch":
                raise HeadstartError(
                    f"{model.path} was trained on int8 features, which ONNX Runtime computes",
                    fix="serve it with engine auto (or onnx)",
                )
            self.device, self.engine, self.forward = forward_device("onnx", "auto"), "onnx-int8", "onnx-int8"
            self.backbone_forward, self.onnx_path = self.int8, self.int8.ensure()
            return
        if engine == "onnx" or (engine == "auto" and self.device.type == "cpu"):
            self.onnx_path = matching_export(model)
            if self.onnx_path is None:
                self.backbone_forward, self.onnx_path = fast_forward(model, engine)
        if self.backbone_forward is not None:
            self.engine, self.forward = "onnx", "onnx-fp32"
        elif self.onnx_path is not None:
            from headstart.export import ort_session as _session

            self.session = _session(self.onnx_path)
            self.engine, self.forward = "onnx", "onnx-export"
        else:
            from headstart.train.engine import place

            self.module = place(model.module(), self.device)  # for the server's lifetime
            self.engine, self.forward = "torch", "torch"

    def decode(self, data: bytes, name: str = "upload") -> Any:
        """Upload bytes -> one preprocessed example (raises BadInput with the reason)."""
        from headstart.backbones.base import Backbone

        bb = self.model.backbone
        if self.model.modality == "image" and type(bb).load_item is Backbone.load_item:
            from headstart.data.images import load_image_bytes

            return load_image_bytes(data, bb.preprocess, name=name, max_pixels=self.max_pixels)
        from_bytes = getattr(bb, "load_item_bytes", None)
        if from_bytes is not None:
            return from_bytes(data, name=name)
        # A family that only reads files (e.g. an audio decoder): hand it a private temp file.
        suffix = Path(name).suffix if name else ""
        with tempfile.NamedTemporaryFile(suffix=suffix) as f:
            f.write(data)
            f.flush()
            return bb.load_item(f.name)

    def decode_text(self, text: str, name: str = "text") -> Any:
        check_text_size(text, name, self.max_text_chars)
        bb = self.model.backbone
        encode, max_length = getattr(bb, "encode", None), getattr(bb, "max_length", None)
        if encode is None or not max_length:
            return bb.load_item(text)
        # Not load_item: that also remembers every truncated text (in full) for a run's report, which
        # in a server would only grow.
        return encode_head(encode, text, int(max_length))

    def predict(self, examples: list[Any]) -> np.ndarray:
        """Preprocessed examples -> calibrated probabilities (N, K)."""
        batch = self.model.backbone.collate(examples)
        with self.lock:
            if self.backbone_forward is not None:
                E = self.backbone_forward(batch)
                return softmax(self.model.head.logits(E) / self.model.temperature)
            if self.session is not None:
                from headstart.export import onnx_feed

                # The export's own input names: `input`, or a text model's token ids and mask.
                return self.session.run(["probabilities"], onnx_feed(batch))[0]
            import torch

            from headstart.train.engine import place

            with torch.inference_mode():
                logits = self.module(place(batch, self.device)).cpu().numpy()
        return softmax(logits / self.model.temperature)

    def result(self, p: np.ndarray, top: int) -> dict[str, Any]:
        order = np.argsort(-p)[:top]
        return {
            "label": self.classes[int(order[0])],
            "probability": float(p[order[0]]),
            "top": [{"label": self.classes[int(j)], "probability": float(p[j])} for j in order],
        }

    def card(self, ref: str) -> dict[str, Any]:
        """The run's card (headstart.runs.run_card, with the temperature served) and how it is served."""
        from headstart.runs import run_card

        m = self.model
        card = {
            **run_card(m.path, m.run_info, temperature=m.temperature),
            "ref": ref,
            "kind": m.kind,
            "modality": m.modality,
            "classes": self.classes,
            "engine": self.engine,
            "forward": self.forward,
            "precision": self.precision,
            "device": str(self.device),
        }
        if self.onnx_path is not None:
            card["onnx"] = str(self.onnx_path)
        return card


def check_text_size(text: str, name: str, max_chars: int | None) -> None:
    """A text over the server's limit for one text is a BadInput (as an image over --max-pixels)."""
    if max_chars is not None and len(text) > max_chars:
        raise BadInput(
            name,
            f"{len(text):,} characters: over the {max_chars:,}-byte limit for one text "
            "(send its start, or raise --max-text-mb)",
        )


def encode_head(encode: Callable[[str], Any], text: str, max_length: int) -> Any:
    """`encode(text)`, which truncates to `max_length` tokens, at the cost of a prefix of a long text.

    A tokenizer reads a whole text even though only `max_length` tokens are kept. A prefix cut at
    whitespace gives the same first tokens (the pre-tokenizers split at whitespace) as soon as it
    overflows `max_length` itself (`truncated`); when it does not (say, mostly spaces), a 4x longer
    prefix is tried, so the work stays within about 1.3x that of the shortest prefix that overflows.
    A run of over `n / 2` characters without whitespace is cut inside the word: only that word's tokens
    can then differ, and only if the word reaches into the first `max_length` tokens.
    """
    n = max(4096, CHARS_PER_TOKEN * max_length)
    while n < len(text):
        cut = max(text.rfind(c, n // 2, n) for c in " \n\t")
        head = text[: cut if cut > 0 else n]
        if head.strip():  # an all-blank prefix would be refused as an empty text
            ids = encode(head)
            if getattr(ids, "truncated", False):
                return ids
        n *= 4
    return encode(text)


def matching_export(model: TrainedModel) -> Path | None:
    """RUN/model.onnx if it was exported from exactly this model (same base, head, delta, temperature)."""
    from headstart.export import ONNX_FILE, card_path, model_identity

    if model.path is None:
        return None
    path = model.path / ONNX_FILE
    if not (path.is_file() and card_path(path).is_file()):
        return None
    try:
        card = json.loads(card_path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if card.get("identity") != model_identity(model) or card.get("quantized"):
        log.warning("ignoring %s: exported from a different model (re-export it)", path)
        return None
    return path


def fast_forward(model: TrainedModel, engine: str) -> tuple[Callable[[Any], np.ndarray] | None, Path | None]:
    """(the frozen forward `predict` runs on the CPU, its ONNX file) when that is ONNX Runtime: the cached
    export of this very backbone (its key includes a fine-tuned delta), chosen as `embed` chooses (images
    always; text where a timed forward on this machine says ONNX Runtime is faster); (None, None) where
    PyTorch answers. `engine` "onnx" insists, and a backbone without an ONNX path is then an error."""
    from headstart.features import make_forward

    try:
        forward, used = make_forward(model.backbone, engine)
    except HeadstartError as e:
        raise HeadstartError(
            f"{model.path or model.backbone.name}: {e.message}", fix="serve it with engine torch (or auto)"
        ) from e
    if used != "onnx":
        return None, None
    return forward, getattr(forward, "path", None)
