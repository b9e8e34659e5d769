"""The recipe schema: `Phase`, the adapter specs (`LoraSpec`, `PromptSpec`) and `Recipe` (frozen dataclasses),
their checks, and recipe files.

A file or dict is validated against the JSON schema pydantic derives from these dataclasses (types, allowed
values, no unknown keys; `recipe_schema()`, printed by `headstart recipes --schema`), then by `validate()`
(ranges). A recipe with an `adapter` trains its vectors instead of the groups' own weights: low-rank
adapters inside the groups its phases train (LoraSpec, `method: lora`), or learned tokens (PromptSpec,
`method: prompt-tuning` or `prefix-tuning`). `method` is the adapter's kind, as run.json records it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

from headstart.errors import HeadstartError

Schedule = Literal["cosine", "onecycle", "constant"]
HeadInit = Literal["keep", "zeros", "probe"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
HEAD_INITS: tuple[str, ...] = get_args(HeadInit)
# Unknown keys in a recipe file are refused (a misspelt field would otherwise be silently ignored).
_STRICT_KEYS = {"extra": "forbid"}
# More augmented views than this per image buy nothing a linear head can use and cost a forward each.
MAX_VIEWS = 64
MAX_SOUP = 16  # each kept evaluation is a copy of the weights in memory


@dataclass(frozen=True)
class Phase:
    """One stage of training. `train_top`: number of top layer groups that train (int) or "all"."""

    __pydantic_config__ = _STRICT_KEYS

    name: str
    train_top: int | Literal["all"] = 0
    epochs: int = 5
    lr: float = 1e-3  # the head's learning rate
    # Pretrained groups learn 10x slower than the head by default, so they are adapted, not washed out.
    backbone_lr_ratio: float = 0.1
    lr_decay: float = 1.0  # per group of depth below the top trainable group (ULMFiT uses 1/2.6)
    schedule: Schedule = "cosine"
    warmup: float = 0.1  # fraction of the phase's steps
    weight_decay: float = 0.01
    patience: int | None = 3  # epochs without a better val metric before the phase stops
    augment: bool | None = None  # None: on when any backbone group trains, off for head-only phases
    # "probe": start the head from the closed-form linear probe on cached embeddings (LP of LP-FT);
    # "keep": continue from the current head; "zeros": a fresh zero head.
    head_init: HeadInit = "keep"
    # Re-estimate trained BatchNorm statistics over the training set after each epoch ("precise BN"):
    # with few steps per epoch, running averages lag weights that move fast (from-scratch training).
    recalibrate_bn: bool = False
    # BatchNorm in trained groups: "frozen" normalises with the pretrained running statistics and leaves
    # them alone (only its scale and shift train), as Keras advises for fine-tuning: with a few dozen
    # images per batch from another domain, batch statistics differ so much from the pretrained ones that
    # the network trains on features it never shows at inference. "batch" uses batch statistics (needed
    # from scratch). None: frozen for pretrained recipes, batch for scratch.
    batchnorm: Literal["frozen", "batch"] | None = None
    # Regularisers peers ship as defaults, off here: on emoji they tied plain LP-FT (benchmarks/levers.py).
    # Cross-entropy against 1 - s on the label and s spread over every class (Szegedy et al. 2016).
    label_smoothing: float = 0.0
    # Mixup (Zhang et al. 2018): each batch's inputs (raw images, or the activations entering the first
    # trained group) mixed with a shuffled copy of the batch, lambda ~ Beta(a, a); the loss mixes both
    # labels alike. 0: off. Image backbones, cross-entropy objective.
    mixup: float = 0.0
    # An exponential moving average of the weights this phase trains, decay `ema` per step (e.g. 0.99;
    # warmed up over the first steps), evaluated and kept instead of the weights themselves. 0: off
    # (headstart.train.averaging).
    ema: float = 0.0
    # Stochastic depth (drop-connect, drop path) in the trained groups, as the rate of the deepest block
    # (shallower blocks get less, linearly, as timm's drop_path_rate and EfficientNet define it). None:
    # the network's own (0.2 for EfficientNet-Lite). 0 makes the train-mode forward the one the probe's
    # head was fit on: with it on, digits' probe head has train loss 1.29 at a zero rate, 0.37 off.
    # Backbones without stochastic depth ignore it (the run says so). Not 0 by default: docs/verdicts.md.
    drop_path: float | None = None

    def n_trainable(self, n_groups: int) -> int:
        return n_groups if self.train_top == "all" else min(int(self.train_top), n_groups)

    def uses_augment(self, n_groups: int) -> bool:
        return self.augment if self.augment is not None else self.n_trainable(n_groups) > 0

    def validate(self) -> None:
        if self.train_top != "all" and (not isinstance(self.train_top, int) or self.train_top < 0):
            raise HeadstartError(
                f"phase {self.name!r}: train_top must be an integer >= 0 or 'all', got {self.train_top!r}"
            )
        if self.schedule not in SCHEDULES:
            raise HeadstartError(
                f"phase {self.name!r}: unknown schedule {self.schedule!r}", fix=f"use {SCHEDULES}"
            )
        if self.head_init not in HEAD_INITS:
            raise HeadstartError(
                f"phase {self.name!r}: unknown head_init {self.head_init!r}", fix=f"use {HEAD_INITS}"
            )
        if self.batchnorm not in (None, "frozen", "batch"):
            raise HeadstartError(
                f"phase {self.name!r}: unknown batchnorm {self.batchnorm!r}", fix="use 'frozen' or 'batch'"
            )
        if self.epochs < 0 or self.lr <= 0:
            raise HeadstartError(f"phase {self.name!r}: epochs must be >= 0 and lr > 0")
        if self.drop_path is not None and not 0.0 <= self.drop_path < 1.0:
            raise HeadstartError(
                f"phase {self.name!r}: drop_path must be in [0, 1), got {self.drop_path}",
                fix="e.g. drop_path: 0 (off) or 0.1",
            )
        if not 0.0 <= self.label_smoothing < 1.0 or self.mixup < 0.0 or not 0.0 <= self.ema < 1.0:
            raise HeadstartError(
                f"phase {self.name!r}: label_smoothing and ema must be in [0, 1) and mixup >= 0, got "
                f"{self.label_smoothing}, {self.ema}, {self.mixup}",
                fix="e.g. label_smoothing: 0.1, ema: 0.99, mixup: 0.2",
            )


@dataclass(frozen=True)
class LoraSpec:
    """LoRA (Hu et al. 2021): W x + (alpha / r) B A x with A (r, in), B (out, r), B starting at zero.

    `target_modules`: names (suffixes) of the linear layers to adapt; None chooses them per architecture
    (every attention projection: headstart.adapters.lora.default_targets), "all-linear" adapts every linear
    layer inside the trained groups.
    """

    __pydantic_config__ = _STRICT_KEYS

    method: Literal["lora"] = "lora"
    r: int = 8  # rank of the update
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.05  # on the adapter's input, training only
    target_modules: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules) if self.target_modules is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraSpec:
        spec: LoraSpec = _validated(LoraSpec, _split_targets(d), "LoRA adapter")
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.method != "lora":
            raise HeadstartError(f"unknown adapter method {self.method!r}", fix="use method: lora")
        if not isinstance(self.r, int) or self.r < 1:
            raise HeadstartError(f"LoRA rank must be an integer >= 1, got {self.r!r}", fix="e.g. r: 8")
        if self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise HeadstartError(
                f"LoRA alpha must be > 0 and dropout in [0, 1), got {self.alpha}, {self.dropout}"
            )
        if self.target_modules is not None and not self.target_modules:
            raise HeadstartError("LoRA target_modules is empty", fix="name modules, or leave it out")


@dataclass(frozen=True)
class PromptSpec:
    """Learned tokens, no weight of the backbone changes (headstart.adapters.prompt): `prompt-tuning`, N
    vectors prepended to the input of the first transformer layer (Lester et al. 2021); `prefix-tuning`, N
    key and value vectors prepended in every attention layer (Li & Liang 2021). Text backbones only."""

    __pydantic_config__ = _STRICT_KEYS

    method: Literal["prompt-tuning", "prefix-tuning"]
    n_tokens: int = 20  # virtual tokens (prompt) or prefix positions per layer (prefix)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if not isinstance(self.n_tokens, int) or not 1 <= self.n_tokens <= MAX_VIRTUAL_TOKENS:
            raise HeadstartError(
                f"{self.method}: n_tokens must be an integer from 1 to {MAX_VIRTUAL_TOKENS}, "
                f"got {self.n_tokens!r}",
                fix=f"e.g. {self.method}:20",
            )


# Every virtual token costs attention on every text; beyond a few hundred they outnumber the text's own.
MAX_VIRTUAL_TOKENS = 256
AdapterSpec = LoraSpec | PromptSpec


def adapter_spec(d: dict[str, Any]) -> AdapterSpec:
    """An adapter spec from its dict form (run.json's adapter, a recipe file's `adapter`), by `method`."""
    fields = {
        "lora": ("method", "r", "alpha", "dropout", "target_modules"),
        "prompt-tuning": ("method", "n_tokens"),
        "prefix-tuning": ("method", "n_tokens"),
    }
    method = d.get("method", "lora")
    if method not in fields:
        raise HeadstartError(f"unknown adapter method {method!r}", fix=f"use one of {list(fields)}")
    kept = {k: d[k] for k in fields[method] if k in d}
    if method == "lora":
        return LoraSpec.from_dict(kept)
    spec: PromptSpec = _validated(PromptSpec, kept, f"{method} adapter")
    spec.validate()
    return spec


@dataclass(frozen=True)
class Recipe:
    __pydantic_config__ = _STRICT_KEYS

    name: str
    phases: tuple[Phase, ...]
    pretrained: bool = True  # False: the same architecture from random init (the scratch baseline)
    batch_size: int = 32
    description: str = ""
    # A parameter-efficient method: only its weights (and the head) train, the base weights stay frozen.
    adapter: LoraSpec | PromptSpec | None = None
    # The features the head reads: "last", the backbone's embedding; "all-depths", the pooled output of
    # every layer group side by side (Head2Toe; the backbone runs as `depths:<name>`). Head-only recipes.
    pooled: Literal["last", "all-depths"] = "last"
    # Augmented views per training image (headstart.views): each is embedded once by the frozen backbone
    # (cached) and the head trains on the originals plus their views; val, test and predict see originals
    # only, so the run predicts as a probe does. 0: none. Head-only recipes, image data.
    views: int = 0
    # The loss of the phases that train: "cross-entropy" on the labels, or "contrastive" (SetFit: cosine
    # similarity of pairs drawn from the labels; headstart.train.setfit), which moves only the encoder, so
    # a contrastive recipe ends with a `head_init: probe` phase that fits the head on the tuned embeddings.
    objective: Literal["cross-entropy", "contrastive"] = "cross-entropy"
    # A greedy soup (Wortsman et al. 2022) of the `soup` best evaluations of the fit, returned when it
    # scores at least as well as the best alone. 0: off; else at least 2 (headstart.train.averaging).
    soup: int = 0

    def label_regularisers(self) -> list[str]:
        """The regularisers of class labels some phase uses (label_smoothing, mixup): classification's."""
        return [f for f in ("label_smoothing", "mixup") if any(getattr(p, f) for p in self.phases)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["phases"] = [asdict(p) for p in self.phases]
        d["adapter"] = self.adapter.to_dict() if self.adapter is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | Path | None = None) -> Recipe:
        """A recipe from its dict form (a parsed .json/.yaml file: `source` names it in errors)."""
        if isinstance(d.get("adapter"), dict):
            # `method` tells the kind; a LoRA spec may leave it out (written before there were kinds)
            d = {**d, "adapter": _split_targets({"method": "lora", **d["adapter"]})}
        r: Recipe = _validated(Recipe, d, f"recipe {source}" if source else "recipe")
        r.validate()
        return r

    def validate(self) -> None:
        if not self.phases:
            raise HeadstartError(f"recipe {self.name!r} has no phases")
        for p in self.phases:
            p.validate()
        if self.adapter is not None:
            self.adapter.validate()
        if not isinstance(self.views, int) or not 0 <= self.views <= MAX_VIEWS:
            raise HeadstartError(
                f"recipe {self.name!r}: views must be an integer from 0 to {MAX_VIEWS}, got {self.views!r}",
                fix="e.g. views: 4 (augmented copies of each training image), or 0 for none",
            )
        if not isinstance(self.soup, int) or self.soup == 1 or not 0 <= self.soup <= MAX_SOUP:
            raise HeadstartError(
                f"recipe {self.name!r}: soup must be 0 (off) or an integer from 2 to {MAX_SOUP}, got "
                f"{self.soup!r}",
                fix="e.g. soup: 3 (the greedy soup of the 3 best epochs)",
            )
        if self.objective == "contrastive" and self.phases[-1].head_init != "probe":
            raise HeadstartError(
                f"recipe {self.name!r}: a contrastive objective trains no usable head",
                fix="end the recipe with a phase of head_init: probe (train_top 0, epochs 0), as setfit does",
            )
        frozen_only = [f"pooled={self.pooled!r}"] if self.pooled != "last" else []
        frozen_only += [f"views={self.views}"] if self.views else []
        if frozen_only and any(p.train_top != 0 or p.epochs != 0 for p in self.phases):
            raise HeadstartError(
                f"recipe {self.name!r}: {' and '.join(frozen_only)} features feed a head on the frozen "
                "backbone",
                fix='give every phase train_top 0 and epochs 0, or use pooled "last" and views 0',
            )

    def with_overrides(
        self, *, epochs: int | None = None, lr: float | None = None, batch_size: int | None = None
    ) -> Recipe:
        """Scale every phase to `epochs` total (proportionally) and/or set the head lr of every phase."""
        phases = list(self.phases)
        if epochs is not None:
            total = sum(p.epochs for p in phases) or 1
            phases = [
                replace(p, epochs=max(1, round(p.epochs * epochs / total)) if p.epochs else 0) for p in phases
            ]
        if lr is not None:
            base = phases[0].lr if phases else lr
            phases = [replace(p, lr=lr * p.lr / base) for p in phases]
        return replace(self, phases=tuple(phases), batch_size=batch_size or self.batch_size)

    def summary(self) -> str:
        parts = []
        for p in self.phases:
            what = (
                "head"
                if p.train_top == 0
                else f"top {p.train_top} groups + head"
                if p.train_top != "all"
                else "all"
            )
            if self.adapter is not None and p.train_top != 0:
                where = "all groups" if p.train_top == "all" else f"the top {p.train_top} groups"
                kind = "LoRA" if isinstance(self.adapter, LoraSpec) else self.adapter.method
                what = f"{kind} in {where} + head"
            parts.append(
                f"{p.name}: {what}, {p.epochs} ep, lr {p.lr:g}" + (f", EMA {p.ema:g}" if p.ema else "")
            )
        if isinstance(self.adapter, PromptSpec):
            parts.append(f"{self.adapter.n_tokens} virtual tokens")
        elif self.adapter is not None:
            a = self.adapter
            targets = ",".join(a.target_modules) if a.target_modules else "per architecture"
            parts.append(f"r {a.r}, alpha {a.alpha:g}, dropout {a.dropout:g}, targets {targets}")
        if self.views:
            parts.append(f"{self.views} augmented views per training image")
        if self.soup:
            parts.append(f"greedy soup of the {self.soup} best evaluations")
        return "; ".join(parts)


