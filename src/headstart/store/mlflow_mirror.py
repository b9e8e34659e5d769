"""The optional MLflow mirror of a registered version (`headstart models register --mlflow URI`): the
card's parameters and metrics, and the version's files as artifacts. The store never depends on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError


def import_mlflow() -> Any:
    """The mlflow module; asked for before anything is written, so a missing package costs nothing."""
    try:
        import mlflow  # type: ignore[import-not-found]
    except ImportError as e:
        raise HeadstartError(
            "--mlflow was given but the mlflow package is not installed",
            fix="pip install mlflow, or register without --mlflow",
        ) from e
    return mlflow


def log_mlflow(mlflow: Any, uri: str | None, vdir: Path, card: dict[str, Any]) -> None:
    """Mirror a registered version into MLflow tracking: params, metrics, and the version's files."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(f"headstart/{card['name']}")
    with mlflow.start_run(run_name=f"{card['name']}:v{card['version']}"):
        mlflow.log_params({"base": card["base"]["name"], "kind": card["kind"], "seed": card["seed"]})
        mlflow.log_metrics({k: v for k, v in card["metrics"].items() if isinstance(v, int | float)})
        mlflow.log_artifacts(str(vdir))
