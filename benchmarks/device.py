"""One engine on any hardware: the same work on the best device present and on the CPU, in one run.

What is measured (EfficientNet-Lite0, packaged ImageNet weights, the emoji example's classes as distinct
augmented JPEGs from benchmarks/_common.py, 160 px):

- `embed_img_s_best` / `embed_img_s_cpu`: images per second of `headstart.features.embed` (decode included,
  no cache, backend `auto`: PyTorch on a GPU, ONNX Runtime on a CPU) on the best device (`--device auto`)
  and on the CPU, after an untimed warm-up pass on each; `embed_img_s_cpu_torch` is the CPU through
  PyTorch, for reference. `embed_speedup` = best / CPU.
- `full_epoch_s_best` / `full_epoch_s_cpu`: median training-epoch seconds of `fit --strategy full`;
  `lpft_epoch_s_*`: the same for `lp-ft` (its head-only first phase included; `lpft_train_s_*` is its
  whole training time). No augmentation, `save=False`. Precision: `auto` on a GPU (bf16 where the GPU has
  it), fp32 on the CPU (what `auto` picks there for this network, without its one-time timed step).
  `full_speedup`, `lpft_speedup` = CPU seconds / best seconds.
- `best_device`: what `auto` resolved to; `same_device` is true on a machine without an accelerator, where
  the run compares the CPU against itself (the ratios then measure noise, and the output says so).

Run: `.venv/bin/python benchmarks/device.py [--quick]` (quick: 4 images per class, 1 epoch of `full`, 2 of
`lp-ft`; under two minutes on two CPU cores). The last line is the JSON result.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_json, isolated_cache, machine_load, make_class_folder, rnd

KEYS = [
    "best_device",
    "same_device",
    "embed_img_s_cpu",
    "embed_img_s_best",
    "embed_speedup",
    "full_epoch_s_cpu",
    "full_epoch_s_best",
    "full_speedup",
    "lpft_epoch_s_cpu",
    "lpft_epoch_s_best",
    "lpft_speedup",
]
BACKBONE = "efficientnet_lite0"


def embed_img_s(paths: list[str], device: str, backend: str = "auto") -> tuple[float, str]:
    """(images per second, backend used) of one uncached pass over `paths`, after a warm-up pass."""
    from headstart.backbones import create_backbone
    from headstart.features import embed

    bb = create_backbone(BACKBONE)
    embed(bb, paths[:8], cache=False, backend=backend, device=device, progress=False)  # export, kernels
    t0 = time.perf_counter()
    feats = embed(bb, paths, cache=False, backend=backend, device=device, progress=False)
    return len(feats.paths) / (time.perf_counter() - t0), str(feats.stats["backend"])


def fit_epochs(data: Path, strategy: str, device: str, epochs: int) -> tuple[float, float, float]:
    """(median epoch seconds, whole training seconds, test accuracy) of one fit on `device`."""
    from headstart.train import fit
    from headstart.train.engine import resolve_device

    precision = "fp32" if resolve_device(device).type == "cpu" else "auto"
    r = fit(
        data,
        backbone=BACKBONE,
        strategy=strategy,
        epochs=epochs,
        augment=False,
        save=False,
        progress=False,
        device=device,
        precision=precision,
    )
    seconds = [h["train_seconds"] for h in r.history if h.get("kind") == "train"]
    return statistics.median(seconds), float(sum(seconds)), float(r.metrics["test"]["accuracy"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small data, 1-2 epochs: under two minutes")
    args = ap.parse_args()
    per_class, full_epochs, lpft_epochs = (4, 1, 2) if args.quick else (20, 3, 4)

    import torch

    from headstart.train.engine import resolve_device

    best = resolve_device("auto")
    same = best.type == "cpu"
    name = torch.cuda.get_device_name(best) if best.type == "cuda" else best.type
    print(f"# {machine_load()}; torch threads {torch.get_num_threads()}; best device {best} ({name})")
    if same:
        print("# no accelerator here: the best device is the CPU, so this compares the CPU with itself")
    result: dict[str, Any] = {"best_device": str(best), "best_device_name": name, "same_device": same}
    with isolated_cache() as root:
        data = root / "data"
        labels = make_class_folder(data, per_class, size=160)
        paths = sorted(p for ps in labels.values() for p in ps)
        cpu_img_s, cpu_backend = embed_img_s(paths, "cpu")
        best_img_s, best_backend = embed_img_s(paths, str(best))
        torch_cpu_img_s, _ = embed_img_s(paths, "cpu", backend="torch")
        print(
            f"embedding {len(paths)} images: {best_img_s:.1f} img/s on {best} ({best_backend}), "
            f"{cpu_img_s:.1f} img/s on the CPU ({cpu_backend}; PyTorch there {torch_cpu_img_s:.1f})",
            flush=True,
        )
        result.update(
            embed_img_s_cpu=rnd(cpu_img_s, 1),
            embed_img_s_best=rnd(best_img_s, 1),
            embed_img_s_cpu_torch=rnd(torch_cpu_img_s, 1),
            embed_backend_cpu=cpu_backend,
            embed_backend_best=best_backend,
            embed_speedup=rnd(best_img_s / cpu_img_s, 2),
            n_images=len(paths),
        )
        for strategy, key, epochs in (("full", "full", full_epochs), ("lp-ft", "lpft", lpft_epochs)):
            cpu_epoch, cpu_train, cpu_acc = fit_epochs(data, strategy, "cpu", epochs)
            best_epoch, best_train, best_acc = fit_epochs(data, strategy, str(best), epochs)
            print(
                f"fit --strategy {strategy}: {best_epoch:.2f} s per epoch on {best}, {cpu_epoch:.2f} s on "
                f"the CPU ({cpu_epoch / best_epoch:.2f}x); test accuracy {best_acc:.3f} / {cpu_acc:.3f}",
                flush=True,
            )
            result.update(
                {
                    f"{key}_epoch_s_cpu": rnd(cpu_epoch),
                    f"{key}_epoch_s_best": rnd(best_epoch),
                    f"{key}_train_s_cpu": rnd(cpu_train),
                    f"{key}_train_s_best": rnd(best_train),
                    f"{key}_speedup": rnd(cpu_epoch / best_epoch, 2),
                    f"{key}_epochs": epochs,
                }
            )
    emit_json(result, KEYS)


if __name__ == "__main__":
    main()
