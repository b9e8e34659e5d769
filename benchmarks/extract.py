"""Feature-extraction throughput and memory: headstart's `embed()` against what a user would write.

What is measured (EfficientNet-Lite0 with its packaged ImageNet weights, 224 px input, on the CPU):

- `hand_img_s`: the eager PyTorch loop a user writes by hand: batches of 32, serially, PIL open ->
  RGB -> bicubic resize of the shorter side to 256 -> centre crop 224 -> numpy -> (x/255-0.5)/0.5 ->
  torch tensor -> forward under `torch.no_grad()` in eval mode (default torch threads, no threads of
  its own, no channels_last). One small untimed warm-up forward first (favours the hand loop).
- `hs_img_s`: `headstart.features.embed(backbone, paths, cache=<fresh FeatureCache>, backend="auto")`
  on all N files with a cold feature cache: the time includes hashing every file, the cache lookup,
  decoding, the forward and writing the cache. The ONNX export of the backbone is a one-time cost per
  backbone and machine (cached under HEADSTART_CACHE/onnx); it has already happened when this is
  timed and is printed separately. A separately created backbone instance is used (embed() switches
  a torch backbone to channels_last).
- `ort_forward_img_s`: ONNX Runtime's pure forward (headstart's `OnnxForward`) on tensors decoded
  beforehand, batches of 32, after one untimed warm-up batch: the ceiling for the forward alone.
- `speedup_vs_hand` = hs / hand and `ratio_vs_ort_forward` = hs / ort (goals: >= 5x and >= 0.75x).
- `peak_rss_mb_1k`, `peak_rss_mb_10k`: peak RSS of a fresh child process that imports headstart,
  builds the backbone and runs `embed()` (fresh feature cache) on 1,000 and 10,000 distinct 256 px
  JPEGs. With `--quick` these two keys hold the 200- and 1,000-image runs instead (the printed text
  says so). The goal: peak RSS does not grow with dataset size. The peak is the child's VmHWM
  (/proc/self/status), not ru_maxrss: on Linux a child started with fork/vfork + exec inherits the
  parent's ru_maxrss high-water mark, so ru_maxrss would report this (large) parent's size; it is
  printed alongside for reference. The child also resets VmHWM just before `embed()` (clear_refs), so
  the peak of the extraction phase alone is printed and returned as `embed_peak_rss_mb_*`, next to the
  RSS before it and the size of the returned N x 1280 float32 matrix (5 KB per image), which
  necessarily grows with N.
- `decode_img_s` (extra): headstart's `load_image_tensor` alone, one thread, on the same files.

Test images are N distinct 320 px JPEGs (quality 90) rendered from the bundled emoji with seeded
augmentation (see _common.py), written to a temporary directory; HEADSTART_CACHE points into a fresh
temporary directory, so nothing is read from or written to ~/.cache.

Run (from the repository root):

    .venv/bin/python benchmarks/extract.py            # N=1,000, RSS at 1k/10k; a few minutes
    .venv/bin/python benchmarks/extract.py --quick    # N=200, hand loop on 64, RSS at 0.2k/1k; < 1 min

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    Timer,
    current_rss_mb,
    emit_json,
    isolated_cache,
    machine_load,
    make_images,
    peak_rss_mb,
    reset_peak_rss,
    rnd,
    ru_maxrss_mb,
)

KEYS = (
    "hand_img_s",
    "hs_img_s",
    "ort_forward_img_s",
    "speedup_vs_hand",
    "ratio_vs_ort_forward",
    "peak_rss_mb_1k",
    "peak_rss_mb_10k",
)
BATCH = 32
BACKBONE = "efficientnet_lite0"


def hand_loop(backbone: Any, paths: list[str]) -> tuple[float, np.ndarray]:
    """The hand-written eager PyTorch loop; returns (images/s, embeddings)."""
    import torch
    from PIL import Image

    def load(path: str) -> np.ndarray:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        scale = 256 / min(w, h)
        img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
        w, h = img.size
        left, top = (w - 224) // 2, (h - 224) // 2
        img = img.crop((left, top, left + 224, top + 224))
        x = np.asarray(img, dtype=np.float32)
        return ((x / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)

    backbone.eval()
    with torch.no_grad():  # warm-up, untimed
        backbone(torch.from_numpy(np.stack([load(p) for p in paths[:2]])))
    outs = []
    with Timer() as t, torch.no_grad():
        for i in range(0, len(paths), BATCH):
            x = torch.from_numpy(np.ascontiguousarray(np.stack([load(p) for p in paths[i : i + BATCH]])))
            outs.append(backbone(x).numpy())
    return len(paths) / t.s, np.concatenate(outs)


def ort_forward(backbone: Any, paths: list[str]) -> tuple[float, float]:
    """(export + parity-check seconds, images/s of the pure ONNX Runtime forward on pre-decoded tensors)."""
    from headstart.data.images import load_image_tensor
    from headstart.onnx_forward import OnnxForward

    with Timer() as t_export:
        fwd = OnnxForward(backbone)
    x = np.stack([load_image_tensor(p, backbone.preprocess) for p in paths])
    fwd(x[:BATCH])  # warm-up, untimed
    with Timer() as t:
        for i in range(0, len(x), BATCH):
            fwd(x[i : i + BATCH])
    return t_export.s, len(x) / t.s


def rss_child(list_file: str, fc_root: str) -> None:
    """Child mode: embed the listed files with a fresh cache, print one JSON line with the peak RSS."""
    from headstart.backbones import create_backbone
    from headstart.feature_cache import FeatureCache
    from headstart.features import embed

    paths = Path(list_file).read_text().split("\n")
    bb = create_backbone(BACKBONE)
    cache = FeatureCache(bb.key, root=Path(fc_root))
    load_peak = peak_rss_mb()  # imports + backbone
    before = current_rss_mb()
    reset_ok = reset_peak_rss()
    t0 = time.perf_counter()
    feats = embed(bb, paths, cache=cache, backend="auto", progress=False)
    wall = time.perf_counter() - t0
    embed_peak = peak_rss_mb()
    print(
        json.dumps(
            {
                "n": len(paths),
                "forwards": feats.stats["forwards"],
                "backend": feats.stats["backend"],
                "load_peak_mb": load_peak,
                "rss_before_embed_mb": before,
                "peak_reset": reset_ok,
                "embed_peak_mb": embed_peak,
                "peak_rss_mb": max(load_peak, embed_peak),
                "ru_maxrss_mb": ru_maxrss_mb(),
                "img_s": len(paths) / wall,
                "x_mb": feats.X.nbytes / 2**20,
            }
        )
    )


def run_rss(paths: list[str], root: Path, tag: str) -> dict[str, Any]:
    list_file = root / f"list_{tag}.txt"
    list_file.write_text("\n".join(paths))
    cmd = [sys.executable, __file__, "--rss-child", str(list_file), "--fc-root", str(root / f"fc_rss_{tag}")]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--fc-root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.fc_root)
        return

    n = 200 if args.quick else 1000
    n_hand = 64 if args.quick else n
    rss_small, rss_large = (200, 1000) if args.quick else (1000, 10000)
    t_start = time.perf_counter()
    with isolated_cache("headstart-bench-extract-") as root:
        import torch

        from headstart.backbones import create_backbone
        from headstart.data.images import load_image_tensor
        from headstart.feature_cache import FeatureCache
        from headstart.features import embed

        mode = "quick" if args.quick else "full"
        print(
            f"extract benchmark ({mode}): {BACKBONE}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads; {machine_load()}"
        )
        with Timer() as t:
            paths = make_images(root / "imgs", n, size=320, quality=90)
        print(f"  wrote {n} distinct 320 px JPEGs in {t.s:.1f} s")

        # 1. the hand-written eager loop
        bb_hand = create_backbone(BACKBONE)
        hand_img_s, hand_X = hand_loop(bb_hand, paths[:n_hand])
        print(f"  hand-written eager PyTorch loop ({n_hand:>4} images): {hand_img_s:7.1f} img/s")
        del bb_hand

        # 2. ONNX Runtime pure forward (also creates the one-time ONNX export in this run's cache)
        bb_ort = create_backbone(BACKBONE)
        export_s, ort_img_s = ort_forward(bb_ort, paths)
        print(
            f"  ONNX Runtime pure forward, pre-decoded ({n:>4}): {ort_img_s:7.1f} img/s   "
            f"(one-time ONNX export + parity check took {export_s:.1f} s; in no rate)"
        )
        with Timer() as t:
            for p in paths:
                load_image_tensor(p, bb_ort.preprocess)
        decode_img_s = n / t.s
        print(f"  decode only, load_image_tensor, 1 thread ({n:>4}): {decode_img_s:7.1f} img/s")
        del bb_ort

        # 3. headstart embed(), cold feature cache
        bb_hs = create_backbone(BACKBONE)
        cache = FeatureCache(bb_hs.key, root=root / "fc_hs")
        with Timer() as t:
            feats = embed(bb_hs, paths, cache=cache, backend="auto", progress=False)
        hs_img_s = n / t.s
        st = feats.stats
        print(
            f"  headstart embed(), cold feature cache ({n:>4}): {hs_img_s:7.1f} img/s   "
            f"(backend {st['backend']}, {st['forwards']} forwards, {st['cache_hits']} hits; "
            f"hash {st['hash_s']:.2f} s + embed {st['embed_s']:.2f} s)"
        )
        diff = float(np.abs(feats.X[:n_hand] - hand_X).max())
        print(
            f"  same embeddings as the hand loop? max |diff| = {diff:.1e} "
            f"(largest |value| {np.abs(hand_X).max():.2f})"
        )
        del bb_hs, feats

        speedup = hs_img_s / hand_img_s
        ratio = hs_img_s / ort_img_s
        print(f"  speedup vs hand loop:         {speedup:5.2f}x  (goal >= 5x: {verdict(speedup >= 5)})")
        print(f"  fraction of ORT pure forward: {ratio:5.2f}x  (goal >= 0.75x: {verdict(ratio >= 0.75)})")

        # 4. peak RSS in child processes, small vs large dataset
        with Timer() as t:
            rss_paths = make_images(root / "rss_imgs", rss_large, size=256, quality=90, seed=1)
        print(f"  wrote {rss_large} distinct 256 px JPEGs for the memory runs in {t.s:.1f} s")
        small = run_rss(rss_paths[:rss_small], root, "small")
        large = run_rss(rss_paths, root, "large")
        label = {200: "0.2k", 1000: "1k", 10000: "10k"}
        lo, hi = label[rss_small], label[rss_large]
        for tag, r in ((lo, small), (hi, large)):
            print(
                f"  peak RSS of a child embedding {r['n']:>5} images ({tag:>4}): "
                f"{r['peak_rss_mb']:6.1f} MB "
                f"({r['img_s']:.1f} img/s, {r['forwards']} forwards, {r['backend']})"
            )
            print(
                f"      imports + backbone peak {r['load_peak_mb']:.1f} MB; RSS before embed "
                f"{r['rss_before_embed_mb']:.1f} MB; peak during embed {r['embed_peak_mb']:.1f} MB"
                f"{'' if r['peak_reset'] else ' (peak reset unsupported: whole-process peak)'}; "
                f"returned X {r['x_mb']:.1f} MB; ru_maxrss {r['ru_maxrss_mb']:.1f} MB (inherits parent's)"
            )
        growth = large["peak_rss_mb"] / small["peak_rss_mb"]
        embed_growth = large["embed_peak_mb"] - small["embed_peak_mb"]
        per_img = embed_growth * 1024 / (rss_large - rss_small)
        print(
            f"  peak RSS {hi}/{lo}: {growth:.2f}x; peak during embed grew {embed_growth:+.1f} MB for "
            f"{rss_large - rss_small} more images ({per_img:.1f} KB/image; "
            "the returned X alone is 5.0 KB/image)"
        )
        print(
            f"  goal: RSS does not grow with dataset size -> {verdict(growth < 1.1)} "
            f"(criterion: {hi}/{lo} < 1.10)"
        )
        if args.quick:
            print(
                f"  note: --quick measured {lo}/{hi} images; "
                "the JSON keys peak_rss_mb_1k/_10k hold those figures"
            )
    total = time.perf_counter() - t_start
    print(f"  total wall time {total:.1f} s; {machine_load()}")

    emit_json(
        {
            "hand_img_s": rnd(hand_img_s, 2),
            "hs_img_s": rnd(hs_img_s, 2),
            "ort_forward_img_s": rnd(ort_img_s, 2),
            "speedup_vs_hand": rnd(speedup),
            "ratio_vs_ort_forward": rnd(ratio),
            "peak_rss_mb_1k": rnd(small["peak_rss_mb"], 1),
            "peak_rss_mb_10k": rnd(large["peak_rss_mb"], 1),
            "embed_peak_rss_mb_1k": rnd(small["embed_peak_mb"], 1),
            "embed_peak_rss_mb_10k": rnd(large["embed_peak_mb"], 1),
            "decode_img_s": rnd(decode_img_s, 2),
            "onnx_export_s": rnd(export_s, 2),
            "rss_sizes": [rss_small, rss_large],
            "quick": bool(args.quick),
            "total_s": rnd(total, 1),
        },
        KEYS,
    )


if __name__ == "__main__":
    main()
