"""Embeddings, computed once: a streaming extractor over a content-addressed on-disk cache.

The cache key is (backbone key = weights sha256 + preprocessing, sha256 of the file's bytes), so the
same picture costs one forward ever, across runs, datasets and copies of the file. Decoding runs on a
thread pool ahead of the forward, so it overlaps compute instead of adding to it.

Where the forward runs (`forward_device`): PyTorch on the `--device` asked (`auto`: CUDA when present);
ONNX Runtime on the CPU, as headstart installs its CPU build (`onnxruntime`, not `onnxruntime-gpu`). So the
`auto` backend is ONNX Runtime on a CPU and PyTorch on a GPU. On a CUDA device the decode threads also pin
each batch, so its copy to the GPU runs asynchronously.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.backbones.base import Backbone
from headstart.data.images import DEFAULT_MAX_PIXELS
from headstart.errors import BadInput, HeadstartError
from headstart.feature_cache import FeatureCache
from headstart.modality import Modality
from headstart.progress import progress_bar

if TYPE_CHECKING:
    import torch

    from headstart.quantize_forward import Int8Forward

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")


@dataclass
class Features:
    """Embeddings of the good items, in input order, plus what was skipped and what it cost."""

    X: np.ndarray
    paths: list[str]
    hashes: list[str]
    bad: dict[str, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


def _torch_forward(backbone: Backbone, device: torch.device) -> Callable[[Any], np.ndarray]:
    """PyTorch in inference mode; `backbone` must be on `device` when it runs (see `placed`). Each batch
    goes to the device (asynchronously when pinned) and its embeddings come back to the CPU."""
    import torch

    from headstart.train.engine import place

    backbone.eval()  # BatchNorm uses its running statistics, dropout is off
    if backbone.modality == Modality.IMAGE:
        backbone.to(memory_format=torch.channels_last)
    non_blocking = device.type == "cuda"

    def run(batch: Any) -> np.ndarray:
        with torch.inference_mode():
            if device.type != "cpu":
                batch = place(batch, device, non_blocking=non_blocking)
            if isinstance(batch, torch.Tensor) and batch.dim() == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            return backbone(batch).float().cpu().numpy()

    return run


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise HeadstartError(f"unknown backend {backend!r}", fix="use auto, onnx or torch")
    return backend


def forward_device(backend: str = "auto", device: str | torch.device = "auto") -> torch.device:
    """Where a frozen forward with `backend` runs, resolved before any work: PyTorch on `device` (`auto`:
    CUDA when present, else MPS, else the CPU; an absent device is refused); ONNX Runtime on the CPU (the
    CPU build is what headstart installs). `--backend onnx` with a GPU named explicitly contradicts itself
    and is refused; with `--device auto` it runs on the CPU."""
    import torch

    from headstart.train.engine import resolve_device

    check_backend(backend)
    dev = resolve_device(device)
    if backend != "onnx" or dev.type == "cpu":
        return dev
    if str(device) != "auto":
        raise HeadstartError(
            f"--backend onnx with --device {device}: ONNX Runtime runs on the CPU here (headstart installs "
            "its CPU build, onnxruntime)",
            fix=f"use --backend torch (or auto) to run on {device}, or --device cpu for ONNX Runtime",
        )
    return torch.device("cpu")


def make_forward(
    backbone: Backbone, backend: str = "auto", device: torch.device | None = None
) -> tuple[Callable[[Any], np.ndarray], str]:
    """The fastest available frozen forward on `device` (from `forward_device`; None: the CPU): on the CPU,
    ONNX Runtime when it imports and matches PyTorch; on a GPU, PyTorch. A PyTorch forward needs
    `backbone` on `device` while it runs (`embed` sees to that)."""
    import torch

    check_backend(backend)
    device = torch.device("cpu") if device is None else device
    if backend == "onnx" and not backbone.supports_onnx:
        raise HeadstartError(f"{backbone.name} has no ONNX Runtime path", fix="use --backend torch or auto")
    if backend == "onnx" or (backend == "auto" and device.type == "cpu" and _onnx_pays(backbone)):
        try:
            from headstart.onnx_forward import OnnxForward

            return OnnxForward(backbone), "onnx"
        except Exception as e:
            if backend == "onnx":
                raise HeadstartError(f"ONNX Runtime path unavailable: {e}", fix="use --backend torch") from e
            log.warning("ONNX Runtime path unavailable (%s); using PyTorch", e)
    return _torch_forward(backbone, device), "torch"


def _ready_forward(
    backbone: Backbone, backend: str, device: torch.device, int8: Int8Forward | None
) -> tuple[Callable[[Any], np.ndarray], str]:
    """`embed`'s forward and its name, its ONNX Runtime session built (int8's is otherwise lazy)."""
    if int8 is None:
        return make_forward(backbone, backend, device)
    int8.session()
    return int8, "onnx-int8"


def _onnx_pays(backbone: Backbone) -> bool:
    """ONNX Runtime for `auto` on a CPU: images always (several-fold faster wherever measured); other
    inputs where a timed forward on this machine says so (headstart.frozen_precision.onnx_beats_eager)."""
    if not backbone.supports_onnx:
        return False
    if backbone.modality == "image":
        return True
    try:
        return onnx_beats_eager(backbone)
    except Exception as e:  # an export that fails here is the eager path's business, not a crash
        log.warning("ONNX Runtime timing for %s failed (%s); using PyTorch", backbone.name, e)
        return False


TIMED_ITEMS = 32


def forward_seconds(forward: Callable[[Any], Any], x: Any) -> float:
    """Seconds of the fastest of 3 calls `forward(x)`, after a warm-up (allocations, kernel choices)."""
    from headstart.train.precision import time_step

    return time_step(lambda: forward(x), repeats=3)


def onnx_beats_eager(backbone: Backbone) -> bool:
    """Whether ONNX Runtime's float forward beats eager PyTorch for `backbone` on this CPU (a batch of
    TIMED_ITEMS timed inputs), remembered per backbone, machine and thread count. Text does not gain
    everywhere: all-MiniLM-L6-v2 on 360 fortunes ran 1.6x faster through ORT on a 2-core AMD EPYC and 0.9x
    on a 2-core Intel Xeon."""
    import torch

    from headstart.onnx_forward import OnnxForward, float_export
    from headstart.train.precision import machine_key, remembered, timed_input

    def measure() -> dict[str, Any]:
        x = timed_input(backbone, TIMED_ITEMS)
        onnx_s = forward_seconds(OnnxForward(backbone), x)
        eager_s = forward_seconds(_torch_forward(backbone, torch.device("cpu")), x)
        return {"onnx_s": onnx_s, "eager_s": eager_s, "onnx_faster": onnx_s < eager_s}

    # Keyed by the export's own name: a timing of an earlier export (another attention) does not hold.
    export = float_export(backbone)[0].stem
    out, _ = remembered("onnx_vs_eager.json", f"{export}|{TIMED_ITEMS} items|{machine_key()}", measure)
    return bool(out["onnx_faster"])


def by_size(backbone: Backbone, items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(hash, source) pairs ordered by `backbone.sort_key` (length bucketing: batches of similar-length
    texts pad little); input order when the backbone has no sort key. Results are keyed by hash, so the
    caller's order is restored regardless."""
    keys: list[float] = []
    for _, source in items:
        try:
            k = backbone.sort_key(source)
        except BadInput:
            k = 0.0  # reported when the batch loads it
        if k is None:
            return items
        keys.append(k)
    order = sorted(range(len(items)), key=keys.__getitem__)  # stable: ties keep input order
    return [items[i] for i in order]


