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

Each run (warm-up, control, adaptation) is a `LanguageModeling` task of the one training loop
(headstart.pretrain.lm), so device, precision and processes are fit's. The new backbone is written atomically
(headstart.pretrain.folder); under the backbones home it is found by name (`create_backbone(name)`,
`headstart backbones`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from headstart.backbones.home import FAMILY, backbones_home, check_name
from headstart.data.unlabeled_text import read_unlabeled
from headstart.errors import HeadstartError
from headstart.pretrain.folder import backbone_card, default_name, parent_folder, save_backbone
from headstart.pretrain.lm import CausalLM, LanguageModeling, MaskedLM, held_out_perplexity
from headstart.pretrain.objectives import Chunk, chunk_texts
from headstart.recipes import Phase, Recipe
from headstart.train.engine import check_engine, is_main_process, resolve_device
from headstart.train.loop import Trainer

DEFAULT_LR = {"mlm": 5e-5, "clm": 2e-5}
DEFAULT_EPOCHS = 3
DEFAULT_BATCH = {"mlm": 16, "clm": 8}
HEAD_PLATEAU = 0.01  # the head warm-up stops when held-out perplexity improves by less than this fraction
OPTIMIZER = "AdamW (weight decay 0.01), linear warm-up 6% then linear decay, grad-norm clip 1.0"


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


# -- the runs -----------------------------------------------------------------------------------------------


@dataclass
class _Runs:
    """adapt's runs of the one training loop over the same data; their epochs join `history`."""

    lm: MaskedLM | CausalLM
    chunks: dict[str, list[Chunk]]
    held_out: list[Any]
    pad: int
    mix_fraction: float
    batch_size: int
    seed: int
    device: str
    precision: str
    progress: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)  # where and how the last run trained

    def run(
        self,
        name: str,
        epochs: int,
        lr: float,
        offset: int,
        *,
        encoder_lr: float | None = None,
        plateau: float | None = None,
    ) -> int:
        """Train `epochs` at rate `lr` (the MLM head's, or the decoder's) and the encoder at `encoder_lr`
        (None: frozen); with `plateau`, stop when held-out perplexity improves by less than that fraction
        and keep the best (the warm-up). Runs with the same `offset` see the same batches and masks.
        Returns the optimizer steps taken."""
        warm_up = plateau is not None
        task = LanguageModeling(
            self.lm,
            self.chunks,
            self.held_out,
            pad=self.pad,
            mix_fraction=self.mix_fraction,
            encoder_lr=encoder_lr,
            plateau=plateau or 0.0,
            evaluate_start=warm_up,
        )
        phase = Phase(
            name,
            train_top="all" if encoder_lr is not None else 0,
            epochs=epochs,
            lr=lr,
            schedule="constant" if warm_up else "linear",
            warmup=0.06,
            weight_decay=0.01,
            patience=1 if warm_up else None,
        )
        trainer = Trainer.for_task(
            task,
            Recipe(f"adapt-{name}", (phase,), batch_size=self.batch_size),
            seed=self.seed + offset,
            device=self.device,
            precision=self.precision,
            progress=self.progress,
            keep_best=warm_up,
        ).fit()
        self.engine = trainer.engine.describe()
        rows = [r for r in trainer.history if r["kind"] == "train"]
        keys = ("steps", "train_loss", "held_out_perplexity", "seconds")
        self.history += [{"phase": name, "epoch": r["phase_epoch"], **{k: r[k] for k in keys}} for r in rows]
        return sum(r["steps"] for r in rows)


