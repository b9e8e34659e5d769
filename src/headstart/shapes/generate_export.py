"""`export RUN --onnx` of a generate run (probe or fit): the language model's forward as one ONNX graph.

    headstart export RUN --onnx      # RUN/model.onnx, with model.tokenizer.json and model.card.json beside it

The graph maps (input_ids, attention_mask) to logits over the vocabulary, (batch, length, vocab), both
axes dynamic. Positions are counted from the attention mask inside the graph, so a left-padded batch is
read as `generate` reads it. A LoRA run is merged into a copy of the base first (a plain network); a `full`
run exports its tuned weights; a probe the base as it is. Decoding is the caller's, and the card says how:
greedy, the chat template's user turn and generation prompt, the stop token. The graph has no key/value
cache, so each new token reruns the whole sequence (fine for short answers; slow for long ones).

Before the file is kept, parity with PyTorch (the run as predict loads it, adapter unmerged): max |logit
diff| at every real token of up to PARITY_PROMPTS prompts of the run's test split (else val, or the
--check files), and greedy decoding through ONNX Runtime (a plain loop) giving exactly PyTorch's greedy
tokens for GREEDY_PROMPTS prompts over GREEDY_NEW_TOKENS new tokens. --quantize is refused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.errors import HeadstartError

PARITY_PROMPTS = 4
GREEDY_PROMPTS = 2
GREEDY_NEW_TOKENS = 8


class LMLogits(nn.Module):
    """(input_ids, attention_mask) -> logits: the LM's forward without a cache, positions from the mask."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.lm(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
        )
        return out.logits  # type: ignore[no-any-return]


def parity_prompts(run_dir: Path, check_inputs: Sequence[str | Path] | None) -> tuple[list[str], str]:
    """(prompts, where from): each --check file's text, else the run's test (then val) prompts."""
    from headstart.runs import read_split_rows

    if check_inputs:
        prompts = []
        for f in check_inputs:
            try:
                prompts.append(Path(f).read_text(encoding="utf-8").strip())
            except (OSError, UnicodeDecodeError) as e:
                raise HeadstartError(
                    f"--check {f} is not a readable UTF-8 text file ({type(e).__name__})",
                    fix="give text files, each holding one prompt",
                ) from e
        if not all(prompts):
            raise HeadstartError("a --check file is empty", fix="give text files, each holding one prompt")
        return prompts[:PARITY_PROMPTS], "the --check files"
    rows = read_split_rows(run_dir)
    for split in ("test", "val"):
        prompts = [r.path for r in rows if r.split == split][:PARITY_PROMPTS]
        if prompts:
            return prompts, f"the run's {split} prompts"
    raise HeadstartError(
        f"{run_dir} has no test or val prompts to check the export on",
        fix="give prompts with --check FILE (text files, one prompt each)",
    )


