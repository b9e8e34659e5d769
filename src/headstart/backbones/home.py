"""The backbones home: text backbones whose pretraining `headstart adapt` (headstart.pretrain) continued
on domain text; `pretrain/folder.py` writes them, this module finds and loads them.

Each one is a folder under the backbones home (`HEADSTART_BACKBONES`, default
`~/.cache/headstart/backbones`, or `$HEADSTART_CACHE/backbones`) holding a transformers model
(`model.safetensors`, `config.json`, tokenizer files) and `headstart_backbone.json`, its card: parent
(name and weights sha256), objective, perplexity before/after, data hashes. The registry asks this module
on every lookup (`register_spec_source`), so a backbone adapted a moment ago is found by its name, and its
folder is read by its path too (`register_folder`, asked before the plain transformers folders). Loading
goes through the same text loaders as `hf:<folder>` (same layer groups, same pooling), after checking the
weights' sha256 against the card.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from headstart.backbones.registry import BackboneSpec, register_folder, register_spec_source
from headstart.errors import HeadstartError
from headstart.fileio import cache_dir, sha256_file_memo

CARD_FILE = "headstart_backbone.json"
WEIGHTS_FILE = "model.safetensors"
FAMILY = "adapted"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def backbones_home() -> Path:
    """Where adapted backbones live: `HEADSTART_BACKBONES`, else `backbones/` in the headstart cache."""
    root = os.environ.get("HEADSTART_BACKBONES")
    return Path(root).expanduser() if root else cache_dir() / "backbones"


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise HeadstartError(
            f"{name!r} cannot name a backbone",
            fix="use letters, digits, '.', '_' and '-' (no '/', ':' or '@'), at most 100 characters",
        )
    return name


def read_card(folder: Path) -> dict[str, Any] | None:
    """The card of an adapted backbone folder, or None when the folder holds none (or a broken one)."""
    try:
        card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) and card.get("family") == FAMILY else None


def _folders() -> list[tuple[Path, dict[str, Any]]]:
    home = backbones_home()
    if not home.is_dir():
        return []
    out = []
    for folder in sorted(home.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():  # temp folders of a write in progress
            continue
        card = read_card(folder)
        if card is not None and card.get("name") == folder.name:
            out.append((folder, card))
    return out


def describe(card: dict[str, Any]) -> str:
    ppl = (card.get("perplexity") or {}).get("domain") or {}
    before, after = ppl.get("before"), ppl.get("after")
    change = f", held-out perplexity {before:.3g} -> {after:.3g}" if before and after else ""
    parent = (card.get("parent") or {}).get("name", "?")
    texts = (card.get("data") or {}).get("texts", "?")
    return f"{parent} adapted ({card.get('objective', '?').upper()}) on {texts} texts{change}"


@register_spec_source
def adapted_specs() -> list[BackboneSpec]:
    """One spec per adapted backbone in the home folder (read on every call: a few small JSON files)."""
    specs = []
    for folder, card in _folders():
        specs.append(
            BackboneSpec(
                name=card["name"],
                family=FAMILY,
                builder=lambda f=folder, **kw: build_adapted(f, **kw),
                embed_dim=int(card.get("embed_dim") or 0),
                license=str(card.get("license") or "unknown"),
                description=describe(card),
                weights_file=lambda f=folder: f / WEIGHTS_FILE if (f / WEIGHTS_FILE).is_file() else None,
            )
        )
    return specs


@register_folder(lambda folder: read_card(folder) is not None, order=10)
def _adapted_folder(folder: Path, ref: str, *, pretrained: bool = True, **kwargs: Any) -> Any:
    return build_adapted(folder, pretrained=pretrained, ref=ref, **kwargs)


def build_adapted(
    folder: Path,
    *,
    pretrained: bool = True,
    weights: Path | None = None,
    ref: str | None = None,
    **kwargs: Any,
) -> Any:
    """The adapted backbone in `folder` through the text loaders, its card carrying the parent. `ref` is
    the name to record when the folder is reached by its path rather than by its name."""
    from headstart.backbones.hf_text import TextSource, create_hf_text_backbone
    from headstart.backbones.llm import create_decoder_backbone

    card = read_card(folder)
    if card is None:
        raise HeadstartError(
            f"{folder} holds no adapted backbone card ({CARD_FILE})", fix="run headstart adapt"
        )
    if weights is not None:
        raise HeadstartError(f"{card['name']} takes no local weights file", fix="adapt again instead")
    name = ref or card["name"]
    weights_path = folder / WEIGHTS_FILE
    parent = card.get("parent") or {}
    expected = card.get("weights_sha256")
    if pretrained:
        actual = sha256_file_memo(weights_path) if weights_path.is_file() else None
        if actual != expected:
            raise HeadstartError(
                f"{weights_path} does not match the sha256 in its card ({str(actual)[:12]}… != "
                f"{str(expected)[:12]}…)",
                fix=f"adapt {parent.get('name', 'the parent')} again (its folder changed since)",
            )
    data = card.get("data") or {}
    pretraining = (
        f"{parent.get('pretraining_data', 'see the parent')}; then {str(card.get('objective')).upper()} "
        f"on {data.get('texts')} texts of {data.get('path')} (sha256 {str(data.get('sha256'))[:12]}…)"
    )
    source = f"headstart adapt of {parent.get('name')} ({folder})"
    if card.get("kind") == "decoder":
        bb = create_decoder_backbone(folder, pretrained=pretrained, name=name, **kwargs)
        bb.card.source, bb.card.version = source, str(card.get("created", "local"))
        bb.card.license = str(card.get("license") or "unknown")
        bb.card.paper = str(parent.get("paper") or "see the parent")
        bb.card.pretraining_data = pretraining if pretrained else "none (random init)"
    else:
        info = TextSource(
            name=name,
            source=source,
            version=str(card.get("created", "local")),
            license=str(card.get("license") or "unknown"),
            pretraining_data=pretraining,
            paper=str(parent.get("paper") or "see the parent"),
            sha256=expected,
        )
        bb = create_hf_text_backbone(str(folder), pretrained=pretrained, name=name, info=info, **kwargs)
    bb.card.family = f"{FAMILY}:{bb.card.family}"
    bb.card.parent = dict(parent)
    bb.card.extra["objective"] = card.get("objective")
    bb.card.extra["perplexity"] = card.get("perplexity")
    return bb
