"""LoRA through PEFT: which layers to adapt per architecture, injection, the adapter's tensors, merging.

Default targets are every attention projection of the adapted groups (query, key, value and output). Hu et
al. 2021 (LoRA, table 5) found that spreading a fixed budget over all four attention matrices at a low rank
matches or beats putting it in fewer matrices at a higher rank, and the four are present under one naming
or another in every transformer family headstart loads, so one rule holds everywhere. The MLP layers are
left out by default (they hold 2/3 of a layer's weights; `--lora-targets all-linear` adds them, as QLoRA
does for generative tuning). An architecture whose attention is not recognised gets every linear layer
inside its groups, with a message saying so.

Injection goes through `peft.inject_adapter_in_model` with the exact module names found here, so the
backbone stays a headstart Backbone (groups, pool, cache keys) with LoRA layers inside; B starts at zero,
so the injected network computes exactly what the base does until it trains.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from headstart.errors import HeadstartError

if TYPE_CHECKING:
    from headstart.backbones.base import Backbone
    from headstart.recipes import LoraSpec

log = logging.getLogger(__name__)

ALL_LINEAR = "all-linear"
ADAPTER_NAME = "default"

# Attention projections by naming convention, tried in order; the first set fully present wins.
ATTENTION_TARGETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Llama / ViT", ("q_proj", "k_proj", "v_proj", "o_proj")),
    ("Whisper / BART / CLIP", ("q_proj", "k_proj", "v_proj", "out_proj")),
    ("BERT", ("query", "key", "value", "attention.output.dense")),
    ("DistilBERT", ("q_lin", "k_lin", "v_lin", "out_lin")),
    ("timm ViT", ("attn.qkv", "attn.proj")),
)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")


def adapted_groups(backbone: Backbone, top_groups: int | None) -> list[int]:
    n = len(backbone.groups)
    top = n if top_groups is None else max(0, min(int(top_groups), n))
    return list(range(n - top, n))


def _linears(backbone: Backbone, groups: list[int]) -> list[tuple[str, str]]:
    """(full name in the backbone, name inside its group) of every nn.Linear inside `groups`."""
    out = []
    for i in groups:
        for name, m in backbone.groups[i].named_modules():
            if isinstance(m, nn.Linear) and name:
                out.append((f"groups.{i}.{name}", name))
    return out


def default_targets(backbone: Backbone, groups: list[int] | None = None) -> tuple[tuple[str, ...], str]:
    """(target module names, why they were chosen) for this backbone's architecture."""
    groups = adapted_groups(backbone, None) if groups is None else groups
    inner = [n for _, n in _linears(backbone, groups)]
    for label, names in ATTENTION_TARGETS:
        if all(any(_matches(n, t) for n in inner) for t in names):
            return names, f"the attention projections ({label} naming)"
    return (ALL_LINEAR,), (
        f"every linear layer inside the groups: the attention layers of {backbone.card.family} are not "
        "recognised (name them with --lora-targets to adapt fewer)"
    )


def resolve_modules(backbone: Backbone, targets: tuple[str, ...], groups: list[int]) -> list[str]:
    """Full module names (relative to the backbone) of the linear layers `targets` names in `groups`."""
    linears = _linears(backbone, groups)
    if ALL_LINEAR in targets:
        return [full for full, _ in linears]
    found = [full for full, inner in linears if any(_matches(inner, t) for t in targets)]
    missing = [t for t in targets if not any(_matches(inner, t) for _, inner in linears)]
    if missing:
        names = sorted({inner.rsplit(".", 1)[-1] for _, inner in linears})
        raise HeadstartError(
            f"no linear layer named {missing} in the groups of {backbone.name}",
            fix=f"choose among {names}, or use {ALL_LINEAR}",
        )
    return found


def lora_modules(backbone: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in backbone.named_modules() if isinstance(m, LoraLayer)}


def is_adapter_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def inject(
    backbone: Backbone,
    spec: LoraSpec,
    *,
    top_groups: int | None = None,
    groups: list[int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Put LoRA layers into `backbone` in place; returns what run.json records of the adapter."""
    try:
        import peft
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:
        raise HeadstartError("LoRA needs the peft package", fix="pip install peft") from e
    if lora_modules(backbone):
        raise HeadstartError(f"{backbone.name} already holds LoRA layers", fix="inject once per backbone")
    groups = adapted_groups(backbone, top_groups) if groups is None else groups
    if spec.target_modules is None:
        targets, why = default_targets(backbone, groups)
    else:
        targets, why = tuple(spec.target_modules), "chosen by the user"
    modules = resolve_modules(backbone, targets, groups)
    if not modules:
        raise HeadstartError(
            f"{backbone.name} has no linear layer to adapt in its groups "
            f"{[backbone.group_names[i] for i in groups]}",
            fix="LoRA needs a transformer backbone (linear layers); use partial:N or full instead",
        )
    base_params = sum(p.numel() for p in backbone.parameters())
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=modules,  # exact names: PEFT matches them as given
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # A's random init: the same adapter for the same seed
        inject_adapter_in_model(config, backbone, adapter_name=ADAPTER_NAME)
    for m in lora_modules(backbone).values():
        m.train(m.get_base_layer().training)  # new layers start in train mode (dropout on): match the base
    backbone.__dict__.pop("peft_config", None)  # PEFT's bookkeeping; run.json records the config
    backbone.trainable_filter = is_adapter_param
    # ONNX Runtime would compute these embeddings with another graph; the adapted model stays on PyTorch
    # (bit-identical to training) until `headstart merge` makes a plain network of it.
    backbone.supports_onnx = False
    adapter_params = sum(p.numel() for n, p in backbone.named_parameters() if is_adapter_param(n))
    return {
        "method": "lora",
        "r": spec.r,
        "alpha": spec.alpha,
        "dropout": spec.dropout,
        "target_modules": list(targets),
        "targets_reason": why,
        "groups": [backbone.group_names[i] for i in sorted({int(m.split(".")[1]) for m in modules})],
        "n_modules": len(modules),
        "trainable_params": adapter_params,
        "base_params": base_params,
        "peft": peft.__version__,
    }


def state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors only (names as in the backbone's state dict)."""
    return {k: v.detach().clone() for k, v in backbone.state_dict().items() if is_adapter_param(k)}


def merge(backbone: Backbone) -> list[int]:
    """Fold every LoRA update into its base weight (W + alpha/r B A) and remove the LoRA layers.

    Returns the indices of the groups whose weights changed."""
    changed: set[int] = set()
    for name, module in lora_modules(backbone).items():
        module.merge(safe_merge=True)  # refuses NaN/inf rather than writing them into the weights
        parent_name, _, child = name.rpartition(".")
        setattr(backbone.get_submodule(parent_name), child, module.get_base_layer())
        parts = name.split(".")
        if parts[0] == "groups":
            changed.add(int(parts[1]))
    backbone.trainable_filter = None
    backbone.__dict__.pop("supports_onnx", None)  # back to the family's own answer
    return sorted(changed)
