"""`depths:<name>`: any backbone, its forward giving the pooled output of every layer group side by side
(`Backbone.all_depths`). A run trained on these features records this name, so predict, serve and export
rebuild the same forward."""

from __future__ import annotations

from typing import Any

from headstart.backbones.base import DEPTHS_PREFIX, Backbone
from headstart.backbones.registry import create_backbone, register_prefix


@register_prefix(DEPTHS_PREFIX, usage=f"{DEPTHS_PREFIX}<backbone>")
def _all_depths(name: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    return create_backbone(name, pretrained=pretrained, **kwargs).all_depths()
