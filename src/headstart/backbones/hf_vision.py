"""Transformers vision models (ViT, DeiT, DINOv2, ConvNeXt, ResNet, ...) as backbones, via `AutoModel`.

`hf:<hub-id>` reads the local hub cache (or the hub, where there is network); `hf:<folder>` reads a
`save_pretrained` folder. Preprocessing comes from the model's own `preprocessor_config.json`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.backbones.base import Backbone, BackboneCard, GlobalAvgPool, PreprocessConfig
from headstart.errors import HeadstartError
from headstart.fileio import sha256_file

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _first_tensor(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out


class _Call(nn.Module):
    """A sub-module as one group step; transformer layers may return tuples depending on version."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _first_tensor(self.module(x))


class _TokenPool(nn.Module):
    """Final norm, then the CLS token (ViT family) or the mean over tokens."""

    def __init__(self, norm: nn.Module | None, cls_token: bool) -> None:
        super().__init__()
        self.norm = norm if norm is not None else nn.Identity()
        self.cls_token = cls_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return x[:, 0] if self.cls_token else x.mean(dim=1)


class _NormAfterPool(nn.Module):
    """ConvNeXt: average over space, then layer norm."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.mean(dim=(2, 3)))


class _WholeModel(nn.Module):
    """Fallback for architectures without a known layout: one group, pooled output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state
        if pooled.dim() == 4:
            pooled = pooled.mean(dim=(2, 3))
        elif pooled.dim() == 3:
            pooled = pooled.mean(dim=1)
        return pooled


def _groups(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], nn.Module]:
    """Ordered groups + pooling for known layouts (embeddings -> layers/stages -> final norm)."""
    enc = getattr(model, "encoder", None)
    # Transformer layers live at model.layers (newer transformers) or model.encoder.layer (older, DINOv2).
    blocks = getattr(model, "layers", None) or getattr(enc, "layer", None)
    if hasattr(model, "embeddings") and isinstance(blocks, nn.ModuleList):  # ViT, DeiT, DINOv2
        layers = [(f"layer{i}", _Call(m)) for i, m in enumerate(blocks)]
        return [("embeddings", _Call(model.embeddings)), *layers], _TokenPool(
            getattr(model, "layernorm", None), cls_token=True
        )
    if (
        hasattr(model, "embeddings")
        and enc is not None
        and hasattr(enc, "stages")
        and hasattr(model, "layernorm")
    ):
        stages = [(f"stage{i}", _Call(m)) for i, m in enumerate(enc.stages)]  # ConvNeXt
        return [("embeddings", _Call(model.embeddings)), *stages], _NormAfterPool(model.layernorm)
    if hasattr(model, "embedder") and enc is not None and hasattr(enc, "stages"):  # ResNet
        stages = [(f"stage{i}", _Call(m)) for i, m in enumerate(enc.stages)]
        return [("embedder", _Call(model.embedder)), *stages], GlobalAvgPool()
    return [("model", _WholeModel(model))], nn.Identity()


def _read_json(folder: Path | None, ref: str, filename: str) -> dict[str, Any] | None:
    if folder is not None:
        path = folder / filename
        return json.loads(path.read_text()) if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(ref, filename)).read_text())
    except Exception:
        return None


def preprocess_from_config(cfg: dict[str, Any]) -> PreprocessConfig:
    """Translate a transformers image-processor config into headstart's preprocessing."""
    size = cfg.get("size", 224)
    crop = cfg.get("crop_size")
    short = (size.get("shortest_edge") or size.get("height") or 224) if isinstance(size, dict) else int(size)
    if cfg.get("do_center_crop") and crop:
        input_size = crop["height"] if isinstance(crop, dict) else int(crop)
        resize = int(short)
    else:
        # No crop: the processor resizes straight to the input size.
        input_size = resize = int(short)
    if "crop_pct" in cfg and cfg.get("crop_pct"):  # ConvNeXt at < 384 px resizes to size / crop_pct
        resize = round(input_size / float(cfg["crop_pct"]))
    mean = tuple(cfg.get("image_mean", (0.5, 0.5, 0.5)))
    std = tuple(cfg.get("image_std", (0.5, 0.5, 0.5)))
    if cfg.get("do_normalize") is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return PreprocessConfig(
        input_size=int(input_size),
        resize=int(resize),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        interpolation=_RESAMPLE.get(int(cfg.get("resample", 2)), "bilinear"),
    )


def _license(folder: Path | None) -> str:
    readme = folder / "README.md" if folder else None
    if readme and readme.is_file():
        m = re.search(r"^license:\s*(\S+)", readme.read_text(errors="replace"), re.MULTILINE)
        if m:
            return m.group(1)
    return "see the model page"


def create_hf_backbone(ref: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError as e:
        raise HeadstartError("hf: backbones need transformers", fix="pip install transformers") from e

    from headstart.backbones.hf_text import quiet_transformers

    folder = Path(ref).expanduser() if Path(ref).expanduser().is_dir() else None
    src = str(folder) if folder else ref
    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(src)
        model = AutoModel.from_pretrained(src, **kwargs) if pretrained else AutoModel.from_config(config)
    except (OSError, ValueError) as e:
        raise HeadstartError(
            f"cannot load transformers model {ref!r}: {str(e).splitlines()[0]}",
            fix="give a folder made by save_pretrained, or a hub id already in the local cache "
            "(this machine may have no network)",
        ) from e
    pre_cfg = _read_json(folder, ref, "preprocessor_config.json")
    if pre_cfg is None:
        raise HeadstartError(
            f"{ref} has no preprocessor_config.json, so its input normalisation is unknown",
            fix="save the model's image processor beside it (processor.save_pretrained(folder))",
        )
    preprocess = preprocess_from_config(pre_cfg)
    weights = next((folder / f for f in _WEIGHT_FILES if folder and (folder / f).is_file()), None)
    commit = getattr(config, "_commit_hash", None)
    model.eval()
    groups, pool = _groups(model)
    hidden = getattr(config, "hidden_size", None) or (getattr(config, "hidden_sizes", None) or [None])[-1]
    if hidden is None:
        with torch.inference_mode():
            hidden = pool(
                nn.Sequential(*[m for _, m in groups])(
                    torch.zeros(1, 3, preprocess.input_size, preprocess.input_size)
                )
            ).shape[-1]
    card = BackboneCard(
        name=f"hf:{ref}",
        family=f"hf:{config.model_type}",
        source=str(folder) if folder else f"huggingface.co/{ref}",
        version=commit or ("local" if folder else "unknown"),
        weights_sha256=sha256_file(weights) if (weights and pretrained) else None,
        weights_file=str(weights) if weights else None,
        license=_license(folder),
        pretraining_data="see the model page" if pretrained else "none (random init)",
        paper="see the model page",
        embed_dim=int(hidden),
    )
    return Backbone(
        name=card.name, card=card, preprocess=preprocess, embed_dim=int(hidden), groups=groups, pool=pool
    ).eval()