def _batches(
    backbone: Backbone, items: list[tuple[str, str]], batch_size: int
) -> list[list[tuple[str, str]]]:
    """`items` in batches of `batch_size`, but an image embed's first batch a quarter of that: the forward
    waits for its first batch to decode on one thread (32 emoji: 26-59 ms before, 0-17 after, of a cold
    1.1 s int8 embed), and an image's features do not depend on its batch (ONNX Runtime, Lite0 float and
    int8: bit for bit; eager PyTorch: to float rounding). Text keeps even batches: dynamic int8 scales
    each batch's activations together."""
    first = max(1, batch_size // 4) if backbone.modality == "image" and len(items) > batch_size else 0
    rest = range(first, len(items), batch_size)
    return ([items[:first]] if first else []) + [items[i : i + batch_size] for i in rest]


class BatchBuffers:
    """Float32 batch arrays for decoded images, reused from batch to batch.

    A fresh (32, 3, 224, 224) array per batch (and one per item before stacking) costs page faults, and
    numpy asks the kernel for huge pages on arrays that large, so each fault zeroes 2 MB: in a cold int8
    Lite0 embed on 2 cores this was 0.05-0.3 s of system time and a stacking copy per batch, on the cores
    the forward needs (docs/frozen-precision.md). A buffer goes back once its forward has returned."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self._free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()

    def take(self) -> np.ndarray:
        try:
            return self._free.get_nowait()
        except queue.Empty:  # no more alive than batches in flight (workers + 2)
            return np.empty(self.shape, np.float32)

    def give(self, buf: np.ndarray) -> None:
        self._free.put(buf)


def _decode_into(
    sources: Sequence[str], backbone: Backbone, max_pixels: int, buffers: BatchBuffers
) -> tuple[list[int], Any, dict[str, str], np.ndarray]:
    """`_decode_batch` writing each image straight into a reused buffer; the batch is a view of it."""
    import torch

    ok: list[int] = []
    bad: dict[str, str] = {}
    buf = buffers.take()
    for i, p in enumerate(sources):
        try:
            backbone.load_item_into(p, buf[len(ok)], max_pixels=max_pixels)
            ok.append(i)
        except BadInput as e:
            bad[p] = e.reason
    return ok, torch.from_numpy(buf[: len(ok)]) if ok else None, bad, buf


def _decode_batch(
    sources: Sequence[str], backbone: Backbone, max_pixels: int, pin_memory: bool = False
) -> tuple[list[int], Any, dict[str, str], None]:
    ok, examples, bad = [], [], {}
    for i, p in enumerate(sources):
        try:
            examples.append(backbone.load_item(p, max_pixels=max_pixels))
            ok.append(i)
        except BadInput as e:
            bad[p] = e.reason
    if not examples:
        return ok, None, bad, None
    batch = backbone.collate(examples)
    if pin_memory:  # here, on the decode thread: the pinning copy overlaps the GPU's forward
        from headstart.train.engine import pin

        batch = pin(batch)
    return ok, batch, bad, None


def _owned(out: np.ndarray, buf: np.ndarray | None) -> np.ndarray:
    """A forward's output, copied when it is a view of its reused input buffer (a plugin whose forward
    slices its input): the buffer is refilled with the next batch before the features are read."""
    return out.copy() if buf is not None and np.may_share_memory(out, buf) else out


def _decoder(
    backbone: Backbone, max_pixels: int, pin_memory: bool, batch: int
) -> tuple[Callable[[Sequence[str]], tuple[list[int], Any, dict[str, str], Any]], BatchBuffers | None]:
    """How the decode threads turn a batch's sources into its input: straight into reused buffers for
    plain images on the CPU; else item by item, collated (and pinned for a CUDA forward)."""
    if backbone.decodes_into and not pin_memory:
        side = backbone.image_preprocess.input_size
        buffers = BatchBuffers((batch, 3, side, side))
        return partial(_decode_into, backbone=backbone, max_pixels=max_pixels, buffers=buffers), buffers
    return partial(_decode_batch, backbone=backbone, max_pixels=max_pixels, pin_memory=pin_memory), None


#: The options of `embed` that a verb's config (ProbeConfig, a ProbeClassifier) carries under the same names.
EMBED_OPTIONS = ("cache", "backend", "batch_size", "strict", "progress", "device")


def embed_options(config: object, **more: Any) -> dict[str, Any]:
    """`embed`'s keyword arguments read from a config that names them alike (and `more`)."""
    return {k: getattr(config, k) for k in EMBED_OPTIONS} | more


