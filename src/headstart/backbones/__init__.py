"""Pretrained backbones: the registry and the `Backbone` every family builds."""

from headstart.backbones.base import Backbone, BackboneCard, LayerGroup, PreprocessConfig
from headstart.backbones.registry import (
    BackboneSpec,
    create_backbone,
    get_spec,
    list_backbones,
    register_backbone,
)

__all__ = [
    "Backbone",
    "BackboneCard",
    "BackboneSpec",
    "LayerGroup",
    "PreprocessConfig",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "register_backbone",
]
