"""Test-time augmentation: does averaging a probe over K augmented views of each test image buy accuracy,
and what does one prediction then cost?

Per image task of the accuracy-per-second benchmark (benchmarks/selection.py builds them offline) and
seed: `headstart probe` on the task's split, then `evaluate_run(run, tta=K)` (headstart.tta), which
scores the test items plain and with K views. The correctness of both is pooled over the seeds and
paired (exact McNemar: a gain inside the noise is a tie). Latency: one image through one ONNX Runtime
forward built beforehand, decode included, plain against decode + K views + one forward of 1 + K images
(p50 of 20, on the first task and seed).

    .venv/bin/python benchmarks/tta.py            # emoji, fashion_mnist_20, digits, shift x 3 seeds, K = 4
    .venv/bin/python benchmarks/tta.py --quick    # emoji, 1 seed (under a minute once embedded)

Last line: one JSON object with `wins` (tasks where TTA beats plain beyond noise), `losses`, per task the
pooled accuracies and paired gain, and the latency ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _common import cpu_model, emit_json, isolated_cache, machine_load, rnd
from selection import TASKS

KEYS = ("wins", "losses", "latency_ratio", "per_task", "k", "seeds", "cpu", "elapsed_s")
DEFAULT_TASKS = ("emoji", "fashion_mnist_20", "digits", "shift")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tasks", default=None, help=f"comma-separated, of {', '.join(DEFAULT_TASKS)}")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--k", type=int, default=4, help="views per test image (default 4)")
    args = ap.parse_args()
    tasks = args.tasks.split(",") if args.tasks else (["emoji"] if args.quick else list(DEFAULT_TASKS))
    seeds = args.seeds or (1 if args.quick else 3)
    from headstart.api import probe
    from headstart.evaluate import evaluate_run
    from headstart.intervals import paired_difference, wilson

    t0 = time.perf_counter()
    print(f"TTA benchmark: {tasks}, {seeds} seed(s), K={args.k}; {cpu_model()}; {machine_load()}", flush=True)
    per_task: dict[str, Any] = {}
    latency: dict[str, Any] | None = None
    wins = losses = 0
    with isolated_cache("headstart-bench-tta-") as root:
        for name in tasks:
            task = TASKS[name]
            built = task.build(Path(root) / "data")
            plain: list[bool] = []
            tta: list[bool] = []
            for seed in range(seeds):
                data = built if task.per_seed is None else task.per_seed(built, seed)
                run = probe(
                    data, backbone=task.backbone, out=Path(root) / f"{name}-{seed}", progress=False, seed=seed
                )
                res = evaluate_run(run.run_dir, tta=args.k, latency=False, save=False)
                t = res["tta"]
                plain += t["plain_correct"]
                tta += t["correct"]
                latency = latency or t["latency"]
                print(
                    f"  {name} seed {seed}: plain {t['plain_accuracy']:.3f}, TTA {t['accuracy']:.3f}",
                    flush=True,
                )
            d = paired_difference(tta, plain)
            lo, hi = wilson(sum(tta), len(tta))
            row = {
                "n": len(tta),
                "plain": rnd(sum(plain) / len(plain)),
                "tta": rnd(sum(tta) / len(tta)),
                "tta_ci": [rnd(lo), rnd(hi)],
                "gain": rnd(d["diff"]),
                "gain_ci": [rnd(x) for x in d["ci"]],
                "p": rnd(d["p"]),
            }
            wins += d["p"] < 0.05 and d["diff"] > 0
            losses += d["p"] < 0.05 and d["diff"] < 0
            per_task[name] = row
            print(f"  {name}: {row}", flush=True)
    assert latency is not None
    print(
        f"one image: {latency['plain_p50_ms']:.1f} ms plain, {latency['tta_p50_ms']:.1f} ms with "
        f"{args.k} views ({latency['ratio']:.1f}x, {latency['backend']})"
    )
    emit_json(
        {
            "wins": wins,
            "losses": losses,
            "latency_ratio": rnd(latency["ratio"]),
            "latency_ms": {k: rnd(latency[k], 2) for k in ("plain_p50_ms", "tta_p50_ms")},
            "per_task": per_task,
            "k": args.k,
            "seeds": seeds,
            "cpu": cpu_model(),
            "elapsed_s": rnd(time.perf_counter() - t0, 1),
        },
        KEYS,
    )


if __name__ == "__main__":
    main()
