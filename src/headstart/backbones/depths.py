"""Forms of a registered backbone that change what it computes, not its weights; a run records the form's
name, so predict, serve and export rebuild the same forward:

- `depths:<name>`: the forward gives the pooled output of every layer group side by side
  (`Backbone.all_depths`);
- `size:<N>:<name>`: an image backbone fed N-pixel inputs (`Backbone.at_input_size`)."""

from __future__ import annotations

from typing import Any

from headstart.backbones.base import DEPTHS_PREFIX, SIZE_PREFIX, Backbone
from headstart.backbones.registry import create_backbone, register_prefix
from headstart.errors import HeadstartError


@register_prefix(DEPTHS_PREFIX, usage=f"{DEPTHS_PREFIX}<backbone>")
def _all_depths(name: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    return create_backbone(name, pretrained=pretrained, **kwargs).all_depths()


@register_prefix(SIZE_PREFIX, usage=f"{SIZE_PREFIX}<pixels>:<backbone>")
def _sized(rest: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    size, _, name = rest.partition(":")
    if not size.isdigit() or not name:
        raise HeadstartError(
            f"backbone {SIZE_PREFIX}{rest!r}: write {SIZE_PREFIX}<pixels>:<backbone>",
            fix=f"e.g. {SIZE_PREFIX}160:efficientnet_lite0",
        )
    bb = create_backbone(name, pretrained=pretrained, **kwargs)
    if bb.modality != "image":
        raise HeadstartError(
            f"{SIZE_PREFIX}{rest}: {bb.name} reads {bb.modality}, not images", fix="drop the size: prefix"
        )
    return bb.at_input_size(int(size))
