"""Every file name of a run folder, defined once; every verb names the files through these constants."""

from __future__ import annotations

#: run.json's schema. 1: what headstart wrote before run.json recorded a version (split.csv paths as given,
#: relative to the working folder of the command). 2: `schema_version`, `data_root` (split.csv paths are
#: relative to it), the recipe of every run. A reader reads every version up to this one.
SCHEMA_VERSION = 2

RUN_FILE = "run.json"
HEAD_FILE = "head.safetensors"
DELTA_FILE = "delta.safetensors"
ADAPTER_FILE = "adapter.safetensors"
METRICS_FILE = "metrics.json"
DATA_FILE = "data.json"
SPLIT_FILE = "split.csv"
HISTORY_FILE = "history.json"
HISTORY_CSV_FILE = "history.csv"
RECIPE_FILE = "recipe.json"
CALIBRATION_FILE = "calibration.json"
EVALUATION_FILE = "evaluation.json"
COMPARE_FILE = "compare.json"
LEAKAGE_FILE = "leakage.json"
CURVE_FILE = "curve.json"
CLUSTERS_FILE = "clusters.json"
OVERLAP_FILE = "overlap.json"
REPORT_FILE = "report.html"
DISTILL_FILE = "distill.json"
ONNX_FILE = "model.onnx"
#: A generative fine-tune's behaviour check (headstart.shapes.generate_behaviour), sha256 in `files`: a run
#: that lost a refusal is flagged there, and the store will not promote it without --accept-behaviour-change.
BEHAVIOUR_FILE = "behaviour.json"
AUTO_FILE = "auto.json"  # auto's summary, in its --out folder
SHAPE_COMPARE_FILE = "shape_compare.json"  # auto --task T's comparison (headstart.shapes.auto)
#: A task shape's read-out state (headstart.shapes.linear: thresholds, target scale, ...), recorded with its
#: sha256 in run.json `files` so load_run checks it and the store keeps it.
SHAPE_FILE = "shape.json"
#: split.csv's columns; a reader needs the first three (runs before content hashes have no sha256; `group`,
#: the item's slice, is written only when the data named slices).
SPLIT_COLUMNS = ("path", "label", "split", "sha256", "group")
