"""int8 frozen forwards: the backbone's float ONNX export, quantized the way that fits the network.

- **Conv nets** (a Conv in the graph): static QDQ, per-channel int8 weights and uint8 activations, by ONNX
  Runtime's `quantize_static` after its pre-processing (`quant_pre_process`: shape inference and graph
  optimisation), calibrated (MinMax) on at most CALIBRATION_ITEMS items of the **training split only**:
  those with the smallest content hashes, so the same training set gives the same calibration whatever
  order it is listed in. Dynamic quantisation of convolutions measured 8x slower than float and dropped
  the emoji probe to chance (headstart.export.quantize), hence static.
- **Transformers** (no Conv): dynamic int8 of the MatMul/Gemm layers (int8 weights, activations
  quantised per batch at run time) and of the embedding tables (Gather): no calibration data at all.
  The tables are most of a text encoder's bytes and quantizing them changes nothing measurable in speed
  or features (MiniLM-L6: 58.7 -> 22.9 MB, ONNX Runtime session 105 -> 69 ms, int8-to-float cosine 0.958
  either way); a smaller file is a faster cold start for every command. Runs recorded with the earlier
  MatMul/Gemm-only method (DYNAMIC_MATMUL) rebuild with it.

The quantized model's identity (`Int8Identity.id`) is the hash of the float export's sha256, the method and
the calibration set's hash. It names the file in the cache, keys the feature cache (`cache_key`: float
and int8 features never mix) and is recorded in a run (with the int8 file's sha256 and the calibration
items' hashes), so every later use of the run rebuilds exactly that model or refuses (frozen_precision).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.backbones.base import Backbone
from headstart.errors import BadInput, HeadstartError
from headstart.fileio import atomic_write, atomic_write_json, sha256_file, sha256_file_memo

STATIC = "static-qdq-per-channel"
DYNAMIC = "dynamic-int8-matmul-gather"
DYNAMIC_MATMUL = "dynamic-int8-matmul"  # before session 17: recorded runs rebuild with it
CALIBRATION_ITEMS = 64
CALIBRATION_BATCH = 16
#: Dynamic quantisation of Conv (ConvInteger) measured 8x slower than float on a 2-core CPU and dropped the
#: emoji probe on EfficientNet-Lite0 from 0.685 to chance (0.111): dynamically, only matrix products (and
#: the embedding tables, which only Gather reads).
QUANTIZED_OPS = ("MatMul", "Gemm")
DYNAMIC_OPS = {DYNAMIC: (*QUANTIZED_OPS, "Gather"), DYNAMIC_MATMUL: QUANTIZED_OPS}


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """The quantizers log a warning per tensor they cannot shape-infer (harmless, and very long)."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_dynamic_file(src: Path, dst: Path, ops: Sequence[str] = QUANTIZED_OPS) -> Path:
    """Dynamic int8 copy of the ONNX file `src` at `dst` (the `ops` layers: MatMul/Gemm by default),
    written atomically."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_logging():
        return atomic_write(
            dst,
            lambda tmp: quantize_dynamic(
                str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=list(ops)
            ),
        )


def method_for(float_path: Path) -> str:
    """STATIC for a graph with convolutions, DYNAMIC otherwise (transformers)."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(float_path), load_external_data=False).graph.node}
    return STATIC if "Conv" in ops else DYNAMIC


@dataclass(frozen=True)
class Int8Identity:
    """What makes an int8 backbone: the float export, the method, the calibration items (content hashes)."""

    method: str
    float_sha256: str
    calibration: tuple[str, ...] = ()

    @property
    def calibration_sha256(self) -> str | None:
        return hashlib.sha256("\n".join(self.calibration).encode()).hexdigest() if self.calibration else None

    @property
    def id(self) -> str:
        ident = [self.float_sha256, self.method, self.calibration_sha256]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "float_sha256": self.float_sha256,
            "calibration_sha256": self.calibration_sha256,
            "calibration": list(self.calibration),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> Int8Identity:
        try:
            ident = cls(str(d["method"]), str(d["float_sha256"]), tuple(str(h) for h in d["calibration"]))
        except (KeyError, TypeError) as e:
            raise HeadstartError(
                f"{source} records an int8 frozen forward without its identity ({e})",
                fix="the run folder is damaged: restore run.json, or re-run it",
            ) from e
        if d.get("id") != ident.id:
            raise HeadstartError(
                f"{source}: the recorded int8 identity {d.get('id')} does not match its own fields",
                fix="the run folder is damaged: restore run.json, or re-run it",
            )
        return ident


def calibration_set(backbone: Backbone, sources: Sequence[str]) -> list[tuple[str, str]]:
    """(content hash, source) of the calibration items among `sources` (training items): the
    CALIBRATION_ITEMS distinct readable ones with the smallest hashes."""
    by_hash: dict[str, str] = {}
    for s in sources:
        try:
            by_hash.setdefault(backbone.item_hash(s), s)
        except OSError:
            continue  # unreadable: the embed step reports it
    return sorted(by_hash.items())[:CALIBRATION_ITEMS]


