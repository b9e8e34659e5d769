"""What precision `auto` means on a CPU: a timed training step in fp32 and in bf16, remembered.

bf16 autocast speeds some networks up and slows others down on the same CPU (depthwise convolutions,
small matrices), so it is measured: one step of the task's own batch, after an untimed warm-up, without
side effects on the model, and the seconds kept in the headstart cache per key (backbone, trained depth,
batch) and machine (CPU model, core and thread count).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

# On a CPU, `auto` picks bf16 only when its timed step is at least this much faster than fp32's: a step
# that is merely as fast is not worth bf16's rounding.
BF16_MARGIN = 0.1
# Timed steps per precision, after one untimed warm-up step; the fastest counts. The step is the training
# batch's own: bf16's gain depends on the matrix sizes (MiniLM on short texts: 2x faster at batch 32, 1.5x
# slower at batch 8, on the same CPU).
TIMED_REPEATS = 1  # one timed step after the warm-up: the memo makes it a one-time cost, kept short
MEMO_FILE = "precision.json"


def cpu_has_bf16() -> bool:
    """Native bf16 on this CPU (AVX-512 BF16 or AMX): without it bf16 is emulated and never faster."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def _cpuinfo() -> tuple[str, ...]:
    """/proc/cpuinfo's lines (none where there is no such file), read once per process."""
    try:
        return tuple(Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return ()


def cpu_flags() -> str:
    """The CPU's instruction-set flags line (x86 `flags`, ARM `Features`; '' where unknown)."""
    return next((ln for ln in _cpuinfo() if ln.startswith(("flags", "Features"))), "")


def machine_key() -> str:
    """The machine and thread count a CPU timing holds for."""
    import torch

    names = (ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name"))
    model = next(names, None) or platform.processor() or platform.machine()
    return f"{model}|{os.cpu_count()} cpus|{torch.get_num_threads()} threads"


def _memo_path() -> Path:
    from headstart.fileio import cache_dir

    return cache_dir() / MEMO_FILE


def _memo() -> dict[str, Any]:
    from headstart.fileio import read_json_memo

    return read_json_memo(_memo_path())


def timed_steps(
    timer: Callable[[str], float], memo_key: str | None, *, write: bool = True
) -> dict[str, float]:
    """{"fp32_s", "bf16_s"}: `timer(precision)`'s seconds, or what the memo holds for `memo_key` on this
    machine and thread count (written back when `write`: the main process)."""
    from headstart.fileio import atomic_write_json

    key = f"{memo_key}|{machine_key()}" if memo_key else None
    known = _memo().get(key) if key else None
    if isinstance(known, dict) and {"fp32_s", "bf16_s"} <= set(known):
        return {k: float(known[k]) for k in ("fp32_s", "bf16_s")}
    out = {f"{p}_s": timer(p) for p in ("fp32", "bf16")}
    if key and write:
        atomic_write_json(_memo_path(), {**_memo(), key: out})
    return out


def remembered(
    memo_file: str, key: str, measure: Callable[[], dict[str, Any]], *, use: bool = True
) -> tuple[dict[str, Any], bool]:
    """(`measure()`'s result, False), kept under `key` in the cache's JSON `memo_file`; (the kept result,
    True) when it is there. `use=False`: measured, the memo neither read nor written."""
    from headstart.fileio import atomic_write_json, cache_dir, read_json_memo

    path = cache_dir() / memo_file
    known = read_json_memo(path).get(key) if use else None
    if isinstance(known, dict):
        return known, True
    out = measure()
    if use:
        atomic_write_json(path, {**read_json_memo(path), key: out})
    return out, False


# Texts are timed at this many tokens (a typical short document; at most the model's limit): a timing is an
# estimate for choices and plans, not a promise about every text.
TIMED_TEXT_TOKENS = 64


def timed_input(backbone: Any, n: int) -> Any:
    """A batch of `n` inputs on the CPU at the backbone's input size, for timed forwards and steps: random
    pixels for images, texts of TIMED_TEXT_TOKENS tokens, the family's own example for other inputs (audio:
    a full window)."""
    import torch

    if backbone.modality == "image":
        return torch.randn(n, *backbone.example_input(1).shape[1:])
    if backbone.modality == "text":
        words = " ".join(["word"] * min(TIMED_TEXT_TOKENS, int(backbone.max_length)))
        return backbone.collate([backbone.encode(words)] * n)
    return backbone.example_input(n)


def time_step(step: Callable[[], Any], repeats: int = TIMED_REPEATS) -> float:
    """Seconds of the fastest of `repeats` calls of `step`, after one untimed warm-up call."""
    step()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


@contextlib.contextmanager
def side_effect_free(modules: list[nn.Module]) -> Iterator[None]:
    """Run a throw-away step: buffers (BatchNorm statistics), gradients, modes and the RNG are restored."""
    import torch

    buffers = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    modes = [(s, s.training) for m in modules for s in m.modules()]
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for s, mode in modes:
                s.train(mode)
            for m in modules:
                for p in m.parameters():
                    p.grad = None
