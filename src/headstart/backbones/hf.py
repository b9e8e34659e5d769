"""`hf:<hub-id-or-folder>` and bare local model folders, routed to the transformers family that reads them.

Routing reads only small JSON files, never transformers: a model with a tokenizer and no image processor
is a text model, and then a decoder LM (`llm`) when its config names a decoder type, else an encoder
(`hf_text`); any other model is a vision model (`hf_vision`). A hub id is read from the local hub cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.backbones.base import Backbone
from headstart.backbones.hf_text import LAYERED_ENCODERS, create_hf_text_backbone
from headstart.backbones.hf_utils import (
    TOKENIZER_FILES,
    loading,
    local_folder,
    read_config,
    require_transformers,
)
from headstart.backbones.registry import register_folder, register_prefix

ENCODER_TYPES = LAYERED_ENCODERS | {"mpnet", "ernie", "xlm", "deberta", "deberta-v2", "albert", "modernbert"}
# Decoder-only language models (read by `headstart.backbones.llm`).
DECODER_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "smollm3"})


def is_text_model(ref: str) -> bool:
    """True for a folder or cached hub model that is a text model (a tokenizer, no image processor)."""
    folder = local_folder(ref)
    if folder is None or (folder / "preprocessor_config.json").is_file():
        return False
    model_type = read_config(folder).get("model_type", "")
    if model_type in ENCODER_TYPES or model_type in DECODER_TYPES:
        return True
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def create_hf(ref: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    """The backbone of a transformers model folder or cached hub id, from the family that reads it."""
    if not is_text_model(ref):
        from headstart.backbones.hf_vision import create_hf_backbone

        return create_hf_backbone(ref, pretrained=pretrained, **kwargs)
    folder = local_folder(ref)
    if folder is not None and read_config(folder).get("model_type") in DECODER_TYPES:
        from headstart.backbones.llm import create_decoder_backbone

        require_transformers()
        with loading(ref):
            return create_decoder_backbone(folder, pretrained=pretrained, name=f"hf:{ref}")
    return create_hf_text_backbone(ref, pretrained=pretrained, **kwargs)


@register_prefix("hf:", usage="hf:<model-id-or-folder>")
def _hf_name(ref: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    return create_hf(ref, pretrained=pretrained, **kwargs)


@register_folder(lambda folder: True, order=100)  # asked last: any folder may hold a transformers model
def _hf_folder(folder: Path, ref: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    return create_hf(ref, pretrained=pretrained, **kwargs)
