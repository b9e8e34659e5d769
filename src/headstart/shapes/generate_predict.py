"""Greedy generation, and a generate run read back: the base LM with the run's adapter (or full weights),
as predict, serve, evaluate and the behaviour check use it.

`generate` answers prompts in the model's chat template, greedily (the same answer every time), in
left-padded batches; `load_tuned` rebuilds a run after checking every stored file's sha256 and that the
installed base weights are the ones run.json records (`headstart.runs.check_base`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headstart.errors import HeadstartError
from headstart.shapes import ShapePredictor
from headstart.shapes.generate_data import prompt_text

MAX_NEW_TOKENS = 64  # predict and serve: an answer's length at most, in tokens
BATCH = 16


@torch.no_grad()
def generate(
    lm: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = MAX_NEW_TOKENS
) -> list[str]:
    """Greedy answers to `prompts` (each a user turn of the chat template), special tokens removed."""
    if not prompts:
        return []
    device = next(lm.parameters()).device
    texts = [prompt_text(tokenizer, p) for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues every row's end
    was = lm.training
    lm.eval()
    out: list[str] = []
    try:
        for i in range(0, len(texts), BATCH):
            enc = tokenizer(texts[i : i + BATCH], add_special_tokens=False, padding=True, return_tensors="pt")
            enc = {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}  # no token types
            g = lm.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = g[:, enc["input_ids"].shape[1] :]
            out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        lm.train(was)
    return out


@dataclass
class Tuned:
    """A generate run read back: `bb` (the backbone holding the LM), `lm`, `tokenizer`, run.json's info."""

    bb: Any
    lm: Any
    tokenizer: Any
    info: Any
    path: Path


def load_tuned(run_dir: str | Path, *, device: str = "auto") -> Tuned:
    """The base named in run.json with the run's adapter (or fully tuned weights) loaded over it."""
    from headstart.runs import check_base, check_stored_files, load_run_info, load_tensors
    from headstart.shapes.generate_sft import load_base, load_full_state
    from headstart.train.engine import resolve_device

    path = Path(run_dir)
    info = load_run_info(path)
    if info.task != "generate":
        raise HeadstartError(f"{path} is a --task {info.task} run", fix="give a run of fit --task generate")
    check_stored_files(path, info)  # every weight and record file as written
    bb, tok, _ = load_base(info.backbone.name)
    check_base(info, bb, path)
    if info.adapter is not None:
        from headstart.adapters import load_adapter

        bb = load_adapter(bb, path, info.adapter)
    elif info.delta is not None:
        load_full_state(bb.lm, load_tensors(path / info.delta.file), path / info.delta.file)
    lm = bb.lm.to(resolve_device(device)).eval()
    return Tuned(bb=bb, lm=lm, tokenizer=tok, info=info, path=path)


def summary_of(response: str) -> str:
    """The first non-empty line of a response (what plain `predict` prints)."""
    return next((ln.strip() for ln in response.splitlines() if ln.strip()), "")


class GeneratePredictor(ShapePredictor):
    """predict and serve of a generate run: a prompt in, the tuned model's greedy answer out."""

    task = "generate"
    modality = "text"

    def __init__(
        self, run_dir: str | Path, *, device: str = "auto", max_new_tokens: int | None = None
    ) -> None:
        self.tuned = load_tuned(run_dir, device=device)
        self.max_new_tokens = max_new_tokens or int(
            self.tuned.info.params.get("max_new_tokens", MAX_NEW_TOKENS)
        )

    def read_files(self, files: Sequence[str | Path]) -> list[Any]:
        from headstart.errors import BadInput

        out: list[Any] = []
        for f in files:
            try:
                out.append(Path(f).read_text(encoding="utf-8").strip())
            except (OSError, UnicodeDecodeError) as e:
                out.append(BadInput(f"not a readable UTF-8 text file ({type(e).__name__})"))
        return out

    def answer(
        self, sources: Sequence[str], **kw: Any
    ) -> tuple[list[dict[str, Any]], list[int], dict[str, str]]:
        kept = [i for i, s in enumerate(sources) if isinstance(s, str) and s.strip()]
        bad = {s: "empty prompt" for s in sources if isinstance(s, str) and not s.strip()}
        t = self.tuned
        texts = generate(t.lm, t.tokenizer, [sources[i] for i in kept], max_new_tokens=self.max_new_tokens)
        return [{"response": r, "summary": summary_of(r)} for r in texts], kept, bad

    def card(self) -> dict[str, Any]:
        info = self.tuned.info
        return {
            "task": self.task,
            "base": info.backbone.name,
            "strategy": info.strategy,
            "max_new_tokens": self.max_new_tokens,
            "behaviour": info.extra.get("behaviour"),
        }
