"""Prompt tuning and prefix tuning for text backbones: learned vectors; no weight of the backbone changes.

- **prompt-tuning** (Lester et al. 2021): N vectors prepended to the hidden states that enter the first
  transformer layer (the output of the `embeddings` group), the attention mask extended to see them. For
  a BERT-style encoder they enter after the position embeddings and LayerNorm (PEFT adds positions 0..N-1
  to them and shifts the text's): the text keeps the positions it was pretrained on and its full
  `max_length`. For a rotary decoder the two are the same up to a shift of every position (relative).
- **prefix-tuning** (Li & Liang 2021): N key and N value vectors per attention layer, prepended to that
  layer's keys and values. They reach each attention module as a `cache` (the object transformers passes
  past keys/values in) through a forward pre-hook, so the backbone's own code is untouched; an attention
  module that takes no cache is refused (only such a module could see them).

Both start from real vocabulary tokens (PEFT's SAMPLE_VOCAB init, which Lester et al. found far better than
random vectors): N word tokens drawn from the tokenizer's vocabulary with the run's seed; prompt vectors
are their embeddings as the first layer sees them, prefixes are the keys and values each layer computes
for them (Li & Liang's init from real-word activations).

Pooling ignores the virtual positions (a pre-hook on the pool drops them): the pooled embedding stays the
mean over the text's own tokens (or its last token), the quantity the probe-initialised head was fitted
on; in a causal decoder the prompt positions see no text at all, so pooling them would add a constant.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from headstart.errors import HeadstartError

if TYPE_CHECKING:
    from headstart.backbones.base import Backbone
    from headstart.recipes import PromptSpec

KINDS = ("prompt-tuning", "prefix-tuning")
PROMPT_ATTR = "virtual_tokens"  # on groups[0]: groups.0.virtual_tokens.weight
PREFIX_ATTR = "kv_prefix"  # on each adapted group: groups.<i>.kv_prefix.<j>.keys / .values
CACHE_ARGS = ("cache", "past_key_values")  # what transformers' attention modules call their past keys
NO_MERGE = {
    "prompt-tuning": "prompt tuning learns input vectors; there are no weights to merge it into",
    "prefix-tuning": "prefix tuning learns per-layer key/value vectors; there are no weights to merge "
    "it into",
}


class VirtualTokens(nn.Module):
    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init.detach().clone())  # (N, D)


class KeyValuePrefix(nn.Module):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys = nn.Parameter(keys.detach().clone())  # (heads, N, head_dim): as the layer computes them
        self.values = nn.Parameter(values.detach().clone())


class _Prefixed:
    """Passed as an attention module's cache: its `update` returns the prefix + the layer's own keys and
    values (and stores nothing: every call is a whole forward)."""

    def __init__(self, prefix: KeyValuePrefix) -> None:
        self.prefix = prefix

    def update(self, keys: torch.Tensor, values: torch.Tensor, *_: Any, **__: Any) -> tuple[Any, Any]:
        n = keys.shape[0]
        pk = self.prefix.keys.to(keys.dtype).unsqueeze(0).expand(n, -1, -1, -1)
        pv = self.prefix.values.to(values.dtype).unsqueeze(0).expand(n, -1, -1, -1)
        return torch.cat([pk, keys], dim=2), torch.cat([pv, values], dim=2)


class _Recorder:
    """A cache that records the keys and values one forward computes (the prefixes' init)."""

    def __init__(self) -> None:
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, keys: torch.Tensor, values: torch.Tensor, *_: Any, **__: Any) -> tuple[Any, Any]:
        self.seen = (keys[0].detach().clone(), values[0].detach().clone())
        return keys, values


def is_adapter_param(name: str) -> bool:
    return f".{PROMPT_ATTR}." in name or f".{PREFIX_ATTR}." in name


def n_virtual(backbone: nn.Module) -> int:
    vt = getattr(backbone.groups[0], PROMPT_ATTR, None)
    return int(vt.weight.shape[0]) if vt is not None else 0


# -- where the vectors go ----------------------------------------------------------------------------------


def _refuse(backbone: Backbone, method: str, why: str, fix: str) -> HeadstartError:
    return HeadstartError(f"{method} cannot adapt {backbone.name} ({backbone.card.family}): {why}", fix=fix)