def torch_greedy(lm: nn.Module, tok: Any, ids: list[int], new: int) -> list[int]:
    """PyTorch's greedy tokens after `ids` (transformers' generate, as predict runs it)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        out = lm.generate(  # type: ignore[operator]
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    return [int(t) for t in out[0, len(ids) :]]


def onnx_greedy(session: Any, ids: list[int], new: int, eos: int | None) -> list[int]:
    """Greedy decoding through the graph, as a consumer would write it: no cache, the whole sequence fed
    again for each new token, stop at the end token."""
    seq, out = list(ids), []
    for _ in range(new):
        x = np.asarray([seq], dtype=np.int64)
        logits = session.run(["logits"], {"input_ids": x, "attention_mask": np.ones_like(x)})[0]
        token = int(logits[0, -1].argmax())
        out.append(token)
        seq.append(token)
        if token == eos:
            break
    return out


def _encode(tok: Any, prompts: Sequence[str]) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
    """Each prompt in the chat template (ids), and all of them as one left-padded batch."""
    from headstart.shapes.generate_data import prompt_text

    ids = [list(tok(prompt_text(tok, p), add_special_tokens=False)["input_ids"]) for p in prompts]
    longest = max(len(x) for x in ids)
    batch = torch.full((len(ids), longest), int(tok.pad_token_id), dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, x in enumerate(ids):
        batch[i, longest - len(x) :] = torch.tensor(x)
        mask[i, longest - len(x) :] = 1
    return ids, {"input_ids": batch, "attention_mask": mask}


def _card(run_dir: Path, tuned: Any, tok: Any, out: Path, merged: bool) -> dict[str, Any]:
    from headstart.export.card import tokenizer_path
    from headstart.export.graph import OPSET
    from headstart.runs import run_card

    info = tuned.info
    vocab = int(tuned.lm.get_output_embeddings().weight.shape[0])
    return {
        **run_card(run_dir, info, temperature=1.0),
        "task": "generate",
        "format": "onnx",
        "opset": OPSET,
        "modality": "text",
        "kind": info.kind,
        "classes": [],
        "temperature": 1.0,
        "adapter_merged": merged,
        "inputs": [
            {"name": n, "dtype": "int64", "shape": ["batch", "length"]}
            for n in ("input_ids", "attention_mask")
        ],
        "outputs": [{"name": "logits", "shape": ["batch", "length", vocab]}],
        "decoding": {
            "by": "the caller: this graph is one forward pass, with no key/value cache",
            "prompt": "render the prompt as one user turn with preprocess.chat_template and "
            "add_generation_prompt=True, then tokenize it with the tokenizer beside this file, without "
            "special tokens",
            "method": "greedy (what headstart predict and serve do): append the argmax of the last "
            "position's logits and feed the whole sequence again",
            "stop": {"eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id},
            "max_new_tokens": int(info.params.get("max_new_tokens", 64)),
            "padding": "left-pad a batch (pad_token_id, attention_mask 0): positions come from the mask",
        },
        "preprocess": {
            **info.preprocess,
            "tokenizer_file": tokenizer_path(out).name,
            "chat_template": tok.chat_template,
            "add_special_tokens": False,
            "pad_token_id": tok.pad_token_id,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def export_generate(
    run_dir: Path,
    out: Path | None,
    *,
    quantize: bool = False,
    check_inputs: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """RUN/model.onnx (or `out`): the LM's logits, proven equal to PyTorch (module docstring); the
    tokenizer and the card beside it."""
    from headstart.adapters import merge_adapter
    from headstart.export.card import keep_export
    from headstart.export.graph import ort_session
    from headstart.export.sequence import export_sequence_graph, sequence_parity, sequence_parity_holds
    from headstart.fileio import ensure_writable_file
    from headstart.runs import ONNX_FILE
    from headstart.shapes.generate_predict import load_tuned

    if quantize:
        raise HeadstartError(
            f"--quantize does not run for generate runs ({run_dir}): int8 weights change a language model's "
            "greedy tokens, and this export proves its tokens equal PyTorch's",
            fix=f"export without --quantize: headstart export {run_dir} --onnx",
        )
    run_dir = Path(run_dir)
    out = ensure_writable_file(out or run_dir / ONNX_FILE, flag="--out")
    prompts, where = parity_prompts(run_dir, check_inputs)  # read before the model is loaded
    tuned = load_tuned(run_dir, device="cpu")
    tok = tuned.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise HeadstartError(
            f"the tokenizer of {tuned.info.backbone.name} has no tokenizer.json form (not a fast tokenizer)",
            fix=f"serve the run instead: headstart serve {run_dir}",
        )
    merged = tuned.info.adapter is not None
    exported = tuned.lm
    if merged:  # a plain network: the LoRA update folded into a second load; the first is the reference
        exported = merge_adapter(load_tuned(run_dir, device="cpu").bb).lm.eval()
    card = _card(run_dir, tuned, tok, out, merged)
    ids, batch = _encode(tok, prompts)
    t0 = time.perf_counter()
    export_sequence_graph(LMLogits(exported).eval(), batch, out, card)
    export_s = time.perf_counter() - t0
    session = ort_session(out)
    figures = sequence_parity(session, LMLogits(tuned.lm).eval(), batch)
    figures.update(n=len(prompts), inputs=where)
    eos = tok.eos_token_id
    ref = [torch_greedy(tuned.lm, tok, x, GREEDY_NEW_TOKENS) for x in ids[:GREEDY_PROMPTS]]
    got = [onnx_greedy(session, x, GREEDY_NEW_TOKENS, eos) for x in ids[:GREEDY_PROMPTS]]
    figures["greedy"] = {"prompts": len(ref), "new_tokens": GREEDY_NEW_TOKENS, "torch": ref, "onnx": got}
    figures["greedy"]["identical"] = ref == got
    if not sequence_parity_holds(figures) or ref != got:
        out.unlink(missing_ok=True)
        raise HeadstartError(
            f"the ONNX export of {run_dir} disagrees with PyTorch: max |logit diff| "
            f"{figures['max_abs_diff']:.3g}, token agreement {figures['top1_agreement']:.1%}, greedy tokens "
            f"{'identical' if ref == got else f'differ ({ref} vs {got})'} (nothing kept)",
            fix=f"report this with the run folder; answer with the run meanwhile: headstart serve {run_dir}",
        )
    return keep_export(
        out,
        card,
        figures,
        backend.to_str(),
        task="generate",
        export_s=round(export_s, 3),
        adapter_merged=merged,
        decoding="greedy, by the caller (the card's `decoding`)",
    )
