"""What `--strategy` names: a built-in recipe (`head`, `partial:N`, `lora:R`, `views:K`, `prompt-tuning:N`,
...), a recipe file, a dict or a `Recipe`, parsed and checked against the backbone's layer groups before any
training starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.recipes import built_in
from headstart.recipes.built_in import BUILT_IN
from headstart.recipes.schema import MAX_VIEWS, MAX_VIRTUAL_TOKENS, Recipe, load_recipe_file


def get_recipe(strategy: str | Recipe | dict[str, Any] | Path, n_groups: int) -> Recipe:
    """A built-in recipe by name, a Recipe, a dict, or a .json/.yaml file."""
    if isinstance(strategy, Recipe):
        strategy.validate()
        return strategy
    if isinstance(strategy, dict):
        return Recipe.from_dict(strategy)
    s = str(strategy)
    if s.endswith((".json", ".yaml", ".yml")):
        return load_recipe_file(Path(s))
    if s == "head":
        return built_in.head(n_groups)
    if s == "multi-depth":
        return built_in.multi_depth(n_groups)
    if s == "views" or s.startswith("views:"):
        k = s.partition(":")[2] or str(built_in.DEFAULT_VIEWS)
        if not k.isdigit() or not 1 <= int(k) <= MAX_VIEWS:
            raise HeadstartError(
                f"bad strategy {s!r}",
                fix=f"write views:K with K from 1 to {MAX_VIEWS} augmented views per image, e.g. views:4",
            )
        return built_in.views(int(k))
    if s.startswith("partial"):
        _, _, n = s.partition(":")
        if not n.isdigit() or int(n) < 1:
            raise HeadstartError(
                f"bad strategy {s!r}", fix="write partial:N with N >= 1 top groups, e.g. partial:2"
            )
        if int(n) > n_groups:
            raise HeadstartError(
                f"{s}: the backbone has only {n_groups} layer groups",
                fix=f"use partial:1 .. partial:{n_groups}",
            )
        return built_in.partial(int(n))
    if s.startswith("lora:"):
        r = s.partition(":")[2]
        if not r.isdigit() or int(r) < 1:
            raise HeadstartError(f"bad strategy {s!r}", fix="write lora:R with the rank R >= 1, e.g. lora:16")
        return built_in.lora(int(r))
    method, _, n = s.partition(":")
    if method in built_in.PROMPT_TOKENS:
        if n and (not n.isdigit() or not 1 <= int(n) <= MAX_VIRTUAL_TOKENS):
            raise HeadstartError(
                f"bad strategy {s!r}",
                fix=f"write {method}:N with N from 1 to {MAX_VIRTUAL_TOKENS} virtual tokens, e.g. {method}:8",
            )
        return built_in.learned_tokens(method, int(n) if n else None)
    makers = {
        "full": built_in.full,
        "discriminative": built_in.discriminative,
        "gradual": lambda: built_in.gradual(n_groups),
        "lp-ft": built_in.lp_ft,
        "scratch": built_in.scratch,
        "lora": built_in.lora,
        "setfit": built_in.setfit,
    }
    if s not in makers:
        import difflib

        close = difflib.get_close_matches(s, [*makers, "head", "partial:2"], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise HeadstartError(
            f"unknown strategy {s!r}",
            fix=f"{hint}built in: {', '.join(BUILT_IN)}, or a recipe .json/.yaml file",
        )
    return makers[s]()