def load_recipe_file(path: Path) -> Recipe:
    if not path.is_file():
        raise HeadstartError(f"recipe file not found: {path}", fix="check the path")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            d = json.loads(text)
        else:
            import yaml

            d = yaml.safe_load(text)
    except Exception as e:
        raise HeadstartError(f"cannot parse recipe {path}: {e}", fix="check the JSON/YAML syntax") from e
    if not isinstance(d, dict):
        raise HeadstartError(f"recipe {path} must be a mapping with name and phases", fix=SCHEMA_FIX)
    return Recipe.from_dict(d, source=path)


SCHEMA_FIX = "see the fields in `headstart recipes --schema` and examples in `headstart recipes --json`"


def _split_targets(adapter: dict[str, Any]) -> dict[str, Any]:
    """target_modules may be written as one comma-separated string ("q_proj,v_proj")."""
    t = adapter.get("target_modules")
    return {**adapter, "target_modules": t.split(",")} if isinstance(t, str) else adapter


@functools.cache
def _adapter(cls: type) -> Any:
    from pydantic import TypeAdapter  # imported on first use: `headstart --help` stays instant

    return TypeAdapter(cls)


def _validated(cls: type, d: Any, what: str) -> Any:
    """`d` as an instance of the dataclass `cls`, checked by pydantic against the recipe schema."""
    from pydantic import ValidationError

    try:
        return _adapter(cls).validate_python(d)
    except ValidationError as e:
        unknown = ("unexpected_keyword_argument", "extra_forbidden")
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'top level'}: "
            + ("unknown field (misspelt?)" if err["type"] in unknown else err["msg"])
            for err in e.errors()
        )
        raise HeadstartError(f"not a valid {what}: {problems}", fix=SCHEMA_FIX) from None


def recipe_schema() -> dict[str, Any]:
    """The JSON schema of a recipe file (what `--strategy my.yaml` accepts)."""
    schema: dict[str, Any] = _adapter(Recipe).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = (
        "A headstart fine-tuning recipe: ordered phases over the backbone's layer groups. "
        "Ranges checked beyond the schema: train_top >= 0 or 'all', epochs >= 0, lr > 0, at least one phase."
    )
    return schema
