"""`adapt`: continue a text backbone's pretraining on unlabeled domain text, then register the result.

Encoders learn by masked LM (BERT's 15% masking, 80/10/10), decoders by causal LM (next token). Packaged
encoders ship without their MLM head, so a fresh one is built (`MLMHead`, tied to the input embeddings).
A fresh head makes "perplexity before" meaningless unless the head is trained first, and a head that
keeps training during adaptation would make "after" look better for a reason that is not the encoder.
So the comparison is made with matched head training:

1. warm-up: the encoder stays frozen and only the fresh head trains, one epoch at a time, until held-out
   perplexity improves by less than 1% (at most `head_epochs`); the best head is kept.
2. adaptation: from that head, encoder and head train together (`lr` for the encoder, small by default
   against catastrophic forgetting; `head_lr` for the head). "after" is measured at the end.
3. control: from the same warm-up head, the head alone trains for exactly the steps the adaptation ran
   (same batches, same masks, same rates and schedule) on the *unchanged* encoder. "before" is measured
   here. It runs after the adaptation so that a time budget that stops the adaptation early stops the
   control at the same step.

"before" and "after" heads have trained equally long on the same data, so the difference is the
encoder's; neither side is selected on the held-out texts. An adapted backbone keeps its trained head
(`mlm_head.safetensors`), so adapting it again starts from that head, with no warm-up.

Held-out texts are masked once with a fixed seed, so "before" and "after" score the very same positions.
Decoders keep their own LM head: "before" is simply the parent's perplexity. With `mix_general`, a share
of every epoch is general text (rehearsal), and the general text's own held-out part is scored before and
after: a rise there is forgetting.

Each run (warm-up, adaptation, control: headstart.pretrain.runs) is a `LanguageModeling` task of the one
training loop (headstart.pretrain.lm), so device, precision, processes, checkpoints, resume and the time
budget are fit's. The new backbone is written atomically
(headstart.pretrain.folder); under the backbones home it is found by name (`create_backbone(name)`,
`headstart backbones`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from headstart.backbones.home import FAMILY, backbones_home, check_name
from headstart.data.unlabeled_text import read_unlabeled
from headstart.errors import HeadstartError
from headstart.pretrain.folder import backbone_card, default_name, parent_folder, save_backbone
from headstart.pretrain.lm import CausalLM, MaskedLM
from headstart.pretrain.objectives import Chunk, chunk_texts
from headstart.pretrain.runs import RUN_NAMES, Runs, train
from headstart.train.engine import check_engine, is_main_process, resolve_device
from headstart.train.job import open_work_dir

DEFAULT_LR = {"mlm": 5e-5, "clm": 2e-5}
DEFAULT_EPOCHS = 3
DEFAULT_BATCH = {"mlm": 16, "clm": 8}
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
    warnings: list[str] = field(default_factory=list)  # e.g. a run the time budget stopped

    @property
    def backbone_ref(self) -> str:
        return self.name if self.by_name else str(self.folder)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["folder"] = str(self.folder)
        d["backbone_ref"] = self.backbone_ref
        return d


# -- the entry point ----------------------------------------------------------------------------------------


def _destination(backbone: str, data: Any, name: str | None, out: Any) -> tuple[str, Path, bool]:
    """(name, folder, found by name) of the new backbone; refused before any training when taken by
    another family (whether the folder is free is `_check_out`'s to say)."""
    from headstart.backbones import get_spec

    name = check_name(name or (Path(out).name if out is not None else default_name(backbone, data)))
    home = backbones_home()
    dest = Path(out).expanduser() if out is not None else home / name
    by_name = dest.resolve().parent == home.resolve() and dest.name == name
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


def _check_out(
    dest: Path, request: dict[str, Any], *, resume: bool, overwrite: bool, engine: Any
) -> dict[str, Any] | None:
    """Refused before any work, by fit's rules (headstart.train.resume.check_out): a finished backbone
    without --overwrite, an interrupted adaptation (its checkpoints beside `dest`) without --resume or
    --overwrite, a --resume with nothing to resume or with other texts, options, device or precision than
    it was started with. Returns what the resumed adaptation was started with (None: a fresh start)."""
    from headstart.backbones.home import CARD_FILE
    from headstart.train.resume import check_out

    return check_out(
        dest,
        resume=resume,
        overwrite=overwrite,
        request=request,
        engine=engine,
        finished_file=CARD_FILE,
        checkpoints=RUN_NAMES,
    )


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


def _texts_of(data: Any, general: Any) -> dict[str, str | None]:
    """What a --resume must find again: the domain and general texts, by count and content hash."""

    def named(texts: Any) -> str | None:
        return None if texts is None else f"{len(texts.texts)} texts, sha256 {texts.sha256[:16]}"

    return {"unlabeled": named(data), "mix_general": named(general)}


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
    resume: bool = False,
    budget_s: float | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> AdaptReport:
    """Continue pretraining `backbone` on the texts of `unlabeled` and save it as a new backbone.

    See the module docstring for how "before" and "after" are measured. Returns an `AdaptReport`; the new
    backbone is `report.backbone_ref` (its name when written under the backbones home). `device` and
    `precision` as for `fit` (headstart.train.engine). Checkpoints are kept beside the new backbone until
    it is written: `resume` continues an interrupted adaptation from them (same texts and options).
    `budget_s`: training stops after this many seconds (the control keeps its share: headstart.pretrain.runs).
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
    if budget_s is not None and budget_s <= 0:
        raise HeadstartError(f"budget {budget_s} s: must be positive", fix="give e.g. --budget 10m")
    data = read_unlabeled(unlabeled, txt_layout)
    general = read_unlabeled(mix_general, txt_layout) if mix_general is not None else None
    name, dest, by_name = _destination(backbone, data, name, out)
    # What the adaptation is started with: a --resume with other texts or options is refused.
    request = {"backbone": backbone, **_texts_of(data, general), "txt_layout": txt_layout}
    request |= {"epochs": epochs, "lr": lr}
    request |= {"head_lr": head_lr, "head_epochs": head_epochs, "batch_size": batch_size}
    request |= {"max_length": max_length, "mix_fraction": mix_fraction, "held_out": held_out, "seed": seed}
    started = _check_out(dest, request, resume=resume, overwrite=overwrite, engine=(device, precision))

    bb, folder, lm = _language_model(backbone, seed)
    length = min(max_length, bb.max_length)
    tok, pad, _ = load_tokenizer(str(folder), length)
    lr = DEFAULT_LR[lm.objective] if lr is None else lr
    batch_size = batch_size or DEFAULT_BATCH[lm.objective]
    chunks, held, g_held, counts = _chunks(tok, data, general, held_out, seed, mix_fraction)

    lm.model.to(resolve_device(device))
    fixed = lm.fixed_eval(held, batch_size, pad, seed + 1)
    g_fixed = lm.fixed_eval(g_held, batch_size, pad, seed + 2) if g_held else []
    runs = Runs(lm, chunks, fixed, pad, mix_fraction, batch_size, seed, device, precision, progress)
    work = runs.work_dir = open_work_dir(dest, request, resume=resume, started=started)
    runs.resume = resume
    runs.deadline = None if budget_s is None else time.perf_counter() + budget_s
    ppl, steps, warm_steps = train(
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
    # What was measured, named once: the card beside the weights and the report both carry it.
    measured: dict[str, Any] = {
        "perplexity": ppl,
        "data": summary,
        "general": g_summary,
        "params": params_used,
        "steps": steps,
        "head_warmup_steps": warm_steps,
        "history": runs.history,
    }
    card = backbone_card(
        name,
        bb,
        lm.objective,
        lm.fresh,
        **measured,
        seconds=round(time.perf_counter() - t_start, 2),
        engine=runs.engine,  # device, precision (and why), world size of the adaptation
    )
    if is_main_process():  # under torchrun, one process writes; the checkpoints go once the backbone is in
        save_backbone(dest, overwrite, bb, lm.head, folder, card, t_start)
        shutil.rmtree(work, ignore_errors=True)
    return AdaptReport(
        name=name,
        folder=dest,
        parent=bb.card.name,
        objective=lm.objective,
        fresh_head=lm.fresh,
        seconds=card["seconds"],
        by_name=by_name,
        card=card,
        warnings=runs.warnings,
        **measured,
    )
