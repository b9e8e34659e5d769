"""Verb configs: one dataclass per verb that the Python API and the CLI both read, so each default lives once.

A field's metadata is its command-line form (help text, flag name, how the text parses): `add_options`
turns a config class into argparse arguments and `from_args` turns the parsed Namespace back into the
config. Every verb declares its options so (headstart.commands.verb generates its parser); a verb adopts it
in a few lines:

    @dataclass
    class MyConfig:
        "what the verb does (its help; later paragraphs: its description)"

        data: Path = option(help="what to read")                # no default: a positional argument
        seed: int = option(0, help="random seed")               # --seed, an int (from the annotation)
        cache: bool = option(True, help="do not use the cache")  # True by default: the flag is --no-cache

    @verb(MyConfig)                                 # headstart.commands: the parser of `headstart my`
    def cmd_my(args): cfg = from_args(MyConfig, args)   # or api_options(args, MyConfig) as keywords

Options the CLI does not offer (Python objects, `save`) are fields with `cli=False`; what only the CLI reads
(--json) has `api=False`. The options many verbs share are made by `device_option()`, `precision_option()`,
`backend_option()` and `json_option()`. This module stays cheap to import: `headstart --help` builds every
parser from it.
"""

import argparse
import types
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from headstart.data.targets import TASKS
from headstart.errors import HeadstartError
from headstart.frozen_precision import FROZEN_PRECISION_HELP, FROZEN_PRECISIONS, check_frozen_precision
from headstart.imbalance import IMBALANCE_HELP, check_mode
from headstart.imbalance import MODES as IMBALANCE_MODES
from headstart.recipes import Recipe
from headstart.train.engine import (
    BACKEND_HELP,
    DEVICE_HELP,
    PRECISION_HELP,
    PRECISIONS,
    check_engine,
    device_arg,
)

ConfigT = TypeVar("ConfigT")


def option(
    default: Any = MISSING,
    *,
    help: str = "",
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    off_help: str | None = None,
    cli: bool = True,
    api: bool = True,
    required: bool = False,
    positional: bool = False,
    nargs: str | None = None,
    metavar: str | None = None,
    action: str | None = None,
) -> Any:
    """A config field with its command-line form.

    flag: the option's name (default `--field-name`; `--no-field-name` for a bool that defaults to True).
    parse: how the text becomes a value (default: from the annotation: int, float, str or Path).
    off_help: the help of `--no-NAME` for a `bool | None` field (a --NAME / --no-NAME pair, None = unset).
    cli: False for options of the Python API only; api: False for what only the command line reads
    (--json, or what the command passes on itself): `api_options` leaves it out.
    required: a --NAME the command line must give (the field has no default; without `required`, a field
    without default is a positional argument). positional: a positional argument with a default (with
    `nargs` "?" or "*"). nargs, metavar, action ("append"): as argparse's.
    """
    meta = {"help": help, "flag": flag, "parse": parse, "choices": choices, "off_help": off_help, "cli": cli}
    meta |= {"api": api, "required": required, "positional": positional}
    meta |= {"nargs": nargs, "metavar": metavar, "action": action}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


def _members(tp: Any) -> tuple[Any, ...]:
    """The non-None members of a union annotation (the annotation itself otherwise)."""
    if isinstance(tp, types.UnionType) or get_origin(tp) is Union:
        return tuple(a for a in get_args(tp) if a is not type(None))
    return (tp,)


def _parser(name: str, tp: Any, meta: Any) -> Callable[[str], Any] | None:
    if meta["parse"] is not None:
        return meta["parse"]
    members = _members(tp)
    if Path in members:
        return Path
    simple = [m for m in members if m in (int, float, str)]
    if len(simple) != 1:
        raise TypeError(f"option {name!r}: give parse= (cannot tell how to read {tp!r} from text)")
    return simple[0]


def cli_fields(config: type, *, own_first: bool = False) -> list[Field[Any]]:
    """The fields of `config` the command line offers, in order; `own_first`: those `config` declares
    itself before those it inherits (a shared group of flags that closes the list)."""
    listed = [f for f in fields(config) if f.metadata.get("cli", True)]
    if own_first:  # (a field `config` redeclares keeps its inherited place)
        inherited = {f.name for base in config.__mro__[1:] if is_dataclass(base) for f in fields(base)}
        listed.sort(key=lambda f: f.name in inherited)
    return listed


def add_options(
    parser: argparse.ArgumentParser, config: type, *, exclude: tuple[str, ...] = (), own_first: bool = False
) -> None:
    """One argparse argument per CLI field of `config`, with the field's default and help."""
    # The annotations as types, also where a module has `from __future__ import annotations`.
    hints = get_type_hints(config)
    for f in cli_fields(config, own_first=own_first):
        if f.name not in exclude:
            _add_option(parser, f, hints[f.name])


