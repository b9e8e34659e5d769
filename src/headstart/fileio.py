"""Atomic writes and content hashes: results are never left half-written."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError

_CHUNK = 1 << 20


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, then rename it over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results should be as readable as any file
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def report_dict(report: Any) -> dict[str, Any]:
    """A report dataclass's fields, in order, as JSON-ready values: a Path becomes its str (None stays None).
    Shallow: the other values are kept as they are (reports hold plain dicts, lists and numbers)."""
    values = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def read_json_memo(path: str | Path) -> dict[str, Any]:
    """A memo kept as a JSON object in the cache (timings and the like): {} when it is missing, unreadable
    or not an object, so a damaged memo is measured again, never an error."""
    try:
        memo = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


_sha_memo: dict[tuple[str, int, int, int], str] = {}


def sha256_file_memo(path: str | Path) -> str:
    """sha256_file, remembered for this process while the file's (inode, size, mtime) stay the same.

    For large read-only artefacts (installed weights) that are verified on every backbone load.
    """
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _sha_memo:
        _sha_memo[key] = sha256_file(path)
    return _sha_memo[key]


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest existing ancestor (a file among them stops the walk: nothing goes below it)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _check_can_create_below(target: Path, path: Path, flag: str, cannot: str) -> None:
    """`target`, or its nearest existing ancestor, is a folder where `path` can be made; else a HeadstartError
    naming `path` (`cannot` says what could not happen). The write test is a temp file made and removed
    there: the one test that holds as root, where os.access lies."""
    folder = _nearest_existing(target)
    if not folder.is_dir():
        raise HeadstartError(
            f"{flag} {path} lies below {folder}, which is a file, so {cannot}",
            fix=f"give {flag} a path whose parent folders are folders, not files",
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".headstart-write-check-", dir=folder)
    except OSError as e:
        raise HeadstartError(
            f"{flag} {path}: cannot write in {folder} ({e.strerror or e})",
            fix=f"give {flag} a folder you can write to (not a read-only mount)",
        ) from e
    os.close(fd)
    os.unlink(name)


def ensure_writable_dir(path: str | Path, *, flag: str = "--out") -> Path:
    """Refuse, before any expensive work, an output folder that cannot be made or written.

    An existing file where the folder should be, a path below a file, or a read-only parent raise a
    HeadstartError naming `path` and the fix. Checks both the folder (written into) and its parent (runs are
    written in a temp folder beside `path` and renamed into place). Nothing is left behind.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise HeadstartError(
            f"{flag} {path} is an existing file, not a folder",
            fix=f"give {flag} a folder path (a new or existing folder), or move the file away",
        )
    for target in dict.fromkeys([path, path.parent]):
        _check_can_create_below(target, path, flag, "no folder can be made there")
    return path


def ensure_writable_file(path: str | Path, *, flag: str = "--out") -> Path:
    """Refuse, before any expensive work, an output file that cannot be written (see ensure_writable_dir)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise HeadstartError(
            f"{flag} {path} is an existing folder, not a file",
            fix=f"give {flag} a file path (e.g. {path / 'model.onnx'})",
        )
    _check_can_create_below(path.parent, path, flag, "it cannot be written")
    return path


def cache_dir() -> Path:
    """Where shared, content-addressed artefacts live (features, ONNX exports, weight hashes)."""
    root = os.environ.get("HEADSTART_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "headstart"
