"""`adapt`: continue a text backbone's pretraining on unlabeled domain text, then register the result.

Encoders learn by masked LM (BERT's 15% masking, 80/10/10), decoders by causal LM (next token). Packaged
encoders ship without their MLM head, so a fresh one is built (`MLMHead`, tied to the input embeddings).
A fresh head makes "perplexity before" meaningless unless the head is trained first, and a head that
keeps training during adaptation would make "after" look better for a reason that is not the encoder.
So the comparison is made with matched head training:

1. warm-up: the encoder stays frozen and only the fresh head trains, one epoch at a time, until held-out
   perplexity improves by less than 1% (at most `head_epochs`); the best head is kept.
2. control: from that head, the head alone trains for exactly the steps the adaptation will run (same
   batches, same masks, same rates and schedule) on the *unchanged* encoder. "before" is measured here.
3. adaptation: from the same warm-up head, encoder and head train together (`lr` for the encoder, small
   by default against catastrophic forgetting; `head_lr` for the head). "after" is measured at the end.

"before" and "after" heads have trained equally long on the same data, so the difference is the
encoder's; neither side is selected on the held-out texts. An adapted backbone keeps its trained head
(`mlm_head.safetensors`), so adapting it again starts from that head, with no warm-up.

Held-out texts are masked once with a fixed seed, so "before" and "after" score the very same positions.
Decoders keep their own LM head: "before" is simply the parent's perplexity. With `mix_general`, a share
of every epoch is general text (rehearsal), and the general text's own held-out part is scored before and
after: a rise there is forgetting.

The new backbone (weights, config, the parent's tokenizer and pooling files, `headstart_backbone.json`)
is written to a temp folder beside its destination and renamed into place, so a failure never leaves half
a backbone; under the backbones home it is found by name (`create_backbone(name)`, `headstart backbones`).
"""

from __future__ import annotations

import copy
import math
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.adapt.objectives import (
    MLM_PROBABILITY,
    Chunk,
    MLMHead,
    batches,
    chunk_texts,
    clm_loss,
    collate,
    mask_tokens,
    mlm_loss,
    perplexity,
)
from headstart.backbones.adapted import CARD_FILE, FAMILY, WEIGHTS_FILE, backbones_home, check_name
from headstart.data.unlabeled_text import UnlabeledTexts, read_unlabeled
from headstart.errors import HeadstartError
from headstart.fileio import atomic_write_json, sha256_file

DEFAULT_LR = {"mlm": 5e-5, "clm": 2e-5}
DEFAULT_EPOCHS = 3
DEFAULT_BATCH = {"mlm": 16, "clm": 8}
HEAD_FILE = "mlm_head.safetensors"
EVAL_TOKENS, EVAL_MASKINGS = 2000, 10
HEAD_PLATEAU = 0.01  # the head warm-up stops when held-out perplexity improves by less than this fraction
# Files of the parent folder the adapted folder keeps (tokenizer, sentence-transformers pooling, license).
_KEEP_SUFFIXES = (".json", ".txt", ".model", ".jinja")
_NOT_KEPT = {
    "config.json",
    "generation_config.json",
    CARD_FILE,
    "source.json",
    "model.safetensors.index.json",
}


@dataclass
class AdaptReport:
    """What `adapt` did and measured; `card` is what was written as `headstart_backbone.json`."""

    name: str
    folder: Path
    parent: str
    objective: str
    fresh_head: bool
    perplexity: dict[str, dict[str, float] | None]
    history: list[dict[str, Any]]
    steps: int
    head_warmup_steps: int
    seconds: float
    data: dict[str, Any]
    general: dict[str, Any] | None
    params: dict[str, Any]
    by_name: bool  # under the backbones home: usable as `--backbone NAME`
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone_ref(self) -> str:
        return self.name if self.by_name else str(self.folder)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["folder"] = str(self.folder)
        d["backbone_ref"] = self.backbone_ref
        return d


# -- the model folder of the parent -------------------------------------------------------------------------


def _parent_folder(bb: Any) -> Path:
    """The transformers folder the parent was loaded from (its config, tokenizer and pooling files)."""
    for f in (bb.card.extra.get("dequantised_file"), bb.card.weights_file):
        if f and (Path(f).parent / "config.json").is_file():
            return Path(f).parent
    raise HeadstartError(
        f"cannot find the model folder of {bb.name} (its card names no weights file beside a config.json)",
        fix="adapt a packaged text backbone, hf:<folder> or a local transformers folder",
    )