def _add_option(parser: argparse.ArgumentParser, f: Field[Any], tp: Any) -> None:
    meta = f.metadata
    name = meta["flag"] or "--" + f.name.replace("_", "-")
    if bool in _members(tp):
        if f.default is None:  # tri-state: --NAME / --no-NAME, unset leaves the choice to the verb
            pair = parser.add_mutually_exclusive_group()
            pair.add_argument(name, dest=f.name, action="store_true", default=None, help=meta["help"])
            pair.add_argument("--no-" + name[2:], dest=f.name, action="store_false", help=meta["off_help"])
        elif f.default:
            flag = meta["flag"] or "--no-" + f.name.replace("_", "-")
            parser.add_argument(flag, dest=f.name, action="store_false", help=meta["help"])
        else:
            required = {"required": True} if meta.get("required") else {}
            parser.add_argument(name, dest=f.name, action="store_true", help=meta["help"], **required)
        return
    kw: dict[str, Any] = {"type": _parser(f.name, tp, meta), "help": meta["help"] or None}
    for key in ("choices", "nargs", "metavar", "action"):
        if meta.get(key):
            kw[key] = meta[key]
    if meta.get("positional"):
        parser.add_argument(f.name, default=f.default, **kw)
    elif f.default is MISSING and not meta.get("required"):  # a positional argument
        parser.add_argument(f.name, **kw)
    else:
        # Named after the flag, not the field (choices show themselves).
        if not meta["choices"]:
            kw.setdefault("metavar", name[2:].upper().replace("-", "_"))
        given = {"required": True} if f.default is MISSING else {"default": f.default}
        parser.add_argument(name, dest=f.name, **given, **kw)


def from_args(config: type[ConfigT], args: argparse.Namespace, **extra: Any) -> ConfigT:
    """The config of a parsed command line; `extra` sets what the CLI decides itself (e.g. progress)."""
    given = {f.name: getattr(args, f.name) for f in fields(config) if hasattr(args, f.name)}  # type: ignore[arg-type]
    return config(**{**given, **extra})


# -- options many verbs share ------------------------------------------------------------------------------
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_budget(text: str) -> float:
    """'600', '90s', '10m', '1.5h' -> seconds."""
    t = text.strip().lower()
    scale = _UNITS.get(t[-1:])
    try:
        value = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds or a duration like 90s, 10m, 1h") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the budget must be positive")
    return value


def device_option() -> Any:
    """--device: where the verb's network runs (checked before any work)."""
    return option("auto", parse=device_arg, help=DEVICE_HELP)


def precision_option() -> Any:
    """--precision: what a verb that trains trains in."""
    return option("auto", choices=PRECISIONS, help=PRECISION_HELP)


def backend_option() -> Any:
    """--backend: what runs the frozen backbone."""
    return option("auto", choices=("auto", "onnx", "torch"), help=BACKEND_HELP)


def json_option(help: str = "") -> Any:
    """--json: the result as JSON (the command line's alone)."""
    return option(False, api=False, help=help)


# -- the verbs --------------------------------------------------------------------------------------------
@dataclass
class RunConfig:
    """What every verb that makes a run from labeled data takes (probe, fit)."""

    data: str | Path = option(
        help="image folder (one sub-folder per class, or train/ val/ test/) "
        "or a CSV/JSONL manifest with path,label[,split]"
    )
    backbone: str = option("efficientnet_lite0", help="registered name, hf:<id-or-dir>, timm:<name>")
    out: str | Path | None = option(None, help="run folder (default: runs/<time>-<verb>-<backbone>)")
    overwrite: bool = option(False, help="replace an existing --out folder")
    seed: int = option(0, help="seed of the split and of training")
    val: float = option(0.15, help="validation fraction when splitting")
    test: float = option(0.15, help="test fraction when splitting")
    strict: bool = option(False, help="fail on any unreadable file instead of skipping it")
    device: str = device_option()
    max_pixels: int | None = option(None, help="skip images larger than this (default 64,000,000)")
    input_size: int | None = option(
        None,
        help="feed an image backbone N-pixel inputs instead of its own size (smaller: cheaper steps; the "
        "run records the backbone as size:N:B)",
    )
    imbalance: str = option("auto", choices=IMBALANCE_MODES, help=IMBALANCE_HELP)
    task: str = option(
        "classify",
        choices=TASKS,
        help="classify (one class per item) | multilabel (labels a|b) | regress (a numeric label) | tag "
        "(CoNLL token tags) | generate (JSONL prompt/response pairs, decoder LMs)",
    )
    save: bool = option(True, cli=False, help="write the run folder (False: only return the report)")
    progress: bool = option(True, cli=False, help="progress bars (the CLI turns them off for --json)")

    def shared(self) -> dict[str, Any]:
        """The options every run verb takes, as keyword arguments for another verb's config."""
        return {f.name: getattr(self, f.name) for f in fields(RunConfig)}


