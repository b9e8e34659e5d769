"""Pretrained backbones: the registry families plug into, and the `Backbone` every family builds."""

from headstart.backbones.base import Backbone, BackboneCard, LayerGroup, PreprocessConfig
from headstart.backbones.registry import (
    BackboneSpec,
    create_backbone,
    get_spec,
    list_backbones,
    register_backbone,
    register_folder,
    register_prefix,
    register_spec_source,
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
    "register_folder",
    "register_prefix",
    "register_spec_source",
]
