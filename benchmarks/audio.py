"""whisper-tiny.en: parity with CTranslate2's own encoder, and embedding throughput.

What is measured (examples/speech, built by examples/build_speech_commands.py):

- `parity_max_abs`: max |difference| between headstart's encoder states (float16 weights read by
  ct2_format, run in float32 PyTorch) and `ctranslate2.models.Whisper(..., compute_type="float32")
  .encode(...)` on the same log-mel input, over the first clip of each word (6 x 1500 x 384 values);
  `parity_p999` its 99.9th percentile; `pooled_max_abs` the same for the pooled embeddings (mean over
  the frames holding audio, the mask taken from headstart's stem on both sides).
- `int8_max_abs`: the same against CTranslate2 with `compute_type="int8"` (why the parity uses float32).
- `clips_per_s`, `cpu_s_per_clip`: `headstart.features.embed(..., cache=False, batch_size=32)` on N
  clips (decode + resample + log-mel + encoder), after a 2-clip warm-up; `load_item_ms` decode + log-mel
  alone; `ct2_cpu_s_per_clip_{float32,int8}`: CTranslate2's encoder alone on the same log-mels.

Run with one thread, as the figures in docs/audio.md were:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audio.py            # 40 clips, ~2 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audio.py --quick    # 12 clips

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

SPEECH = Path(__file__).resolve().parents[1] / "examples" / "speech"
WORDS = ("yes", "no", "up", "down", "left", "right")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import ctranslate2

    from headstart.backbones import create_backbone
    from headstart.backbones.whisper_ct2 import MaskedMeanPool, hidden_states
    from headstart.features import embed

    clips = sorted(str(p) for p in SPEECH.glob("*/*.wav"))
    if not clips:
        raise SystemExit("examples/speech is empty: python examples/build_speech_commands.py")
    bb = create_backbone("whisper-tiny.en")
    model_dir = str(Path(bb.card.weights_file).parent)
    out: dict[str, float | int | str] = {"threads": torch.get_num_threads()}

    firsts = [sorted(SPEECH.glob(f"{w}/*.wav"))[0] for w in WORDS]
    X = bb.collate([bb.load_item(str(p)) for p in firsts])
    with torch.inference_mode():
        acts = bb.forward_groups(X)
    ours, mask = hidden_states(acts).numpy(), acts[..., -1:]
    for compute in ("float32", "int8"):
        ct2 = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type=compute, intra_threads=1)
        ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(X.numpy()), to_cpu=True))
        diff = np.abs(ref - ours)
        if compute == "float32":
            out["parity_max_abs"] = float(diff.max())
            out["parity_p999"] = float(np.quantile(diff, 0.999))
            pooled_ref = MaskedMeanPool()(torch.cat([torch.from_numpy(ref), mask], -1))
            out["pooled_max_abs"] = float((pooled_ref - bb.pool(acts)).abs().max())
        else:
            out["int8_max_abs"] = float(diff.max())

    sample = clips[:: max(1, len(clips) // (12 if args.quick else 40))][: 12 if args.quick else 40]
    embed(bb, sample[:2], cache=False, progress=False)
    c0, t0 = time.process_time(), time.perf_counter()
    embed(bb, sample, cache=False, progress=False, batch_size=32)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out |= {"n_clips": len(sample), "clips_per_s": len(sample) / wall, "cpu_s_per_clip": cpu / len(sample)}
    t0 = time.perf_counter()
    mels = np.stack([bb.load_item(c) for c in sample])
    out["load_item_ms"] = 1000 * (time.perf_counter() - t0) / len(sample)
    for compute in ("float32", "int8"):
        ct2 = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type=compute, intra_threads=1)
        ct2.encode(ctranslate2.StorageView.from_array(mels[:1]), to_cpu=True)
        c0 = time.process_time()
        for i in range(0, len(mels), 8):
            ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mels[i : i + 8])), to_cpu=True)
        out[f"ct2_cpu_s_per_clip_{compute}"] = (time.process_time() - c0) / len(mels)
    for k, v in out.items():
        print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