def _content_hashes(backbone: Backbone, paths: list[str]) -> tuple[list[str | None], dict[str, str]]:
    """Each input's content hash (None where unreadable), and the unreadable ones with the reason."""
    hashes: list[str | None] = []
    bad: dict[str, str] = {}
    for p in paths:
        try:
            hashes.append(backbone.item_hash(p))
        except OSError as e:
            hashes.append(None)
            bad[p] = f"cannot read ({e.strerror or e})"
    return hashes, bad


def _tail_cache(backbone: Backbone, store: FeatureCache | None) -> FeatureCache | None:
    """The plain backbone's cache, for a `depths:` backbone: every depth's features end with the plain
    embedding, so one pass fills both."""
    if store is None or backbone.pooled == "last":
        return None
    return FeatureCache(backbone.last_key, root=store.path.parent.parent)


def embed(
    backbone: Backbone,
    paths: Sequence[str | Path],
    *,
    cache: bool | FeatureCache = True,
    backend: str = "auto",
    batch_size: int = 32,
    workers: int = 2,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    device: str | torch.device = "auto",
    int8: Int8Forward | None = None,
) -> Features:
    """Embed files with `backbone`, reading the cache first and doing backbone work only for misses.

    Unreadable files are skipped and listed in `Features.bad` with the reason, or raise with `strict`.
    `device` (see `forward_device`): where the backbone runs; it is back where it was afterwards. The
    cache is shared across devices (embeddings agree to float rounding). `stats` records the backend, the
    device and the precision used. `int8` (headstart.quantize_forward): the frozen forward at int8, through
    ONNX Runtime on the CPU, with its own cache entries (keyed by the quantized model's identity).
    """
    t0 = time.perf_counter()
    if int8 is not None and backend == "torch":
        raise HeadstartError(
            "an int8 frozen forward runs through ONNX Runtime, not --backend torch",
            fix="use --backend auto (or onnx) with --precision int8, or --precision fp32 with torch",
        )
    # An absent device is refused before any file is read; the int8 forward is ONNX Runtime's (CPU).
    dev = forward_device(backend, device) if int8 is None else forward_device("onnx", "auto")
    paths = [str(p) for p in paths]
    hashes, bad = _content_hashes(backbone, paths)
    key = backbone.key if int8 is None else int8.cache_key  # float and int8 features never mix
    if isinstance(cache, FeatureCache) and cache.key != key:  # a float cache handed to an int8 forward
        cache = FeatureCache(key, root=cache.path.parent.parent)
    store = cache if isinstance(cache, FeatureCache) else FeatureCache(key) if cache else None
    tail = _tail_cache(backbone, store) if int8 is None else None
    found = store.get_many([h for h in hashes if h]) if store is not None else {}
    t_hash = time.perf_counter()

    # Files to compute: one per distinct content.
    todo: dict[str, str] = {}
    for p, h in zip(paths, hashes, strict=True):
        if h and h not in found and h not in todo:
            todo[h] = p
    computed: dict[str, np.ndarray] = {}
    backend_used = "none"
    if todo:
        from headstart.train.engine import placed

        items = by_size(backbone, list(todo.items()))
        batches = _batches(backbone, items, batch_size)
        decode, buffers = _decoder(backbone, max_pixels, dev.type == "cuda", min(batch_size, len(items)))
        with (
            placed(backbone, dev),  # ONNX Runtime exports from the CPU; PyTorch runs on `dev`
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
            progress_bar(len(items), f"embedding with {backbone.name}", enabled=progress) as advance,
        ):
            pending: deque[Future] = deque()
            submit = iter(batches)

            def fill() -> None:
                # Keep `workers + 1` batches decoding ahead of the forward.
                while len(pending) < workers + 1:
                    b = next(submit, None)
                    if b is None:
                        return
                    sources = [p for _, p in b]
                    pending.append(pool.submit(decode, sources))
                    pending[-1].batch = b  # type: ignore[attr-defined]

            fill()  # the first batches decode while the forward's session is built (a cold one: ~10 ms)
            forward, backend_used = _ready_forward(backbone, backend, dev, int8)
            while pending:
                fut = pending.popleft()
                fill()
                ok, x, batch_bad, buf = fut.result()
                batch = fut.batch  # type: ignore[attr-defined]
                bad.update(batch_bad)
                if x is not None:
                    out = _owned(forward(x), buf)
                    new = [(batch[i][0], out[j]) for j, i in enumerate(ok)]
                    computed.update(new)
                    if store is not None:
                        store.put_many(new)
                    if tail is not None:
                        tail.put_many((h, v[-backbone.last_dim :]) for h, v in new)
                if buf is not None:  # the forward has returned (a new array): the input buffer is free
                    buffers.give(buf)  # type: ignore[union-attr]
                advance(len(batch))
    t_embed = time.perf_counter()

    if bad and strict:
        listed = "\n".join(f"  {p}: {r}" for p, r in sorted(bad.items()))
        raise HeadstartError(
            f"{len(bad)} unreadable file(s):\n{listed}", fix="fix or remove them, or drop --strict"
        )
    good = [
        (p, h)
        for p, h in zip(paths, hashes, strict=True)
        if h and p not in bad and (h in found or h in computed)
    ]
    X = (
        np.stack([found.get(h, computed.get(h)) for _, h in good]).astype(np.float32)
        if good
        else np.zeros((0, backbone.embed_dim), np.float32)
    )
    return Features(
        X=X,
        paths=[p for p, _ in good],
        hashes=[h for _, h in good],
        bad=bad,
        stats={
            "n_files": len(paths),
            "cache_hits": sum(1 for h in hashes if h in found),
            "forwards": len(computed),
            "hash_s": t_hash - t0,
            "embed_s": t_embed - t_hash,
            "total_s": time.perf_counter() - t0,
            "backend": backend_used,  # type: ignore[dict-item]
            "device": str(dev) if todo else "none",  # type: ignore[dict-item]
            "precision": "fp32" if int8 is None else "int8",  # type: ignore[dict-item]
        },
    )
