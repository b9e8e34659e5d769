"""The typed records of a run folder: run.json (`RunInfo` and its parts), split.csv rows (`SplitRow`), and
what evaluate adds (`Calibration`, `Evaluation`). Readers use their attributes, never `.get` chains.

Every record reads every schema version (`SCHEMA_VERSION`): `RunInfo.from_dict` maps the places older
run.json files kept a field to the one place it has now, and keeps keys it does not know in `extra`, so a
rewritten run.json (merge) loses nothing. `to_dict` writes the current version: a superset of what older
readers (and scripts) read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headstart.errors import HeadstartError
from headstart.runs.names import RUN_FILE, SCHEMA_VERSION


def _dict(v: Any) -> dict[str, Any]:
    """A JSON object as found, or {} for anything else (a damaged field spoils only itself)."""
    return dict(v) if isinstance(v, dict) else {}


def _str_list(v: Any) -> list[str] | None:
    return [str(x) for x in v] if isinstance(v, list) else None


def _opt_str(v: Any) -> str | None:
    return str(v) if v not in (None, "") else None


@dataclass
class BackboneRef:
    """The base a run was trained on, by reference: name, key (weights + preprocessing), weights sha256
    (None for a from-scratch run), and its card (provenance: source, version, license, paper, ...)."""

    name: str = ""
    key: str | None = None
    weights_sha256: str | None = None
    card: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> BackboneRef:
        d = _dict(d)
        return cls(str(d.get("name") or ""), d.get("key"), d.get("weights_sha256"), _dict(d.get("card")))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "weights_sha256": self.weights_sha256, "card": self.card}

    @classmethod
    def of(cls, backbone: Any) -> BackboneRef:
        """The reference to a built backbone (headstart.backbones.Backbone) a run records."""
        return cls(backbone.name, backbone.key, backbone.card.weights_sha256, backbone.card.to_dict())


@dataclass
class FileRef:
    """A file of the run with its sha256 (the head)."""

    file: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256}


@dataclass
class DeltaRef:
    """The trained groups' weights stored beside the head (`whole`: every weight, a from-scratch run)."""

    file: str
    whole: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "whole": self.whole}


@dataclass
class AdapterRef:
    """An adapter stored beside the head: its file and how it was injected (method, r, alpha, dropout,
    target_modules, groups, trainable_params, ...: `headstart.adapters.inject_adapter`'s description)."""

    file: str | None
    spec: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdapterRef:
        return cls(_opt_str(d.get("file")), {k: v for k, v in d.items() if k != "file"})

    @property
    def method(self) -> str:
        return str(self.spec.get("method", "lora"))

    @property
    def groups(self) -> list[str]:
        return _str_list(self.spec.get("groups")) or []

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, **self.spec} if self.file is not None else dict(self.spec)


@dataclass
class ObjectiveInfo:
    """The loss a run trained with: its name and what it records (distillation: the teacher, T, alpha)."""

    name: str
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> ObjectiveInfo | None:
        d = _dict(d)
        if not d:
            return None
        return cls(str(d.get("name", "")), {k: v for k, v in d.items() if k != "name"})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.details}


# run.json keys RunInfo reads into its fields; any other key is kept in `extra`.
_KNOWN = {
    "schema_version",
    "kind",
    "strategy",
    "task",
    "pretrained",
    "backbone",
    "preprocess",
    "modality",
    "classes",
    "params",
    "recipe",
    "trained_groups",
    "trainable_params",
    "objective",
    "engine",
    "data_root",
    "data_root_from_run",
    "created",
    "versions",
    "head",
    "delta",
    "adapter",
    "files",
    "merged_from",
}


