"""Model card: the base backbone, what trained, preprocessing, settings, recipe, library versions."""

from __future__ import annotations

import json
from typing import Any

from headstart.report.html import Html, code, join, key_value, not_computed, num, tag
from headstart.report.loader import RunFiles
from headstart.runs import RunInfo, run_card


def section(files: RunFiles) -> tuple[Html, bool]:
    """The run's model card (headstart.runs.run_card: the same card the store and the export write)."""
    info = files.info
    if not info.backbone.name and not info.backbone.card:
        return not_computed("run.json has no backbone record", "headstart probe DATA"), False
    card = run_card(files.path, info)
    base = card["base"]
    rows: list[tuple[Any, Any]] = [
        ("name", base["name"] or "?"),
        ("family", base["family"] or "–"),
        ("source", join([code(base["source"] or "–"), f" version {base['version'] or '–'}"])),
        ("weights sha256", code(base["sha256"] or "–")),
        ("license", base["license"] or "–"),
        ("pretraining data", base["pretraining_data"] or "–"),
        ("paper", base["paper"] or "–"),
    ]
    if base["embed_dim"] is not None:
        rows.append(("embedding size", num(base["embed_dim"])))
    if base["num_params"] is not None:
        rows.append(("backbone parameters", num(base["num_params"])))
    if base["key"]:
        rows.append(("backbone key", code(base["key"])))
    rows.append(("trained", what_trained(info)))
    parts: list[Any] = [tag("h3", "Base backbone"), key_value(rows)]

    pre = card["preprocess"]
    if pre:
        parts.append(tag("h3", "Preprocessing"))
        parts.append(
            key_value((k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in pre.items())
        )

    params = {k: v for k, v in card["params"].items() if k not in ("seed", "selection_scores")}
    settings: list[tuple[Any, Any]] = [("kind", card["kind"]), ("seed", num(card["seed"]))]
    if card["strategy"]:
        settings.append(("strategy", card["strategy"]))
    settings += [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in params.items()]
    if card["temperature"] is not None:
        settings.append(("temperature (calibration.json)", num(card["temperature"])))
    parts += [tag("h3", "Settings"), key_value(settings)]
    if files.recipe:
        parts += [tag("h3", "Recipe"), tag("pre", json.dumps(files.recipe, indent=2, default=str))]

    if card["versions"]:
        parts += [tag("h3", "Library versions"), key_value(card["versions"].items())]
    return join(parts), True


_ADAPTER_NAMES = {"lora": "LoRA"}


def what_trained(run: RunInfo | dict[str, Any]) -> Any:
    """What the run changed, from run.json: the head always, and the backbone groups that moved, the LoRA
    adapters, or every layer. A probe and the `head` strategy train the head only (no `trained_groups`
    or an empty list); fit records the group names in `trained_groups`, LoRA in `adapter.groups`."""
    info = run if isinstance(run, RunInfo) else RunInfo.from_dict(run)
    adapter, groups = info.adapter, info.trained_groups
    if adapter is not None:
        method = adapter.method
        in_groups = ", ".join(adapter.groups) or "–"
        what = (
            f"{adapter.spec.get('n_tokens', '?')} learned {method} vectors"
            if "n_tokens" in adapter.spec
            else f"{_ADAPTER_NAMES.get(method, method)} adapters (r = {adapter.spec.get('r', '?')})"
        )
        return join(
            [
                f"the head and {what} in groups {in_groups}; the base weights stay frozen (",
                code(adapter.file or "?"),
                ")",
            ]
        )
    if not info.pretrained:
        return "every layer and the head, from random initialisation (no pretrained weights)"
    if groups:
        text = f"the head and backbone groups {', '.join(groups)}"
        if info.merged_from:
            text += " (LoRA adapters merged into their weights)"
        return join([text, " (", code(info.delta.file), ")"]) if info.delta is not None else text
    if groups == [] or info.kind == "probe":
        return "the head only (a linear classifier on the frozen backbone's embeddings)"
    return "not recorded in run.json"
