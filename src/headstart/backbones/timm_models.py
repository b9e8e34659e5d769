"""timm models as backbones (optional extra: `pip install 'headstart[timm]'`), as `timm:<model-name>`.

timm requires torchvision, which has no CPU build on PyPI, so it is never part of the default install.

Layer groups come from the model's own `group_matcher()` (the regexes timm's layer-wise LR decay uses),
applied as timm's `group_with_matcher` does: the chain of modules `forward_features` runs (the top-level
children, a `blocks`/`stages` container split into its items; for ViT-style models the patch embedding
with `_pos_embed` as one stem) is cut where the matcher's group changes. The chain is checked against
`forward_features` on a seeded input when the model is built; a model whose forward is not such a chain
(or that has no `group_matcher`) stays one group, and its card says why. The pool is the model's own
`forward_head(pre_logits=True)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from itertools import chain, takewhile
from typing import Any

import torch
from torch import nn

from headstart.backbones.base import Backbone, BackboneCard, PreprocessConfig
from headstart.backbones.registry import register_prefix
from headstart.errors import HeadstartError

MATCH_PREV_GROUP = 99999  # timm's marker: this match joins the group before it (e.g. a final norm)
_TOKEN_STEM = ("patch_embed", "pos_drop", "patch_drop", "norm_pre")  # what a timm ViT runs before blocks


class _Features(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class _PreLogits(nn.Module):
    """The model's own head up to the logits (global pool, norm); registers only the modules it owns."""

    def __init__(self, model: nn.Module, owned: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.owned = nn.ModuleDict(owned if owned is not None else {"model": model})
        self.__dict__["_model"] = model  # called through, not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.__dict__["_model"].forward_head(x, pre_logits=True)


class _TokenStem(nn.Module):
    """A timm ViT's stem: patch embedding, then `_pos_embed` (class/register tokens and position embedding,
    which are parameters of the model itself), patch dropout and the pre-norm."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({n: getattr(model, n) for n in _TOKEN_STEM if hasattr(model, n)})
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        self.__dict__["_model"] = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.__dict__["_model"]
        x = m._pos_embed(m.patch_embed(x))
        for name in ("patch_drop", "norm_pre"):
            if name in self.parts:
                x = self.parts[name](x)
        return x


def group_ids(names: Iterable[str], matcher: dict[str, Any]) -> dict[str, int]:
    """{parameter name: group id} from a timm `group_matcher()` dict, as timm's `group_with_matcher`:
    each name gets the ordinal of the first spec that matches (spec index, then the regex's numbers, then
    the suffix); sorted ordinals become consecutive ids, a `(99999,)` suffix staying in the group before."""
    compiled: list[tuple[re.Pattern[str], tuple[int, ...], tuple[int, ...] | None]] = []
    for ordinal, spec in enumerate(matcher.values()):
        if spec is None:
            continue
        for regex, suffix in spec if isinstance(spec, tuple | list) else [(spec, None)]:
            compiled.append((re.compile(regex), (ordinal,), suffix))

    def ordinal_of(name: str) -> tuple[float, ...]:
        for regex, prefix, suffix in compiled:
            m = regex.match(name)
            if m:
                parts = (prefix, m.groups(), suffix)
                return tuple(float(v) for v in chain.from_iterable(p for p in parts if p))
        return (float("inf"),)  # unmatched (neck, head): the last group

    by_ordinal: dict[tuple[float, ...], list[str]] = {}
    for name in names:
        by_ordinal.setdefault(ordinal_of(name), []).append(name)
    ids: dict[str, int] = {}
    gid = -1
    for ordinal in sorted(by_ordinal):
        if gid < 0 or ordinal[-1] != MATCH_PREV_GROUP:
            gid += 1
        ids.update(dict.fromkeys(by_ordinal[ordinal], gid))
    return ids


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Candidate chain links: top-level children, containers (`blocks`, `stages`, `layers`) split into
    their items, and a ViT's token stem in place of the modules it runs."""
    token_stem = hasattr(model, "_pos_embed") and hasattr(model, "patch_embed")
    out: list[tuple[str, nn.Module]] = [("stem", _TokenStem(model))] if token_stem else []
    for name, child in model.named_children():
        if token_stem and name in _TOKEN_STEM:
            continue
        if isinstance(child, nn.Sequential | nn.ModuleList) and len(child) > 1:
            out += [(f"{name}.{i}", m) for i, m in child.named_children()]
        else:
            out.append((name, child))
    return out


def _called_in_order(
    model: nn.Module, units: list[tuple[str, nn.Module]], x: torch.Tensor
) -> tuple[list[str], torch.Tensor]:
    """(the units `forward_features` calls, in call order; its output). Empty when a unit runs twice."""
    calls: list[str] = ["stem"] if any(isinstance(m, _TokenStem) for _, m in units) else []
    hooks = [
        m.register_forward_hook(lambda *_, n=n: calls.append(n))
        for n, m in units
        if not isinstance(m, _TokenStem)  # a wrapper of ours: the model never calls it
    ]
    try:
        out = model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return (calls if len(set(calls)) == len(calls) else []), out


def _one_group(model: nn.Module, why: str) -> tuple[list[tuple[str, nn.Module]], nn.Module, str]:
    return [("features", _Features(model))], _PreLogits(model), f"one group: {why}"


def timm_groups(model: nn.Module, input_size: int) -> tuple[list[tuple[str, nn.Module]], nn.Module, str]:
    """(ordered groups, pool, how they were found) for a timm model; see the module docstring."""
    matcher_fn: Callable[..., dict[str, Any]] | None = getattr(model, "group_matcher", None)
    if matcher_fn is None:
        return _one_group(model, "the model has no group_matcher")
    units = _units(model)
    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        order, expected = _called_in_order(model, units, x)
        chained = [(n, dict(units)[n]) for n in order]
        try:  # a link that needs more than the previous one's output (masks, sizes) ends the chain here
            ok = bool(chained) and _same(nn.Sequential(*[m for _, m in chained])(x), expected)
        except (TypeError, ValueError, RuntimeError, IndexError):
            ok = False
    head = {n.replace(".", "_"): m for n, m in units if n not in order}
    owned = {id(p) for _, m in [*chained, *head.items()] for p in m.parameters()}
    if not ok or any(id(p) not in owned for p in model.parameters()):
        return _one_group(model, "forward_features is not a chain of its modules")
    ids = group_ids([n for n, _ in model.named_parameters()], matcher_fn(coarse=True))
    gids = [min((ids[n] for n in _qualified(u, m) if n in ids), default=None) for u, m in chained]
    known = [g for g in gids if g is not None]
    for i, g in enumerate(gids):  # parameter-free links join the group before them (the first: after)
        gids[i] = g if g is not None else (gids[i - 1] if i else (known[0] if known else 0))
    runs: list[tuple[list[str], list[nn.Module]]] = []
    for i, (name, module) in enumerate(chained):
        if i == 0 or gids[i] != gids[i - 1]:
            runs.append(([], []))
        runs[-1][0].append(name)
        runs[-1][1].append(module)
    groups = [(_group_name(ns), ms[0] if len(ms) == 1 else nn.Sequential(*ms)) for ns, ms in runs]
    return groups, _PreLogits(model, head), "timm group_matcher"


def _group_name(units: list[str]) -> str:
    """The dotted prefix the units share (`layer1.0`, `layer1.1` -> `layer1`), else the first unit's name."""
    if len(units) == 1:
        return units[0]
    columns = zip(*(u.split(".") for u in units), strict=False)
    common = [c[0] for c in takewhile(lambda c: len(set(c)) == 1, columns)]
    return ".".join(common) if common else units[0]


def _qualified(unit: str, module: nn.Module) -> list[str]:
    """A unit's parameter names in the whole model (what the matcher's regexes read)."""
    if isinstance(module, _TokenStem):
        own = [n for n, _ in module.named_parameters(recurse=False)]
        return own + [f"{k}.{n}" for k, part in module.parts.items() for n, _ in part.named_parameters()]
    return [f"{unit}.{n}" for n, _ in module.named_parameters()]


def _same(a: Any, b: Any) -> bool:
    tensors = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return tensors and a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@register_prefix("timm:", usage="timm:<model-name>")
def create_timm_backbone(name: str, *, pretrained: bool = True, **kwargs: Any) -> Backbone:
    try:
        import timm
        from timm.data import resolve_model_data_config
    except Exception as e:  # ImportError, or a broken torchvision underneath
        raise HeadstartError(
            f"timm backbones need timm, which cannot be imported here ({type(e).__name__}: {e})",
            fix="pip install 'headstart[timm]' where a torchvision build for your torch exists",
        ) from e
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs).eval()
    except RuntimeError as e:
        raise HeadstartError(
            f"unknown or unavailable timm model {name!r}: {e}", fix="see timm.list_models()"
        ) from e
    data = resolve_model_data_config(model)
    size = int(data["input_size"][-1])
    preprocess = PreprocessConfig(
        input_size=size,
        resize=round(size / float(data.get("crop_pct", 1.0))),
        mean=tuple(data["mean"]),  # type: ignore[arg-type]
        std=tuple(data["std"]),  # type: ignore[arg-type]
        interpolation=str(data.get("interpolation", "bicubic")),
    )
    groups, pool, how = timm_groups(model, size)
    pcfg = getattr(model, "pretrained_cfg", {}) or {}
    card = BackboneCard(
        name=f"timm:{name}",
        family="timm",
        source=str(pcfg.get("hf_hub_id") or pcfg.get("url") or "timm"),
        version=timm.__version__,
        weights_sha256=None,
        license=str(pcfg.get("license", "see the model page")),
        pretraining_data=str(pcfg.get("tag", "see the model page")),
        paper=str(pcfg.get("paper_ids", "see the model page")),
        embed_dim=int(model.num_features),
        extra={"groups": how},
    )
    return Backbone(
        name=card.name,
        card=card,
        preprocess=preprocess,
        embed_dim=int(model.num_features),
        groups=groups,
        pool=pool,
    ).eval()
