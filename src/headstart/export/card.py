"""The model card of an export: everything a consumer needs to feed the graph correctly (inputs, resize,
mean/std, tokenizer, classes, temperature, base card, parity figures), written beside the .onnx
(`model.card.json`) and inside it (ONNX metadata_props), and read back by `read_card`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.export.graph import OPSET, named_inputs
from headstart.fileio import atomic_write_bytes
from headstart.model import TrainedModel
from headstart.runs import run_card

CARD_KEY = "headstart.card"


def card_path(onnx_path: str | Path) -> Path:
    """The model card written beside `model.onnx`: `model.card.json`."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".card.json")


def tokenizer_path(onnx_path: str | Path) -> Path:
    """A text model's tokenizer, written beside `model.onnx`: `model.tokenizer.json`."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".tokenizer.json")


def model_identity(model: TrainedModel) -> dict[str, Any]:
    """What makes an export belong to a model: base key, head and delta hashes, temperature."""
    info = model.run_info
    return {
        "backbone_key": model.backbone.key,
        "head_sha256": info.head.sha256 if info.head is not None else None,
        "files": dict(info.files),
        "temperature": float(model.temperature),
    }


def build_card(
    model: TrainedModel, batch: Any, *, quantized: bool = False, parity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The run's card (headstart.runs.run_card, with the temperature the graph applies) and what feeding
    the graph takes: its inputs and outputs, the preprocessing steps, the identity, the parity figures."""
    inputs = [
        {
            "name": name,
            "dtype": str(x.dtype).removeprefix("torch."),
            "shape": ["batch", "length"] if model.modality == "text" else ["batch", *list(x.shape[1:])],
        }
        for name, x in named_inputs(batch).items()
    ]
    card: dict[str, Any] = {
        **run_card(model.path, model.run_info, temperature=float(model.temperature)),
        "format": "onnx",
        "opset": OPSET,
        "quantized": "dynamic-int8" if quantized else None,
        "modality": model.modality,
        "inputs": inputs,
        "outputs": [
            {"name": "logits", "shape": ["batch", len(model.classes)]},
            {
                "name": "probabilities",
                "shape": ["batch", len(model.classes)],
                "temperature": model.temperature,
            },
        ],
        "classes": model.classes,
        "temperature": float(model.temperature),
        "kind": model.kind,
        "identity": model_identity(model),
        "run": str(model.path) if model.path else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if model.modality == "image":
        pre = model.backbone.preprocess.to_dict()
        card["preprocess"] = {
            **pre,
            "layout": "NCHW float32, RGB",
            "steps": (
                f"decode to RGB (EXIF upright, transparency over white); resize the shorter side to "
                f"{pre['resize']} ({pre['interpolation']}); centre-crop {pre['input_size']} square; "
                "x/255; (x - mean) / std per channel"
            ),
        }
    elif model.modality == "text":
        bb: Any = model.backbone
        card["preprocess"] = {
            **bb.preprocess.to_dict(),
            "pad_id": bb.pad_id,
            "steps": (
                "tokenize with the tokenizer saved beside the model (*.tokenizer.json: special tokens added, "
                f"truncated to {bb.max_length} tokens); pad right with pad_id to the longest of the batch; "
                "attention_mask 1 on real tokens, 0 on padding; both int64"
            ),
        }
    if parity is not None:
        card["parity"] = parity
    return card


def write_metadata(path: Path, card: dict[str, Any]) -> None:
    """Replace the card stored in an existing .onnx (atomically)."""
    import onnx

    m = onnx.load(str(path))
    apply_metadata(m, card)
    atomic_write_bytes(path, m.SerializeToString())


def keep_export(
    out: Path, card: dict[str, Any], parity: dict[str, Any], tokenizer_json: str, **report: Any
) -> dict[str, Any]:
    """What travels with a proven text export (a shape's: token logits): the parity figures in the card,
    the card beside the .onnx and inside it, the tokenizer beside it. Returns export's report (`report`
    adds the shape's own keys: task, export_s, ...)."""
    from headstart.fileio import atomic_write_json, atomic_write_text

    card["parity"] = parity
    atomic_write_text(tokenizer_path(out), tokenizer_json)
    atomic_write_json(card_path(out), card)
    write_metadata(out, card)
    paths = {"onnx": str(out), "card": str(card_path(out)), "tokenizer": str(tokenizer_path(out))}
    return {**paths, "bytes": out.stat().st_size, "parity": parity, **report}


def apply_metadata(m: Any, card: dict[str, Any]) -> None:
    props = {
        CARD_KEY: json.dumps(card),
        "classes": json.dumps(card["classes"]),
        "temperature": str(card["temperature"]),
    }
    if "preprocess" in card:
        props["preprocess"] = json.dumps(card["preprocess"])
    del m.metadata_props[:]
    for k, v in props.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    m.producer_name = "headstart"
    m.doc_string = f"{card['kind']} model on {card['backbone'].get('name')}: {len(card['classes'])} classes"


def read_card(onnx_path: str | Path) -> dict[str, Any]:
    """The card of an exported model (from the JSON beside it, else from the ONNX metadata)."""
    cp = card_path(onnx_path)
    if cp.is_file():
        return json.loads(cp.read_text())
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    for p in m.metadata_props:
        if p.key == CARD_KEY:
            return json.loads(p.value)
    raise HeadstartError(f"{onnx_path} has no headstart card", fix="export it with `headstart export`")
