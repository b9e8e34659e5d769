"""CTranslate2's `model.bin`, read into torch tensors (and written, for tests and tiny models).

Layout (little-endian; what `ctranslate2.specs.ModelSpec._serialize` writes, binary version 4 to 6):

    u32 binary_version
    str spec_name, u32 spec_revision                       (binary version >= 2)
    u32 n_variables, then per variable:
        str name, u8 rank, u32 dims[rank], u8 dtype_id, u32 n_bytes, bytes data
    u32 n_aliases, then per alias: str alias, str target   (binary version >= 3)

where `str` is a u16 length (counting a trailing NUL) followed by the UTF-8 bytes and the NUL. dtype ids
follow CTranslate2's DataType enum: float32, int8, int16, int32, float16, bfloat16. Quantised weights
(int8 per output row, int16 per tensor) sit beside a `<name>_scale` variable with `q = rint(w * scale)`,
so `w = q / scale`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from headstart.errors import HeadstartError
from headstart.fileio import atomic_write_bytes

_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_SUPPORTED_VERSIONS = (4, 5, 6)
WRITE_VERSION = 6


@dataclass
class Ct2Model:
    """The variables of one model.bin (floats dequantised), with its spec name and the file's sha256."""

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)
    stored_dtypes: dict[str, str] = field(default_factory=dict)  # as in the file, before dequantising
    sha256: str = ""

    def get(self, name: str) -> torch.Tensor:
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise KeyError(name)
        return self.variables[name]


