"""A whole backbone family in one module, as a plug-in would write it (used by test_backbone_plugin.py).

Nothing in headstart names it: listed in `HEADSTART_BACKBONE_MODULES` (or declared as an entry point of
the group `headstart.backbones` by the distribution that ships it), the registry imports it on its first
lookup, and what it registers below is found like any packaged backbone: a named model, a prefix and the
folders it claims.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.backbones import (
    Backbone,
    BackboneCard,
    BackboneSpec,
    PreprocessConfig,
    register_backbone,
    register_folder,
    register_prefix,
)
from headstart.backbones.base import GlobalAvgPool


def build_toy(width: int, *, pretrained: bool = True, **_: Any) -> Backbone:
    """A two-group convolutional net (random init, seeded): stem -> body -> global average pool."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        groups: list[tuple[str, nn.Module]] = [
            ("stem", nn.Conv2d(3, width, 3, stride=2, padding=1)),
            ("body", nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))),
        ]
    card = BackboneCard(
        name=f"toy:{width}",
        family="toy",
        source="tests/toy_family.py",
        version="1",
        weights_sha256=None,
        license="MIT",
        pretraining_data="none (random init)",
        paper="none",
        embed_dim=width,
    )
    preprocess = PreprocessConfig(input_size=16, resize=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return Backbone(
        name=card.name, card=card, preprocess=preprocess, embed_dim=width, groups=groups, pool=GlobalAvgPool()
    )


register_backbone(
    BackboneSpec(
        name="toy_net",
        family="toy",
        builder=lambda **kw: build_toy(8, **kw),
        embed_dim=8,
        license="MIT",
        description="the toy family's named model",
        weights_file=lambda: None,
    )
)


@register_prefix("toy:")
def toy_by_width(width: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    return build_toy(int(width), pretrained=pretrained, **kwargs)


@register_folder(lambda folder: (folder / "toy.json").is_file(), order=0)
def toy_folder(folder: Path, ref: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    return build_toy(int(json.loads((folder / "toy.json").read_text())["width"]), pretrained=pretrained)
