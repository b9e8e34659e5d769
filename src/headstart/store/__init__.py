"""A local model store: numbered, immutable, hash-checked versions of runs, with aliases and rollback.

    <store>/                      default ./headstart-models (HEADSTART_MODELS, or --store)
      .lock                       flock'ed by every writer, so concurrent writers queue instead of racing
      <name>/index.json           {"next_version", "aliases": {alias: N}, "history": {alias: [N, ...]},
                                   "events": [...]}
      <name>/v<N>/                the run's own files (never the base weights) + card.json + manifest.json

A version is written in a temp folder and renamed into place; index.json is replaced atomically. Loading
checks every file against manifest.json (sha256) before anything is read, then rebuilds the model with
headstart.model.load_model, which checks run.json's own hashes and the installed base weights.

References: "emoji" (latest version), "emoji:v2" or "emoji:2", "emoji@production" (an alias).

versions.py holds `ModelStore`; card.py what a version keeps of a run, and its model card; mlflow_mirror.py
the optional MLflow copy. The functions below act on the default store (or `store=`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.store.card import CARD_FILE, model_card
from headstart.store.names import check_name, data_model_name, default_name
from headstart.store.versions import (
    DEFAULT_STORE,
    INDEX_FILE,
    MANIFEST_FILE,
    ModelStore,
    is_stored_version,
    store_root,
)

__all__ = [
    "CARD_FILE",
    "DEFAULT_STORE",
    "INDEX_FILE",
    "MANIFEST_FILE",
    "ModelStore",
    "check_name",
    "data_model_name",
    "default_name",
    "is_stored_version",
    "load",
    "model_card",
    "promote",
    "register",
    "rollback",
    "store_root",
]


def register(
    run_dir: str | Path,
    name: str | None = None,
    *,
    alias: str | None = None,
    store: str | Path | None = None,
    mlflow_uri: str | None = None,
    accept_behaviour_change: bool = False,
) -> int:
    return ModelStore(store).register(
        run_dir, name, alias=alias, mlflow_uri=mlflow_uri, accept_behaviour_change=accept_behaviour_change
    )


def load(ref: str, *, store: str | Path | None = None) -> Any:
    return ModelStore(store).load(ref)


def promote(
    name: str,
    version: int | str,
    alias: str = "production",
    *,
    store: str | Path | None = None,
    force: bool = False,
    accept_behaviour_change: bool = False,
) -> int:
    return ModelStore(store).promote(
        name, version, alias, force=force, accept_behaviour_change=accept_behaviour_change
    )


def rollback(name: str, alias: str = "production", *, store: str | Path | None = None) -> int:
    return ModelStore(store).rollback(name, alias)
