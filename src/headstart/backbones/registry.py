"""Backbones found by name, in the spirit of timm's registry: families plug in, the registry knows none.

A family is one module that registers what it builds when imported:

- `register_backbone(BackboneSpec(...))`: a named backbone (`efficientnet_lite0`, `minilm-l6`, ...);
- `@register_prefix("hf:")`: an open-ended family reached by a prefix (`hf:<id>`, `timm:<name>`);
- `@register_folder(claims)`: local folders the family reads (a transformers folder, an adapted backbone);
- `@register_spec_source`: named backbones found on every lookup (the adapted ones on disk).

The registry imports the families on its first lookup, by module name, never by an `import` statement:
every module of the `headstart.backbones` package (a new family there is one new file), the modules
named in `HEADSTART_BACKBONE_MODULES` (comma-separated: a family of your own, or `headstart.testing`'s
tiny test models), and the entry points of the group `headstart.backbones` (a family shipped in another
distribution). `NAME@PATH` builds a registered architecture with weights from a local checkpoint file.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata
import os
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from headstart.errors import HeadstartError

if TYPE_CHECKING:
    from headstart.backbones.base import Backbone

PACKAGE = "headstart.backbones"
MODULES_ENV = "HEADSTART_BACKBONE_MODULES"
ENTRY_POINT_GROUP = "headstart.backbones"
TEST_MODULE = "headstart.testing"  # the tiny test models; loaded when test models are asked for

F = TypeVar("F", bound=Callable[..., Any])


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


@dataclass(frozen=True)
class FolderHandler:
    """A family that reads local folders: `claims(folder)` says whether it does (cheaply: small files
    only); lower `order` asks first. `build(folder, ref, pretrained=..., **kw)`."""

    claims: Callable[[Path], bool]
    build: Callable[..., Backbone]
    order: int


_REGISTRY: dict[str, BackboneSpec] = {}
_PREFIXES: dict[str, Callable[..., Backbone]] = {}
_USAGE: dict[str, str] = {}  # prefix -> how to write a name with it
_FOLDERS: list[FolderHandler] = []
_SPEC_SOURCES: list[Callable[[], Iterable[BackboneSpec]]] = []
_loaded: set[str] = set()  # family modules imported so far


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def register_prefix(prefix: str, *, usage: str | None = None) -> Callable[[F], F]:
    """Decorator: `build(rest, pretrained=..., **kw)` makes the backbones named `<prefix><rest>`; `usage`
    shows the form in help and errors (`hf:<model-id-or-folder>`)."""

    def deco(build: F) -> F:
        if prefix in _PREFIXES:
            raise ValueError(f"backbone prefix {prefix!r} is registered twice")
        _PREFIXES[prefix] = build
        _USAGE[prefix] = usage or f"{prefix}<...>"
        return build

    return deco


def register_folder(claims: Callable[[Path], bool], *, order: int = 50) -> Callable[[F], F]:
    """Decorator: `build(folder, ref, pretrained=..., **kw)` reads the local folders `claims` accepts."""

    def deco(build: F) -> F:
        _FOLDERS.append(FolderHandler(claims, build, order))
        _FOLDERS.sort(key=lambda h: h.order)
        return build

    return deco


def register_spec_source(
    source: Callable[[], Iterable[BackboneSpec]],
) -> Callable[[], Iterable[BackboneSpec]]:
    """Decorator: named backbones listed afresh on every lookup (so one written after start-up is found);
    registered names win over them."""
    _SPEC_SOURCES.append(source)
    return source


_discovered: list[str] = []


def family_modules(*, include_test: bool = False) -> list[str]:
    """The modules that define backbone families (see the module docstring), in import order."""
    if not _discovered:  # the package's files and the installed entry points: read once per process
        package = importlib.import_module(PACKAGE)
        mods = pkgutil.iter_modules(package.__path__)
        _discovered.extend(f"{PACKAGE}.{m.name}" for m in mods if not m.name.startswith("_"))
        _discovered.extend(ep.module for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    names = [*_discovered, *(m.strip() for m in os.environ.get(MODULES_ENV, "").split(",") if m.strip())]
    return [*names, TEST_MODULE] if include_test else names


def _ensure_loaded(*, include_test: bool = False) -> None:
    for name in family_modules(include_test=include_test):
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise HeadstartError(
                f"cannot import the backbone family module {name!r}: {e}",
                fix=f"install it, or take it out of {MODULES_ENV} or the {ENTRY_POINT_GROUP!r} entry points",
            ) from e
        _loaded.add(name)


def _found_on_lookup() -> dict[str, BackboneSpec]:
    """Backbones the spec sources find now (e.g. written by `headstart adapt`); registered names win."""
    return {s.name: s for source in _SPEC_SOURCES for s in source() if s.name not in _REGISTRY}


def list_backbones(pattern: str = "*", *, include_test: bool = False) -> list[BackboneSpec]:
    """Registered backbones whose name matches a shell-style `pattern`, sorted by name. `include_test`
    also loads and lists the tiny test models."""
    _ensure_loaded(include_test=include_test)
    return [
        s
        for name, s in sorted({**_REGISTRY, **_found_on_lookup()}.items())
        if fnmatch.fnmatch(name, pattern) and (include_test or not s.is_test_model)
    ]


def get_spec(name: str) -> BackboneSpec:
    _ensure_loaded()
    if name not in _REGISTRY:
        found = _found_on_lookup()
        if name in found:
            return found[name]
        close = difflib.get_close_matches(name, [*_REGISTRY, *found], n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        prefixes = " or ".join(_USAGE.get(p, f"{p}<...>") for p in sorted(_PREFIXES))
        raise HeadstartError(
            f"unknown backbone {name!r}",
            fix=f"{hint}run `headstart backbones` to list them, or use {prefixes}",
        )
    return _REGISTRY[name]


def create_backbone(name: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    """Build a backbone by name (see the module docstring for the accepted forms)."""
    name = name.strip()
    _ensure_loaded()
    for prefix, build in sorted(_PREFIXES.items(), key=lambda kv: -len(kv[0])):  # the longest match wins
        if name.startswith(prefix):
            return build(name[len(prefix) :], pretrained=pretrained, **kwargs)
    if "@" in name:
        arch, _, weights = name.partition("@")
        return get_spec(arch).builder(pretrained=True, weights=Path(weights).expanduser(), **kwargs)
    folder = Path(name).expanduser()
    if ("/" in name or name.startswith(".")) and folder.is_dir():
        for handler in _FOLDERS:
            if handler.claims(folder):
                return handler.build(folder, name, pretrained=pretrained, **kwargs)
        raise HeadstartError(
            f"no backbone family reads the folder {name}",
            fix="give a folder made by save_pretrained (a transformers model), or a registered name",
        )
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
