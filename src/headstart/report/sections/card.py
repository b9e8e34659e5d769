"""Model card: the base backbone, what trained, preprocessing, settings, recipe, library versions."""

from __future__ import annotations

import json
from typing import Any

from headstart.report.html import Html, code, join, key_value, not_computed, num, tag
from headstart.report.loader import RunFiles, strategy_name


def section(files: RunFiles) -> tuple[Html, bool]:
    run = files.run
    bb = run.get("backbone") or {}
    card = bb.get("card") or {}
    if not bb:
        return not_computed("run.json has no backbone record", "headstart probe DATA"), False
    rows: list[tuple[Any, Any]] = [
        ("name", card.get("name", bb.get("name", "?"))),
        ("family", card.get("family", "–")),
        ("source", join([code(card.get("source", "–")), f" version {card.get('version', '–')}"])),
        ("weights sha256", code(card.get("weights_sha256") or bb.get("weights_sha256") or "–")),
        ("license", card.get("license", "–")),
        ("pretraining data", card.get("pretraining_data", "–")),
        ("paper", card.get("paper", "–")),
    ]
    if card.get("embed_dim") is not None:
        rows.append(("embedding size", num(card["embed_dim"])))
    if card.get("num_params") is not None:
        rows.append(("backbone parameters", num(card["num_params"])))
    if bb.get("key"):
        rows.append(("backbone key", code(bb["key"])))
    rows.append(("trained", what_trained(run)))
    parts: list[Any] = [tag("h3", "Base backbone"), key_value(rows)]

    pre = run.get("preprocess") or {}
    if pre:
        parts.append(tag("h3", "Preprocessing"))
        parts.append(
            key_value((k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in pre.items())
        )

    params = dict(run.get("params") or {})
    seed = params.pop("seed", run.get("seed"))
    params.pop("selection_scores", None)
    settings: list[tuple[Any, Any]] = [("kind", run.get("kind", "–")), ("seed", num(seed))]
    if strategy_name(files):
        settings.append(("strategy", strategy_name(files)))
    settings += [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in params.items()]
    if files.calibration and files.calibration.get("temperature") is not None:
        settings.append(("temperature (calibration.json)", num(files.calibration["temperature"])))
    parts += [tag("h3", "Settings"), key_value(settings)]
    if files.recipe:
        parts += [tag("h3", "Recipe"), tag("pre", json.dumps(files.recipe, indent=2, default=str))]

    versions = run.get("versions") or {}
    if versions:
        parts += [tag("h3", "Library versions"), key_value(versions.items())]
    return join(parts), True


_ADAPTER_NAMES = {"lora": "LoRA"}


def what_trained(run: dict[str, Any]) -> Any:
    """What the run changed, from run.json: the head always, and the backbone groups that moved, the LoRA
    adapters, or every layer. A probe and the `head` strategy train the head only (no `trained_groups`
    or an empty list); fit records the group names in `trained_groups`, LoRA in `adapter.groups`."""
    adapter, groups = run.get("adapter"), run.get("trained_groups")
    if isinstance(adapter, dict):
        method = str(adapter.get("method", "lora"))
        in_groups = ", ".join(map(str, adapter.get("groups") or [])) or "–"
        return join(
            [
                f"the head and {_ADAPTER_NAMES.get(method, method)} adapters "
                f"(r = {adapter.get('r', '?')}) in groups {in_groups}; the base weights stay frozen (",
                code(adapter.get("file", "?")),
                ")",
            ]
        )
    if run.get("pretrained") is False:
        return "every layer and the head, from random initialisation (no pretrained weights)"
    if groups:
        delta = run.get("delta") or {}
        text = f"the head and backbone groups {', '.join(map(str, groups))}"
        if run.get("merged_from"):
            text += " (LoRA adapters merged into their weights)"
        return join([text, " (", code(delta.get("file", "?")), ")"]) if delta else text
    if groups == [] or run.get("kind") == "probe":
        return "the head only (a linear classifier on the frozen backbone's embeddings)"
    return "not recorded in run.json"
