"""The frozen forward through ONNX Runtime: exported once per backbone, cached, parity-checked.

On a 2-core CPU ONNX Runtime runs EfficientNet-Lite0 several times faster than eager PyTorch, and it
is numerically the same network (the export is compared against PyTorch before first use). A text
encoder exports too: its inputs are the collated `input_ids` and `attention_mask`, with dynamic batch and
length axes, so length-bucketed batches run unpadded to a fixed shape; its parity check feeds texts of
different lengths (padding and the mask are exercised).

A transformers backbone is exported with its attention switched to `eager` (`export_attention`): the
`sdpa` graph carries a NaN guard on masked rows (IsNaN, Where) that cost MiniLM-L6 12 % of its int8
forward, and without it the int8 forward ran 864 instead of 737 texts/s (fp32: 407 vs 386) on a 2-core
Xeon. Same network: the parity check compares it with PyTorch as ever.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.backbones.base import Backbone
from headstart.fileio import atomic_write, atomic_write_json, cache_dir

log = logging.getLogger(__name__)

PARITY_ATOL = 1e-3
#: Texts of different lengths for a text backbone's export example and parity check: padded batches.
PARITY_TEXTS = (
    "a dog",
    "the cat sat on the mat",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
)


def input_names(example: Any) -> list[str]:
    """The graph's input names: `input` for one tensor, a dict batch's own keys (a text model's token ids
    and mask)."""
    return list(example) if isinstance(example, dict) else ["input"]


def feed(batch: Any) -> dict[str, np.ndarray]:
    """A collated batch (tensor, array, or dict of them) as ONNX Runtime's {input name: array}."""
    named = batch if isinstance(batch, dict) else {"input": batch}
    return {
        k: np.ascontiguousarray(v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in named.items()
    }


class _Named(nn.Module):
    """Positional tensors -> the dict batch `module` takes (torch.onnx traces positional inputs)."""

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.names = list(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(dict(zip(self.names, inputs, strict=True)))


def export_onnx(module: nn.Module, example: Any, path: Path, *, opset: int = 17) -> Path:
    """Export `module` with a dynamic batch axis (and a dynamic length axis for a dict batch), atomically."""
    module.eval()
    names = input_names(example)
    if isinstance(example, dict):
        # In eval mode: torch.onnx.export puts the traced module back in its own mode afterwards, which
        # would switch `module` (dropout) into training.
        traced: nn.Module = _Named(module, names).eval()
        args = tuple(example.values())
        dynamic = {n: {0: "batch", 1: "length"} for n in names}
    else:
        traced, args, dynamic = module, (example,), {"input": {0: "batch"}}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                traced,
                args,
                str(tmp),
                input_names=names,
                output_names=["output"],
                dynamic_axes={**dynamic, "output": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )

    return atomic_write(path, write)


def _session(path: Path, threads: int, *, optimize: bool = True, save_to: Path | None = None) -> Any:
    """An ONNX Runtime CPU session on `path`; `optimize=False` for a graph optimized already; `save_to`:
    where ONNX Runtime writes the graph it optimized."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Decode threads share these cores: spinning ORT workers would starve them.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    if save_to is not None:
        opts.optimized_model_filepath = str(save_to)
        opts.log_severity_level = 3  # its warning that the copy fits this machine only: we key it so
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def optimized_path(path: Path) -> Path:
    """Where ONNX Runtime's optimized copy of the model file `path` is kept: beside it, named for this
    ONNX Runtime version, this CPU (model and instruction sets: the copy holds layouts chosen for them)
    and the file's own size and time, so another machine, version or a rewritten file never reads it."""
    import onnxruntime as ort

    from headstart.train.precision import cpu_flags, machine_key

    st = path.stat()
    cpu = machine_key().rsplit("|", 1)[0]  # the thread count does not change the graph
    tag = "|".join([ort.__version__, cpu, cpu_flags(), str(st.st_size), str(st.st_mtime_ns)])
    return path.with_name(f"{path.stem}.ort-{hashlib.sha256(tag.encode()).hexdigest()[:12]}.onnx")


def cached_session(path: Path, threads: int) -> Any:
    """`_session(path, threads)`, through ONNX Runtime's optimized copy of `path` (`optimized_path`),
    written by the first session and loaded as is by every later one: a command's cold start. MiniLM-L6
    at int8 opened in 22-35 instead of 69 ms, EfficientNet-Lite0 in 9-12 instead of 26 ms (2-core Zen 4). The
    outputs are the same (tests/test_frozen_forward.py). A copy that fails to load is made again; a cache
    that cannot be written costs only the saving."""
    opt = optimized_path(path)
    if opt.is_file():
        try:
            return _session(opt, threads, optimize=False)
        except Exception as e:  # damaged or truncated: made again below
            log.warning("ONNX Runtime's optimized copy %s does not load (%s); making it again", opt, e)
            opt.unlink(missing_ok=True)
    tmp = opt.with_name(f"{opt.name}.{os.getpid()}.tmp")
    try:
        session = _session(path, threads, save_to=tmp)
        with contextlib.suppress(OSError):
            os.replace(tmp, opt)
        return session
    except Exception:  # the copy could not be written (a read-only cache): a plain session
        return _session(path, threads)
    finally:
        tmp.unlink(missing_ok=True)


def varied_input(backbone: Backbone, n: int = 3) -> Any:
    """A batch that exercises what a fixed example may not: seeded random images, or texts of different
    lengths (a padded batch: a graph traced without padding could drop the attention mask)."""
    example = backbone.example_input(1)
    if isinstance(example, torch.Tensor):
        return torch.randn(n, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    encode = getattr(backbone, "encode", None)
    if encode is None:
        return backbone.example_input(n)
    return backbone.collate([encode(PARITY_TEXTS[i % len(PARITY_TEXTS)]) for i in range(n)])


def parity_on(module: nn.Module, session: Any, batch: Any) -> dict[str, Any]:
    """ONNX Runtime against PyTorch (`module` in eval mode) on `batch`: {"max_abs_diff", "ok"}, ok when the
    difference is float rounding (PARITY_ATOL, relative to the scale)."""
    with torch.inference_mode():
        ref = module(batch).numpy()
    got = session.run(None, feed(batch))[0]
    diff = float(np.abs(ref - got).max())
    return {"max_abs_diff": diff, "ok": diff <= PARITY_ATOL * max(1.0, float(np.abs(ref).max()))}


def check_parity(module: nn.Module, session: Any, input_shape: Sequence[int]) -> dict[str, Any]:
    """`parity_on` 3 seeded random inputs of `input_shape` (one tensor per item)."""
    x = torch.randn(3, *input_shape, generator=torch.Generator().manual_seed(0))
    return parity_on(module, session, x)


#: The attention a transformers backbone is exported with (see the module docstring).
EXPORT_ATTENTION = "eager"


def _switchable_attention(backbone: Backbone) -> str | None:
    """The attention implementation of `backbone`'s transformers model when the export switches it."""
    hf = backbone.hf_model
    impl = getattr(getattr(hf, "config", None), "_attn_implementation", None)
    if not hasattr(hf, "set_attn_implementation") or impl in (None, EXPORT_ATTENTION):
        return None
    return impl


@contextlib.contextmanager
def export_attention(backbone: Backbone) -> Iterator[None]:
    """`backbone`'s transformers model (if any) on EXPORT_ATTENTION while exporting, then back."""
    impl = _switchable_attention(backbone)
    if impl is None:
        yield
        return
    backbone.hf_model.set_attn_implementation(EXPORT_ATTENTION)  # type: ignore[union-attr]
    try:
        yield
    finally:
        backbone.hf_model.set_attn_implementation(impl)  # type: ignore[union-attr]


def float_export(backbone: Backbone, root: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """(the cached float ONNX export of `backbone`, its meta: backbone name, parity figures), written and
    checked against PyTorch on first use; an export that disagrees is an error. A switched attention is
    in the file name, so an export made before the switch is not reused."""
    folder = (root or cache_dir()) / "onnx"
    name = backbone.key + (f".{EXPORT_ATTENTION}-attention" if _switchable_attention(backbone) else "")
    path = folder / f"{name}.onnx"
    meta_path = folder / f"{name}.json"
    if not (path.is_file() and meta_path.is_file()):
        with export_attention(backbone):
            export_onnx(backbone, varied_input(backbone, 2), path)
        parity = parity_on(backbone, _session(path, 1), varied_input(backbone, 3))
        atomic_write_json(meta_path, {"backbone": backbone.name, **parity})
    meta = json.loads(meta_path.read_text())
    if not meta.get("ok"):
        raise RuntimeError(f"ONNX export of {backbone.name} disagrees with PyTorch: {meta}")
    return path, meta


class OnnxForward:
    """Callable collated batch (NCHW floats, or a text model's token ids and mask) -> embeddings, backed by
    the cached ONNX export of `backbone`."""

    def __init__(self, backbone: Backbone, *, root: Path | None = None, threads: int | None = None) -> None:
        self.path, self.meta = float_export(backbone, root)
        self.session = cached_session(self.path, threads or torch.get_num_threads())

    def __call__(self, batch: Any) -> np.ndarray:
        return self.session.run(None, feed(batch))[0]