class _Cursor:
    def __init__(self, data: memoryview, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise HeadstartError(
                f"{self.source} ends early (wanted {n} bytes at offset {self.pos} of {len(self.data)})",
                fix="the file is truncated or not a CTranslate2 model.bin: reinstall or re-convert it",
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("H")
        raw = bytes(self.take(n))
        return raw[:-1].decode("utf-8") if raw.endswith(b"\0") else raw.decode("utf-8")


def _to_tensor(buf: memoryview, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype == "bfloat16":  # numpy has no bfloat16: widen the 16 bits into float32's upper half
        bits = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
        arr = bits.view(np.float32)
    else:
        arr = np.frombuffer(buf, dtype=np.dtype(dtype).newbyteorder("<")).copy()
    return torch.from_numpy(np.ascontiguousarray(arr)).reshape(shape)


def _dequantise(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    w = q.to(torch.float32)
    s = scale.to(torch.float32)
    if s.dim() == 0 or s.numel() == 1:
        return w / s.reshape(())
    # int8: one scale per output row (conv weights were flattened to 2-D to compute it)
    return w / s.reshape(-1, *([1] * (w.dim() - 1)))


def read_ct2(
    source: str | Path | bytes, *, keep: Callable[[str], bool] | None = None, dequantise: bool = True
) -> Ct2Model:
    """Parse a model.bin (path or bytes). `keep(name)` selects the variables to materialise (the others
    are skipped without a copy); with `dequantise`, int8/int16 weights with a `_scale` come back as
    float32 and float16/bfloat16 as float32."""
    if isinstance(source, bytes | bytearray):
        data, label = bytes(source), "model.bin (in memory)"
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise HeadstartError(f"cannot read {path}: {e.strerror or e}", fix="check the path") from e
        label = str(path)
    digest = hashlib.sha256(data).hexdigest()
    cur = _Cursor(memoryview(data), label)
    version = cur.unpack("I")
    if version not in _SUPPORTED_VERSIONS:
        raise HeadstartError(
            f"{label}: CTranslate2 binary version {version} is not supported "
            f"(this reader knows {_SUPPORTED_VERSIONS[0]}..{_SUPPORTED_VERSIONS[-1]})",
            fix="re-convert the model with ctranslate2>=3 (ct2-transformers-converter)",
        )
    spec, revision = cur.string(), cur.unpack("I")
    raw: dict[str, torch.Tensor] = {}
    stored: dict[str, str] = {}
    for _ in range(cur.unpack("I")):
        name = cur.string()
        shape = tuple(cur.unpack("I") for _ in range(cur.unpack("B")))
        type_id, n_bytes = cur.unpack("B"), cur.unpack("I")
        if type_id >= len(_DTYPES):
            raise HeadstartError(f"{label}: variable {name} has unknown dtype id {type_id}")
        buf = cur.take(n_bytes)
        dtype = _DTYPES[type_id]
        stored[name] = dtype
        wanted = keep is None or keep(name) or (name.endswith("_scale") and keep(name[: -len("_scale")]))
        if not wanted:
            continue
        expected = (
            int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype.replace("bfloat16", "float16")).itemsize
        )
        if expected != n_bytes:
            raise HeadstartError(f"{label}: variable {name} has {n_bytes} bytes for shape {shape} {dtype}")
        raw[name] = _to_tensor(buf, dtype, shape)
    aliases = {cur.string(): cur.string() for _ in range(cur.unpack("I"))}

    variables: dict[str, torch.Tensor] = {}
    for name, t in raw.items():
        if name.endswith("_scale") and name[: -len("_scale")] in raw:
            continue  # folded into its weight below
        if not dequantise:
            variables[name] = t
        elif stored[name] in ("int8", "int16") and f"{name}_scale" in raw:
            variables[name] = _dequantise(t, raw[f"{name}_scale"])
        elif t.is_floating_point():
            variables[name] = t.to(torch.float32)
        else:
            variables[name] = t
    return Ct2Model(spec, revision, version, variables, aliases, stored, digest)


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _quantise_int8(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """CTranslate2's int8 scheme: per output row, scale = 127 / max|w|, q = rint(w * scale)."""
    flat = w.detach().to(torch.float32).reshape(w.shape[0], -1).numpy()
    amax = np.abs(flat).max(axis=1)
    amax[amax == 0] = 127.0
    scale = (127.0 / amax).astype(np.float32)
    q = np.rint(flat * scale[:, None]).astype(np.int8).reshape(tuple(w.shape))
    return q, scale


def write_ct2(
    path: str | Path | None,
    variables: Mapping[str, torch.Tensor | np.ndarray | int | float],
    *,
    spec: str,
    revision: int = 1,
    dtype: str = "float32",
    aliases: Mapping[str, str] | None = None,
) -> bytes:
    """Serialise variables as a model.bin (atomically to `path` when given); returns the bytes.

    `dtype` is the storage of floating-point matrices (2-D and above): float32, float16 or int8 (with
    per-row `_scale` variables, as `ct2-transformers-converter --quantization int8` stores them). Vectors
    stay float32 except under float16, like the converter's behaviour for non-quantisable variables.
    """
    if dtype not in ("float32", "float16", "int8"):
        raise ValueError(f"unsupported storage dtype {dtype!r}")
    entries: list[tuple[str, np.ndarray]] = []
    for name, value in variables.items():
        if isinstance(value, torch.Tensor):
            arr = value.detach().cpu().numpy()
        elif isinstance(value, bool | int):
            arr = np.asarray(value, dtype=np.int32)  # CTranslate2 has no int64
        else:
            arr = np.asarray(value)
        if arr.dtype.kind == "f":
            if dtype == "int8" and arr.ndim >= 2:
                q, scale = _quantise_int8(torch.from_numpy(np.ascontiguousarray(arr)))
                entries += [(name, q), (f"{name}_scale", scale)]
                continue
            arr = arr.astype(np.float16 if dtype == "float16" else np.float32)
        entries.append((name, arr))
    out = [struct.pack("<I", WRITE_VERSION), _pack_string(spec), struct.pack("<I", revision)]
    out.append(struct.pack("<I", len(entries)))
    for name, arr in entries:
        arr = np.ascontiguousarray(arr)
        out.append(_pack_string(name))
        out.append(struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape))
        type_id = _DTYPES.index(arr.dtype.name)
        data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        out.append(struct.pack("<BI", type_id, len(data)) + data)
    alias_items = list((aliases or {}).items())
    out.append(struct.pack("<I", len(alias_items)))
    out += [_pack_string(a) + _pack_string(t) for a, t in alias_items]
    blob = b"".join(out)
    if path is not None:
        atomic_write_bytes(path, blob)
    return blob
