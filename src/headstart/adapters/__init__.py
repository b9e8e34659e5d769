"""Parameter-efficient adapters inside a backbone's layer groups (one module per method, like PEFT).

    info = inject_adapter(backbone, LoraSpec(r=8))   # before the Trainer is built
    ...train: only adapter weights (and the head) have requires_grad...
    tensors = adapter_state(backbone)                 # what a run stores (adapter.safetensors)
    backbone = load_adapter(base_backbone, run_dir, run.info.adapter)  # an AdapterRef (run.json)
    backbone = merge_adapter(backbone)                # plain weights, no adapter layers

A run stores the adapter, the head and the base reference (name + weights sha256); the base weights are
never copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError
from headstart.runs.names import ADAPTER_FILE

if TYPE_CHECKING:
    import torch

    from headstart.backbones.base import Backbone
    from headstart.recipes import LoraSpec
    from headstart.runs import AdapterRef

METHODS = ("lora",)


def _spec(spec: LoraSpec | dict[str, Any]) -> LoraSpec:
    from headstart.recipes import LoraSpec

    if isinstance(spec, LoraSpec):
        spec.validate()
        return spec
    keys = ("method", "r", "alpha", "dropout", "target_modules")
    return LoraSpec.from_dict({k: spec[k] for k in keys if k in spec})


def inject_adapter(
    backbone: Backbone, spec: LoraSpec | dict[str, Any], *, top_groups: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Add adapter layers to the top `top_groups` groups (all by default), in place, and set the backbone's
    `trainable_filter` so only they train. Returns the adapter's description (method, r, alpha, dropout,
    target_modules, groups, trainable_params, ...) as run.json records it."""
    s = _spec(spec)
    if s.method not in METHODS:
        raise HeadstartError(f"unknown adapter method {s.method!r}", fix=f"use one of {METHODS}")
    from headstart.adapters import lora

    return lora.inject(backbone, s, top_groups=top_groups, seed=seed)


def adapter_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    from headstart.adapters import lora

    return lora.state(backbone)


def load_adapter(backbone: Backbone, run_path: str | Path, ref: AdapterRef) -> Backbone:
    """The base backbone + the run's adapter: injected with the recorded config, tensors loaded exactly."""
    from headstart.adapters import lora
    from headstart.fileio import sha256_file
    from headstart.runs import load_tensors

    path = Path(run_path) / (ref.file or ADAPTER_FILE)
    if not path.is_file():
        raise HeadstartError(f"{path} is missing", fix="the run folder is incomplete; re-run it")
    names = backbone.group_names
    unknown = [g for g in ref.groups if g not in names]
    if unknown:
        raise HeadstartError(
            f"the adapter in {run_path} names groups {unknown} that {backbone.name} does not have",
            fix="load the run with the backbone it was trained on",
        )
    groups = [names.index(g) for g in ref.groups] if "groups" in ref.spec else None
    lora.inject(backbone, _spec(ref.spec), groups=groups)
    saved = load_tensors(path)
    own = lora.state(backbone)
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    wrong = [k for k in saved if k in own and tuple(own[k].shape) != tuple(saved[k].shape)]
    if missing or unexpected or wrong:
        raise HeadstartError(
            f"{path} does not fit {backbone.name} with this adapter config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}",
            fix="load the run with the backbone and peft version it was trained with",
        )
    backbone.load_state_dict(saved, strict=False)
    backbone.delta_sha256 = sha256_file(path)  # a different network from the base: its own cache key
    return backbone.eval()


def merge_adapter(backbone: Backbone) -> Backbone:
    """Fold the adapter into the base weights: a plain backbone (no adapter layers) that computes the same
    function up to float rounding. `backbone.merged_groups` lists the groups whose weights changed."""
    from headstart.adapters import lora

    groups = lora.merge(backbone)
    backbone.__dict__["merged_groups"] = groups
    return backbone


__all__ = ["ADAPTER_FILE", "adapter_state", "inject_adapter", "load_adapter", "merge_adapter"]
