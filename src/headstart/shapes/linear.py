"""`LinearShape`: the task shapes whose model is backbone -> pooled embedding -> a linear head with K
outputs, read differently (multi-label: K sigmoids and thresholds; regression: one scaled number).

The run folder is a classification probe's (run.json kind "probe" with `task`, head.safetensors, split.csv,
data.json, metrics.json) plus SHAPE_FILE, the read-out state (thresholds, target scale, ...; its sha256 in
run.json `files`). So `headstart.model.load_model` loads it unchanged, the ONNX export graph is the
classifier's (it outputs the head's raw outputs), and the store keeps it like any run.

A subclass implements the hooks (`targets`, `output_names`, `fit_head`, `split_metrics`, `answers`,
`metric_table`, `report_sections`); the base runs probe, evaluate, predict/serve and export with them.
`embed_data` and `save_run` are the steps a fine-tuning `fit` reuses.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.data import SPLITS
from headstart.errors import HeadstartError
from headstart.shapes import Shape, ShapePredictor, ShapeReport
from headstart.shapes.linear_io import EmbeddedSplits

if TYPE_CHECKING:
    from headstart.backbones.base import Backbone
    from headstart.config import FitConfig, ProbeConfig, RunConfig
    from headstart.data import Dataset, Item
    from headstart.head import LinearHead


class LinearShape(Shape):
    """The probe pipeline on cached embeddings for a backbone + linear head shape (see the module)."""

    modalities: tuple[str, ...] = ("image", "text", "audio")
    strategies: tuple[str, ...] = ("lp-ft", "head", "partial:N", "full", "lora")
    #: Whether the outputs are label names (serve's /health lists them) or one number (regression).
    outputs_are_labels: bool = True

    # -- hooks a subclass implements ----------------------------------------------------------------------
    def targets(self, ds: Dataset, items: list[Item]) -> np.ndarray:
        """The training target of each item: (N, K) 0/1 for multi-label, (N,) numbers for regression.
        In evaluate, `ds.classes` are the run's output names."""
        raise NotImplementedError

    def output_names(self, ds: Dataset) -> list[str]:
        """The names of the head's outputs (run.json `classes`)."""
        raise NotImplementedError

    def fit_head(
        self,
        X_train: np.ndarray,
        Y_train: np.ndarray,
        X_val: np.ndarray,
        Y_val: np.ndarray,
        *,
        seed: int,
        C: float | None,
    ) -> tuple[LinearHead, dict[str, Any]]:
        """The head, and the read-out state saved to SHAPE_FILE (JSON-able; lists per output are in output
        order). The base then adds `outputs` (the output names) to the state the other hooks read."""
        raise NotImplementedError

    def split_metrics(
        self, Z: np.ndarray, Y: np.ndarray, state: dict[str, Any], *, seed: int
    ) -> dict[str, Any]:
        """Scores of the head's outputs `Z` against targets `Y`, each with a 95% interval."""
        raise NotImplementedError

    def readout(self, Z_val: np.ndarray, Y_val: np.ndarray, state: dict[str, Any]) -> dict[str, Any]:
        """`state` (fit_head's, of the probe) with its val-tuned parts tuned again on val's outputs `Z_val`
        of a fine-tuned model (`fit`: headstart.shapes.linear_fit)."""
        raise NotImplementedError

    def answers(self, Z: np.ndarray, state: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
        """One JSON answer per row of `Z`, each with a short "summary" string."""
        raise NotImplementedError

    def metric_table(self, metrics: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
        """(title, columns, rows) of the CLI's table for probe/fit (metrics.json) or evaluate."""
        raise NotImplementedError

    def notes(self, ds: Dataset, items: list[Item], state: dict[str, Any]) -> list[str]:
        """Lines worth saying about these targets (labels the run does not know, a fallback threshold)."""
        return []

    # -- the shared steps ---------------------------------------------------------------------------------
    def load_data(self, cfg: RunConfig) -> Dataset:
        from headstart.data import load_dataset

        ds = load_dataset(cfg.data, task=self.name, seed=cfg.seed, val=cfg.val, test=cfg.test)
        if ds.modality not in self.modalities:
            raise HeadstartError(
                f"{cfg.data} holds {ds.modality} data; --task {self.name} reads {', '.join(self.modalities)}",
                fix=f"give {' or '.join(self.modalities)} data, or another --task",
            )
        return ds

    def backbone(self, cfg: RunConfig, ds: Dataset) -> Backbone:
        """The backbone of `cfg`, refused before any embedding when it reads another modality."""
        from headstart.backbones import create_backbone
        from headstart.verdicts.curve import check_backbone_modality

        bb = create_backbone(cfg.backbone)
        check_backbone_modality(bb, ds.modality, cfg.data)
        if cfg.input_size:
            if bb.modality != "image":
                raise HeadstartError(
                    f"--input-size {cfg.input_size}: {bb.name} reads {bb.modality}, not images",
                    fix="drop --input-size",
                )
            bb.at_input_size(cfg.input_size)
        return bb

    def embed_data(self, cfg: ProbeConfig, bb: Backbone, ds: Dataset) -> EmbeddedSplits:
        """Every item through the feature cache (fp32); unreadable ones leave the data, listed in its
        summary (a drawn split is drawn again without them, as the classify probe does)."""
        from headstart.data.images import DEFAULT_MAX_PIXELS
        from headstart.features import embed, embed_options

        options = embed_options(cfg, max_pixels=cfg.max_pixels or DEFAULT_MAX_PIXELS)
        feats = embed(bb, [it.source for it in ds.items], **options)
        ds = ds.drop(feats.bad) if feats.bad else ds
        row = {p: i for i, p in enumerate(feats.paths)}
        items = {s: [it for it in ds.split(s) if it.source in row] for s in SPLITS}
        if not items["train"]:
            raise HeadstartError(
                f"no training item of {cfg.data} could be embedded", fix="check the skipped files listed"
            )
        X = {s: feats.X[np.array([row[it.source] for it in its], dtype=np.int64)] for s, its in items.items()}
        Y = {s: self.targets(ds, its) for s, its in items.items()}
        hashes = {p: feats.hashes[i] for p, i in row.items()}
        forward = {"precision": "fp32", "reason": "asked (fp32)"}
        return EmbeddedSplits(ds, items, X, Y, hashes, forward, dict(feats.stats))

    def save_run(
        self,
        cfg: RunConfig,
        bb: Backbone,
        emb: EmbeddedSplits,
        head: LinearHead,
        state: dict[str, Any],
        metrics: dict[str, Any],
        *,
        run_dir: Path,
        kind: str = "probe",
        info: dict[str, Any] | None = None,
        tensors: dict[str, dict[str, Any]] | None = None,
        json_files: dict[str, Any] | None = None,
        text_files: dict[str, str] | None = None,
    ) -> Path:
        """The run folder, in one rename: run.json (kind, task, the base by reference, output names),
        the head, SHAPE_FILE (checked), split.csv, data.json, metrics.json; `info` adds to run.json (a
        fit's recipe, delta), `tensors`/`json_files` go to write_run (a delta, history)."""
        from headstart.recipes.strategy import get_recipe
        from headstart.runs import (
            SHAPE_FILE,
            BackboneRef,
            data_root_of,
            library_versions,
            make_split_rows,
            to_jsonable,
            write_run,
        )

        root = data_root_of(emb.ds.root)
        rows = make_split_rows([it for s in SPLITS for it in emb.items[s]], emb.hashes, root)
        run = {
            "kind": kind,
            "task": self.name,
            "strategy": "head",
            "recipe": get_recipe("head", len(bb.groups)).to_dict(),
            "pretrained": True,
            "backbone": BackboneRef.of(bb).to_dict(),
            "preprocess": bb.preprocess.to_dict(),
            "modality": bb.modality,
            "classes": self.output_names(emb.ds),
            "params": {"C": state.get("C"), "seed": cfg.seed},
            "trained_groups": [],
            "trainable_params": head.num_params,
            "data_root": str(root),
            "frozen_forward": emb.forward,
            **(info or {}),
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return write_run(
            run_dir,
            run=to_jsonable(run),
            head=head,
            metrics=to_jsonable(metrics),
            data=to_jsonable(emb.ds.summary()),
            split_rows=rows,
            tensors=tensors,
            json_files={**(json_files or {}), SHAPE_FILE: to_jsonable(state)},
            text_files=text_files,
            checked=(SHAPE_FILE,),
            overwrite=cfg.overwrite,
        )

    def all_split_metrics(
        self, head: LinearHead, emb: EmbeddedSplits, state: dict[str, Any], seed: int
    ) -> dict[str, Any]:
        return {
            s: self.split_metrics(head.logits(emb.X[s]), emb.Y[s], state, seed=seed)
            for s in SPLITS
            if len(emb.items[s])
        }

    # -- the verbs ----------------------------------------------------------------------------------------
    def probe(self, cfg: ProbeConfig) -> ShapeReport:
        """Embed (cached), fit the head on train (choices on val), score every split, save the run."""
        from headstart.runs import default_run_dir
        from headstart.train.resume import check_out

        if cfg.precision != "fp32":
            raise HeadstartError(
                f"--precision {cfg.precision} is not built for --task {self.name} (its int8 gate scores "
                "classes)",
                fix="use --precision fp32 (the default)",
            )
        if cfg.save:  # the output folder is checked before any data is read or model loaded
            check_out(cfg.out, resume=False, overwrite=cfg.overwrite, request={}, resumable=False)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        ds = self.load_data(cfg)
        bb = self.backbone(cfg, ds)
        timings["load_s"] = time.perf_counter() - t0
        emb = self.embed_data(cfg, bb, ds)
        timings["embed_s"] = float(emb.stats.get("embed_s", 0.0))
        t0 = time.perf_counter()
        head, state = self.fit_head(
            emb.X["train"], emb.Y["train"], emb.X["val"], emb.Y["val"], seed=cfg.seed, C=cfg.C
        )
        state = {"outputs": self.output_names(emb.ds), **state}  # every hook after fit_head reads it
        timings["fit_head_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics: dict[str, Any] = self.all_split_metrics(head, emb, state, cfg.seed)
        timings["evaluate_s"] = time.perf_counter() - t0
        metrics.update(
            task=self.name,
            strategy="head",
            readout=state,
            trainable_params=head.num_params,
            backbone_params=bb.card.num_params,
            embed={k: emb.stats.get(k) for k in ("n_files", "cache_hits", "forwards", "backend", "device")},
            frozen_forward=emb.forward,
            timings=timings,
        )
        run_dir = None
        if cfg.save:
            target = Path(cfg.out) if cfg.out else default_run_dir("probe", bb.name)
            run_dir = self.save_run(cfg, bb, emb, head, state, metrics, run_dir=target)
        return ShapeReport(
            task=self.name,
            strategy="head",
            backbone=bb.name,
            metrics=metrics,
            run_dir=None if run_dir is None else str(run_dir),
            data=emb.ds.summary(),
            table=self.metric_table(metrics),
            lines=self.notes(emb.ds, emb.items["train"], state),
            warnings=list(emb.ds.summary().get("warnings", [])),  # type: ignore[call-overload]
            timings=timings,
        )

    def fit(self, cfg: FitConfig) -> ShapeReport:
        """A strategy that trains the backbone, through the one Trainer (`head`: the probe)."""
        from headstart.shapes.linear_fit import fit_linear

        return fit_linear(self, cfg)

    def evaluate(
        self,
        run_dir: Path,
        *,
        data: str | Path | None = None,
        split: str = "test",
        save: bool = True,
        out: str | Path | None = None,
        progress: bool = False,
        device: str = "auto",
        backend: str = "auto",
        **_: Any,
    ) -> dict[str, Any]:
        """Score the run's own `split` (split.csv; writes evaluation.json unless save=False) or `data`
        (written nowhere in the run). `out`: also write the result there."""
        from headstart.features import forward_device
        from headstart.fileio import atomic_write_json
        from headstart.model import load_model
        from headstart.runs import EVALUATION_FILE, to_jsonable
        from headstart.shapes.linear_io import evaluation_items, read_state

        run_dir = Path(run_dir)
        own = data is None
        writes_run = save and own  # evaluate_run refused a stored version and checked `out`
        out_path = None if out is None else Path(out)
        used = forward_device(backend, device)
        t0 = time.perf_counter()
        model = load_model(run_dir)
        state = read_state(run_dir)
        ds, described = evaluation_items(self.name, run_dir, model, data, split)
        Z, kept, bad = model.logits(
            [it.source for it in ds.items], backend=backend, progress=progress, device=device
        )
        if not kept:
            listed = "; ".join(f"{p}: {r}" for p, r in list(bad.items())[:3])
            raise HeadstartError(
                f"none of the {len(ds.items)} items of {described} could be read ({listed})",
                fix="restore the data split.csv lists (under the data_root in run.json), or give DATA",
            )
        items = [ds.items[i] for i in kept]
        seed = int(model.run_info.seed or 0)
        result: dict[str, Any] = {
            "task": self.name,
            "run": str(run_dir),
            "evaluated": described,  # ("data" is the data summary print_shape_result shows)
            "split": split,
            "device": str(used),
            "n": len(items),
            "classes": model.classes,
            "skipped": bad,
            "metrics": self.split_metrics(Z, self.targets(ds, items), state, seed=seed),
            "seconds": time.perf_counter() - t0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        result = to_jsonable(result)
        result["table"] = self.metric_table({split: result["metrics"]})
        result["lines"] = self.notes(ds, items, state)
        if writes_run:
            atomic_write_json(run_dir / EVALUATION_FILE, result)
        if out_path is not None:
            atomic_write_json(out_path, result)
        return result

    def predictor(self, run_dir: Path, **kw: Any) -> ShapePredictor:
        from headstart.model import load_model
        from headstart.shapes.linear_io import LinearPredictor, read_state

        return LinearPredictor(self, load_model(run_dir), read_state(run_dir), **kw)

    def export(self, run_dir: Path, out: Path | None, **kw: Any) -> dict[str, Any]:
        """The classifier's export (graph -> the head's raw outputs, parity on them); the card carries the
        task and the read-out state (headstart.runs.run_card), so a consumer can read the outputs."""
        from headstart.export import export_onnx_model
        from headstart.model import load_model
        from headstart.shapes.linear_io import read_state

        report = export_onnx_model(
            load_model(run_dir), out, quantize=kw.get("quantize", False), check_inputs=kw.get("check_inputs")
        )
        return {**report, "task": self.name, "readout": read_state(run_dir)}