class _Reader:
    """onnxruntime's CalibrationDataReader: the calibration items, decoded and collated in batches."""

    def __init__(self, backbone: Backbone, sources: Sequence[str]) -> None:
        from headstart.onnx_forward import feed

        self.batches = []
        for i in range(0, len(sources), CALIBRATION_BATCH):
            examples = []
            for s in sources[i : i + CALIBRATION_BATCH]:
                with contextlib.suppress(BadInput):  # changed since hashed: left out (the hash says so)
                    examples.append(backbone.load_item(s))
            if examples:
                self.batches.append(feed(backbone.collate(examples)))
        self._it = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.batches)


class Int8Forward:
    """Callable collated batch -> embeddings through the int8 copy of `backbone`'s ONNX export.

    `calibration`: training-split sources (a conv net needs some; a transformer none). The identity is
    known at once (the float export is made if missing); the int8 file is built (or found in the cache) on
    the first call, or by `ensure`. `expected`: a run's recorded identity, refused when this one differs."""

    def __init__(
        self,
        backbone: Backbone,
        calibration: Sequence[str] = (),
        *,
        expected: Int8Identity | None = None,
        root: Path | None = None,
        threads: int | None = None,
    ) -> None:
        from headstart.onnx_forward import float_export

        self.backbone = backbone
        self.threads = threads
        self.float_path, _ = float_export(backbone, root)
        method = method_for(self.float_path)
        calib = calibration_set(backbone, calibration) if method == STATIC else []
        if method == STATIC and not calib and expected is None:
            raise HeadstartError(
                f"int8 {backbone.name} is quantized statically and needs training items to calibrate on; "
                "none was given",
                fix="pass the training split's items as calibration, or use precision fp32",
            )
        self.calibration_sources = [s for _, s in calib]
        self.missing_calibration: list[str] = []  # recorded calibration hashes not among `calibration`
        self.identity = Int8Identity(method, sha256_file_memo(self.float_path), tuple(h for h, _ in calib))
        if expected is not None:
            self.identity = self._matching(expected)
        self.path = self.float_path.with_name(f"{backbone.key}.int8-{self.identity.id}.onnx")
        self._session: Any = None

    def _matching(self, expected: Int8Identity) -> Int8Identity:
        """The recorded identity, when this float export and these calibration items make it (a
        transformer's recorded dynamic method, earlier or current, is rebuilt as recorded)."""
        same_kind = expected.method == self.identity.method or {expected.method, self.identity.method} <= set(
            DYNAMIC_OPS
        )
        if expected.float_sha256 != self.identity.float_sha256 or not same_kind:
            raise HeadstartError(
                f"the float ONNX export of {self.backbone.name} here (sha256 "
                f"{self.identity.float_sha256[:12]}, {self.identity.method}) is not the one the run's int8 "
                f"backbone was quantized from (sha256 {expected.float_sha256[:12]}, {expected.method}): "
                "the torch/onnx versions probably differ",
                fix="use the library versions recorded in the run's run.json, or re-run the probe here",
            )
        have = set(self.identity.calibration)
        self.missing_calibration = [h for h in expected.calibration if h not in have]
        return expected

    @property
    def cache_key(self) -> str:
        """The feature cache's key: the backbone's, plus this int8 model's identity."""
        return f"{self.backbone.key}-int8-{self.identity.id}"

    def ensure(self) -> Path:
        """The int8 file: from the cache, else quantized now from the float export (atomically)."""
        if self.path.is_file():
            return self.path
        if self.missing_calibration:
            n, total = len(self.missing_calibration), len(self.identity.calibration)
            raise HeadstartError(
                f"cannot rebuild the int8 {self.backbone.name}: {n} of its {total} calibration items "
                "(training split, by sha256) are missing or changed, and it is not in the cache "
                f"({self.path})",
                fix="restore the run's training data (split.csv under its data_root), or re-run the probe",
            )
        if self.identity.method == STATIC:
            self._quantize_static()
        else:
            quantize_dynamic_file(self.float_path, self.path, DYNAMIC_OPS[self.identity.method])
        atomic_write_json(
            self.path.with_suffix(".json"),
            {**self.identity.to_dict(), "sha256": sha256_file(self.path), "bytes": self.path.stat().st_size},
        )
        return self.path

    def _quantize_static(self) -> None:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        reader = _Reader(self.backbone, self.calibration_sources)
        with tempfile.TemporaryDirectory(prefix="headstart-int8-") as tmp, quiet_logging():
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(self.float_path), str(pre))
            atomic_write(
                self.path,
                lambda out: quantize_static(
                    str(pre),
                    str(out),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8,
                ),
            )

    def record(self) -> dict[str, Any]:
        """What a run records: the identity, the int8 file's sha256 and size."""
        self.ensure()
        meta = json.loads(self.path.with_suffix(".json").read_text())
        return {
            "precision": "int8",
            **self.identity.to_dict(),
            "sha256": meta["sha256"],
            "bytes": meta["bytes"],
        }

    def session(self) -> Any:
        if self._session is None:
            import torch

            from headstart.onnx_forward import cached_session

            self._session = cached_session(self.ensure(), self.threads or torch.get_num_threads())
        return self._session

    def __call__(self, batch: Any) -> np.ndarray:
        from headstart.onnx_forward import feed

        return self.session().run(None, feed(batch))[0]
