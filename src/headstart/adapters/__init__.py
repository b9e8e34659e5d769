"""Parameter-efficient adapters inside a backbone's layer groups (one module per method, like PEFT): `lora`
(lora.py), `prompt-tuning` and `prefix-tuning` (prompt.py). Each module offers inject, state and merge.

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
    from headstart.recipes import AdapterSpec
    from headstart.runs import AdapterRef

METHODS = ("lora", "prompt-tuning", "prefix-tuning")


def _spec(spec: AdapterSpec | dict[str, Any]) -> AdapterSpec:
    from headstart.recipes import adapter_spec

    if isinstance(spec, dict):
        return adapter_spec(spec)
    spec.validate()
    return spec


def _module(method: str) -> Any:
    """The module of an adapter kind (each has inject, state, merge)."""
    if method not in METHODS:
        raise HeadstartError(f"unknown adapter method {method!r}", fix=f"use one of {METHODS}")
    from headstart.adapters import lora, prompt

    return lora if method == "lora" else prompt


def _method_of(backbone: Backbone) -> str:
    from headstart.adapters import prompt

    return (
        "prompt-tuning" if any(prompt.is_adapter_param(n) for n, _ in backbone.named_parameters()) else "lora"
    )


def inject_adapter(
    backbone: Backbone, spec: AdapterSpec | dict[str, Any], *, top_groups: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Add the adapter to the top `top_groups` groups (all by default), in place, and set the backbone's
    `trainable_filter` so only it trains. Returns the adapter's description (method, its settings, groups,
    trainable_params, ...) as run.json records it."""
    s = _spec(spec)
    return _module(s.method).inject(backbone, s, top_groups=top_groups, seed=seed)  # type: ignore[no-any-return]


def adapter_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    return _module(_method_of(backbone)).state(backbone)  # type: ignore[no-any-return]


def refuse_merge(ref: AdapterRef, run: str | Path) -> None:
    """A clear refusal, before anything loads, for an adapter kind with no weights to fold into."""
    from headstart.adapters.prompt import NO_MERGE

    if ref.method in NO_MERGE:
        raise HeadstartError(
            f"cannot merge {run}: {NO_MERGE[ref.method]}",
            fix=f"serve the run as it is (`headstart serve {run}`); its store entry holds only the vectors",
        )


def load_adapter(backbone: Backbone, run_path: str | Path, ref: AdapterRef) -> Backbone:
    """The base backbone + the run's adapter: injected with the recorded config, tensors loaded exactly."""
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
    module = _module(ref.method)
    module.inject(backbone, _spec(ref.spec), groups=groups)
    saved = load_tensors(path)
    own = module.state(backbone)
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    wrong = [k for k in saved if k in own and tuple(own[k].shape) != tuple(saved[k].shape)]
    if missing or unexpected or wrong:
        raise HeadstartError(
            f"{path} does not fit {backbone.name} with this adapter config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}",
            fix="load the run with the backbone (and peft version) it was trained with",
        )
    backbone.load_state_dict(saved, strict=False)
    backbone.delta_sha256 = sha256_file(path)  # a different network from the base: its own cache key
    return backbone.eval()


def merge_adapter(backbone: Backbone) -> Backbone:
    """Fold the adapter into the base weights: a plain backbone (no adapter layers) that computes the same
    function up to float rounding. `backbone.merged_groups` lists the groups whose weights changed. Learned
    tokens (prompt/prefix tuning) have no weights to fold into: refused."""
    groups = _module(_method_of(backbone)).merge(backbone)
    backbone.__dict__["merged_groups"] = groups
    return backbone


__all__ = ["ADAPTER_FILE", "adapter_state", "inject_adapter", "load_adapter", "merge_adapter", "refuse_merge"]