@dataclass
class RunInfo:
    """run.json: what was run (kind, strategy, recipe, params, objective, engine), on what (the base by
    reference, its preprocessing, the modality, the classes, the data root), and what the folder stores
    (the head, a delta or an adapter, each file's sha256)."""

    kind: str = "probe"
    strategy: str | None = None
    #: the task shape (headstart.shapes): classify, multilabel, regress, tag, generate
    task: str = "classify"
    pretrained: bool = True
    backbone: BackboneRef = field(default_factory=BackboneRef)
    preprocess: dict[str, Any] = field(default_factory=dict)
    modality: str | None = None
    classes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] | None = None
    trained_groups: list[str] | None = None  # None: not recorded (never read as "nothing trained")
    trainable_params: int | None = None
    objective: ObjectiveInfo | None = None
    engine: dict[str, Any] | None = None
    #: the absolute data folder (a manifest's folder) split.csv's relative paths start from; None in a
    #: version-1 run, whose paths are as given on the command line (`headstart.runs.items`)
    data_root: str | None = None
    data_root_from_run: str | None = None  # the same folder relative to the run's: found if both move
    created: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    head: FileRef | None = None
    delta: DeltaRef | None = None
    adapter: AdapterRef | None = None
    files: dict[str, str] = field(default_factory=dict)  # stored tensors (delta, adapter) -> sha256
    merged_from: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    @property
    def seed(self) -> Any:
        return self.params.get("seed", self.extra.get("seed"))

    @property
    def stored_files(self) -> list[str]:
        """The weight files the run stores: the head, then the delta or adapter (with their sha256)."""
        return ([self.head.file] if self.head else []) + list(self.files)

    @classmethod
    def from_dict(cls, d: Any, *, source: object = RUN_FILE) -> RunInfo:
        """Read run.json of any schema version up to SCHEMA_VERSION (a damaged field reads as absent;
        `headstart.runs.load_run` checks the fields a verb needs). `source` names the file in errors."""
        d = _dict(d)
        version = d.get("schema_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise HeadstartError(
                f"{source} has schema_version {version!r}", fix="the run folder is damaged: restore run.json"
            )
        if version > SCHEMA_VERSION:
            raise HeadstartError(
                f"{source} was written by a newer headstart (schema {version}; this one reads up to "
                f"{SCHEMA_VERSION})",
                fix="upgrade headstart (pip install -U headstart)",
            )
        params = _dict(d.get("params"))
        recipe = d.get("recipe") if isinstance(d.get("recipe"), dict) else None
        # Version 1 kept the strategy in run.json, or (older probes) in params, or only in the recipe.
        strategy = d.get("strategy") or params.get("strategy") or (recipe or {}).get("strategy")
        strategy = strategy or (recipe or {}).get("name")
        head = _dict(d.get("head"))
        delta, adapter = _dict(d.get("delta")), _dict(d.get("adapter"))
        trainable = d.get("trainable_params")
        return cls(
            kind=str(d.get("kind") or "probe"),
            strategy=_opt_str(strategy),
            task=str(d.get("task") or "classify"),
            pretrained=d.get("pretrained", True) is not False,
            backbone=BackboneRef.from_dict(d.get("backbone")),
            preprocess=_dict(d.get("preprocess")),
            modality=_opt_str(d.get("modality")),
            classes=_str_list(d.get("classes")) or [],
            params=params,
            recipe=recipe,
            trained_groups=_str_list(d.get("trained_groups")),
            trainable_params=int(trainable) if isinstance(trainable, int | float) else None,
            objective=ObjectiveInfo.from_dict(d.get("objective")),
            engine=d.get("engine") if isinstance(d.get("engine"), dict) else None,
            data_root=_opt_str(d.get("data_root")),
            data_root_from_run=_opt_str(d.get("data_root_from_run")),
            created=_opt_str(d.get("created")),
            versions=_dict(d.get("versions")),
            head=FileRef(str(head["file"]), str(head.get("sha256", ""))) if head.get("file") else None,
            delta=DeltaRef(str(delta["file"]), bool(delta.get("whole"))) if delta.get("file") else None,
            adapter=AdapterRef.from_dict(adapter) if adapter else None,
            files={str(k): str(v) for k, v in _dict(d.get("files")).items()},
            merged_from=d.get("merged_from") if isinstance(d.get("merged_from"), dict) else None,
            schema_version=version,
            extra={k: v for k, v in d.items() if k not in _KNOWN},
        )

    def to_dict(self) -> dict[str, Any]:
        """run.json as this version writes it: every key older versions wrote (absent ones left out)."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": self.kind}
        if self.strategy is not None:
            out["strategy"] = self.strategy
        if self.task != "classify":  # a classification run's run.json stays as it was
            out["task"] = self.task
        out.update(
            {
                "pretrained": self.pretrained,
                "backbone": self.backbone.to_dict(),
                "preprocess": self.preprocess,
                "modality": self.modality,
                "classes": list(self.classes),
                "params": self.params,
            }
        )
        optional: dict[str, Any] = {
            "recipe": self.recipe,
            "engine": self.engine,
            "trained_groups": self.trained_groups,
            "trainable_params": self.trainable_params,
            "objective": self.objective.to_dict() if self.objective else None,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        out.update(
            {
                "data_root": self.data_root,
                "data_root_from_run": self.data_root_from_run,
                "versions": self.versions,
                "created": self.created,
            }
        )
        stored: dict[str, Any] = {
            "head": self.head.to_dict() if self.head else None,
            "delta": self.delta.to_dict() if self.delta else None,
            "adapter": self.adapter.to_dict() if self.adapter else None,
            "files": self.files or None,
            "merged_from": self.merged_from,
        }
        out.update({k: v for k, v in stored.items() if v is not None})
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}


@dataclass(frozen=True)
class SplitRow:
    """One row of split.csv. `path`: a file item's path relative to the run's data_root (absolute when it
    lies outside it; in a version-1 run, as given on the command line); a text item: the text itself (in
    older text runs, a `<file>:<row>` id). `sha256`: the item's content hash ("" if it was unreadable).
    `group`: the item's slice ("" for none; older split.csv files have no such column)."""

    path: str
    label: str
    split: str
    sha256: str = ""
    group: str = ""

    def as_csv(self) -> tuple[str, str, str, str, str]:
        return (self.path, self.label, self.split, self.sha256, self.group)


@dataclass(frozen=True)
class Calibration:
    """calibration.json: the temperature evaluate fitted on the run's val rows, whether it is applied
    (`status`) and why not (`reason`); `record` is the file as written (`calibration.applied_temperature`)."""

    temperature: float | None
    status: str | None
    reason: str
    record: dict[str, Any]

    @classmethod
    def from_dict(cls, d: Any) -> Calibration:
        d = _dict(d)
        t = d.get("temperature")
        temperature = float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None
        return cls(temperature, _opt_str(d.get("status")), str(d.get("reason") or ""), d)


@dataclass(frozen=True)
class Evaluation:
    """evaluation.json: the metrics of the evaluated split, its calibration summary and latency."""

    split: str | None
    n: int | None
    data: str | None
    metrics: dict[str, Any]
    calibration: dict[str, Any]
    latency: dict[str, Any]
    record: dict[str, Any]

    @classmethod
    def from_dict(cls, d: Any) -> Evaluation:
        d = _dict(d)
        n = d.get("n")
        return cls(
            split=_opt_str(d.get("split")),
            n=n if isinstance(n, int) else None,
            data=_opt_str(d.get("data")),
            metrics=_dict(d.get("metrics")),
            calibration=_dict(d.get("calibration")),
            latency=_dict(d.get("latency")),
            record=d,
        )
