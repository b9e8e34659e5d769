"""timm models as backbones (optional extra: `pip install 'headstart[timm]'`).

timm requires torchvision, which has no CPU build on PyPI, so it is never part of the default install.
Layer groups follow the model's top-level children in order (stem, stages, final norm).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from headstart.backbones.base import Backbone, BackboneCard, PreprocessConfig
from headstart.errors import HeadstartError


class _Features(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class _PreLogits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(x, pre_logits=True)


def create_timm_backbone(name: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    try:
        import timm
        from timm.data import resolve_model_data_config
    except Exception as e:  # ImportError, or a broken torchvision underneath
        raise HeadstartError(
            f"timm backbones need timm, which cannot be imported here ({type(e).__name__}: {e})",
            fix="pip install 'headstart[timm]' where a torchvision build for your torch exists",
        ) from e
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs).eval()
    except RuntimeError as e:
        raise HeadstartError(
            f"unknown or unavailable timm model {name!r}: {e}", fix="see timm.list_models()"
        ) from e
    data = resolve_model_data_config(model)
    size = int(data["input_size"][-1])
    preprocess = PreprocessConfig(
        input_size=size,
        resize=round(size / float(data.get("crop_pct", 1.0))),
        mean=tuple(data["mean"]),  # type: ignore[arg-type]
        std=tuple(data["std"]),  # type: ignore[arg-type]
        interpolation=str(data.get("interpolation", "bicubic")),
    )
    pcfg = getattr(model, "pretrained_cfg", {}) or {}
    card = BackboneCard(
        name=f"timm:{name}",
        family="timm",
        source=str(pcfg.get("hf_hub_id") or pcfg.get("url") or "timm"),
        version=timm.__version__,
        weights_sha256=None,
        license=str(pcfg.get("license", "see the model page")),
        pretraining_data=str(pcfg.get("tag", "see the model page")),
        paper=str(pcfg.get("paper_ids", "see the model page")),
        embed_dim=int(model.num_features),
    )
    return Backbone(
        name=card.name,
        card=card,
        preprocess=preprocess,
        embed_dim=int(model.num_features),
        groups=[("features", _Features(model))],
        pool=_PreLogits(model),
    ).eval()