def _train(
    runs: _Runs, g_fixed: list[Any], *, epochs: int, lr: float, head_lr: float, head_epochs: int
) -> tuple[dict[str, Any], int, int]:
    """The three runs (see the module docstring): (perplexity before/after, steps, warm-up steps)."""
    lm, dev = runs.lm, next(runs.lm.model.parameters()).device
    warm_steps = 0
    if isinstance(lm, MaskedLM):
        # 1. a fresh head learns on the frozen encoder until held-out perplexity plateaus.
        if lm.fresh and head_epochs > 0:
            warm_steps = runs.run("head", head_epochs, head_lr, 1, plateau=HEAD_PLATEAU)
        start_head = copy.deepcopy(lm.head.state_dict())
        # 2. the control: the head alone gets the very steps (batches, masks, rates) the adaptation will
        # run, on the unchanged encoder; "before" and "after" heads have then trained equally long.
        runs.run("control", epochs, head_lr, 2)
        before = runs.history[-1]["held_out_perplexity"]
        g_before = held_out_perplexity(lm, g_fixed, dev) if g_fixed else None
        lm.head.load_state_dict(start_head)
    else:
        before = held_out_perplexity(lm, runs.held_out, dev)
        g_before = held_out_perplexity(lm, g_fixed, dev) if g_fixed else None
    # 3. everything trains, the pretrained weights at a small rate.
    steps = runs.run("adapt", epochs, head_lr if isinstance(lm, MaskedLM) else lr, 2, encoder_lr=lr)
    after = runs.history[-1]["held_out_perplexity"]
    g_after = held_out_perplexity(lm, g_fixed, dev) if g_fixed else None
    ppl = {
        "domain": {"before": before, "after": after},
        "general": None if g_before is None else {"before": g_before, "after": g_after},
    }
    return ppl, steps, warm_steps


# -- the entry point ----------------------------------------------------------------------------------------


def _destination(
    backbone: str, data: Any, name: str | None, out: Any, overwrite: bool
) -> tuple[str, Path, bool]:
    """(name, folder, found by name) of the new backbone; refused before any training when taken."""
    from headstart.backbones import get_spec

    name = check_name(name or (Path(out).name if out is not None else default_name(backbone, data)))
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
    return name, dest, by_name


def _language_model(backbone: str, seed: int) -> tuple[Any, Path, MaskedLM | CausalLM]:
    """(parent backbone, its transformers folder, its masked or causal LM)."""
    from headstart.backbones import create_backbone
    from headstart.backbones.text import TextBackbone

    bb = create_backbone(backbone)
    if not isinstance(bb, TextBackbone):
        raise HeadstartError(
            f"{backbone} is a {bb.modality} backbone; continued pretraining here is for text backbones",
            fix="adapt a text encoder (minilm-l6, hf:<folder>) or a decoder LM (smollm2-135m)",
        )
    folder = parent_folder(bb)
    if "lm" in bb.__dict__:
        return bb, folder, CausalLM(bb)
    if "hf_model" in bb.__dict__:
        return bb, folder, MaskedLM(bb, folder, seed)
    raise HeadstartError(f"{backbone} exposes no transformers model to train", fix="use a text backbone")


