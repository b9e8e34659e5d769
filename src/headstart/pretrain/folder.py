"""The adapted backbone's folder: the parent's files it keeps, its card, and the atomic write.

The new backbone (weights, config, the parent's tokenizer and pooling files, `headstart_backbone.json`)
is written to a temp folder beside its destination and renamed into place, so a failure never leaves half
a backbone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headstart.backbones.home import CARD_FILE, FAMILY, WEIGHTS_FILE
from headstart.data.unlabeled_text import UnlabeledTexts
from headstart.errors import HeadstartError
from headstart.fileio import atomic_write_json, sha256_file
from headstart.pretrain.lm import HEAD_FILE

# Files of the parent folder the adapted folder keeps (tokenizer, sentence-transformers pooling, license).
_KEEP_SUFFIXES = (".json", ".txt", ".model", ".jinja")
_NOT_KEPT = {
    "config.json",
    "generation_config.json",
    CARD_FILE,
    "source.json",
    "model.safetensors.index.json",
}


def parent_folder(bb: Any) -> Path:
    """The transformers folder the parent was loaded from (its config, tokenizer and pooling files)."""
    for f in (bb.card.extra.get("dequantised_file"), bb.card.weights_file):
        if f and (Path(f).parent / "config.json").is_file():
            return Path(f).parent
    raise HeadstartError(
        f"cannot find the model folder of {bb.name} (its card names no weights file beside a config.json)",
        fix="adapt a packaged text backbone, hf:<folder> or a local transformers folder",
    )


def copy_parent_files(src: Path, dest: Path) -> None:
    for p in sorted(src.iterdir()):
        if p.is_dir() and re.match(r"^\d+_", p.name):  # sentence-transformers modules (1_Pooling, ...)
            shutil.copytree(p, dest / p.name)
        elif p.is_file() and (
            (p.suffix in _KEEP_SUFFIXES and p.name not in _NOT_KEPT)
            or p.name.upper().startswith(("LICENSE", "NOTICE"))
        ):
            shutil.copy2(p, dest / p.name)


def write_folder(dest: Path, overwrite: bool, fill: Any) -> None:
    """`fill(tmp)` writes the whole folder into a temp folder beside `dest`, which is then renamed into
    place (an existing `dest` is replaced only once the new folder is complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    old: Path | None = None
    try:
        fill(tmp)
        umask = os.umask(0)
        os.umask(umask)
        for p in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700: a backbone is as readable as any folder
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
        if dest.exists():
            if not overwrite:
                raise HeadstartError(
                    f"{dest} already exists", fix="pass --overwrite or choose another --name"
                )
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            dest.rename(old / dest.name)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def default_name(parent: str, data: UnlabeledTexts) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(parent.removeprefix("hf:")).name or parent).strip("-.")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data.path).stem).strip("-.")
    return f"{base or 'backbone'}-{stem or 'adapted'}"[:100]


def _versions() -> dict[str, str]:
    import importlib.metadata

    import torch

    out = {"torch": torch.__version__}
    for dist in ("transformers", "headstart"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _head_note(objective: str, fresh: bool) -> str:
    if fresh:
        return (
            "fresh MLM head (the parent ships none): warmed up on the frozen encoder, then 'before' = the "
            "head trained the same steps as the adaptation on the unchanged encoder, 'after' = adapted "
            "encoder"
        )
    if objective == "mlm":
        return "the parent's trained MLM head; 'before' = it trained the same steps on the unchanged encoder"
    return "the parent's own LM head"


def backbone_card(name: str, bb: Any, objective: str, fresh: bool, **measured: Any) -> dict[str, Any]:
    """headstart_backbone.json: the parent (by name and sha256), the objective, and `measured` (perplexity,
    data, general, params, steps, head_warmup_steps, history, seconds, engine)."""
    c = bb.card
    keys = ("name", "weights_sha256", "family", "source", "version", "license", "pretraining_data", "paper")
    return {
        "format": 1,
        "name": name,
        "family": FAMILY,
        "kind": "decoder" if objective == "clm" else "encoder",
        "objective": objective,
        "parent": {k: getattr(c, k) for k in keys},
        "license": c.license,
        "embed_dim": bb.embed_dim,
        "fresh_head": fresh,
        "head": _head_note(objective, fresh),
        **measured,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "weights_file": WEIGHTS_FILE,
    }


def save_backbone(
    dest: Path, overwrite: bool, bb: Any, head: Any, parent: Path, card: dict[str, Any], t_start: float
) -> None:
    """The adapted network (the decoder's LM, or the encoder and its MLM `head`), the parent's files and
    the card (with the weights' sha256 and the total seconds), written atomically at `dest`."""
    clm = card["objective"] == "clm"

    def fill(tmp: Path) -> None:
        from safetensors.torch import save_file

        from headstart.backbones.hf_utils import quiet_transformers

        quiet_transformers()
        (bb.lm if clm else bb.hf_model).save_pretrained(str(tmp))
        if not (tmp / WEIGHTS_FILE).is_file():
            raise HeadstartError(
                f"saving {card['name']} wrote no {WEIGHTS_FILE}", fix="save as one safetensors file"
            )
        copy_parent_files(parent, tmp)
        if head is not None:
            state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
            save_file(state, str(tmp / HEAD_FILE), metadata={"format": "pt"})
        card["weights_sha256"] = sha256_file(tmp / WEIGHTS_FILE)
        if clm:  # the decoder loader reads the weights' hash from here
            atomic_write_json(
                tmp / "source.json", {"name": card["name"], "model_sha256": card["weights_sha256"]}
            )
        card["seconds"] = round(time.perf_counter() - t_start, 2)
        atomic_write_json(tmp / CARD_FILE, card)

    write_folder(dest, overwrite, fill)