@dataclass
class ProbeConfig(RunConfig):
    """`probe`: the linear head on cached embeddings of the frozen backbone (fit's `head` recipe)."""

    C: float | None = option(None, help="fix the inverse L2 strength (default: chosen on val)")
    knn_k: int = option(5, cli=False, help="neighbours of the kNN accuracy reported beside the probe's")
    backend: str = backend_option()
    batch_size: int = option(32, help="inputs per forward pass when embedding")
    cache: bool = option(True, help="do not read or write the embedding cache")
    precision: str = option("fp32", choices=FROZEN_PRECISIONS, help=FROZEN_PRECISION_HELP)

    def __post_init__(self) -> None:
        from headstart.features import forward_device

        check_frozen_precision(self.precision, self.backend)
        check_mode(self.imbalance)
        forward_device(self.backend, self.device)  # the device is here, before any data is read


def parse_lr(text: str) -> float | str:
    """--lr: a number, or 'auto' (a range test on the cached embeddings)."""
    return text if text == "auto" else float(text)


@dataclass
class FitConfig(RunConfig):
    """`fit`: a strategy (recipe) trained by the one loop; `head` runs as `probe` does, on cached features."""

    overwrite: bool = option(False, help="replace the run in --out, or start an interrupted one over")
    strategy: str | Recipe | dict[str, Any] = option(
        "lp-ft",
        help="head | multi-depth | views | views:K | partial:N | full | discriminative | gradual | lp-ft | "
        "setfit | scratch | lora | lora:R | a recipe .json/.yaml (schema: `headstart recipes --schema`)",
    )
    lora_r: int | None = option(None, help="LoRA rank (strategy lora; default 8)")
    lora_alpha: float | None = option(None, help="LoRA scale alpha (default 2 x rank)")
    lora_dropout: float | None = option(None, help="dropout on the LoRA input (default 0.05)")
    lora_targets: str | None = option(
        None,
        help="comma-separated linear layer names to adapt (e.g. q_proj,v_proj), or all-linear; default: "
        "every attention projection of the architecture",
    )
    resume: bool = option(
        False,
        help="continue the interrupted run in --out from its last checkpoint (same data and options; "
        "refused for a finished run)",
    )
    epochs: int | None = option(None, help="total epochs (the recipe's phases are scaled to it)")
    lr: float | str | None = option(
        None, parse=parse_lr, help="head learning rate, or 'auto' (range test); groups follow the recipe"
    )
    batch_size: int | None = option(None, help="training batch size (default: the recipe's)")
    augment: bool | None = option(
        None, help="augment every phase", off_help="no augmentation: enables frozen-prefix caching"
    )
    prefix_cache: bool = option(True, help="always run the frozen groups forward")
    bf16: bool = option(False, help="the same as --precision bf16")
    precision: str = precision_option()
    budget_s: float | None = option(
        None,
        flag="--budget",
        parse=parse_budget,
        help="stop training after this many seconds (best weights kept)",
    )
    unlabeled: str | Path | None = option(
        None, cli=False, help="inputs without labels joining the training split (for distillation)"
    )
    target_unlabeled: str | Path | None = option(
        None,
        help="unlabeled inputs from the deployment domain: domain-adversarial training (DANN) aligns the "
        "features of the labeled data with them",
    )
    domain_weight: float = option(1.0, help="weight of the domain-adversarial loss (DANN)")
    loss: str | None = option(
        None,
        choices=("huber", "mse"),
        help="--task regress: the training loss, huber (default; delta 1 on the standardised target) or mse",
    )

    def __post_init__(self) -> None:
        # Cheap checks run before any data is read.
        check_mode(self.imbalance)
        if self.loss is not None and self.task != "regress":
            raise HeadstartError(
                f"--loss {self.loss} is for --task regress (--task {self.task} has one loss)",
                fix="drop --loss, or add --task regress",
            )
        if isinstance(self.lr, str) and self.lr != "auto":
            raise HeadstartError(f"--lr {self.lr!r}: give a number or 'auto'")
        if self.bf16:  # one name for the precision from here on (the engine, a resume's check)
            if self.precision not in ("auto", "bf16"):
                raise HeadstartError(f"--bf16 with --precision {self.precision}", fix="give one of the two")
            self.precision = "bf16"
        check_engine(self.device, self.precision)  # the device is here and runs the precision