def _chunks(
    tok: Any, data: Any, general: Any, held_out: float, seed: int, mix_fraction: float
) -> tuple[dict[str, list[Chunk]], list[Chunk], list[Chunk], dict[str, Any]]:
    """(training chunks by source, held-out domain chunks, held-out general chunks, their counts)."""
    train_texts, held_texts = data.split(held_out, seed)
    chunks = {"domain": chunk_texts(tok, train_texts)[0]}
    held, held_tokens = chunk_texts(tok, held_texts)
    g_held: list[Chunk] = []
    if general is not None:
        g_train_texts, g_held_texts = general.split(held_out, seed)
        chunks["general"] = chunk_texts(tok, g_train_texts)[0] if mix_fraction > 0 else []
        g_held = chunk_texts(tok, g_held_texts)[0]
    if not chunks["domain"] or not held:
        raise HeadstartError(f"{data.path} gives no tokens to train on", fix="give longer texts")
    counts = {
        "train_texts": len(train_texts),
        "held_out_texts": len(held_texts),
        "train_chunks": len(chunks["domain"]),
        "held_out_chunks": len(held),
        "held_out_tokens": held_tokens,
    }
    return chunks, held, g_held, counts


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
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> AdaptReport:
    """Continue pretraining `backbone` on the texts of `unlabeled` and save it as a new backbone.

    See the module docstring for how "before" and "after" are measured. Returns an `AdaptReport`; the new
    backbone is `report.backbone_ref` (its name when written under the backbones home). `device` and
    `precision` as for `fit` (headstart.train.engine).
    """
    from headstart.backbones.hf_utils import load_tokenizer

    t_start = time.perf_counter()
    check_engine(device, precision)
    if epochs < 1 or head_epochs < 0 or max_length < 8:
        raise HeadstartError(
            f"epochs={epochs}, head_epochs={head_epochs}, max_length={max_length}",
            fix="epochs >= 1, head_epochs >= 0, max_length >= 8",
        )
    if not 0 <= mix_fraction < 1:
        raise HeadstartError(f"mix fraction {mix_fraction}: must be in [0, 1)", fix="e.g. 0.2")
    data = read_unlabeled(unlabeled, txt_layout)
    general = read_unlabeled(mix_general, txt_layout) if mix_general is not None else None
    name, dest, by_name = _destination(backbone, data, name, out, overwrite)

    bb, folder, lm = _language_model(backbone, seed)
    length = min(max_length, bb.max_length)
    tok, pad, _ = load_tokenizer(str(folder), length)
    lr = DEFAULT_LR[lm.objective] if lr is None else lr
    batch_size = batch_size or DEFAULT_BATCH[lm.objective]
    chunks, held, g_held, counts = _chunks(tok, data, general, held_out, seed, mix_fraction)

    lm.model.to(resolve_device(device))
    fixed = lm.fixed_eval(held, batch_size, pad, seed + 1)
    g_fixed = lm.fixed_eval(g_held, batch_size, pad, seed + 2) if g_held else []
    runs = _Runs(lm, chunks, fixed, pad, mix_fraction, batch_size, seed, device, precision, progress)
    ppl, steps, warm_steps = _train(
        runs, g_fixed, epochs=epochs, lr=lr, head_lr=head_lr, head_epochs=head_epochs
    )
    lm.model.eval().cpu()

    summary = {**data.summary(), **counts}
    g_summary = None
    if general is not None:
        g_summary = {
            **general.summary(),
            "mix_fraction": mix_fraction,
            "train_chunks": len(chunks.get("general", [])),
            "held_out_chunks": len(g_held),
        }
    params_used = {
        "epochs": epochs,
        "lr": lr,
        "head_lr": head_lr if lm.objective == "mlm" else None,
        "head_epochs": head_epochs if lm.fresh else 0,
        "batch_size": batch_size,
        "max_length": length,
        "held_out": held_out,
        "mix_fraction": mix_fraction if general is not None else None,
        "seed": seed,
        "optimizer": OPTIMIZER,
    }
    if lm.objective == "mlm":
        params_used["masking"] = "15% of real tokens; 80% [MASK], 10% random, 10% kept"
    card = backbone_card(
        name,
        bb,
        lm.objective,
        lm.fresh,
        perplexity=ppl,
        data=summary,
        general=g_summary,
        params=params_used,
        steps=steps,
        head_warmup_steps=warm_steps,
        history=runs.history,
        seconds=round(time.perf_counter() - t_start, 2),
        engine=runs.engine,  # device, precision (and why), world size of the adaptation
    )
    if is_main_process():  # under torchrun, one process writes
        save_backbone(dest, overwrite, bb, lm.head, folder, card, t_start)
    return AdaptReport(
        name=name,
        folder=dest,
        parent=bb.card.name,
        objective=lm.objective,
        fresh_head=lm.fresh,
        perplexity=ppl,
        history=runs.history,
        steps=steps,
        head_warmup_steps=warm_steps,
        seconds=card["seconds"],
        data=summary,
        general=g_summary,
        params=params_used,
        by_name=by_name,
        card=card,
    )
