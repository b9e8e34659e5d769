"""Fine-tuning engine: frozen-prefix caching, and the engine's overhead against a hand-written loop.

What is measured (EfficientNet-Lite0, packaged ImageNet weights, CPU, no augmentation so both sides do
the same work):

- `prefix_cache_speedup`: median training-epoch time of `partial:2` with full forwards through the frozen
  groups (`prefix_cache=False`) divided by the same recipe with the frozen prefix's activations cached
  (`prefix_cache=True`). Same seed, data and recipe; `prefix_cache_acc` / `full_forward_acc` are their
  test accuracies (they should agree within noise: the arithmetic is the same).
- `full_vs_hand_ratio`: median training-epoch time of the engine's `full` recipe divided by a
  hand-written PyTorch loop doing the same step: two parameter groups (backbone at 1/10 of the head's
  rate), Adam(W), cross-entropy, batch 32, backbone in train mode with BatchNorm on its pretrained
  statistics (as the engine does), over the same decoded tensors.
  The hand loop runs before and after the engine (median of both), so a change in the machine's load
  does not land on one side only. Both exclude validation; the engine's epoch includes its bookkeeping
  (per-group optimizer groups, scheduler, progress; checkpoint writes are off, as in any `save=False` call).
- `augmented_prefix_speedup`: `partial:2` with augmentation on (nothing can be cached), the frozen prefix
  run by eager PyTorch (`prefix_cache=False`) vs by ONNX Runtime (the default), median epoch time.

- `precision_chosen`, `bf16_speedup` (per backbone: EfficientNet-Lite0, all-MiniLM-L6-v2 and a random-init
  ViT-Tiny, 192 wide, 12 layers, patch 16 at 224 px, saved as a transformers folder): the training step of
  the `full` recipe timed in fp32 and in bf16 autocast by the engine's own `auto` timing
  (`Engine.choose_precision`, batch 32), their ratio fp32 / bf16, and the precision `auto` chose there.
  On a CPU without native bf16, `auto` keeps fp32 without timing (the speedup is then absent).
- `partial2_phase_s`: the whole `partial:2` phase (every epoch's training time, so the one-off fill of the
  prefix cache in the first epoch is included) next to the median epoch in `partial2_epoch_s`.
- `rss_ratio_10k_vs_1k`: peak RSS (VmHWM) of a child process running `fit --strategy full` (Lite0, fp32,
  one epoch, stopped by a 15 s budget after a few steps) on 1,000 and on 10,000 images (manifest with
  90 val and 90 test items, the rest train: the training set is what grows), and its ratio. Training
  streams its inputs (headstart.train.data), so the peak should not grow with the data (goal <= 1.3).
  `--quick` measures 300 and 3,000 images instead (`rss_ratio_3000_vs_300`: the 10k child alone takes
  ~12 minutes, most of it embedding the training set for the probe head and scoring it at the end);
  `--skip-rss` leaves it out.

Data: the emoji example's classes as distinct augmented JPEGs (benchmarks/_common.py), 20 per class (180)
by default, 6 per class with --quick. Run: `.venv/bin/python benchmarks/finetune.py [--quick]`
(about 25 minutes, 15 of them the 10k RSS child; --quick about 8).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_json, isolated_cache, machine_load, make_class_folder, peak_rss_mb, rnd

KEYS = [
    "prefix_cache_speedup",
    "prefix_cache_acc",
    "full_forward_acc",
    "full_vs_hand_ratio",
    "precision_chosen",
    "bf16_speedup",
    "rss_ratio_10k_vs_1k",
]
RSS_SIZES = (1_000, 10_000)
RSS_QUICK = (300, 3_000)  # --quick: the 10k child alone takes ~12 minutes on 2 cores
HELD_OUT_PER_CLASS = 10


def _epoch_times(report) -> list[float]:  # type: ignore[no-untyped-def]
    return [r["train_seconds"] for r in report.history if r["kind"] == "train"]


def hand_loop_epoch_s(data: Path, epochs: int, seed: int = 0) -> list[float]:
    """A plain PyTorch fine-tuning loop over the same decoded training tensors."""
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.train.data import decode_all

    ds = load_dataset(data, seed=seed)
    bb = create_backbone("efficientnet_lite0")
    train = ds.split("train")
    good, _ = decode_all(bb, [it.source for it in train])
    index = {c: i for i, c in enumerate(ds.classes)}
    x = torch.from_numpy(__import__("numpy").stack([good[it.source] for it in train]))
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.tensor([index[it.label] for it in train])
    head = torch.nn.Linear(bb.embed_dim, len(ds.classes))
    bb.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(
        [{"params": bb.parameters(), "lr": 1e-4}, {"params": head.parameters(), "lr": 1e-3}]
    )
    times = []
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        bb.train()
        for m in bb.modules():  # as the engine fine-tunes a pretrained network: BatchNorm statistics kept
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        t0 = time.perf_counter()
        perm = torch.randperm(len(y), generator=gen)
        for b in range(0, len(perm), 32):
            idx = perm[b : b + 32]
            loss = torch.nn.functional.cross_entropy(head(bb(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


# -- precision: bf16 against fp32, as the engine's `auto` times it -----------------------------------------
def _vit_tiny(folder: Path) -> str:
    """ViT-Tiny's shape (192 wide, 12 layers, 3 heads, patch 16, 224 px), random weights: step time only."""
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768)
    torch.manual_seed(0)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    prep = {"do_resize": True, "size": {"height": 224, "width": 224}, "do_normalize": True, "resample": 2}
    prep |= {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "image_processor_type": "ViTImageProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(prep))
    return f"hf:{folder}"


def precision_choice(backbone: str, sources: list[str]) -> dict[str, object]:
    """What `--precision auto` does for the `full` recipe of `backbone` on a CPU: both step times, choice."""
    from headstart.backbones import create_backbone
    from headstart.recipes import get_recipe
    from headstart.train.data import streamed_split
    from headstart.train.loop import Trainer

    bb = create_backbone(backbone)
    split = streamed_split(bb, sources, torch.zeros(len(sources), dtype=torch.long), max_pixels=10**8)
    trainer = Trainer(bb, 2, get_recipe("full", len(bb.groups)), precision="auto")
    trainer.task.setup(trainer, split, split)
    trainer.place()
    chosen = trainer._precision()
    t = trainer.engine.timings or {}
    out: dict[str, object] = {"chosen": chosen, "reason": trainer.engine.reason}
    if t:
        out |= {"fp32_ms": rnd(t["fp32_s"] * 1e3, 1), "bf16_ms": rnd(t["bf16_s"] * 1e3, 1)}
        out["bf16_speedup"] = rnd(t["fp32_s"] / t["bf16_s"], 2)
    return out


def precision_section(root: Path, images: list[str]) -> dict[str, dict[str, object]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from text import fortune_texts

    texts, _ = fortune_texts(64)
    vit = _vit_tiny(root / "vit_tiny")
    rows = {
        "efficientnet_lite0": precision_choice("efficientnet_lite0", images[:64]),
        "minilm-l6": precision_choice("minilm-l6", texts),
        "vit-tiny (random init)": precision_choice(vit, images[:64]),
    }
    for name, r in rows.items():
        print(f"precision auto, {name}: {r}", flush=True)
    return rows


# -- peak RSS of a fine-tune at 1k and 10k images -----------------------------------------------------------
def rss_child(manifest: str) -> None:
    """Child mode: `fit --strategy full` on the manifest; one JSON line with this process's peak RSS."""
    from headstart.train import fit

    t0 = time.perf_counter()
    r = fit(
        manifest, backbone="efficientnet_lite0", strategy="full", epochs=1, precision="fp32",
        budget_s=15.0, augment=False, save=False, progress=False,
    )  # fmt: skip
    steps = sum(h.get("steps", 0) for h in r.history if h["kind"] == "train")
    wall = time.perf_counter() - t0
    print(
        json.dumps(
            {"peak_rss_mb": peak_rss_mb(), "n_train": r.metrics["train"]["n"], "steps": steps, "s": wall}
        )
    )


def _manifest(root: Path, n: int) -> Path:
    """n images of the 9 classes: HELD_OUT_PER_CLASS each for val and test, the rest train."""
    per_class = n // 9
    labels = make_class_folder(root / f"img{n}", per_class, size=96)
    rows = ["path,label,split"]
    for cls, paths in labels.items():
        for i, p in enumerate(paths):
            split = "val" if i < HELD_OUT_PER_CLASS else "test" if i < 2 * HELD_OUT_PER_CLASS else "train"
            rows.append(f"{p},{cls},{split}")
    out = root / f"manifest{n}.csv"
    out.write_text("\n".join(rows) + "\n")
    return out


def rss_section(root: Path, sizes: tuple[int, int]) -> dict[str, object]:
    """Peak RSS of the child at both sizes; the ratio as `rss_ratio_10k_vs_1k` at the full sizes, as
    `rss_ratio_<big>_vs_<small>` otherwise (--quick), so no key claims sizes it did not measure."""
    peaks: dict[str, object] = {}
    for n in sizes:
        manifest = _manifest(root, n)
        cmd = [sys.executable, __file__, "--rss-child", str(manifest)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"fit --strategy full on {n} images: {row}", flush=True)
        peaks[f"peak_rss_mb_{n}"] = rnd(row["peak_rss_mb"], 0)
        peaks[f"n_train_{n}"] = row["n_train"]
        peaks[f"fit_s_{n}"] = rnd(row["s"], 1)
    small, big = sizes
    name = "rss_ratio_10k_vs_1k" if sizes == RSS_SIZES else f"rss_ratio_{big}_vs_{small}"
    peaks[name] = rnd(peaks[f"peak_rss_mb_{big}"] / peaks[f"peak_rss_mb_{small}"], 3)  # type: ignore[operator]
    return peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small data, fewer epochs: about 6 minutes")
    ap.add_argument("--skip-rss", action="store_true", help="leave out the 1k/10k peak-RSS children")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child)
    per_class, epochs = (6, 2) if args.quick else (20, 3)
    from headstart.train import fit

    print(f"# {machine_load()}; torch threads {torch.get_num_threads()}", flush=True)
    with isolated_cache() as root:
        data = root / "data"
        labels = make_class_folder(data, per_class, size=160)
        images = [p for paths in labels.values() for p in paths]
        precisions = precision_section(root, images)
        common = dict(backbone="efficientnet_lite0", epochs=epochs, augment=False, save=False, progress=False)
        cached = fit(data, strategy="partial:2", prefix_cache=True, **common)
        plain = fit(data, strategy="partial:2", prefix_cache=False, **common)
        t_cached = statistics.median(_epoch_times(cached))
        t_plain = statistics.median(_epoch_times(plain))
        print(f"partial:2 epoch: {t_plain:.2f} s full forwards, {t_cached:.2f} s prefix cached", flush=True)
        # With augmentation the prefix cannot be cached; ONNX Runtime runs it instead of eager PyTorch.
        aug = {**common, "augment": True}
        aug_fast = fit(data, strategy="partial:2", prefix_cache=True, **aug)
        aug_eager = fit(data, strategy="partial:2", prefix_cache=False, **aug)
        t_aug_fast = statistics.median(_epoch_times(aug_fast))
        t_aug_eager = statistics.median(_epoch_times(aug_eager))
        print(
            f"partial:2 augmented epoch: {t_aug_eager:.2f} s eager prefix, {t_aug_fast:.2f} s ONNX prefix",
            flush=True,
        )
        # The hand loop runs before and after the engine, so drift in the machine's load hits both sides.
        hand = hand_loop_epoch_s(data, epochs)
        full = fit(data, strategy="full", **common)
        hand += hand_loop_epoch_s(data, epochs)
        t_full = statistics.median(_epoch_times(full))
        t_hand = statistics.median(hand)
        print(f"full epoch: engine {t_full:.2f} s, hand-written loop {t_hand:.2f} s", flush=True)
        rss = {} if args.skip_rss else rss_section(root, RSS_QUICK if args.quick else RSS_SIZES)
    result = {
        "prefix_cache_speedup": rnd(t_plain / t_cached, 2),
        "prefix_cache_acc": rnd(cached.metrics["test"]["accuracy"]),
        "full_forward_acc": rnd(plain.metrics["test"]["accuracy"]),
        "full_vs_hand_ratio": rnd(t_full / t_hand, 3),
        "augmented_prefix_speedup": rnd(t_aug_eager / t_aug_fast, 2),
        "augmented_acc": {
            "onnx_prefix": rnd(aug_fast.metrics["test"]["accuracy"]),
            "eager_prefix": rnd(aug_eager.metrics["test"]["accuracy"]),
        },
        "partial2_epoch_s": {"prefix_cache": rnd(t_cached), "full_forward": rnd(t_plain)},
        "partial2_phase_s": {
            "prefix_cache": rnd(sum(_epoch_times(cached))),
            "full_forward": rnd(sum(_epoch_times(plain))),
        },
        "precision_chosen": {k: r["chosen"] for k, r in precisions.items()},
        "bf16_speedup": {k: r.get("bf16_speedup") for k, r in precisions.items()},
        "precision_steps": precisions,
        **rss,
        "full_epoch_s": {"engine": rnd(t_full), "hand": rnd(t_hand)},
        "n_train": cached.metrics["train"]["n"],
        "epochs": epochs,
    }
    result.setdefault("rss_ratio_10k_vs_1k", None)  # measured only at the full sizes (not --quick)
    emit_json(result, KEYS)


if __name__ == "__main__":
    main()