def vocab_ids(backbone: Backbone, n: int, seed: int) -> torch.Tensor:
    """`n` ids of word tokens (letters only: no special, unused or byte tokens) drawn with `seed`."""
    tok = backbone._tokenizer  # type: ignore[attr-defined]  # a TextBackbone's tokenizers.Tokenizer
    words = [
        i
        for i in range(tok.get_vocab_size())
        if (t := tok.id_to_token(i)) and t.lstrip("Ġ▁#").isalpha() and not t.startswith(("[", "<"))
    ]
    if not words:
        raise _refuse(backbone, "prompt tuning", "its vocabulary has no word token", "use --strategy lora")
    gen = torch.Generator().manual_seed(seed)
    return torch.tensor(words)[torch.randint(len(words), (n,), generator=gen)]


def _with_prompt(module: nn.Module, args: Any, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Forward hook of groups[0]: the virtual tokens in front of every sequence, the mask extended."""
    prompt = getattr(module, PROMPT_ATTR).weight
    hidden, mask = out["hidden"], out["mask"]
    n = hidden.shape[0]
    vt = prompt.to(hidden.dtype).unsqueeze(0).expand(n, -1, -1)
    ones = torch.ones_like(mask[:, :1]).expand(-1, prompt.shape[0])
    return {**out, "hidden": torch.cat([vt, hidden], dim=1), "mask": torch.cat([ones, mask], dim=1)}


def _pool_text_only(backbone: nn.Module) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        state, n = args[0], n_virtual(backbone)
        return ({**state, "hidden": state["hidden"][:, n:], "mask": state["mask"][:, n:]}, *args[1:])

    return hook


def _attention_modules(group: nn.Module) -> list[nn.Module]:
    """The self-attention modules inside a group: those whose forward takes past keys/values."""
    out = []
    for m in group.modules():
        params = inspect.signature(m.forward).parameters
        if m is not group and any(a in params for a in CACHE_ARGS) and hasattr(m, "layer_idx"):
            out.append(m)
    return out


def _cache_arg(module: nn.Module) -> str:
    params = inspect.signature(module.forward).parameters
    return next(a for a in CACHE_ARGS if a in params)


def _extended_mask(module: nn.Module, mask: torch.Tensor | None, q: torch.Tensor, n: int) -> Any:
    """The attention mask with `n` always-visible key columns in front, in the form the module was given
    (None: every key visible, or causal; bool: True attends; float: additive)."""
    causal = bool(getattr(module, "is_causal", False))
    if mask is None:
        if not causal:
            return None
        t = q.shape[1]
        allowed = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()[None, None]
        eager = getattr(getattr(module, "config", None), "_attn_implementation", "sdpa") == "eager"
        mask = allowed if not eager else torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
        if eager:
            mask = mask.masked_fill(~allowed, torch.finfo(q.dtype).min)
    if mask.dtype == torch.bool:
        front = torch.ones((*mask.shape[:-1], n), dtype=torch.bool, device=mask.device)
    else:
        front = torch.zeros((*mask.shape[:-1], n), dtype=mask.dtype, device=mask.device)
    return torch.cat([front, mask], dim=-1)


def _prefix_hook(prefix: KeyValuePrefix, arg: str) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        n = prefix.keys.shape[1]
        kwargs = {**kwargs, arg: _Prefixed(prefix)}
        kwargs["attention_mask"] = _extended_mask(module, kwargs.get("attention_mask"), hidden, n)
        return args, kwargs

    return hook


def _record_hook(recorder: _Recorder, arg: str) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return args, {**kwargs, arg: recorder}

    return hook


# -- the adapter's lifecycle -------------------------------------------------------------------------------


def _vocab_batch(backbone: Backbone, n: int, seed: int) -> dict[str, torch.Tensor]:
    ids = vocab_ids(backbone, n, seed)[None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _inject_prompt(backbone: Backbone, spec: PromptSpec, groups: list[int], seed: int) -> list[int]:
    if len(backbone.groups) < 2 or backbone.group_names[0] != "embeddings":
        raise _refuse(
            backbone,
            spec.method,
            "its embeddings are not a layer group of their own (an unrecognised layout runs as one group)",
            "use --strategy lora, or a BERT-family encoder or Llama-family decoder",
        )
    if 0 not in groups:
        raise _refuse(
            backbone,
            spec.method,
            "its vectors enter below the first layer, and the recipe does not train the embeddings group",
            'give every training phase train_top: "all"',
        )
    with torch.no_grad():
        init = backbone.groups[0](_vocab_batch(backbone, spec.n_tokens, seed))["hidden"][0]
    setattr(backbone.groups[0], PROMPT_ATTR, VirtualTokens(init))
    backbone.groups[0].register_forward_hook(_with_prompt)
    backbone.pool.register_forward_pre_hook(_pool_text_only(backbone))
    return [0]


def _inject_prefix(backbone: Backbone, spec: PromptSpec, groups: list[int], seed: int) -> list[int]:
    found = {i: _attention_modules(backbone.groups[i]) for i in groups}
    found = {i: mods for i, mods in found.items() if mods}
    if not found:
        raise _refuse(
            backbone,
            spec.method,
            "none of its attention layers takes past keys/values (a transformers `cache`)",
            "use --strategy prompt-tuning or lora",
        )
    recorders = {i: [_Recorder() for _ in mods] for i, mods in found.items()}
    handles = [
        m.register_forward_pre_hook(_record_hook(r, _cache_arg(m)), with_kwargs=True)
        for i, mods in found.items()
        for m, r in zip(mods, recorders[i], strict=True)
    ]
    try:
        with torch.no_grad():
            backbone(_vocab_batch(backbone, spec.n_tokens, seed))
    finally:
        for h in handles:
            h.remove()
    for i, mods in found.items():
        if any(r.seen is None for r in recorders[i]):
            raise _refuse(
                backbone,
                spec.method,
                f"the attention of group {backbone.group_names[i]} ignores the keys/values it is passed",
                "use --strategy prompt-tuning or lora",
            )
        prefixes = nn.ModuleList([KeyValuePrefix(*r.seen) for r in recorders[i]])  # type: ignore[misc]
        setattr(backbone.groups[i], PREFIX_ATTR, prefixes)
        for m, p in zip(mods, prefixes, strict=True):
            m.register_forward_pre_hook(_prefix_hook(p, _cache_arg(m)), with_kwargs=True)
    return sorted(found)


def inject(
    backbone: Backbone,
    spec: PromptSpec,
    *,
    top_groups: int | None = None,
    groups: list[int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Add the learned vectors to `backbone` in place (the vectors of `spec.method` in the top `top_groups`
    groups, or in `groups`); returns what run.json records of the adapter."""
    from headstart.adapters.lora import adapted_groups

    if backbone.modality != "text" or not hasattr(backbone, "_tokenizer"):
        raise _refuse(
            backbone,
            spec.method,
            f"it reads {backbone.modality}; learned tokens need a text backbone",
            "use --strategy lora (transformers) or partial:N",
        )
    if any(is_adapter_param(n) for n, _ in backbone.named_parameters()):
        raise HeadstartError(f"{backbone.name} already holds learned tokens", fix="inject once per backbone")
    groups = adapted_groups(backbone, top_groups) if groups is None else groups
    base_params = sum(p.numel() for p in backbone.parameters())
    was = backbone.training
    backbone.eval()
    inject_kind = _inject_prompt if spec.method == "prompt-tuning" else _inject_prefix
    adapted = inject_kind(backbone, spec, groups, seed)
    backbone.train(was)
    backbone.trainable_filter = is_adapter_param
    # The frozen forward stays on PyTorch (what training computed), as for LoRA; `export` traces the
    # vectors into the graph as constants.
    backbone.supports_onnx = False
    return {
        "method": spec.method,
        "n_tokens": spec.n_tokens,
        "init": "vocab",
        "groups": [backbone.group_names[i] for i in adapted],
        "trainable_params": sum(p.numel() for n, p in backbone.named_parameters() if is_adapter_param(n)),
        "base_params": base_params,
    }


def state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The learned vectors only (names as in the backbone's state dict)."""
    return {k: v.detach().clone() for k, v in backbone.state_dict().items() if is_adapter_param(k)}


def merge(backbone: Backbone) -> list[int]:
    method = "prompt-tuning" if n_virtual(backbone) else "prefix-tuning"
    raise HeadstartError(NO_MERGE[method], fix="serve the run as it is (`headstart serve RUN`)")
