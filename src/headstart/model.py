"""A trained model as the rest of headstart sees it: base backbone + trained delta + linear head.

Every run kind (probe, fit with any recipe, adapters) loads into the same `TrainedModel`, so evaluate,
export, serve, the store and the report never need to know how the model was trained.

    m = load_model("runs/demo")
    proba, kept, bad = m.predict_proba(["a.png", "b.png"])
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.backbones.base import Backbone
from headstart.errors import BadInput, HeadstartError
from headstart.head import LinearHead
from headstart.runs import (
    CALIBRATION_FILE,
    RUN_FILE,
    RunInfo,
    check_base,
    load_run,
    load_tensors,
    read_calibration,
)


class Classifier(nn.Module):
    """backbone -> pooled embedding -> linear head: a collated batch in, logits out."""

    def __init__(self, backbone: Backbone, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Any) -> torch.Tensor:
        return self.head(self.backbone(x))


def linear_from_head(head: LinearHead) -> nn.Linear:
    lin = nn.Linear(head.weight.shape[1], head.weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.asarray(head.weight, np.float32)))
        lin.bias.copy_(torch.from_numpy(np.asarray(head.bias, np.float32)))
    return lin


def head_from_linear(lin: nn.Linear) -> LinearHead:
    return LinearHead(
        weight=lin.weight.detach().cpu().numpy().astype(np.float32),
        bias=lin.bias.detach().cpu().numpy().astype(np.float32),
    )


class TrainedModel:
    """A loaded run: `backbone` (delta applied), `head`, `classes`, and a calibration temperature.

    `run_info` is its run.json as a RunInfo (read its attributes); `info` the JSON object as written."""

    def __init__(
        self,
        *,
        path: Path | None,
        info: dict[str, Any],
        backbone: Backbone,
        head: LinearHead,
        temperature: float = 1.0,
        run_info: RunInfo | None = None,
    ) -> None:
        self.path = path
        self.info = info
        self.run_info = run_info if run_info is not None else RunInfo.from_dict(info)
        self.backbone = backbone
        self.head = head
        self.temperature = temperature
        self._int8: Any = None  # the int8 frozen forward of an int8-trained run, rebuilt on first use
        #: Which frozen forward the last `embed` ran ({"backend": onnx | onnx-int8 | torch | none (all from
        #: the cache), "precision"}): predict's answer to "was this the fast forward?".
        self.last_forward: dict[str, Any] | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.run_info.classes)

    @property
    def modality(self) -> str:
        return self.backbone.modality

    @property
    def kind(self) -> str:
        return self.run_info.kind

    @property
    def precision(self) -> str:
        """The frozen forward the head was trained on: "int8" or "fp32" (run.json's `frozen_forward`)."""
        from headstart.frozen_precision import recorded_precision

        rec = recorded_precision(self.run_info, str(self.path or "the model") + "/run.json")
        return rec["precision"] if rec else "fp32"

    def int8_forward(self) -> Any:
        """The run's int8 frozen forward (headstart.quantize_forward.Int8Forward), rebuilt exactly or
        refused (headstart.frozen_precision.run_forward); None for a float run."""
        if self._int8 is None and self.precision == "int8":
            from headstart.frozen_precision import run_forward

            self._int8 = run_forward(self.path, self.run_info, self.backbone)
        return self._int8

    def targets(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(class index of each label, -1 where the model has no such class; mask of the known ones)."""
        index = {c: i for i, c in enumerate(self.classes)}
        t = np.array([index.get(str(lab), -1) for lab in labels], dtype=np.int64)
        return t, t >= 0

    def module(self) -> Classifier:
        """The whole model as one eval-mode torch module (collated batch -> logits, uncalibrated)."""
        return Classifier(self.backbone, linear_from_head(self.head)).eval()

    def read_files(self, files: Sequence[str | Path]) -> list[str | BadInput]:
        """What the backbone reads for each of `files`, in order: the path itself (images, audio), or for a
        text model the file's text (UTF-8, one file = one text, as training reads `.txt` class folders), so
        a file name is never classified as if it were the text. An unusable text file gives its BadInput."""
        if self.modality != "text":
            return [str(f) for f in files]
        from headstart.data.text import read_one_text

        out: list[str | BadInput] = []
        for f in files:
            try:
                out.append(read_one_text(f, table_fix="pass its texts one per line to -"))
            except BadInput as e:
                out.append(e)
        return out

    def embed(
        self,
        sources: Sequence[str | Path],
        *,
        backend: str = "auto",
        cache: bool = True,
        progress: bool = False,
        device: str | torch.device = "auto",
        max_pixels: int | None = None,
    ) -> tuple[np.ndarray, list[int], dict[str, str]]:
        """(embeddings of the usable inputs, their indices into `sources`, {source: reason} for the rest).
        The backbone runs on `device` (headstart.features.forward_device) and is back where it was (the
        CPU, as loaded) after the call; the head runs on the CPU. A run trained on int8 features embeds
        through that very int8 forward (never float features into an int8-trained head)."""
        from headstart.features import embed

        srcs = [str(s) for s in sources]
        limit = {"max_pixels": max_pixels} if max_pixels else {}
        feats = embed(
            self.backbone,
            srcs,
            cache=cache,
            backend=backend,
            progress=progress,
            device=device,
            int8=self.int8_forward(),
            **limit,
        )
        self.last_forward = {k: feats.stats[k] for k in ("backend", "precision")}
        index: dict[str, list[int]] = {}
        for i, s in enumerate(srcs):
            index.setdefault(s, []).append(i)
        rows, kept = [], []
        for r, s in enumerate(feats.paths):
            for i in index.pop(s, []):
                rows.append(r)
                kept.append(i)
        order = np.argsort(kept)
        return feats.X[np.asarray(rows, dtype=np.int64)[order]], sorted(kept), feats.bad

    def logits(
        self, sources: Sequence[str | Path], **kw: Any
    ) -> tuple[np.ndarray, list[int], dict[str, str]]:
        E, kept, bad = self.embed(sources, **kw)
        return self.head.logits(E), kept, bad

    def predict_proba(
        self, sources: Sequence[str | Path], **kw: Any
    ) -> tuple[np.ndarray, list[int], dict[str, str]]:
        """Calibrated class probabilities (softmax of logits / temperature) of the usable inputs."""
        z, kept, bad = self.logits(sources, **kw)
        return softmax(z / self.temperature), kept, bad


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_delta(backbone: Backbone, state: dict[str, torch.Tensor], sha256: str) -> None:
    """Load trained group weights over the base; every key must exist with the same shape."""
    own = backbone.state_dict()
    unknown = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    if unknown or wrong:
        raise HeadstartError(
            f"trained weights do not fit {backbone.name}: unknown {unknown[:3]}, wrong shape {wrong[:3]}",
            fix="load the run with the backbone it was trained on",
        )
    backbone.load_state_dict(state, strict=False)
    backbone.delta_sha256 = sha256


def load_model(path: str | Path) -> TrainedModel:
    """Rebuild any run folder (probe or fit) into a TrainedModel, verifying every recorded hash."""
    from headstart.backbones import create_backbone

    run = load_run(path)
    info = run.info
    bb = create_backbone(info.backbone.name, pretrained=info.pretrained)
    check_base(info, bb, run.path)  # recorded vs loaded base weights: every verb loads runs here
    info.modality = info.modality or bb.modality  # version-1 probes did not record it
    if info.delta is not None:
        delta = info.delta.file
        if delta not in info.files:  # load_run checked every listed file; this one is not listed
            raise HeadstartError(
                f"{run.path / RUN_FILE} lists no sha256 for {delta}",
                fix="the run folder is damaged; re-run it",
            )
        apply_delta(bb, load_tensors(run.path / delta), info.files[delta])
    if info.adapter is not None:
        from headstart.adapters import load_adapter  # type: ignore[import-not-found]

        bb = load_adapter(bb, run.path, info.adapter)
    temperature = 1.0
    cal = read_calibration(run.path)
    if cal is not None:  # the *applied* T: 1.0 where calibration was skipped or T is out of bounds
        from headstart.calibration import applied_temperature

        temperature, warning = applied_temperature(cal.record)
        if warning:
            print(f"warning: {run.path / CALIBRATION_FILE}: {warning}", file=sys.stderr)
    bb.eval()
    return TrainedModel(
        path=run.path, info=run.raw, backbone=bb, head=run.head, temperature=temperature, run_info=info
    )
