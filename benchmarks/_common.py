"""Shared helpers for the benchmarks: synthetic test images, an isolated cache, timing and the JSON line.

The test images are photo-like JPEG renderings of the bundled emoji (examples/emoji/images, 80 px
RGB cards): every file is an emoji upscaled with its own seeded augmentation (crop, flip, small
rotation, colour tint, scale, offset, background colour and sensor-like noise), so every file has
distinct bytes *and* distinct content. That matters: headstart's feature cache is content-addressed,
so repeated bytes would be cache hits and flatter the figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EMOJI_ROOT = REPO / "examples" / "emoji" / "images"


def emoji_sources() -> dict[str, list[Path]]:
    """{class name: sorted PNG paths} of the bundled emoji example."""
    classes = sorted(p for p in EMOJI_ROOT.iterdir() if p.is_dir() and not p.name.startswith("."))
    out = {c.name: sorted(c.glob("*.png")) for c in classes}
    if not out or not all(out.values()):
        raise SystemExit(f"no emoji PNGs under {EMOJI_ROOT}")
    return out


def _render(src: Path, size: int, seed: tuple[int, ...]) -> Image.Image:
    """One augmented `size`x`size` RGB rendering of the emoji `src`, fully determined by `seed`."""
    rng = np.random.default_rng(list(seed))
    emoji = Image.open(src).convert("RGBA")
    w, h = emoji.size
    # Random crop keeping 75-100 % of each side.
    cw, ch = int(w * rng.uniform(0.75, 1.0)), int(h * rng.uniform(0.75, 1.0))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    emoji = emoji.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        emoji = emoji.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.15:
        emoji = emoji.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    # Colour tint: per-channel gain on RGB, alpha untouched.
    a = np.asarray(emoji, dtype=np.float32).copy()
    a[..., :3] *= rng.uniform(0.7, 1.3, size=3).astype(np.float32)
    emoji = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGBA")
    # A small rotation (at source size: cheap), then upscale (the sources are 80 px) to 45-95 % of the canvas.
    emoji = emoji.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BICUBIC, expand=True)
    ew, eh = emoji.size
    target = int(size * rng.uniform(0.45, 0.95))
    emoji = emoji.resize((target, max(1, round(target * eh / ew))), Image.Resampling.BICUBIC)
    # Background: a random colour with a gentle gradient and sensor-like noise.
    base = rng.uniform(0, 255, size=3).astype(np.float32)
    slope = rng.uniform(-40, 40, size=3).astype(np.float32)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)[:, None, None] * slope
    bg = np.broadcast_to(base + ramp, (size, size, 3)).copy()
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    ew, eh = emoji.size
    ox = int(rng.integers(-ew // 4, max(1, size - ew + ew // 4)))
    oy = int(rng.integers(-eh // 4, max(1, size - eh + eh // 4)))
    canvas.paste(emoji, (ox, oy), emoji)
    out = np.asarray(canvas, dtype=np.float32) + 4.0 * rng.standard_normal((size, size, 3), dtype=np.float32)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def _write_chunk(jobs: list[tuple[str, str, int, tuple[int, ...]]], quality: int) -> list[tuple[str, str]]:
    done = []
    for src, dst, size, seed in jobs:
        _render(Path(src), size, seed).save(dst, "JPEG", quality=quality)
        done.append((dst, hashlib.sha256(Path(dst).read_bytes()).hexdigest()))
    return done


def _write_all(jobs: list[tuple[str, str, int, tuple[int, ...]]], quality: int) -> list[str]:
    """Write every job (on all cores), check that all files are distinct, return their paths in order."""
    workers = max(1, min(os.cpu_count() or 1, 8))
    chunks = [jobs[i::workers] for i in range(workers)]
    results: list[tuple[str, str]] = []
    if workers == 1 or len(jobs) < 64:
        results = _write_chunk(jobs, quality)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for part in pool.map(_write_chunk, chunks, [quality] * len(chunks)):
                results.extend(part)
    digests = {h for _, h in results}
    if len(digests) != len(jobs):
        raise SystemExit(f"only {len(digests)} distinct files of {len(jobs)}: the cache would see repeats")
    return [j[1] for j in jobs]


def make_images(folder: Path, n: int, *, size: int = 320, quality: int = 90, seed: int = 0) -> list[str]:
    """`n` distinct augmented JPEGs (`size` px square) in `folder`, cycling over all emoji classes."""
    folder.mkdir(parents=True, exist_ok=True)
    srcs = [p for paths in emoji_sources().values() for p in paths]
    jobs = [(str(srcs[i % len(srcs)]), str(folder / f"img_{i:05d}.jpg"), size, (seed, i)) for i in range(n)]
    return _write_all(jobs, quality)


def make_class_folder(
    folder: Path, per_class: int, *, size: int = 320, quality: int = 90, seed: int = 0
) -> dict[str, list[str]]:
    """A `folder/<class>/*.jpg` dataset: `per_class` distinct augmented JPEGs of each emoji class."""
    jobs: list[tuple[str, str, int, tuple[int, ...]]] = []
    labels: dict[str, list[str]] = {}
    for k, (cls, srcs) in enumerate(emoji_sources().items()):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            dst = str(folder / cls / f"{cls}_{i:04d}.jpg")
            jobs.append((str(srcs[i % len(srcs)]), dst, size, (seed, k, i)))
            labels.setdefault(cls, []).append(dst)
    _write_all(jobs, quality)
    return labels


@contextlib.contextmanager
def isolated_cache(prefix: str = "headstart-bench-") -> Iterator[Path]:
    """A fresh temporary directory, set as HEADSTART_CACHE while the block runs (never ~/.cache)."""
    old = os.environ.get("HEADSTART_CACHE")
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        os.environ["HEADSTART_CACHE"] = str(root / "cache")
        try:
            yield root
        finally:
            if old is None:
                os.environ.pop("HEADSTART_CACHE", None)
            else:
                os.environ["HEADSTART_CACHE"] = old


class Timer:
    """`with Timer() as t: ...` then `t.s` is the wall time in seconds."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        self.s = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t0


def ru_maxrss_mb() -> float:
    """getrusage's peak RSS of this process, in MB (Linux reports KiB).

    Caveat on Linux: a child started by fork/vfork + exec inherits the parent's high-water mark at the
    exec, so in a subprocess of a big parent this reads the parent's size, not the child's own.
    """
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak RSS of this process's own address space (VmHWM), in MB; ru_maxrss where /proc is absent."""
    v = _proc_status_mb("VmHWM")
    return ru_maxrss_mb() if v is None else v


def current_rss_mb() -> float:
    v = _proc_status_mb("VmRSS")
    return ru_maxrss_mb() if v is None else v


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: 5 into /proc/self/clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine_load() -> str:
    """The 1-minute load average against the CPU count: other work on the machine skews timings."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return "load average unknown"
    return f"1-min load average {load:.2f} on {os.cpu_count()} CPUs"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for the figures' record."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def emit_json(result: dict[str, Any], keys: Sequence[str]) -> None:
    """Print `result` as the last line, checking the required keys are all there."""
    missing = [k for k in keys if k not in result]
    if missing:
        raise SystemExit(f"benchmark bug: missing JSON keys {missing}")
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


def rnd(x: float, digits: int = 3) -> float:
    return float(round(float(x), digits))
