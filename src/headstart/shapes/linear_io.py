"""What a LinearShape run is written from (`EmbeddedSplits`: a probe's, or a fit's items) and reads back:
its read-out state (`read_state`), the items evaluate scores (`evaluation_items`), and the predictor
predict and serve answer with (`LinearPredictor`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.errors import HeadstartError
from headstart.shapes import ShapePredictor

if TYPE_CHECKING:
    from headstart.data import Dataset, Item
    from headstart.model import TrainedModel
    from headstart.shapes.linear import LinearShape


@dataclass
class EmbeddedSplits:
    """The usable items of each split, their cached embeddings (rows line up) and targets (a fit: the
    items and their hashes only)."""

    ds: Dataset
    items: dict[str, list[Item]]
    X: dict[str, np.ndarray]
    Y: dict[str, np.ndarray]
    hashes: dict[str, str]  # source -> content hash (split.csv's sha256)
    forward: dict[str, Any] | None  # run.json's `frozen_forward` (a fit: None, the backbone trained)
    stats: dict[str, Any] = field(default_factory=dict)


def evaluation_items(
    task: str, run_dir: Path, model: TrainedModel, data: str | Path | None, split: str
) -> tuple[Dataset, str]:
    """The items to evaluate as a Dataset whose classes are the run's outputs: the run's own `split`
    rows, or `data`'s (its own `split` when it has splits, else every item)."""
    from dataclasses import replace

    from headstart.data import Dataset, Item, load_dataset
    from headstart.runs import item_sources, read_split_rows

    info = model.run_info
    if data is None:
        rows = [r for r in read_split_rows(run_dir, fix="give DATA to evaluate on") if r.split == split]
        if not rows:
            raise HeadstartError(
                f"{run_dir} has no {split!r} rows in split.csv",
                fix="choose another --split, or give DATA",
            )
        sources = item_sources(run_dir, rows, info)
        text = info.modality == "text"  # a text item's source is its text; a file's, its path
        items = [
            Item(Path(r.path if text else s), r.label, split, text=s if text else None)
            for r, s in zip(rows, sources, strict=True)
        ]
        ds = Dataset(root=run_dir, items=items, classes=[], layout="run", task=task)
        described = f"{run_dir}/split.csv ({split} split)"
    else:
        loaded = load_dataset(data, modality=info.modality, task=task)
        own = not loaded.split_drawn  # the data's own split: score its `split`; else every item
        items = [it for it in loaded.items if it.split == split] if own else loaded.items
        if not items:
            raise HeadstartError(f"{data} has no {split!r} items", fix="choose another --split")
        ds = replace(loaded, items=items)
        described = f"{data} ({split} split)" if own else f"{data} (all items)"
    return replace(ds, classes=model.classes, modality=info.modality or ds.modality), described


def read_state(run_dir: Path) -> dict[str, Any]:
    """The run's read-out state (SHAPE_FILE; load_run has checked its sha256 where it loads the model)."""
    import json

    from headstart.runs import SHAPE_FILE

    f = Path(run_dir) / SHAPE_FILE
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HeadstartError(f"cannot read {f} ({e})", fix="the run folder is damaged; re-run it") from e
    if not isinstance(state, dict):
        raise HeadstartError(f"{f} is not a JSON object", fix="the run folder is damaged; re-run it")
    return state


class LinearPredictor(ShapePredictor):
    """A loaded LinearShape run for predict and serve: embed, the head's outputs, the shape's answers."""

    def __init__(
        self,
        shape: LinearShape,
        model: TrainedModel,
        state: dict[str, Any],
        *,
        device: str = "auto",
        backend: str = "auto",
        **_: Any,
    ) -> None:
        self.shape, self.model, self.state = shape, model, state
        self.task = shape.name
        self.modality = model.modality
        self.names = model.classes
        self.classes = self.names if shape.outputs_are_labels else ()
        self.device, self.backend = device, backend

    def read_files(self, files: Sequence[str | Path]) -> list[Any]:
        return self.model.read_files(files)

    def answer(
        self, sources: Sequence[str], **kw: Any
    ) -> tuple[list[dict[str, Any]], list[int], dict[str, str]]:
        kw = {"device": self.device, "backend": self.backend, **kw}
        Z, kept, bad = self.model.logits(list(sources), **kw)
        return (self.shape.answers(Z, self.state, self.names) if kept else []), kept, bad

    def card(self) -> dict[str, Any]:
        return {"task": self.task, "outputs": self.names, "readout": self.state}
