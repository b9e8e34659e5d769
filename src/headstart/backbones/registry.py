"""Backbones found by name, in the spirit of timm's registry.

A family module registers its named models with `@register_backbone`; prefixes reach open-ended
families: `hf:<hub-id-or-local-dir>`, `timm:<model-name>`, a local folder holding a transformers
model, and `NAME@PATH` for a registered architecture with weights from a local checkpoint file.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError

if TYPE_CHECKING:
    from headstart.backbones.base import Backbone

# Modules that register named backbones when imported.
_FAMILY_MODULES = (
    "headstart.backbones.efficientnet_lite",
    "headstart.backbones.whisper_ct2",
    "headstart.backbones.hf_text",
    "headstart.backbones.llm",
)


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows of a named backbone before building it (listing must stay cheap)."""

    name: str
    family: str
    builder: Callable[..., Backbone]
    embed_dim: int
    license: str
    description: str
    weights_file: Callable[[], Path | None]
    is_test_model: bool = False

    def available(self) -> bool:
        """True when the weights are installed (always for test models, which have none)."""
        return self.is_test_model or self.weights_file() is not None

    def size_mb(self) -> float | None:
        f = self.weights_file()
        return f.stat().st_size / 2**20 if f is not None else None


_REGISTRY: dict[str, BackboneSpec] = {}
_loaded = False


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for mod in _FAMILY_MODULES:
            importlib.import_module(mod)
        _loaded = True


def _on_disk() -> dict[str, BackboneSpec]:
    """Backbones written by headstart itself (`headstart adapt`), found in their folders on every lookup so
    one written after start-up is found too; registered names win."""
    from headstart.backbones.adapted import adapted_specs

    return {s.name: s for s in adapted_specs() if s.name not in _REGISTRY}


def list_backbones(pattern: str = "*", *, include_test: bool = False) -> list[BackboneSpec]:
    """Registered backbones whose name matches a shell-style `pattern`, sorted by name."""
    _ensure_loaded()
    return [
        s
        for name, s in sorted({**_REGISTRY, **_on_disk()}.items())
        if fnmatch.fnmatch(name, pattern) and (include_test or not s.is_test_model)
    ]


def get_spec(name: str) -> BackboneSpec:
    _ensure_loaded()
    if name not in _REGISTRY:
        found = _on_disk()
        if name in found:
            return found[name]
        close = difflib.get_close_matches(name, [*_REGISTRY, *found], n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise HeadstartError(
            f"unknown backbone {name!r}",
            fix=f"{hint}run `headstart backbones` to list them, or use hf:<model-id-or-folder> "
            "or timm:<model-name>",
        )
    return _REGISTRY[name]


def create_backbone(name: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    """Build a backbone by name (see the module docstring for the accepted forms)."""
    name = name.strip()
    if name.startswith("hf:"):
        from headstart.backbones.hf_text import create_hf_text_backbone, is_text_model
        from headstart.backbones.hf_vision import create_hf_backbone

        if is_text_model(name[3:]):  # a tokenizer and no image processor: a text model
            return create_hf_text_backbone(name[3:], pretrained=pretrained, **kwargs)
        return create_hf_backbone(name[3:], pretrained=pretrained, **kwargs)
    if name.startswith("timm:"):
        from headstart.backbones.timm_models import create_timm_backbone

        return create_timm_backbone(name[5:], pretrained=pretrained, **kwargs)
    if "@" in name:
        arch, _, weights = name.partition("@")
        return get_spec(arch).builder(pretrained=True, weights=Path(weights).expanduser(), **kwargs)
    if ("/" in name or name.startswith(".")) and Path(name).expanduser().is_dir():
        from headstart.backbones.adapted import build_adapted, read_card
        from headstart.backbones.hf_text import create_hf_text_backbone, is_text_model
        from headstart.backbones.hf_vision import create_hf_backbone

        if read_card(Path(name).expanduser()) is not None:  # written by `headstart adapt`: keep its card
            return build_adapted(Path(name).expanduser(), pretrained=pretrained, ref=name, **kwargs)
        if is_text_model(name):
            return create_hf_text_backbone(name, pretrained=pretrained, **kwargs)
        return create_hf_backbone(name, pretrained=pretrained, **kwargs)
    spec = get_spec(name)
    return _built(spec, pretrained, kwargs) or spec.builder(pretrained=pretrained, **kwargs)


# The last few packaged backbones built in this process. Building one reads and hashes its weights file
# and constructs the network (~0.5 s for EfficientNet-Lite0); a warm probe, `compare` and `auto` build the
# same backbone several times. Callers get a deep copy (~0.08 s) and may change it freely (LoRA, deltas).
_BUILT: dict[tuple[Any, ...], Backbone] = {}
_BUILT_MAX = 2
_UNCOPYABLE: set[str] = set()


def _built(spec: BackboneSpec, pretrained: bool, kwargs: dict[str, Any]) -> Backbone | None:
    import copy

    if spec.name in _UNCOPYABLE:
        return None
    weights = spec.weights_file() if pretrained and spec.name in _REGISTRY else None
    if weights is None or kwargs:  # test models (cheap, random init), adapted folders, local weights
        return None
    st = weights.stat()
    key = (spec.name, str(weights), st.st_size, st.st_mtime_ns)
    if key in _BUILT:
        return copy.deepcopy(_BUILT[key])
    bb = spec.builder(pretrained=True)
    try:
        kept = copy.deepcopy(bb)
    except (TypeError, copy.Error):  # holds something that cannot be copied (a tokenizer's lock)
        _UNCOPYABLE.add(spec.name)
        return bb
    if len(_BUILT) >= _BUILT_MAX:
        _BUILT.pop(next(iter(_BUILT)))
    _BUILT[key] = kept
    return bb
