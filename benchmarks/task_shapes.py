"""Each task shape on its packaged example, under each strategy: the README's task-shape table.

Builds every example into a temporary folder (multi-label emoji keywords, emoji counting, Unicode-name
tagging, Unicode-name instructions; fortunes for the prompt and prefix tuning of a text classifier), runs
`headstart probe` / `headstart fit` through the CLI with --json, and prints, per shape and strategy, the
headline test score with its 95 % interval, the seconds it took, and the run's trainable parameters. The
last line printed is one JSON object with every row.

    .venv/bin/python benchmarks/task_shapes.py            # every row (about 25 min on 2 quiet cores)
    .venv/bin/python benchmarks/task_shapes.py --quick    # one probe per item shape, under 5 minutes

The multi-label example needs the Debian package fonts-noto-color-emoji (and unicode-data): without them
its rows are listed as skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import REPO, cpu_model, emit_json, machine_load

KEYS = ("rows", "skipped", "cpu", "quick", "total_s")
HEADSTART = [sys.executable, "-m", "headstart"]


def _run(args: list[str], timeout: float = 1800) -> dict[str, Any]:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    p = subprocess.run(
        [*HEADSTART, *args, "--json"], capture_output=True, text=True, env=env, timeout=timeout
    )
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(
            f"headstart {' '.join(args)} exited {p.returncode}: {p.stdout[-400:]}{p.stderr[-400:]}"
        )
    out = json.loads(p.stdout)
    out["_seconds"] = seconds
    return out


def _example(name: str, root: Path) -> Path:
    """Build one example (a data path), or raise FileNotFoundError/SystemExit saying why not."""
    ex = REPO / "examples"
    if name == "multilabel":
        subprocess.run([sys.executable, str(ex / "build_emoji_keywords.py"), str(root / "kw")], check=True)
        return root / "kw" / "labels.csv"
    if name == "regress":
        subprocess.run([sys.executable, str(ex / "build_regression.py"), str(root / "count")], check=True)
        return root / "count" / "manifest.csv"
    if name == "tag":
        return ex / "tags"
    if name == "generate":
        return ex / "instructions" / "unicode_names.jsonl"
    return ex / "fortunes" / "fortunes.csv"


def _score(task: str, m: dict[str, Any]) -> tuple[str, float | None, list[float] | None]:
    """(name, test value, interval) of the shape's headline score in a run's metrics."""
    t = m.get("test") or {}
    if task == "multilabel":
        return "mAP", t.get("map"), t.get("map_ci")
    if task == "regress":
        return "MAE (lower is better)", t.get("mae"), t.get("mae_ci")
    if task == "tag":
        return "entity F1", t.get("entity_f1"), t.get("entity_f1_ci")
    if task == "generate":
        side = t.get("after") or t.get("base") or {}  # a fit's tuned model, or a probe's base
        return "ROUGE-L", side.get("rouge_l"), side.get("rouge_l_ci")
    return "accuracy", t.get("accuracy"), t.get("accuracy_ci")


# (task, strategy, backbone, extra CLI args); strategy "head" runs `probe`.
FULL: list[tuple[str, str, str, list[str]]] = [
    ("multilabel", "head", "efficientnet_lite0", []),
    ("multilabel", "lp-ft", "efficientnet_lite0", ["--epochs", "3"]),
    ("multilabel", "full", "efficientnet_lite0", ["--epochs", "3"]),
    ("regress", "head", "efficientnet_lite0", []),
    ("regress", "lp-ft", "efficientnet_lite0", ["--epochs", "3"]),
    ("regress", "partial:2", "efficientnet_lite0", ["--epochs", "3"]),
    ("tag", "head", "minilm-l6", []),
    ("tag", "lora", "minilm-l6", ["--epochs", "8"]),
    ("tag", "full", "minilm-l6", ["--epochs", "3"]),
    ("generate", "head", "smollm2-135m", []),
    ("generate", "lora", "smollm2-135m", []),
    ("classify", "head", "minilm-l6", []),
    ("classify", "lora", "minilm-l6", ["--epochs", "3"]),
    ("classify", "prompt-tuning", "minilm-l6", ["--epochs", "3"]),
    ("classify", "prefix-tuning", "minilm-l6", ["--epochs", "3"]),
]
QUICK = [r for r in FULL if r[1] == "head" and r[0] in ("multilabel", "regress", "tag")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the probes of multilabel, regress and tag")
    ap.add_argument("--only", default=None, help="comma-separated tasks to run (default: all)")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    if args.only:
        plan = [r for r in plan if r[0] in args.only.split(",")]
    t_all = time.perf_counter()
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    data: dict[str, Path] = {}
    say: Callable[[str], None] = lambda s: print(s, flush=True)  # noqa: E731
    say(f"cpu: {cpu_model()}; load {machine_load()}")
    with tempfile.TemporaryDirectory(prefix="headstart-shapes-") as tmp:
        root = Path(tmp)
        for task, strategy, backbone, extra in plan:
            key = f"{task}/{strategy}"
            if task in skipped:
                skipped[key] = skipped[task]
                continue
            try:
                if task not in data:
                    data[task] = _example(task, root)
                verb = ["probe"] if strategy == "head" else ["fit", "--strategy", strategy]
                task_arg = [] if task == "classify" else ["--task", task]
                out = root / "runs" / key.replace(":", "-")
                r = _run(
                    [*verb, str(data[task]), "--backbone", backbone, *task_arg, "--out", str(out), *extra]
                )
            except (subprocess.CalledProcessError, FileNotFoundError, RuntimeError) as e:
                skipped[key if task in data else task] = str(e)[-300:]
                say(f"{key}: skipped ({str(e)[-200:]})")
                continue
            name, value, ci = _score(task, r.get("metrics") or {})
            row = {
                "task": task,
                "strategy": strategy,
                "backbone": backbone,
                "score": name,
                "test": value,
                "test_ci": ci,
                "trainable_params": (r.get("metrics") or {}).get("trainable_params"),
                "seconds": round(r["_seconds"], 1),
            }
            rows.append(row)
            shown = f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if value is not None and ci else str(value)
            say(f"{key:28s} {backbone:18s} test {name} {shown}  ({row['seconds']:.0f} s)")
    result = {
        "rows": rows,
        "skipped": skipped,
        "cpu": cpu_model(),
        "quick": args.quick,
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    emit_json(result, KEYS)


if __name__ == "__main__":
    main()
