"""Starting or resuming a fit: `check_out` refuses, before any work, what would lose a run or resume the
wrong one; `request_of` is what a run is started with (started.json), `split_digest` the identity of its
split, and `refuse_changes` refuses a --resume with other data or options than the interrupted run's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError
from headstart.train.job import STARTED_FILE, work_dir_of

if TYPE_CHECKING:
    from headstart.config import FitConfig
    from headstart.recipes import Recipe


def _strategy_name(strategy: str | Recipe | dict[str, Any]) -> str | None:
    if isinstance(strategy, str):
        return strategy
    if isinstance(strategy, dict):
        return strategy.get("name")
    return strategy.name


def split_digest(items: Any) -> tuple[str, int]:
    """sha256 of the (source, label, split) rows: the same data gives the same split, so the same digest."""
    h = hashlib.sha256()
    for it in sorted((it.source, it.label, it.split or "") for it in items):
        h.update(json.dumps(it).encode("utf-8", errors="surrogatepass"))
    return h.hexdigest(), len(items)


def refuse_changes(
    run_dir: Path, started: dict[str, Any], request: dict[str, Any], keys: tuple[str, ...]
) -> None:
    """--resume with other data, backbone, strategy or options than the interrupted run was started with."""
    diff = [k for k in keys if k in started and started[k] != request.get(k)]
    if not diff:
        return
    listed = "; ".join(f"{k}: the run has {started[k]!r}, this command {request.get(k)!r}" for k in diff)
    if set(diff) <= {"n_items", "split_sha256"}:
        listed = (
            f"the data at {request['data']} gives another split than the run was started on "
            f"({started.get('n_items')} items then, {request.get('n_items')} now)"
        )
    raise HeadstartError(
        f"cannot resume the interrupted run {run_dir}: {listed}",
        fix="resume with the options and data it was started with (see "
        f"{work_dir_of(run_dir) / STARTED_FILE}), or --overwrite to start over, or another --out",
    )


def check_out(
    out: str | Path | None,
    *,
    resume: bool,
    overwrite: bool,
    request: dict[str, Any],
    resumable: bool = True,
    engine: tuple[str, str] | None = None,
    finished_file: str | None = None,
    checkpoints: tuple[str, ...] = ("",),
) -> dict[str, Any] | None:
    """Refuse, before any work, what would lose a run or resume the wrong one; deletes nothing.

    Returns what the interrupted run was started with when it is resumed (None for a fresh start).
    `resumable`: False for a verb without --resume (probe), which keeps no checkpoints of its own.
    `engine`: the (--device, --precision) a resume would train with, checked against its checkpoints'.
    `finished_file`: what a finished run holds (run.json; adapt: the backbone's card). `checkpoints`: the
    folders below the work folder that its trainers checkpoint into (fit: the work folder itself).
    """
    from headstart.fileio import ensure_writable_dir
    from headstart.runs import RUN_FILE
    from headstart.train.checkpoint import CHECKPOINT_FILE, check_resume_engine

    if out is None:
        if resume:
            raise HeadstartError(
                "--resume needs the --out folder of the interrupted run", fix="add --out RUN_FOLDER"
            )
        ensure_writable_dir("runs", flag="--out")  # where the default run folder goes
        return None
    run_dir = ensure_writable_dir(out, flag="--out")
    work_dir = work_dir_of(run_dir)
    finished = (run_dir / (finished_file or RUN_FILE)).is_file()
    folders = [work_dir / c for c in checkpoints]
    interrupted = any((f / CHECKPOINT_FILE).is_file() for f in folders) and not finished
    not_empty = run_dir.is_dir() and any(run_dir.iterdir())
    if resume:
        if finished:
            raise HeadstartError(
                f"{run_dir} holds a finished run: there is nothing to resume (nothing was changed)",
                fix="drop --resume and add --overwrite to replace it, or choose another --out",
            )
        if not interrupted:
            raise HeadstartError(
                f"no interrupted run to resume at {run_dir} (no checkpoint in {work_dir})",
                fix="drop --resume to start the run, or give the --out of the interrupted run",
            )
        if not_empty and not overwrite:
            raise HeadstartError(
                f"{run_dir} is not empty and is not a headstart run (resuming would write into it)",
                fix="choose another --out, or --overwrite",
            )
        started_file = work_dir / STARTED_FILE
        started: dict[str, Any] = {}
        if started_file.is_file():  # checkpoints of older versions have none: the recipe check remains
            try:
                started = json.loads(started_file.read_text())
            except (OSError, json.JSONDecodeError):
                started = {}
        keys = tuple(k for k in request if k not in ("n_items", "split_sha256"))
        refuse_changes(run_dir, started, request, keys)
        if engine is not None:
            check_resume_engine(folders, *engine)
        return started
    if overwrite:
        return None
    if interrupted and resumable:
        raise HeadstartError(
            f"an interrupted run is there: {run_dir} (its checkpoint is in {work_dir}); nothing was changed",
            fix="add --resume to continue it or --overwrite to start over (or choose another --out)",
        )
    if finished:
        raise HeadstartError(
            f"{run_dir} already exists and holds a finished run (nothing was changed)",
            fix="choose another --out, or --overwrite to replace it",
        )
    if not_empty:
        raise HeadstartError(
            f"{run_dir} already exists and is not empty", fix="choose another --out, or --overwrite"
        )
    return None


def request_of(cfg: FitConfig, strategy: Any) -> dict[str, Any]:
    """What the run is started with; --resume refuses to continue a run started with anything else."""
    return {
        "data": str(Path(cfg.data).expanduser().resolve()),
        "backbone": cfg.backbone,
        "strategy": _strategy_name(strategy),
        "seed": cfg.seed,
        "val": cfg.val,
        "test": cfg.test,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "augment": cfg.augment,
        "unlabeled": str(cfg.unlabeled) if cfg.unlabeled is not None else None,
        "target_unlabeled": str(cfg.target_unlabeled) if cfg.target_unlabeled is not None else None,
        "imbalance": cfg.imbalance,
        "input_size": cfg.input_size,
    }
