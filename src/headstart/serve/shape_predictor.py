"""Serve a task shape's run (headstart.shapes: multi-label, regression, ...) through the same HTTP app.

`ShapeServePredictor` wraps any `ShapePredictor` in what `headstart.serve.http` asks of its `Predictor`:
`decode` / `decode_text` (one upload -> one source: a text, or the upload's bytes in a private temp file,
since a shape answers on sources), `predict` (one forward for the batch: the shape's answers), `result`
(the answer as the JSON reply), `card`, `classes`, `engine`, `forward`, `precision`, `device`, `model`.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from headstart.errors import BadInput
from headstart.shapes import ShapePredictor


class ShapeServePredictor:
    """The server's predictor for a task shape's run: answers are the shape's JSON (labels, a number...)."""

    def __init__(
        self,
        shape_predictor: ShapePredictor,
        run_dir: str | Path,
        *,
        engine: str = "auto",
        device: str = "auto",
        max_pixels: int | None = None,
        max_text_chars: int | None = None,
    ) -> None:
        from headstart.features import forward_device

        self.inner = shape_predictor
        self.run_dir = Path(run_dir)
        self.device = forward_device(engine, device)
        self.engine = engine
        self.forward = f"features-{engine}"  # the shape embeds through headstart.features with --engine
        self.precision = "fp32"
        self.classes = list(shape_predictor.classes)
        self.max_pixels, self.max_text_chars = max_pixels, max_text_chars
        model = getattr(shape_predictor, "model", None)
        # What http.py reads of `model`: the modality, and a text backbone's max_length.
        self.model = SimpleNamespace(
            modality=shape_predictor.modality, backbone=getattr(model, "backbone", None)
        )
        self.lock = threading.Lock()

    def decode(self, data: bytes, name: str = "upload") -> Any:
        """An uploaded file -> the path of a private temp copy (removed once `predict` has answered)."""
        if not data:
            raise BadInput(name, "empty upload")
        fd, path = tempfile.mkstemp(suffix=Path(name).suffix if name else "", prefix="headstart-serve-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return _Upload(path, name)

    def decode_text(self, text: str, name: str = "text") -> Any:
        from headstart.serve.predictor import check_text_size

        check_text_size(text, name, self.max_text_chars)
        if not text.strip():
            raise BadInput(name, "empty text")
        return text

    def predict(self, examples: list[Any]) -> list[dict[str, Any]]:
        """One answer per example, in order: the shape's JSON, or {"error": reason} for an unreadable one."""
        sources = [ex.path if isinstance(ex, _Upload) else ex for ex in examples]
        kw: dict[str, Any] = {"cache": False}  # uploads never fill the feature cache
        if self.max_pixels:
            kw["max_pixels"] = self.max_pixels
        try:
            with self.lock:
                answers, kept, bad = self.inner.answer(sources, **kw)
        finally:
            for ex in examples:
                if isinstance(ex, _Upload):
                    Path(ex.path).unlink(missing_ok=True)
        by_index = dict(zip(kept, answers, strict=True))
        return [
            by_index[i] if i in by_index else {"error": bad.get(s, "unreadable")}
            for i, s in enumerate(sources)
        ]

    def result(self, answer: dict[str, Any], top: int) -> dict[str, Any]:
        return dict(answer)

    def card(self, ref: str) -> dict[str, Any]:
        from headstart.runs import load_run_info, run_card

        return {
            **run_card(self.run_dir, load_run_info(self.run_dir)),
            **self.inner.card(),
            "ref": ref,
            "modality": self.inner.modality,
            "classes": self.classes,
            "engine": self.engine,
            "forward": self.forward,
            "precision": self.precision,
            "device": str(self.device),
        }


class _Upload:
    """An uploaded file's temp copy, and the name it was sent under."""

    def __init__(self, path: str, name: str) -> None:
        self.path, self.name = path, name
