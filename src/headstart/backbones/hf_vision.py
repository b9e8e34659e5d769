"""Transformers vision models (ViT, DeiT, DINOv2, Swin, ConvNeXt, ResNet, ...) as backbones, via `AutoModel`.

`hf:<hub-id>` reads the local hub cache (or the hub, where there is network); `hf:<folder>` reads a
`save_pretrained` folder. Preprocessing comes from the model's own `preprocessor_config.json`.

Layer groups, for the common layouts (each checked against the whole model's output in the tests):
ViT/DeiT/DINOv2 `embeddings, layer0..N-1` (pool: final norm, CLS token); Swin `embeddings, stage0..S-1`
(pool: final norm, mean over patches); ConvNeXt `embeddings, stage0..S-1` (pool: mean, norm); ResNet
`embedder, stage0..S-1` (pool: mean). Any other architecture is one group, the whole model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.backbones.base import Backbone, BackboneCard, GlobalAvgPool, PreprocessConfig
from headstart.backbones.hf_utils import (
    first_tensor,
    license_of,
    loading,
    quiet_transformers,
    require_transformers,
    weights_file,
)
from headstart.errors import HeadstartError
from headstart.fileio import sha256_file

Groups = tuple[list[tuple[str, nn.Module]], nn.Module]  # (ordered groups, pool)
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class _Call(nn.Module):
    """A sub-module as one group step; transformer layers may return tuples depending on version."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return first_tensor(self.module(x))


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


class _SwinEmbeddings(nn.Module):
    """Patch embedding -> (N, H, W, C): the patch grid travels in the shape, so any group can start."""

    def __init__(self, embeddings: nn.Module) -> None:
        super().__init__()
        self.embeddings = embeddings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, (h, w) = self.embeddings(x)[:2]
        return hidden.reshape(hidden.shape[0], h, w, hidden.shape[-1])


class _SwinStage(nn.Module):
    """(N, H, W, C) -> one Swin stage (its blocks, then its patch merging) -> (N, H', W', C')."""

    def __init__(self, stage: nn.Module) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        hidden = first_tensor(self.stage(x.reshape(n, h * w, c), (h, w)))
        if self.stage.downsample is not None:  # patch merging halves the grid (rounding up, as Swin does)
            h, w = (h + 1) // 2, (w + 1) // 2
        return hidden.reshape(n, h, w, hidden.shape[-1])


class _FlatTokenPool(nn.Module):
    """Swin: (N, H, W, C) -> final norm -> mean over the patches (SwinModel's pooler_output)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.flatten(1, 2)).mean(dim=1)


def _vit_layout(model: nn.Module) -> Groups | None:
    """ViT, DeiT, DINOv2: layers at model.layers (newer transformers) or model.encoder.layer (DINOv2)."""
    blocks = getattr(model, "layers", None) or getattr(getattr(model, "encoder", None), "layer", None)
    if not (hasattr(model, "embeddings") and isinstance(blocks, nn.ModuleList)):
        return None
    layers = [(f"layer{i}", _Call(m)) for i, m in enumerate(blocks)]
    pool = _TokenPool(getattr(model, "layernorm", None), cls_token=True)
    return [("embeddings", _Call(model.embeddings)), *layers], pool


def _swin_layout(model: nn.Module) -> Groups | None:
    stages = getattr(getattr(model, "encoder", None), "layers", None)
    if not (
        hasattr(model, "embeddings")
        and hasattr(model, "layernorm")
        and isinstance(stages, nn.ModuleList)
        and all(hasattr(s, "blocks") and hasattr(s, "downsample") for s in stages)
    ):
        return None
    groups = [(f"stage{i}", _SwinStage(m)) for i, m in enumerate(stages)]
    return [("embeddings", _SwinEmbeddings(model.embeddings)), *groups], _FlatTokenPool(model.layernorm)


def _convnext_layout(model: nn.Module) -> Groups | None:
    stages = getattr(getattr(model, "encoder", None), "stages", None)
    if not (hasattr(model, "embeddings") and stages is not None and hasattr(model, "layernorm")):
        return None
    groups = [(f"stage{i}", _Call(m)) for i, m in enumerate(stages)]
    return [("embeddings", _Call(model.embeddings)), *groups], _NormAfterPool(model.layernorm)


def _resnet_layout(model: nn.Module) -> Groups | None:
    stages = getattr(getattr(model, "encoder", None), "stages", None)
    if not (hasattr(model, "embedder") and stages is not None):
        return None
    groups = [(f"stage{i}", _Call(m)) for i, m in enumerate(stages)]
    return [("embedder", _Call(model.embedder)), *groups], GlobalAvgPool()


LAYOUTS: tuple[Callable[[nn.Module], Groups | None], ...] = (
    _vit_layout,
    _swin_layout,
    _convnext_layout,
    _resnet_layout,
)


def _groups(model: nn.Module) -> Groups:
    """Ordered groups + pooling for the known layouts; one group (the whole model) for any other."""
    for layout in LAYOUTS:
        found = layout(model)
        if found is not None:
            return found
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


def create_hf_backbone(ref: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    """A transformers vision model from a folder or hub id as a backbone (see the module docstring)."""
    require_transformers()
    from transformers import AutoConfig, AutoModel

    folder = Path(ref).expanduser() if Path(ref).expanduser().is_dir() else None
    src = str(folder) if folder else ref
    quiet_transformers()
    with loading(ref):
        config = AutoConfig.from_pretrained(src)
        model = AutoModel.from_pretrained(src, **kwargs) if pretrained else AutoModel.from_config(config)
    pre_cfg = _read_json(folder, ref, "preprocessor_config.json")
    if pre_cfg is None:
        raise HeadstartError(
            f"{ref} has no preprocessor_config.json, so its input normalisation is unknown",
            fix="save the model's image processor beside it (processor.save_pretrained(folder))",
        )
    preprocess = preprocess_from_config(pre_cfg)
    weights = weights_file(folder)
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
        license=license_of(folder),
        pretraining_data="see the model page" if pretrained else "none (random init)",
        paper="see the model page",
        embed_dim=int(hidden),
    )
    return Backbone(
        name=card.name, card=card, preprocess=preprocess, embed_dim=int(hidden), groups=groups, pool=pool
    ).eval()
