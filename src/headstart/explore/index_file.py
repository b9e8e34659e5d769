"""Embeddings as files (`headstart embed` writes them, `headstart search` reads them).

An index file holds a dataset's embeddings with what each row is (source, label, split) and how they were
made (backbone, its weights key, dim, modality), in one of two formats chosen by the file's suffix:
- `F.parquet`: columns id, source, label, split, vector (list<float32>); the metadata in the schema's.
- `F.npy`: the (n, d) float32 matrix, with sidecars `F.npy.index.csv` (id,source,label,split) and
  `F.npy.meta.json`; the meta records n, so sidecars of another export are refused, never mixed.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError
from headstart.fileio import atomic_write, atomic_write_json, atomic_write_text

SUFFIXES = (".parquet", ".npy")
FORMAT = "headstart-embeddings/1"
COLUMNS = ("id", "source", "label", "split")
_FORMAT_FIX = (
    "end the file name in .parquet (one file), or .npy (the matrix; F.npy.index.csv and F.npy.meta.json "
    "beside it)"
)


def sidecars(path: Path) -> tuple[Path, Path]:
    """(index CSV, meta JSON) of a `.npy` index file."""
    return path.with_name(path.name + ".index.csv"), path.with_name(path.name + ".meta.json")


def check_out_path(path: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse, before any embedding, an --out of an unknown format, one that exists (without `overwrite`)
    or that cannot be written."""
    from headstart.fileio import ensure_writable_file

    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise HeadstartError(
            f"--out {path}: {path.suffix or 'no suffix'} is not an embeddings format", fix=_FORMAT_FIX
        )
    ensure_writable_file(path)
    taken = [p for p in (path, *(sidecars(path) if path.suffix.lower() == ".npy" else ())) if p.exists()]
    if taken and not overwrite:
        raise HeadstartError(
            f"--out {taken[0]} exists", fix="pass --overwrite to replace it, or give another --out path"
        )
    return path


@dataclass
class IndexFile:
    """An index file read back: rows of `X` line up with `sources`, `labels`, `splits`."""

    path: Path
    X: np.ndarray  # (n, d) float32
    sources: list[str]
    labels: list[str]
    splits: list[str]
    meta: dict[str, Any]  # format, backbone, backbone_key, dim, modality, n, data

    @property
    def modality(self) -> str:
        return str(self.meta["modality"])


def write_index_file(
    path: Path, X: np.ndarray, rows: list[tuple[str, str, str]], meta: dict[str, Any]
) -> list[Path]:
    """Write `X` with its (source, label, split) `rows` and `meta` to `path` (format by suffix), each file
    atomically; the paths written."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    meta = {"format": FORMAT, **meta, "n": int(X.shape[0]), "dim": int(X.shape[1])}
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = list(zip(*rows, strict=True)) if rows else [[], [], []]
        vector = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel(), pa.float32()), X.shape[1])
        table = pa.table(
            {
                "id": pa.array(np.arange(len(rows)), pa.int64()),
                **{c: pa.array(list(v), pa.string()) for c, v in zip(COLUMNS[1:], columns, strict=True)},
                "vector": vector.cast(pa.list_(pa.float32())),
            }
        ).replace_schema_metadata({k: json.dumps(v) for k, v in meta.items()})
        return [atomic_write(path, lambda tmp: pq.write_table(table, tmp))]
    index_csv, meta_json = sidecars(path)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows((i, *r) for i, r in enumerate(rows))
    # The sidecars first, the matrix last: a reader that finds a new matrix finds its rows beside it.
    atomic_write_text(index_csv, buf.getvalue())
    atomic_write_json(meta_json, meta)

    def save(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a handle, not the name: np.save would append ".npy" to the temp name
            np.save(fh, X, allow_pickle=False)

    atomic_write(path, save)
    return [path, index_csv, meta_json]


def _not_an_index(path: Path, why: str) -> HeadstartError:
    return HeadstartError(
        f"{path} is not an index file written by `headstart embed`: {why}", fix=fix_rewrite(path)
    )


def fix_rewrite(path: Path) -> str:
    return f"write it again with `headstart embed DATA --backbone B --out {path} --overwrite`"


def _read_parquet(path: Path) -> tuple[np.ndarray, list[list[str]], dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise _not_an_index(path, f"cannot read it as parquet ({e})") from e
    missing = [c for c in (*COLUMNS, "vector") if c not in table.column_names]
    if missing:
        raise _not_an_index(path, f"no column {', '.join(missing)}")
    meta = {k.decode(): json.loads(v) for k, v in (table.schema.metadata or {}).items() if k != b"pandas"}
    vec = table.column("vector").combine_chunks()
    if (
        not pa.types.is_list(vec.type)
        or vec.null_count
        or len(set(pc.list_value_length(vec).to_pylist())) > 1
    ):
        raise _not_an_index(path, "`vector` is not one list of floats per row, all of the same length")
    flat = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    X = flat.reshape(len(vec), -1) if len(vec) else flat.reshape(0, int(meta.get("dim", 0)))
    return X, [[str(v) for v in table.column(c).to_pylist()] for c in COLUMNS[1:]], meta


def _read_npy(path: Path) -> tuple[np.ndarray, list[list[str]], dict[str, Any]]:
    index_csv, meta_json = sidecars(path)
    for p in (index_csv, meta_json):
        if not p.is_file():
            raise _not_an_index(path, f"its sidecar {p.name} is missing")
    try:
        X = np.load(path, allow_pickle=False)
        meta = json.loads(meta_json.read_text(encoding="utf-8"))
        with index_csv.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, ValueError) as e:
        raise _not_an_index(path, f"cannot read it ({e})") from e
    if X.ndim != 2 or rows[:1] != [list(COLUMNS)] or not isinstance(meta, dict):
        raise _not_an_index(
            path, f"not a 2-D matrix, or {index_csv.name} lacks its {','.join(COLUMNS)} header"
        )
    body = rows[1:]
    if any(len(r) != len(COLUMNS) for r in body):
        raise _not_an_index(path, f"{index_csv.name} has rows without {len(COLUMNS)} fields")
    return X.astype(np.float32, copy=False), [[r[i] for r in body] for i in (1, 2, 3)], meta


def load_index_file(path: str | Path) -> IndexFile:
    """Read an index file (see the module docstring); anything that does not fit is refused, naming it."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise HeadstartError(
            f"INDEX {path}: {path.suffix or 'no suffix'} is not an index format", fix=_FORMAT_FIX
        )
    if not path.is_file():
        raise HeadstartError(
            f"INDEX {path} does not exist", fix=f"make it with `headstart embed DATA --out {path}`"
        )
    X, (sources, labels, splits), meta = (_read_parquet if path.suffix.lower() == ".parquet" else _read_npy)(
        path
    )
    lacking = [k for k in ("backbone", "modality", "n", "dim") if k not in meta]
    if lacking:
        raise _not_an_index(path, f"its metadata lacks {', '.join(lacking)}")
    if X.shape != (meta["n"], meta["dim"]) or len(sources) != X.shape[0]:
        raise _not_an_index(
            path,
            f"{X.shape[0]} vectors of {X.shape[1]}, {len(sources)} rows, but the metadata says "
            f"{meta['n']} of {meta['dim']} (files of different exports mixed?)",
        )
    if not np.isfinite(X).all():
        raise _not_an_index(path, "some vectors hold NaN or infinity")
    return IndexFile(path, X, sources, labels, splits, meta)
