"""Instruction pairs for `--task generate`: the JSONL reader, the seeded split, the chat-template encoding.

    {"prompt": "Who said: Time is an illusion.", "response": "Douglas Adams"}       # one object a line
    {"prompt": "...", "response": "...", "split": "test"}                          # split optional

A row that is not a JSON object with non-empty string `prompt` and `response` (or whose `split` is not
train/val/test) is an error naming `file:line`, before any model is loaded. Rows without a split are split
with the seed (val and test fractions as for every run); rows with one keep it.

`encode_pair` renders the pair through the tokenizer's own chat template (a user turn, then the assistant
turn) and labels only the response: every position of the prompt and of the template around it (system
prompt, role markers, the generation prompt) is IGNORE, so the loss is the response's alone. The
end-of-turn marker after the response is a target too: the tuned model learns where to stop.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError

IGNORE = -100  # the label of a position the loss skips (torch's cross-entropy ignore_index)
SPLITS = ("train", "val", "test")
FORMAT_FIX = 'write one JSON object per line: {"prompt": "...", "response": "..."} (optional "split")'


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str
    split: str
    where: str  # file:line, for messages

    @property
    def sha256(self) -> str:
        return hashlib.sha256(f"{self.prompt}\0{self.response}".encode()).hexdigest()


@dataclass
class Pairs:
    path: Path
    pairs: list[Pair]
    given_split: int  # rows whose split the file named
    skipped: dict[str, str] = field(default_factory=dict)  # file:line -> why (too long to train on)
    seed: int | None = None  # of the split of the rows that named none

    def split(self, name: str) -> list[Pair]:
        return [p for p in self.pairs if p.split == name]

    def summary(self) -> dict[str, Any]:
        """data.json: the file, the pairs per split. `unit` tells the report's data section that its count
        rows are pairs, not classes (a generate run has none)."""
        counts = {s: {"pairs": len(self.split(s))} for s in SPLITS}
        return {
            "unit": "pairs",
            "n_items": len(self.pairs),
            "seed": self.seed,
            "root": str(self.path.resolve().parent),
            "path": str(self.path),
            "layout": "jsonl prompt/response pairs",
            "modality": "text",
            "task": "generate",
            "counts": counts,
            "given_split": self.given_split,
            "skipped": self.skipped,
        }


def _row(obj: Any, where: str) -> tuple[str, str, str | None]:
    if not isinstance(obj, dict):
        raise HeadstartError(f"{where} is a JSON {type(obj).__name__}, not an object", fix=FORMAT_FIX)
    for key in ("prompt", "response"):
        v = obj.get(key)
        if not isinstance(v, str) or not v.strip():
            got = "missing" if key not in obj else f"{v!r}"[:60]
            raise HeadstartError(
                f"{where} has no usable {key!r} (a non-empty string; got {got})", fix=FORMAT_FIX
            )
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        raise HeadstartError(
            f"{where} has split {split!r}", fix=f"use one of {', '.join(SPLITS)}, or omit it"
        )
    return obj["prompt"], obj["response"], split


def read_pairs(path: str | Path, *, val: float, test: float, seed: int) -> Pairs:
    """Every pair of a JSONL file, split: rows naming a split keep it, the rest are drawn with `seed`."""
    p = Path(path)
    if not p.is_file():
        raise HeadstartError(f"{p} is not a file", fix="give a JSONL file of prompt/response pairs")
    if p.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        raise HeadstartError(f"{p} is not a .jsonl file (--task generate reads JSONL)", fix=FORMAT_FIX)
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise HeadstartError(f"--val {val} --test {test}", fix="fractions in [0, 1) that sum below 1")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise HeadstartError(f"{p} is not UTF-8 ({e})", fix="save it as UTF-8 JSONL") from e
    rows: list[tuple[str, str, str | None, str]] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise HeadstartError(f"{where} is not JSON ({e.msg})", fix=FORMAT_FIX) from None
        rows.append((*_row(obj, where), where))
    if not rows:
        raise HeadstartError(f"{p} has no pairs", fix=FORMAT_FIX)
    free = [i for i, r in enumerate(rows) if r[2] is None]
    random.Random(seed).shuffle(free)
    n_test, n_val = round(test * len(free)), round(val * len(free))
    drawn = {i: "test" for i in free[:n_test]} | {i: "val" for i in free[n_test : n_test + n_val]}
    pairs = [Pair(pr, rs, sp or drawn.get(i, "train"), w) for i, (pr, rs, sp, w) in enumerate(rows)]
    data = Pairs(p, pairs, given_split=len(rows) - len(free), seed=seed if free else None)
    if not data.split("train"):
        raise HeadstartError(f"{p} leaves no pair to train on", fix="give more pairs, or fewer val/test ones")
    return data


# -- the chat template --------------------------------------------------------------------------------------


def prompt_text(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model sees it before answering: the template's user turn + generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise HeadstartError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')} has no chat template",
            fix="--task generate tunes instruction models: use one whose tokenizer defines a chat template "
            "(smollm2-135m)",
        )
    turn = [{"role": "user", "content": prompt}]
    return str(tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True))


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer: Any, prompt: str, response: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one pair in the chat template, labels IGNORE over every prompt/template
    position before the response; cut to `max_length` tokens (the response's end goes first)."""
    head = prompt_text(tokenizer, prompt)
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    full = str(tokenizer.apply_chat_template(turns, tokenize=False))
    if not full.startswith(head):
        raise HeadstartError(
            "the chat template renders the user turn differently with and without the answer",
            fix="use a model whose chat template renders a conversation turn by turn",
        )
    # Tokenised in two parts, so the boundary is exactly where the response starts.
    prompt_ids, rest = _ids(tokenizer, head), _ids(tokenizer, full[len(head) :])
    ids = (prompt_ids + rest)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + rest)[:max_length]
    return ids, labels
