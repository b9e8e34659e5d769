"""`ModelStore`: named models, numbered immutable versions, aliases with rollback, integrity checks (the
store's layout, its references and what it guarantees: see `headstart.store`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.fileio import atomic_write_json, ensure_writable_dir, sha256_file
from headstart.store.behaviour import behaviour_gate, checked_run
from headstart.store.card import CARD_FILE, model_card, read_json, run_files
from headstart.store.mlflow_mirror import import_mlflow, log_mlflow
from headstart.store.names import _check_name, default_name, is_valid_name

DEFAULT_STORE = "headstart-models"
INDEX_FILE = "index.json"
MANIFEST_FILE = "manifest.json"
_REF = re.compile(r"^(?P<name>[^:@]+)(?::v?(?P<version>\d+)|@(?P<alias>[A-Za-z0-9._-]+))?$")


def store_root(store: str | Path | None = None) -> Path:
    return Path(store or os.environ.get("HEADSTART_MODELS") or DEFAULT_STORE).expanduser()


def is_stored_version(path: str | Path) -> bool:
    """Whether `path` is a version folder of a store (it holds a manifest and a card), never modified."""
    return (Path(path) / MANIFEST_FILE).is_file() and (Path(path) / CARD_FILE).is_file()


def _version_number(version: int | str) -> int:
    m = re.fullmatch(r"v?(\d+)", str(version).strip())
    if not m:
        raise HeadstartError(f"invalid version {version!r}", fix="write it as 2 or v2")
    return int(m.group(1))


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Exclusive lock on <store>/.lock for one write (released even if the writer dies)."""
    ensure_writable_dir(root, flag="--store")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class ModelStore:
    """Versions of named models in one folder (see the module docstring)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = store_root(root)

    # -- reading -----------------------------------------------------------------------------------
    def _model_dir(self, name: str) -> Path:
        return self.root / _check_name(name)

    def _index(self, name: str) -> dict[str, Any]:
        f = self._model_dir(name) / INDEX_FILE
        if not f.is_file():
            return {"next_version": 1, "aliases": {}, "history": {}, "events": []}
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise HeadstartError(f"{f} is damaged: {e}", fix="restore it from a backup") from e

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_valid_name(p.name))

    def versions(self, name: str) -> list[int]:
        d = self._model_dir(name)
        if not d.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in d.iterdir() if p.is_dir() and re.fullmatch(r"v\d+", p.name))

    def _require_model(self, name: str) -> list[int]:
        found = self.versions(name)
        if not found:
            known = ", ".join(self.names()) or "none"
            raise HeadstartError(
                f"no model named {name!r} in {self.root} (models: {known})",
                fix="`headstart models register RUN --name NAME` first, or check --store",
            )
        return found

    def version_dir(self, name: str, version: int | str) -> Path:
        n = _version_number(version)
        found = self._require_model(name)
        if n not in found:
            raise HeadstartError(
                f"{name} has no version v{n} (versions: {', '.join(f'v{v}' for v in found)})",
                fix="`headstart models list` shows what is stored",
            )
        return self._model_dir(name) / f"v{n}"

    def resolve(self, ref: str) -> tuple[str, int]:
        """'emoji' (latest) | 'emoji:v2' | 'emoji@production' -> (name, version number)."""
        m = _REF.match(ref.strip())
        if not m:
            raise HeadstartError(
                f"cannot read model reference {ref!r}", fix="write NAME, NAME:v2 or NAME@alias"
            )
        name = _check_name(m["name"])
        found = self._require_model(name)
        if m["version"]:
            self.version_dir(name, m["version"])
            return name, int(m["version"])
        if m["alias"]:
            if m["alias"] == "latest":
                return name, found[-1]
            aliases = self._index(name)["aliases"]
            if m["alias"] not in aliases:
                raise HeadstartError(
                    f"{name} has no alias {m['alias']!r} (aliases: {', '.join(aliases) or 'none'})",
                    fix=f"`headstart models promote {name} VERSION --alias {m['alias']}`",
                )
            return name, int(aliases[m["alias"]])
        return name, found[-1]

    def verify(self, name: str, version: int | str) -> Path:
        """Check every file of a version against its manifest; the version folder if all match."""
        vdir = self.version_dir(name, version)
        mf = vdir / MANIFEST_FILE
        try:
            manifest = json.loads(mf.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise HeadstartError(
                f"{mf} is missing or damaged: {e}", fix="this stored version cannot be trusted; re-register"
            ) from e
        for fname, rec in manifest["files"].items():
            f = vdir / fname
            if not f.is_file():
                raise HeadstartError(
                    f"stored file {f} is missing",
                    fix="this stored version is incomplete; re-register the run",
                )
            if f.stat().st_size != rec["bytes"] or sha256_file(f) != rec["sha256"]:
                raise HeadstartError(
                    f"stored file {f} does not match its sha256 in {MANIFEST_FILE} (changed or truncated)",
                    fix="restore the file, or remove this version and register the run again",
                )
        return vdir

    def load(self, ref: str) -> Any:
        """Verify, then rebuild the stored model (headstart.model.TrainedModel)."""
        from headstart.model import load_model

        name, n = self.resolve(ref)
        return load_model(self.verify(name, n))

    def show(self, ref: str) -> dict[str, Any]:
        name, n = self.resolve(ref)
        vdir = self.version_dir(name, n)
        index = self._index(name)
        return {
            "name": name,
            "version": n,
            "path": str(vdir),
            "aliases": sorted(a for a, v in index["aliases"].items() if int(v) == n),
            "card": json.loads((vdir / CARD_FILE).read_text()),
            "manifest": json.loads((vdir / MANIFEST_FILE).read_text()),
        }

    def list_models(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names():
            found = self.versions(name)
            if not found:
                continue
            index = self._index(name)
            rows = []
            for v in found:
                card = read_json(self._model_dir(name) / f"v{v}" / CARD_FILE)
                rows.append(
                    {
                        "version": v,
                        "created": card.get("created"),
                        "base": card.get("base", {}).get("name"),
                        "kind": card.get("kind"),
                        "test_accuracy": card.get("metrics", {}).get("test_accuracy"),
                        "aliases": sorted(a for a, n in index["aliases"].items() if int(n) == v),
                    }
                )
            out.append({"name": name, "latest": found[-1], "aliases": index["aliases"], "versions": rows})
        return out

    def diff(self, name: str, a: int | str, b: int | str) -> dict[str, Any]:
        """What differs between two versions: metrics, recipe, base, and files (by sha256)."""
        da, db = self.version_dir(name, a), self.version_dir(name, b)
        ca, cb = read_json(da / CARD_FILE), read_json(db / CARD_FILE)
        fa = read_json(da / MANIFEST_FILE).get("files", {})
        fb = read_json(db / MANIFEST_FILE).get("files", {})
        return {
            "name": name,
            "a": f"v{_version_number(a)}",
            "b": f"v{_version_number(b)}",
            "metrics": _changed(ca.get("metrics", {}), cb.get("metrics", {}), keep_equal=True),
            "recipe": _changed(_flat(ca.get("recipe")), _flat(cb.get("recipe"))),
            "base": _changed(ca.get("base", {}), cb.get("base", {})),
            "files": {
                "changed": sorted(f for f in fa.keys() & fb.keys() if fa[f]["sha256"] != fb[f]["sha256"]),
                "only_a": sorted(fa.keys() - fb.keys()),
                "only_b": sorted(fb.keys() - fa.keys()),
                "same": sorted(f for f in fa.keys() & fb.keys() if fa[f]["sha256"] == fb[f]["sha256"]),
            },
        }

    # -- writing (each under the store lock) -------------------------------------------------------
    def _write_index(self, name: str, index: dict[str, Any]) -> None:
        atomic_write_json(self._model_dir(name) / INDEX_FILE, index)

    def register(
        self,
        run_dir: str | Path,
        name: str | None = None,
        *,
        alias: str | None = None,
        mlflow_uri: str | None = None,
        accept_behaviour_change: bool = False,
    ) -> int:
        """Copy a run's own files into <name>/v<N> with a model card and a manifest; returns N."""
        ensure_writable_dir(self.root, flag="--store")  # before the run is loaded
        mlflow = import_mlflow() if mlflow_uri else None  # fail before writing anything
        # Loads it as every verb does: the head's and every listed file's sha256, and the base weights'.
        name = _check_name(name or default_name(Path(run_dir)))
        path, info = checked_run(run_dir)
        gate = behaviour_gate(path, accept=accept_behaviour_change, what=f"{name}@{alias}") if alias else {}
        files = run_files(path, info)
        model_dir = self._model_dir(name)
        with _locked(self.root):
            model_dir.mkdir(parents=True, exist_ok=True)
            index = self._index(name)
            n = max([int(index.get("next_version", 1)), *(v + 1 for v in self.versions(name))])
            tmp = Path(tempfile.mkdtemp(prefix=f".v{n}.", dir=model_dir))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a version is as readable as any folder
            try:
                for f in files:
                    shutil.copy2(path / f, tmp / f)
                card = model_card(path, info, name=name, version=n)
                atomic_write_json(tmp / CARD_FILE, card)
                manifest = {
                    "name": name,
                    "version": n,
                    "files": {
                        f: {"sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size}
                        for f in sorted([*files, CARD_FILE])
                    },
                }
                atomic_write_json(tmp / MANIFEST_FILE, manifest)
                os.replace(tmp, model_dir / f"v{n}")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            index["next_version"] = n + 1
            index["events"].append(_event("register", n, source=str(path.resolve())))
            if alias:
                _promote_in(index, n, alias, **gate)
            self._write_index(name, index)
        if mlflow is not None:
            try:
                log_mlflow(mlflow, mlflow_uri, model_dir / f"v{n}", card)
            except Exception as e:  # the version is registered; only the mirror failed
                raise HeadstartError(
                    f"registered {name}:v{n}, but logging it to MLflow at {mlflow_uri} failed: {e}",
                    fix="check the tracking URI (file stores need MLFLOW_ALLOW_FILE_STORE=true in MLflow 3; "
                    "sqlite:///mlflow.db needs sqlalchemy)",
                ) from e
        return n

    def promote(self, name: str, version: int | str, alias: str = "production", **kw: bool) -> int:
        """Point `alias` at a version (checked against its manifest first); remembered for rollback."""
        return int(self.promote_checked(name, version, alias, **kw)["version"])

    def promote_checked(
        self,
        name: str,
        version: int | str,
        alias: str = "production",
        *,
        force: bool = False,
        accept_behaviour_change: bool = False,
    ) -> dict[str, Any]:
        """`promote`, refused when the version is worse than the alias's holder on a slice beyond noise
        (`headstart.slices.promotion_guard`) unless `force`, which the event log records; returns
        {"version", "slices": the comparison}."""
        from headstart.slices import promotion_guard

        n = _version_number(version)
        _check_name(alias)
        with _locked(self.root):
            vdir = self.verify(name, n)
            gate = behaviour_gate(vdir, accept=accept_behaviour_change, what=f"{name}:v{n} as @{alias}")
            index = self._index(name)
            held = self._model_dir(name) / f"v{index['aliases'].get(alias)}"
            holder = held if alias in index["aliases"] and held != vdir and held.is_dir() else None
            compared, extra = promotion_guard(vdir, holder, force=force, what=f"{name}:v{n} as @{alias}")
            _promote_in(index, n, alias, **extra, **gate)
            self._write_index(name, index)
        return {"version": n, "slices": compared}

    def rollback(self, name: str, alias: str = "production") -> int:
        """Move `alias` back to the version it pointed at before its latest promotion."""
        with _locked(self.root):
            self._require_model(name)
            index = self._index(name)
            history = [int(v) for v in index["history"].get(alias, [])]
            if not history:
                raise HeadstartError(
                    f"{name} has no alias {alias!r}", fix=f"`headstart models promote {name} VERSION`"
                )
            existing = set(self.versions(name))
            history.pop()
            while history and history[-1] not in existing:  # skip versions removed with --force
                history.pop()
            if not history:
                raise HeadstartError(
                    f"{name}@{alias} has no earlier version to roll back to",
                    fix=f"promote another version: `headstart models promote {name} VERSION --alias {alias}`",
                )
            index["history"][alias] = history
            index["aliases"][alias] = history[-1]
            index["events"].append(_event("rollback", history[-1], alias=alias))
            self._write_index(name, index)
            return history[-1]

    def remove(self, name: str, version: int | str, *, force: bool = False) -> None:
        n = _version_number(version)
        with _locked(self.root):
            vdir = self.version_dir(name, n)
            index = self._index(name)
            pointing = sorted(a for a, v in index["aliases"].items() if int(v) == n)
            if pointing and not force:
                raise HeadstartError(
                    f"{name}:v{n} is what {', '.join(f'@{a}' for a in pointing)} points to",
                    fix="promote or roll back the alias first, or pass --force",
                )
            for a in pointing:
                del index["aliases"][a]
            index["events"].append(_event("remove", n, forced_aliases=pointing))
            # Rename first, so a half-deleted folder is never seen as a version.
            doomed = vdir.with_name(f".removed-v{n}-{os.getpid()}")
            os.replace(vdir, doomed)
            self._write_index(name, index)
            shutil.rmtree(doomed, ignore_errors=True)


# -- helpers -------------------------------------------------------------------------------------------
def _event(action: str, version: int, **extra: Any) -> dict[str, Any]:
    return {"action": action, "version": version, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}


def _promote_in(index: dict[str, Any], n: int, alias: str, **extra: Any) -> None:
    index["aliases"][alias] = n
    index["history"].setdefault(alias, []).append(n)
    index["events"].append(_event("promote", n, alias=alias, **extra))


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj} if prefix else ({"value": obj} if obj is not None else {})


def _changed(a: dict[str, Any], b: dict[str, Any], *, keep_equal: bool = False) -> dict[str, Any]:
    keys = sorted(a.keys() | b.keys())
    return {k: [a.get(k), b.get(k)] for k in keys if keep_equal or a.get(k) != b.get(k)}