def _copy_parent_files(src: Path, dest: Path) -> None:
    for p in sorted(src.iterdir()):
        if p.is_dir() and re.match(r"^\d+_", p.name):  # sentence-transformers modules (1_Pooling, ...)
            shutil.copytree(p, dest / p.name)
        elif p.is_file() and (
            (p.suffix in _KEEP_SUFFIXES and p.name not in _NOT_KEPT)
            or p.name.upper().startswith(("LICENSE", "NOTICE"))
        ):
            shutil.copy2(p, dest / p.name)


# -- training pieces ----------------------------------------------------------------------------------------


def _device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class _MLM:
    """Masked LM over a text encoder backbone: the backbone's own groups give the hidden states."""

    objective = "mlm"

    def __init__(self, bb: Any, folder: Path, seed: int) -> None:
        from safetensors.torch import load_file

        model = bb.hf_model
        self.bb = bb
        self.mask_id = _mask_id(folder)
        self.vocab = int(model.get_input_embeddings().weight.shape[0])
        eps = float(getattr(model.config, "layer_norm_eps", 1e-12))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = MLMHead(bb.embed_dim, model.get_input_embeddings(), eps=eps)
        self.fresh = not (folder / HEAD_FILE).is_file()
        if not self.fresh:  # an adapted parent: continue with its trained head
            self.head.load_state_dict(load_file(str(folder / HEAD_FILE)))

    def modules(self) -> list[nn.Module]:
        return [self.bb, self.head]

    def pretrained_params(self) -> list[nn.Parameter]:
        return list(self.bb.parameters())

    def encoder(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return self.bb.forward_groups({"input_ids": ids, "attention_mask": attention})["hidden"]

    def fixed_eval(self, chunks: list[Chunk], size: int, pad: int, seed: int) -> list[tuple]:
        """Held-out batches masked once with a fixed seed: before and after score the same positions. A
        small held-out set is masked several times (up to EVAL_MASKINGS) so that about EVAL_TOKENS
        predictions are scored: 15% of a few hundred tokens would make a noisy perplexity."""
        gen = torch.Generator().manual_seed(seed)
        real = sum(sum(1 for s in c.special if not s) for c in chunks)
        repeats = min(EVAL_MASKINGS, max(1, math.ceil(EVAL_TOKENS / max(1.0, MLM_PROBABILITY * real))))
        out = []
        for _ in range(repeats):
            for b in batches(chunks, size, pad):
                masked, labels = mask_tokens(b, self.mask_id, self.vocab, gen)
                out.append((masked, b["attention_mask"], labels))
        return out

    def loss(self, item: Any, gen: torch.Generator | None, device: torch.device) -> tuple[torch.Tensor, int]:
        if isinstance(item, tuple):  # a fixed evaluation batch
            masked, attention, labels = item
        else:
            masked, labels = mask_tokens(item, self.mask_id, self.vocab, gen)  # type: ignore[arg-type]
            attention = item["attention_mask"]
        return mlm_loss(self.encoder, self.head, masked.to(device), attention.to(device), labels.to(device))


class _CLM:
    """Causal LM over a decoder backbone: its own LM head (tied or not), labels are the input ids."""

    objective = "clm"
    fresh = False

    def __init__(self, bb: Any) -> None:
        self.bb = bb
        self.lm = bb.lm

    def modules(self) -> list[nn.Module]:
        return [self.lm]

    def pretrained_params(self) -> list[nn.Parameter]:
        return list(self.lm.parameters())  # the LM head too when it is not tied to the embeddings

    def fixed_eval(self, chunks: list[Chunk], size: int, pad: int, seed: int) -> list[Any]:
        return list(batches(chunks, size, pad))

    def loss(self, item: Any, gen: torch.Generator | None, device: torch.device) -> tuple[torch.Tensor, int]:
        return clm_loss(self.lm, _to({k: item[k] for k in ("input_ids", "attention_mask")}, device))


def _mask_id(folder: Path) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.mask_token_id is None:
        raise HeadstartError(
            f"the tokenizer of {folder} has no mask token, so masked-LM pretraining cannot run",
            fix="adapt an encoder whose tokenizer defines [MASK] / <mask>",
        )
    return int(tok.mask_token_id)


@torch.no_grad()
def _evaluate(obj: Any, fixed: list[Any], device: torch.device) -> float:
    for m in obj.modules():
        m.eval()
    total, count = 0.0, 0
    for item in fixed:
        loss, n = obj.loss(item, None, device)
        total += float(loss)
        count += n
    return perplexity(total, count)


def _n_general(n_domain: int, n_general: int, mix: float) -> int:
    """General chunks per epoch so that they make up `mix` of it."""
    return round(mix / (1 - mix) * n_domain) if n_general and mix > 0 else 0


def _epoch_order(n_domain: int, n_general: int, mix: float, rng: random.Random) -> list[tuple[str, int]]:
    """One epoch: every domain chunk once, plus general chunks making up `mix` of the epoch (rehearsal)."""
    order = [("domain", i) for i in range(n_domain)]
    want = _n_general(n_domain, n_general, mix)
    if want:
        picks = [
            i for _ in range(math.ceil(want / n_general)) for i in rng.sample(range(n_general), n_general)
        ]
        order += [("general", i) for i in picks[:want]]
    rng.shuffle(order)
    return order


def _train_epoch(
    obj: Any,
    chunks: dict[str, list[Chunk]],
    order: list[tuple[str, int]],
    batch_size: int,
    pad: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    gen: torch.Generator,
    device: torch.device,
    params: list[nn.Parameter],
    advance: Any,
) -> tuple[float, int]:
    total, count, steps = 0.0, 0, 0
    for i in range(0, len(order), batch_size):
        batch = collate([chunks[src][j] for src, j in order[i : i + batch_size]], pad)
        loss, n = obj.loss(batch, gen, device)
        if n == 0:
            continue
        optimizer.zero_grad(set_to_none=True)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach())
        count += n
        steps += 1
        advance(1)
    return (total / count if count else float("nan")), steps


