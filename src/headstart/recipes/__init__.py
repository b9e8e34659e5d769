"""Strategies as data: a recipe is an ordered list of phases over the backbone's layer groups.

One training loop (headstart.train) runs any recipe. A phase says how many of the top layer groups train
(0 = head only, "all" = every group), the head's learning rate and how the groups' rates fall with depth
(discriminative rates: group lr = head lr x backbone_lr_ratio x decay^(depth from the top)), epochs,
schedule, weight decay and early-stopping patience.

Built in by name: head, partial:N, full, discriminative, gradual, lp-ft, scratch, lora (lora:R),
prompt-tuning (prompt-tuning:N), prefix-tuning (prefix-tuning:N). Users write
their own in YAML/JSON (same fields as `Recipe.to_dict()`; `recipe_schema()`, printed by `headstart recipes
--schema`, is its JSON schema) or Python.

- `schema.py`: the dataclasses, their validation, recipe files and the JSON schema;
- `built_in.py`: one maker per built-in recipe;
- `strategy.py`: `get_recipe`, what a `--strategy` value names (a built-in, `partial:N`, `lora:R`, a file).
"""

from headstart.recipes.built_in import BUILT_IN
from headstart.recipes.schema import (
    HEAD_INITS,
    SCHEDULES,
    SCHEMA_FIX,
    AdapterSpec,
    HeadInit,
    LoraSpec,
    Phase,
    PromptSpec,
    Recipe,
    Schedule,
    adapter_spec,
    load_recipe_file,
    recipe_schema,
)
from headstart.recipes.strategy import get_recipe

__all__ = [
    "BUILT_IN",
    "HEAD_INITS",
    "SCHEDULES",
    "SCHEMA_FIX",
    "AdapterSpec",
    "HeadInit",
    "LoraSpec",
    "Phase",
    "PromptSpec",
    "Recipe",
    "Schedule",
    "adapter_spec",
    "get_recipe",
    "load_recipe_file",
    "recipe_schema",
]
