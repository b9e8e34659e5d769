"""Verb configs: one dataclass per verb that the Python API and the CLI both read, so each default lives once.

A field's metadata is its command-line form (help text, flag name, how the text parses): `add_options`
turns a config class into argparse arguments and `from_args` turns the parsed Namespace back into the
config. A verb adopts it in three lines:

    @dataclass
    class MyConfig:
        data: Path = option(help="what to read")                # no default: a positional argument
        seed: int = option(0, help="random seed")               # --seed, an int (from the annotation)
        cache: bool = option(True, help="do not use the cache")  # True by default: the flag is --no-cache

    add_options(parser, MyConfig)      # in register()
    cfg = from_args(MyConfig, args)    # in the command

Options the CLI does not offer (Python objects, `save`) are fields with `cli=False`. This module stays cheap
to import: `headstart --help` builds every parser from it.
"""

import argparse
import types
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

from headstart.errors import HeadstartError
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
) -> Any:
    """A config field with its command-line form.

    flag: the option's name (default `--field-name`; `--no-field-name` for a bool that defaults to True).
    parse: how the text becomes a value (default: from the annotation: int, float, str or Path).
    off_help: the help of `--no-NAME` for a `bool | None` field (a --NAME / --no-NAME pair, None = unset).
    cli: False for options of the Python API only.
    """
    meta = {"help": help, "flag": flag, "parse": parse, "choices": choices, "off_help": off_help, "cli": cli}
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


def add_options(parser: argparse.ArgumentParser, config: type, *, exclude: tuple[str, ...] = ()) -> None:
    """One argparse argument per CLI field of `config`, with the field's default and help."""
    for f in fields(config):
        meta = f.metadata
        if not meta.get("cli", True) or f.name in exclude:
            continue
        name = meta["flag"] or "--" + f.name.replace("_", "-")
        members = _members(f.type)
        if bool in members:
            if f.default is None:  # tri-state: --NAME / --no-NAME, unset leaves the choice to the verb
                pair = parser.add_mutually_exclusive_group()
                pair.add_argument(name, dest=f.name, action="store_true", default=None, help=meta["help"])
                pair.add_argument(
                    "--no-" + name[2:], dest=f.name, action="store_false", help=meta["off_help"]
                )
            elif f.default:
                flag = meta["flag"] or "--no-" + f.name.replace("_", "-")
                parser.add_argument(flag, dest=f.name, action="store_false", help=meta["help"])
            else:
                parser.add_argument(name, dest=f.name, action="store_true", help=meta["help"])
            continue
        kw: dict[str, Any] = {"type": _parser(f.name, f.type, meta), "help": meta["help"] or None}
        if meta["choices"]:
            kw["choices"] = meta["choices"]
        if f.default is MISSING:  # required: a positional argument
            parser.add_argument(f.name, **kw)
        else:
            # Named after the flag, not the field (choices show themselves).
            metavar = None if meta["choices"] else name[2:].upper().replace("-", "_")
            parser.add_argument(name, dest=f.name, default=f.default, metavar=metavar, **kw)


def from_args(config: type[ConfigT], args: argparse.Namespace, **extra: Any) -> ConfigT:
    """The config of a parsed command line; `extra` sets what the CLI decides itself (e.g. progress)."""
    given = {f.name: getattr(args, f.name) for f in fields(config) if hasattr(args, f.name)}  # type: ignore[arg-type]
    return config(**{**given, **extra})


# -- the verbs --------------------------------------------------------------------------------------------
# (noqa RUF009: ruff reads option() as a call in a default; it returns a dataclasses.field.)
@dataclass
class RunConfig:
    """What every verb that makes a run from labeled data takes (probe, fit)."""

    data: str | Path = option(  # noqa: RUF009
        help="image folder (one sub-folder per class, or train/ val/ test/) "
        "or a CSV/JSONL manifest with path,label[,split]"
    )
    backbone: str = option("efficientnet_lite0", help="registered name, hf:<id-or-dir>, timm:<name>")
    out: str | Path | None = option(  # noqa: RUF009
        None, help="run folder (default: runs/<time>-<verb>-<backbone>)"
    )
    overwrite: bool = option(False, help="replace an existing --out folder")
    seed: int = option(0, help="seed of the split and of training")
    val: float = option(0.15, help="validation fraction when splitting")
    test: float = option(0.15, help="test fraction when splitting")
    strict: bool = option(False, help="fail on any unreadable file instead of skipping it")
    device: str = option("auto", parse=device_arg, help=DEVICE_HELP)
    max_pixels: int | None = option(None, help="skip images larger than this (default 64,000,000)")
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
    backend: str = option("auto", choices=("auto", "onnx", "torch"), help=BACKEND_HELP)
    batch_size: int = option(32, help="inputs per forward pass when embedding")
    cache: bool = option(True, help="do not read or write the embedding cache")

    def __post_init__(self) -> None:
        from headstart.features import forward_device

        forward_device(self.backend, self.device)  # the device is here, before any data is read


def parse_lr(text: str) -> float | str:
    """--lr: a number, or 'auto' (a range test on the cached embeddings)."""
    return text if text == "auto" else float(text)


@dataclass
class FitConfig(RunConfig):
    """`fit`: a strategy (recipe) trained by the one loop; `head` runs as `probe` does, on cached features."""

    overwrite: bool = option(False, help="replace the run in --out, or start an interrupted one over")
    strategy: str | Recipe | dict[str, Any] = option(  # noqa: RUF009
        "lp-ft",
        help="head | partial:N | full | discriminative | gradual | lp-ft | scratch | lora | lora:R | "
        "a recipe .json/.yaml (schema: `headstart recipes --schema`)",
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
    precision: str = option("auto", choices=PRECISIONS, help=PRECISION_HELP)
    budget_s: float | None = option(
        None, flag="--budget", help="stop training after this many seconds (best weights kept)"
    )
    unlabeled: str | Path | None = option(  # noqa: RUF009
        None, cli=False, help="inputs without labels joining the training split (for distillation)"
    )
    target_unlabeled: str | Path | None = option(  # noqa: RUF009
        None,
        help="unlabeled inputs from the deployment domain: domain-adversarial training (DANN) aligns the "
        "features of the labeled data with them",
    )
    domain_weight: float = option(1.0, help="weight of the domain-adversarial loss (DANN)")

    def __post_init__(self) -> None:
        # Cheap checks run before any data is read.
        if isinstance(self.lr, str) and self.lr != "auto":
            raise HeadstartError(f"--lr {self.lr!r}: give a number or 'auto'")
        check_engine(self.device, self.precision)  # the device is here and runs the precision
