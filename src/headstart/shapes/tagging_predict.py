"""A tagging run in use: predict/serve answer a text with its tagged spans; export writes token logits.

An input text is split on whitespace into words (as a CoNLL file holds them); the answer lists the words,
their tags and the entities as spans of word offsets:

    {"tokens": ["Paris", "is", "nice"], "tags": ["B-LOC", "O", "O"],
     "spans": [{"text": "Paris", "type": "LOC", "start": 0, "end": 1}], "summary": "Paris/LOC"}

The ONNX export maps (input_ids, attention_mask) to per-subword logits (batch, length, labels); a consumer
tokenizes the words pre-split with the tokenizer saved beside it and reads each word at its first subword
(the card says so). Parity with PyTorch is checked on real sentences of the run before the file is kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headstart.errors import BadInput, HeadstartError
from headstart.shapes import ShapePredictor

#: Parity of the export: how many sentences (the tolerance: headstart.export.sequence.SEQUENCE_PARITY_TOL).
PARITY_SENTENCES = 16


class TagPredictor(ShapePredictor):
    task = "tag"
    modality = "text"

    def __init__(self, run_dir: Path, device: str = "auto") -> None:
        from headstart.features import forward_device
        from headstart.shapes.tagging_run import load_tagger
        from headstart.train.engine import place

        self.device = forward_device("torch", device)
        self.tagger, self.run = load_tagger(run_dir)
        place(self.tagger, self.device)
        self.labels = list(self.run.info.classes)
        self.classes = self.labels

    def read_files(self, files: Sequence[str | Path]) -> list[Any]:
        out: list[Any] = []
        for f in files:
            try:
                out.append(Path(f).read_bytes().decode("utf-8"))
            except OSError as e:
                out.append(BadInput(f, f"cannot read: {e.strerror}"))
            except UnicodeDecodeError as e:
                out.append(BadInput(f, f"not UTF-8 text ({e.reason} at byte {e.start})"))
        return out

    def answer(
        self, sources: Sequence[str], **kw: Any
    ) -> tuple[list[dict[str, Any]], list[int], dict[str, str]]:
        from headstart.shapes.tagging_metrics import spans
        from headstart.shapes.tagging_run import predict_tags

        kept = [i for i, s in enumerate(sources) if isinstance(s, str) and s.split()]
        bad = {str(s): "empty text (no word to tag)" for i, s in enumerate(sources) if i not in kept}
        words = [sources[i].split() for i in kept]
        tags, _ = predict_tags(self.tagger, words, self.labels, self.device) if words else ([], 0)
        answers = []
        for w, t in zip(words, tags, strict=True):
            found = spans(w, t)
            summary = " ".join(f"{s['text']}/{s['type']}" for s in found) or "no entity"
            answers.append({"tokens": w, "tags": t, "spans": found, "summary": summary})
        return answers, kept, bad

    def card(self) -> dict[str, Any]:
        return {
            "task": "tag",
            "labels": self.labels,
            "alignment": "first-subword",
            "input": "whitespace words",
        }


def _check_sentences(run_dir: Path, check_inputs: Sequence[str | Path] | None) -> list[list[str]]:
    """Sentences for the parity check: the caller's text files (one sentence per line), else the run's
    test then val sentences."""
    from headstart.runs import read_split_rows
    from headstart.shapes.tagging_data import sentences_of_rows

    if check_inputs:
        out = []
        for f in check_inputs:
            try:
                out += [ln.split() for ln in Path(f).read_text(encoding="utf-8").splitlines() if ln.split()]
            except (OSError, UnicodeDecodeError) as e:
                raise HeadstartError(f"cannot read {f}: {e}", fix="give UTF-8 text files") from None
    else:
        rows = read_split_rows(run_dir)
        out = [list(s.tokens) for sp in ("test", "val") for s in sentences_of_rows(rows, sp)]
    if not out:
        raise HeadstartError(
            f"no sentence to check the export of {run_dir} on", fix="give --check text files"
        )
    return out[:PARITY_SENTENCES]


def export_tagger(
    run_dir: Path,
    out: Path | None,
    *,
    quantize: bool = False,
    check_inputs: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """RUN/model.onnx (or `out`): token logits, proven equal to PyTorch; card and tokenizer beside it."""
    from headstart.adapters import merge_adapter
    from headstart.export.card import keep_export, tokenizer_path
    from headstart.export.graph import ort_session
    from headstart.export.sequence import export_sequence_graph, sequence_parity, sequence_parity_holds
    from headstart.runs import ONNX_FILE, run_card
    from headstart.shapes.tagging_model import Onnx, encode_words, text_tokenizer
    from headstart.shapes.tagging_run import load_tagger

    if quantize:
        raise HeadstartError("--quantize does not run for --task tag yet", fix="export without --quantize")
    out = out or run_dir / ONNX_FILE
    sentences = _check_sentences(run_dir, check_inputs)  # read before the model is loaded
    tagger, run = load_tagger(run_dir)
    if run.info.adapter is not None:  # a plain network: the LoRA update folded into the base weights
        merge_adapter(tagger.backbone)
    bb = tagger.backbone
    tok = text_tokenizer(bb)
    encs = encode_words(tok, sentences)
    batch = bb.collate([e.ids for e in encs])
    wrapper = Onnx(tagger).eval()
    info = run.info
    card: dict[str, Any] = {
        **run_card(run_dir, info, temperature=1.0),
        "task": "tag",
        "format": "onnx",
        "modality": "text",
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "length"]} for n in batch],
        "outputs": [{"name": "logits", "shape": ["batch", "length", len(info.classes)]}],
        "classes": list(info.classes),
        "temperature": 1.0,
        "kind": info.kind,
        "decoding": (
            "first-subword: split the text into words, tokenize them pre-split (is_split_into_words) with "
            "the tokenizer beside this file, and read each word's tag as the argmax of the logits at its "
            "first subword (the other subwords and special tokens carry no label); words cut by the max "
            "length are tagged O; entities are IOB2 chunks"
        ),
        "preprocess": {
            **bb.preprocess.to_dict(),
            "pad_id": bb.pad_id,
            "tokenizer_file": tokenizer_path(out).name,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    t0 = time.perf_counter()
    export_sequence_graph(wrapper, {k: v[:2] for k, v in batch.items()}, out, card)
    export_s = time.perf_counter() - t0
    figures = sequence_parity(ort_session(out), wrapper, batch)
    figures.update(n=len(sentences), inputs="given files" if check_inputs else "the run's test/val sentences")
    if not sequence_parity_holds(figures):
        out.unlink(missing_ok=True)
        raise HeadstartError(
            f"the ONNX export of {run_dir} disagrees with PyTorch: max |logit diff| "
            f"{figures['max_abs_diff']:.3g}, token agreement {figures['top1_agreement']:.1%} "
            "(nothing kept)",
            fix="report this with the run folder; predict with the run (PyTorch) meanwhile",
        )
    return keep_export(
        out,
        card,
        figures,
        tok.to_str(),
        task="tag",
        export_s=round(export_s, 3),
        classes=list(info.classes),
        decoding="first-subword",
    )
