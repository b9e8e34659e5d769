"""A run directory: everything one experiment produced, written atomically as a whole. This package owns
the folder: every file name (names.py), the typed records (records.py: `RunInfo`, `SplitRow`, ...), the
one reader and writer (folder.py), where the items are (items.py: `resolve_item`), and the one model card
(card.py). Every verb reads and writes run folders through it.

run.json          RUN_FILE: `RunInfo` (schema_version, kind, strategy, recipe, the base by reference: name,
                  key, weights sha256, card; preprocessing, modality, classes, params, trained groups,
                  objective, engine, data_root, library versions, the head's and tensors' sha256)
head.safetensors  HEAD_FILE: the trained linear head (logits = x @ weight.T + bias on pooled embeddings)
*.safetensors     other trained tensors listed in run.json "files" with their sha256 (for fine-tuning:
                  DELTA_FILE = only the trained layer groups, the base referenced by hash; ADAPTER_FILE)
metrics.json      METRICS_FILE: val/test metrics, timings, parameter counts
data.json         DATA_FILE: data summary: layout, class counts per split, skipped files with reasons
split.csv         SPLIT_FILE: `SplitRow`s: path (relative to data_root), label, split, sha256 of every item
                  used (a text run: the texts themselves), and its slice (`group`) when the data named one
history.json/.csv HISTORY_FILE, HISTORY_CSV_FILE: per-epoch curves of a fit; recipe.json RECIPE_FILE
Written later into the folder: calibration.json (CALIBRATION_FILE) and evaluation.json (EVALUATION_FILE)
by evaluate; compare.json, leakage.json, curve.json (COMPARE_FILE, LEAKAGE_FILE, CURVE_FILE) and
report.html (REPORT_FILE) by auto; distill.json (DISTILL_FILE) by distill; model.onnx (ONNX_FILE) by export;
overlap.json (OVERLAP_FILE) by overlap and auto.
shape.json        SHAPE_FILE: a task shape's read-out state (headstart.shapes.linear), its sha256 in `files`

Schema versions: run.json's `schema_version` (absent: 1). Every reader reads every version up to
`SCHEMA_VERSION` through `RunInfo.from_dict`, which maps older field places to the current ones; a newer
version is refused with a fix. Bump it when a field changes meaning, and map the old place in from_dict.
"""

from __future__ import annotations

from headstart.runs.card import run_card, run_recipe, split_metrics
from headstart.runs.folder import (
    Run,
    check_base,
    check_stored_files,
    default_run_dir,
    library_versions,
    load_head,
    load_run,
    load_run_info,
    load_tensors,
    read_calibration,
    read_evaluation,
    read_json,
    read_run_json,
    read_split_rows,
    run_info_of,
    save_head,
    save_tensors,
    split_csv,
    to_jsonable,
    write_run,
)
from headstart.runs.items import (
    data_root_of,
    expected_path,
    item_sources,
    make_split_rows,
    resolve_item,
    resolve_path,
    split_texts,
)
from headstart.runs.names import (
    ADAPTER_FILE,
    BEHAVIOUR_FILE,
    CALIBRATION_FILE,
    CLUSTERS_FILE,
    COMPARE_FILE,
    CURVE_FILE,
    DATA_FILE,
    DELTA_FILE,
    DISTILL_FILE,
    EVALUATION_FILE,
    HEAD_FILE,
    HISTORY_CSV_FILE,
    HISTORY_FILE,
    LEAKAGE_FILE,
    METRICS_FILE,
    ONNX_FILE,
    OVERLAP_FILE,
    RECIPE_FILE,
    REPORT_FILE,
    RUN_FILE,
    SCHEMA_VERSION,
    SHAPE_FILE,
    SPLIT_COLUMNS,
    SPLIT_FILE,
)
from headstart.runs.records import (
    AdapterRef,
    BackboneRef,
    Calibration,
    DeltaRef,
    Evaluation,
    FileRef,
    ObjectiveInfo,
    RunInfo,
    SplitRow,
)

__all__ = [
    "ADAPTER_FILE",
    "BEHAVIOUR_FILE",
    "CALIBRATION_FILE",
    "CLUSTERS_FILE",
    "COMPARE_FILE",
    "CURVE_FILE",
    "DATA_FILE",
    "DELTA_FILE",
    "DISTILL_FILE",
    "EVALUATION_FILE",
    "HEAD_FILE",
    "HISTORY_CSV_FILE",
    "HISTORY_FILE",
    "LEAKAGE_FILE",
    "METRICS_FILE",
    "ONNX_FILE",
    "OVERLAP_FILE",
    "RECIPE_FILE",
    "REPORT_FILE",
    "RUN_FILE",
    "SCHEMA_VERSION",
    "SHAPE_FILE",
    "SPLIT_COLUMNS",
    "SPLIT_FILE",
    "AdapterRef",
    "BackboneRef",
    "Calibration",
    "DeltaRef",
    "Evaluation",
    "FileRef",
    "ObjectiveInfo",
    "Run",
    "RunInfo",
    "SplitRow",
    "check_base",
    "check_stored_files",
    "data_root_of",
    "default_run_dir",
    "expected_path",
    "item_sources",
    "library_versions",
    "load_head",
    "load_run",
    "load_run_info",
    "load_tensors",
    "make_split_rows",
    "read_calibration",
    "read_evaluation",
    "read_json",
    "read_run_json",
    "read_split_rows",
    "resolve_item",
    "resolve_path",
    "run_card",
    "run_info_of",
    "run_recipe",
    "save_head",
    "save_tensors",
    "split_csv",
    "split_metrics",
    "split_texts",
    "to_jsonable",
    "write_run",
]
