"""Backbone families plug into the registry: adding one is one module, and the registry names none.

The example family is tests/toy_family.py (a named model, a `toy:` prefix, the folders holding a
toy.json): it is found through `HEADSTART_BACKBONE_MODULES`, with no edit to headstart.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from headstart.backbones import create_backbone, list_backbones, registry
from headstart.errors import HeadstartError

SRC = Path(__file__).resolve().parents[1] / "src" / "headstart" / "backbones"


@pytest.fixture
def plug_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The registry as a fresh process would have it plus `toy_family`, restored afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_PREFIXES", dict(registry._PREFIXES))
    monkeypatch.setattr(registry, "_FOLDERS", list(registry._FOLDERS))
    monkeypatch.setattr(registry, "_loaded", set(registry._loaded))
    monkeypatch.delitem(sys.modules, "toy_family", raising=False)
    modules = os.environ.get(registry.MODULES_ENV, "")
    monkeypatch.setenv(registry.MODULES_ENV, f"{modules},toy_family")
    yield registry
    sys.modules.pop("toy_family", None)


def test_a_family_is_one_module_found_without_editing_the_registry(
    plug_in: ModuleType, tmp_path: Path
) -> None:
    assert "toy_net" not in registry._REGISTRY  # nothing imported it yet
    spec = {s.name: s for s in list_backbones()}["toy_net"]
    assert spec.family == "toy" and spec.embed_dim == 8 and spec.available() is False
    x = torch.randn(2, 3, 16, 16)
    named, by_prefix = create_backbone("toy_net"), create_backbone("toy:4")
    assert named.group_names == ["stem", "body"] and named(x).shape == (2, 8)
    assert by_prefix.name == "toy:4" and by_prefix(x).shape == (2, 4)
    folder = tmp_path / "my-toy"
    folder.mkdir()
    (folder / "toy.json").write_text('{"width": 5}')
    assert create_backbone(str(folder)).embed_dim == 5  # the folder it claims, asked before hf's
    (folder / "toy.json").unlink()  # unclaimed now: the transformers family tries it, and says why not
    with pytest.raises(HeadstartError, match="cannot load transformers model"):
        create_backbone(str(folder))
    with pytest.raises(HeadstartError) as e:
        create_backbone("toy_nett")
    assert "toy_net" in str(e.value) and "toy:<...>" in e.value.fix


def test_a_family_module_that_cannot_be_imported_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_loaded", set(registry._loaded))
    monkeypatch.setenv(registry.MODULES_ENV, "no_such_backbone_family")
    with pytest.raises(HeadstartError, match="no_such_backbone_family") as e:
        create_backbone("efficientnet_lite0")
    assert registry.MODULES_ENV in e.value.fix


def test_the_registry_imports_no_family() -> None:
    """registry.py reads families by module name only: its imports (outside TYPE_CHECKING) are the errors
    module, so no family can be part of an import cycle through it."""
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse((SRC / "registry.py").read_text())]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            continue  # never runs
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("headstart"):
            found.add(str(node.module))
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("headstart"))
        stack.extend(ast.iter_child_nodes(node))
    assert found == {"headstart.errors"}
    family_names = {f"headstart.backbones.{p.stem}" for p in SRC.glob("*.py") if not p.stem.startswith("_")}
    assert {"headstart.backbones.hf", "headstart.backbones.timm_models"} <= family_names
    assert family_names <= set(registry.family_modules())
