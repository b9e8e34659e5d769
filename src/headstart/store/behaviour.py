"""The store's checks of what a run is before it is versioned or aliased: `checked_run` loads it as every
verb does, and `behaviour_gate` refuses to point an alias at a run whose behaviour check is flagged.

A generative fine-tune that lost a refusal (headstart.shapes.generate_behaviour: behaviour.json,
`flagged`) is stored like any run, but `register --alias` and `promote` refuse it unless the user passes
--accept-behaviour-change; the store's event log then records which refusals were accepted as lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError
from headstart.runs import BEHAVIOUR_FILE, read_json

if TYPE_CHECKING:
    from headstart.runs import RunInfo

ACCEPT_FLAG = "--accept-behaviour-change"


def checked_run(run_dir: str | Path) -> tuple[Path, RunInfo]:
    """(folder, run.json) of a run loaded as predict loads it: every recorded sha256 and the installed
    base weights checked (a classifier through load_model, a task shape through its predictor)."""
    from headstart.model import load_model
    from headstart.runs import load_run_info
    from headstart.shapes import shape_of_run

    shape = shape_of_run(run_dir)
    if shape is None:
        model = load_model(run_dir)
        assert model.path is not None
        return model.path, model.run_info
    shape.predictor(Path(run_dir))
    return Path(run_dir), load_run_info(run_dir)


def behaviour_gate(folder: str | Path, *, accept: bool, what: str) -> dict[str, Any]:
    """{} for a run without a flagged behaviour check; a flagged one is refused unless `accept`, and then
    returns what the promote event records."""
    f = Path(folder) / BEHAVIOUR_FILE
    check = read_json(f) if f.is_file() else {}
    if not check.get("flagged"):
        return {}
    lost = ", ".join(map(str, check.get("refusals_lost", [])))
    if accept:
        return {"behaviour_change_accepted": {"refusals_lost": check.get("refusals_lost", [])}}
    raise HeadstartError(
        f"{what}: its behaviour check is flagged: the tuned model no longer refuses {lost} "
        f"(prompt set v{check.get('version')}, {f})",
        fix=f"read the behaviour table (`headstart report RUN`) and retrain without the data that taught it; "
        f"to point the alias at it anyway, pass {ACCEPT_FLAG} (the store's event log records it)",
    )
