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

Data: the emoji example's classes as distinct augmented JPEGs (benchmarks/_common.py), 20 per class (180)
by default, 6 per class with --quick. Run: `.venv/bin/python benchmarks/finetune.py [--quick]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_json, isolated_cache, machine_load, make_class_folder, rnd

KEYS = ["prefix_cache_speedup", "prefix_cache_acc", "full_forward_acc", "full_vs_hand_ratio"]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small data, one epoch each: under a minute")
    args = ap.parse_args()
    per_class, epochs = (6, 2) if args.quick else (20, 3)
    from headstart.train import fit

    print(f"# {machine_load()}; torch threads {torch.get_num_threads()}", flush=True)
    with isolated_cache() as root:
        data = root / "data"
        make_class_folder(data, per_class, size=160)
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
        "full_epoch_s": {"engine": rnd(t_full), "hand": rnd(t_hand)},
        "n_train": cached.metrics["train"]["n"],
        "epochs": epochs,
    }
    emit_json(result, KEYS)


if __name__ == "__main__":
    main()