def _linear_schedule(optimizer: torch.optim.Optimizer, total: int) -> Any:
    warm = max(1, round(0.06 * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- writing the new backbone -------------------------------------------------------------------------------


def _write_folder(dest: Path, overwrite: bool, fill: Any) -> None:
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


def _default_name(parent: str, data: UnlabeledTexts) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(parent.removeprefix("hf:")).name or parent).strip("-.")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data.path).stem).strip("-.")
    return f"{base or 'backbone'}-{stem or 'adapted'}"[:100]


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = {"torch": torch.__version__}
    for dist in ("transformers", "headstart"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


# -- the entry point ----------------------------------------------------------------------------------------


def adapt(
    backbone: str,
    unlabeled: str | Path,
    *,
    name: str | None = None,
    out: str | Path | None = None,
    epochs: int = DEFAULT_EPOCHS,
    lr: float | None = None,
    head_lr: float = 1e-3,
    head_epochs: int = 10,
    batch_size: int | None = None,
    max_length: int = 128,
    mix_general: str | Path | None = None,
    mix_fraction: float = 0.2,
    held_out: float = 0.1,
    txt_layout: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> AdaptReport:
    """Continue pretraining `backbone` on the texts of `unlabeled` and save it as a new backbone.

    See the module docstring for how "before" and "after" are measured. Returns an `AdaptReport`; the new
    backbone is `report.backbone_ref` (its name when written under the backbones home).
    """
    from headstart.backbones import create_backbone, get_spec
    from headstart.backbones.hf_text import TextBackbone, load_tokenizer
    from headstart.progress import progress_bar

    t_start = time.perf_counter()
    if epochs < 1 or head_epochs < 0 or max_length < 8:
        raise HeadstartError(
            f"epochs={epochs}, head_epochs={head_epochs}, max_length={max_length}",
            fix="epochs >= 1, head_epochs >= 0, max_length >= 8",
        )
    if not 0 <= mix_fraction < 1:
        raise HeadstartError(f"mix fraction {mix_fraction}: must be in [0, 1)", fix="e.g. 0.2")
    data = read_unlabeled(unlabeled, txt_layout)
    general = read_unlabeled(mix_general, txt_layout) if mix_general is not None else None
    train_texts, held_texts = data.split(held_out, seed)
    name = check_name(name or (Path(out).name if out is not None else _default_name(backbone, data)))
    home = backbones_home()
    dest = Path(out).expanduser() if out is not None else home / name
    by_name = dest.resolve().parent == home.resolve() and dest.name == name
    if dest.exists() and not overwrite:
        raise HeadstartError(f"{dest} already exists", fix="pass --overwrite or choose another --name")
    if by_name:
        try:
            clash = get_spec(name)
        except HeadstartError:
            clash = None
        if clash is not None and clash.family != FAMILY:
            raise HeadstartError(
                f"{name!r} already names a {clash.family} backbone", fix="choose another --name"
            )

    bb = create_backbone(backbone)
    if not isinstance(bb, TextBackbone):
        raise HeadstartError(
            f"{backbone} is a {bb.modality} backbone; continued pretraining here is for text backbones",
            fix="adapt a text encoder (minilm-l6, hf:<folder>) or a decoder LM (smollm2-135m)",
        )
    folder = _parent_folder(bb)
    obj: Any = (
        _CLM(bb) if "lm" in bb.__dict__ else _MLM(bb, folder, seed) if "hf_model" in bb.__dict__ else None
    )
    if obj is None:
        raise HeadstartError(f"{backbone} exposes no transformers model to train", fix="use a text backbone")
    length = min(max_length, bb.max_length)
    tok, pad, _ = load_tokenizer(str(folder), length)
    lr = DEFAULT_LR[obj.objective] if lr is None else lr
    batch_size = batch_size or DEFAULT_BATCH[obj.objective]
    dev = _device(device)

    chunks = {"domain": chunk_texts(tok, train_texts)[0]}
    held, held_tokens = chunk_texts(tok, held_texts)
    g_held: list[Chunk] = []
    if general is not None:
        g_train_texts, g_held_texts = general.split(held_out, seed)
        chunks["general"] = chunk_texts(tok, g_train_texts)[0] if mix_fraction > 0 else []
        g_held = chunk_texts(tok, g_held_texts)[0]
    if not chunks["domain"] or not held:
        raise HeadstartError(f"{data.path} gives no tokens to train on", fix="give longer texts")

    for m in obj.modules():
        m.to(dev)
    fixed = obj.fixed_eval(held, batch_size, pad, seed + 1)
    g_fixed = obj.fixed_eval(g_held, batch_size, pad, seed + 2) if g_held else []
    history: list[dict[str, Any]] = []
    n_general = len(chunks.get("general", []))
    n_domain = len(chunks["domain"])
    epoch_steps = math.ceil((n_domain + _n_general(n_domain, n_general, mix_fraction)) / batch_size)

    def run_phase(phase: str, groups: list[dict[str, Any]], n_epochs: int, offset: int, decay: bool) -> int:
        """Train `groups` for `n_epochs`; phases with the same `offset` see the same batches and masks."""
        rng = random.Random(seed + offset)
        gen = torch.Generator().manual_seed(seed + offset)
        params = [q for g in groups for q in g["params"]]
        optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
        scheduler = _linear_schedule(optimizer, n_epochs * epoch_steps) if decay else None
        trained = [obj.head] if phase != "adapt" else obj.modules()
        steps = 0
        best = (_evaluate(obj, fixed, dev), copy.deepcopy(obj.head.state_dict())) if phase == "head" else None
        label = {"head": "fresh MLM head", "control": "head-only control", "adapt": f"adapting {bb.name}"}
        with progress_bar(n_epochs * epoch_steps, label[phase], enabled=progress) as adv:
            for ep in range(1, n_epochs + 1):
                t0 = time.perf_counter()
                for m in trained:
                    m.train()
                order = _epoch_order(n_domain, n_general, mix_fraction, rng)
                loss, n = _train_epoch(
                    obj, chunks, order, batch_size, pad, optimizer, scheduler, gen, dev, params, adv
                )
                steps += n
                ppl = _evaluate(obj, fixed, dev)
                history.append(
                    {
                        "phase": phase,
                        "epoch": ep,
                        "steps": n,
                        "train_loss": loss,
                        "held_out_perplexity": ppl,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                if best is not None:  # the warm-up: keep the best head, stop on a plateau
                    improved = ppl < best[0] * (1 - HEAD_PLATEAU)
                    if ppl < best[0]:
                        best = (ppl, copy.deepcopy(obj.head.state_dict()))
                    if not improved:
                        break
        if best is not None:
            obj.head.load_state_dict(best[1])
        return steps

    warm_steps = 0
    if obj.objective == "mlm":
        # 1. a fresh head learns on the frozen encoder until held-out perplexity plateaus.
        bb.requires_grad_(False)
        if obj.fresh and head_epochs > 0:
            warm_steps = run_phase(
                "head", [{"params": list(obj.head.parameters()), "lr": head_lr}], head_epochs, 1, False
            )
        start_head = copy.deepcopy(obj.head.state_dict())
        # 2. the control: the head alone gets the very steps (batches, masks, rates) the adaptation will
        # run, on the unchanged encoder; "before" and "after" heads have then trained equally long.
        run_phase("control", [{"params": list(obj.head.parameters()), "lr": head_lr}], epochs, 2, True)
        before = history[-1]["held_out_perplexity"]
        g_before = _evaluate(obj, g_fixed, dev) if g_fixed else None
        obj.head.load_state_dict(start_head)
    else:
        before = _evaluate(obj, fixed, dev)
        g_before = _evaluate(obj, g_fixed, dev) if g_fixed else None

    # 3. everything trains, the pretrained weights at a small rate.
    for m in obj.modules():
        m.requires_grad_(True)
    groups = [{"params": obj.pretrained_params(), "lr": lr}]
    if obj.objective == "mlm":
        groups.append({"params": list(obj.head.parameters()), "lr": head_lr})
    steps = run_phase("adapt", groups, epochs, 2, True)
    after = history[-1]["held_out_perplexity"]
    g_after = _evaluate(obj, g_fixed, dev) if g_fixed else None
    for m in obj.modules():
        m.eval().cpu()

    ppl = {
        "domain": {"before": before, "after": after},
        "general": None if g_before is None else {"before": g_before, "after": g_after},
    }
    summary = {
        **data.summary(),
        "train_texts": len(train_texts),
        "held_out_texts": len(held_texts),
        "train_chunks": len(chunks["domain"]),
        "held_out_chunks": len(held),
        "held_out_tokens": held_tokens,
    }
    g_summary = None
    if general is not None:
        g_summary = {
            **general.summary(),
            "mix_fraction": mix_fraction,
            "train_chunks": n_general,
            "held_out_chunks": len(g_held),
        }
    params_used = {
        "epochs": epochs,
        "lr": lr,
        "head_lr": head_lr if obj.objective == "mlm" else None,
        "head_epochs": head_epochs if obj.fresh else 0,
        "batch_size": batch_size,
        "max_length": length,
        "held_out": held_out,
        "mix_fraction": mix_fraction if general is not None else None,
        "seed": seed,
        "optimizer": "AdamW (weight decay 0.01), linear warm-up 6% then linear decay, grad-norm clip 1.0",
    }
    if obj.objective == "mlm":
        params_used["masking"] = "15% of real tokens; 80% [MASK], 10% random, 10% kept"
    head_note = (
        "fresh MLM head (the parent ships none): warmed up on the frozen encoder, then 'before' = the head "
        "trained the same steps as the adaptation on the unchanged encoder, 'after' = adapted encoder"
        if obj.fresh
        else (
            "the parent's trained MLM head; 'before' = it trained the same steps on the unchanged encoder"
            if obj.objective == "mlm"
            else "the parent's own LM head"
        )
    )
    card = {
        "format": 1,
        "name": name,
        "family": FAMILY,
        "kind": "decoder" if obj.objective == "clm" else "encoder",
        "objective": obj.objective,
        "parent": {
            "name": bb.card.name,
            "weights_sha256": bb.card.weights_sha256,
            "family": bb.card.family,
            "source": bb.card.source,
            "version": bb.card.version,
            "license": bb.card.license,
            "pretraining_data": bb.card.pretraining_data,
            "paper": bb.card.paper,
        },
        "license": bb.card.license,
        "embed_dim": bb.embed_dim,
        "fresh_head": obj.fresh,
        "head": head_note,
        "perplexity": ppl,
        "data": summary,
        "general": g_summary,
        "params": params_used,
        "steps": steps,
        "head_warmup_steps": warm_steps,
        "history": history,
        "seconds": round(time.perf_counter() - t_start, 2),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "weights_file": WEIGHTS_FILE,
    }

    def fill(tmp: Path) -> None:
        from safetensors.torch import save_file

        model = bb.lm if obj.objective == "clm" else bb.hf_model
        from headstart.backbones.hf_text import quiet_transformers

        quiet_transformers()
        model.save_pretrained(str(tmp))
        if not (tmp / WEIGHTS_FILE).is_file():
            raise HeadstartError(f"saving {name} wrote no {WEIGHTS_FILE}", fix="save as one safetensors file")
        _copy_parent_files(folder, tmp)
        if obj.objective == "mlm":
            state = {k: v.detach().contiguous() for k, v in obj.head.state_dict().items()}
            save_file(state, str(tmp / HEAD_FILE), metadata={"format": "pt"})
        card["weights_sha256"] = sha256_file(tmp / WEIGHTS_FILE)
        if obj.objective == "clm":  # the decoder loader reads the weights' hash from here
            atomic_write_json(tmp / "source.json", {"name": name, "model_sha256": card["weights_sha256"]})
        card["seconds"] = round(time.perf_counter() - t_start, 2)
        atomic_write_json(tmp / CARD_FILE, card)

    _write_folder(dest, overwrite, fill)
    return AdaptReport(
        name=name,
        folder=dest,
        parent=bb.card.name,
        objective=obj.objective,
        fresh_head=obj.fresh,
        perplexity=ppl,
        history=history,
        steps=steps,
        head_warmup_steps=warm_steps,
        seconds=card["seconds"],
        data=summary,
        general=g_summary,
        params=params_used,
        by_name=by_name,
        card=card,
    )
