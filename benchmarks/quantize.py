"""Frozen forwards at int8: speed, size, accuracy and the choice `--precision auto` makes (issue 21).

Per task (a backbone on a packaged data set), in one fresh cache (HEADSTART_CACHE in a temp dir):

- `e2e_fp32_s`, `e2e_int8_s` (items/s): `headstart.features.embed` of every item from a cold feature cache,
  decode included, through ONNX Runtime float and through the int8 model (`--precision int8`: static QDQ
  per-channel for conv nets, calibrated on the training split; dynamic int8 for transformers). The
  one-time export and quantisation, and ONNX Runtime's optimized copy of each model (cached beside them,
  as a user's first command leaves it: `onnx_forward.cached_session`), happen before the clocks start and
  are printed separately; every timed embed builds its ONNX Runtime session inside the clock.
- Every speed is the median of `--reps` (3) interleaved repeats, each into its own empty feature cache;
  `pipeline_ratio` is the median of each repeat's int8 end-to-end / the int8 pure forward timed right
  after it (`pipeline_ratio_reps` lists them): on a shared 2-core VM one busy second moves a single
  ratio by 0.1.
- `forward_fp32_s`, `forward_int8_s` (items/s): the pure forwards on inputs collated beforehand, batches of
  32 (text: length-sorted), after one warm-up batch.
- `mb_fp32`, `mb_int8`: the ONNX files' sizes.
- `probe`: the probe run with `--precision int8` (which reports the comparison): the 3x5-fold CV accuracy
  over train+val on float and on int8 features with 95 % Wilson intervals, the paired McNemar test, and
  both heads' test accuracy with intervals; `test_int8_minus_fp32`: the paired difference on test.
- `auto`: what `--precision auto` chose, and why.
- images: `serve_p50_ms_fp32` / `serve_p50_ms_int8`: `headstart serve`'s predictor (loaded run, decoded
  upload, forward and head) on a single image, median of 30 after 3 warm-ups, on the forward it picks by
  default (no export needed: the cached ONNX backbone and the head, at the run's precision);
  `serve_forward_*` says which forward answered.
- images: `load_cpu_ms`: CPU time to read, decode, resize and normalise one file (best of two passes, one
  thread); `pipeline_ceiling`: the highest `image_pipeline_ratio` these cores allow, since the forward
  keeps every core busy and loading adds its CPU time on the same cores: forward CPU-ms / (forward CPU-ms
  + `load_cpu_ms`), with forward CPU-ms = cores x 1000 / `forward_int8_s`.
- text: `eager_s`: today's eager PyTorch path (`embed(backend="torch")`), the baseline of the text ratios.

Tasks: EfficientNet-Lite0 and -Lite2 on the emoji example (360 images) and on a photo-like packaged set
(crops of the photographs installed with scikit-learn and matplotlib, examples/build_photo_crops.py),
MiniLM-L6 on the fortunes example. `--quick`: Lite0 on emoji and MiniLM on 360 fortunes.

Last line, one JSON object: `image_int8_speedup` (Lite0 emoji, int8 end-to-end / float end-to-end),
`image_pipeline_ratio` (int8 end-to-end / int8 pure forward) with `image_pipeline_ceiling` (the most
these cores allow, above), `text_ort_speedup` (MiniLM ORT float /
eager), `text_int8_speedup` (ORT int8 / eager), `serve_latency_ratio` (int8 / float single-image p50),
`accuracy_losses` (tasks where the precision `auto` chose loses to float on test beyond noise: exact
McNemar at 5 %), `auto_choice` ({task: precision}), `cpu`, and every task's figures.

    .venv/bin/python benchmarks/quantize.py            # all tasks
    .venv/bin/python benchmarks/quantize.py --quick    # Lite0 emoji + MiniLM fortunes
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, Timer, cpu_model, emit_json, isolated_cache, machine_load, rnd

KEYS = (
    "image_int8_speedup",
    "image_pipeline_ratio",
    "text_ort_speedup",
    "text_int8_speedup",
    "serve_latency_ratio",
    "accuracy_losses",
    "auto_choice",
)
BATCH = 32
FORTUNES = REPO / "examples" / "fortunes" / "fortunes.csv"
EMOJI = REPO / "examples" / "emoji" / "images"


def vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def fortunes_csv(out: Path, n: int | None) -> Path:
    """The fortunes example, or its first `n` rows (a CSV manifest headstart reads)."""
    if n is None:
        return FORTUNES
    import csv

    with FORTUNES.open(newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    with (out / "fortunes.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return out / "fortunes.csv"


def pure_forward(bb: Any, forward: Any, sources: list[str]) -> float:
    """Items/s of `forward` on batches collated beforehand (length-sorted, as embed batches them)."""
    from headstart.features import by_size

    ordered = [s for _, s in by_size(bb, [(str(i), s) for i, s in enumerate(sources)])]
    batches = [
        bb.collate([bb.load_item(s) for s in ordered[i : i + BATCH]]) for i in range(0, len(ordered), BATCH)
    ]
    forward(batches[0])  # warm-up
    with Timer() as t:
        for b in batches:
            forward(b)
    return len(sources) / t.s


def load_cpu_ms(bb: Any, sources: list[str]) -> float:
    """CPU milliseconds to turn one file into the backbone's input (read, decode, resize, normalise), best
    of two passes in this thread."""
    best = float("inf")
    for _ in range(2):
        t0 = time.thread_time()
        for s in sources:
            bb.load_item(s)
        best = min(best, time.thread_time() - t0)
    return 1000 * best / len(sources)


def pipeline_ceiling(forward_s: float, load_ms: float) -> float:
    """The highest end-to-end / pure-forward ratio these cores allow: the forward keeps every core busy
    (cores x 1000 / forward_s CPU-ms per item) and loading an item adds `load_ms` on the same cores, so
    even perfect overlap gives forward_ms / (forward_ms + load_ms)."""
    forward_ms = len(os.sched_getaffinity(0)) * 1000 / forward_s
    return forward_ms / (forward_ms + load_ms)


def serve_p50_ms(run: Path, source: str) -> tuple[float, str]:
    """(median ms of a single-image prediction, the forward that answered)."""
    from headstart.model import load_model
    from headstart.serve.predictor import Predictor

    pred = Predictor(load_model(run))
    example = pred.decode(Path(source).read_bytes(), name=source)
    for _ in range(3):
        pred.predict([example])
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        pred.predict([example])
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000), pred.forward


def probe_runs(data: Path, backbone: str, root: Path) -> dict[str, Any]:
    """The probe at int8 (reporting the comparison), the same probe at fp32, and what auto chose."""
    from headstart.api import probe
    from headstart.intervals import paired_difference

    runs = {
        p: probe(data, backbone=backbone, out=root / f"run-{p}", precision=p, progress=False, seed=0)
        for p in ("fp32", "int8")
    }
    auto = probe(data, backbone=backbone, save=False, precision="auto", progress=False, seed=0)
    test = {p: r.metrics.get("test") or {} for p, r in runs.items()}
    hits = {p: np.array(t["pred"]) == np.array(t["true"]) for p, t in test.items() if "pred" in t}
    gate = runs["int8"].metrics["frozen_forward"].get("gate", {})
    chosen = auto.metrics["frozen_forward"]
    diff = paired_difference(hits["int8"], hits["fp32"]) if len(hits) == 2 else None
    return {
        "cv": {k: gate.get(k) for k in ("fp32", "int8", "int8_minus_fp32", "scheme")},
        "test": {p: {k: t.get(k) for k in ("n", "accuracy", "accuracy_ci")} for p, t in test.items()},
        "test_int8_minus_fp32": diff,
        "auto": chosen["precision"],
        "auto_reason": chosen["reason"],
        # auto's choice against float on test, beyond noise (a float choice cannot lose to itself)
        "auto_loses": bool(chosen["precision"] == "int8" and diff and diff["diff"] < 0 and diff["p"] < 0.05),
        "runs": {p: r.run_dir for p, r in runs.items()},
    }


def task(name: str, backbone: str, data: Path, *, serve: bool, reps: int) -> dict[str, Any]:
    """Every figure of one task, in its own fresh cache; the speeds are medians of `reps` repeats."""
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.feature_cache import FeatureCache
    from headstart.features import embed
    from headstart.onnx_forward import OnnxForward
    from headstart.quantize_forward import Int8Forward

    with isolated_cache() as root:
        ds = load_dataset(data, seed=0)
        sources = [it.source for it in ds.items]
        bb = create_backbone(backbone)
        out: dict[str, Any] = {"task": name, "backbone": backbone, "items": len(sources)}
        with Timer() as t:
            fp32 = OnnxForward(bb)
            int8 = Int8Forward(bb, [it.source for it in ds.split("train")])  # as the probe calibrates
            int8.session()  # quantized, and ONNX Runtime's optimized copy written (fp32's: above)
        out["export_and_quantize_s"] = rnd(t.s, 2)
        out["method"] = int8.identity.method
        out["mb_fp32"], out["mb_int8"] = (
            rnd(fp32.path.stat().st_size / 1e6, 2),
            rnd(int8.path.stat().st_size / 1e6, 2),
        )
        calibration = int8.calibration_sources
        runs: list[dict[str, float]] = []
        for rep in range(reps):  # interleaved, so a busy moment hits one rep, not one figure
            r: dict[str, float] = {}
            if bb.modality == "text":
                with Timer() as t:
                    embed(bb, sources, backend="torch", cache=False, progress=False)
                r["eager_s"] = len(sources) / t.s
            for p in ("fp32", "int8"):
                # Cold: an empty feature cache and a new session (fp32's is built inside embed; a new
                # Int8Forward finds its file in the cache and builds its session on the first batch).
                kw = {"int8": Int8Forward(bb, calibration)} if p == "int8" else {}
                key = kw["int8"].cache_key if kw else bb.key
                cold = FeatureCache(key, root=root / f"rep{rep}")
                with Timer() as t:  # hashing, decoding, forward, cache writes
                    embed(bb, sources, backend="onnx", cache=cold, progress=False, **kw)
                r[f"e2e_{p}_s"] = len(sources) / t.s
            r["forward_fp32_s"] = pure_forward(bb, fp32, sources)
            r["forward_int8_s"] = pure_forward(bb, int8, sources)
            r["pipeline_ratio"] = r["e2e_int8_s"] / r["forward_int8_s"]  # forward timed beside its e2e
            runs.append(r)
        for k in runs[0]:
            out[k] = rnd(float(np.median([r[k] for r in runs])), 3 if k == "pipeline_ratio" else 1)
        out["pipeline_ratio_reps"] = [rnd(r["pipeline_ratio"]) for r in runs]
        if bb.modality == "image":
            out["load_cpu_ms"] = rnd(load_cpu_ms(bb, sources), 3)
            out["pipeline_ceiling"] = rnd(pipeline_ceiling(out["forward_int8_s"], out["load_cpu_ms"]))
        out["probe"] = probe_runs(data, backbone, root)
        if serve:
            one = sources[0]
            for p in ("fp32", "int8"):
                ms, out[f"serve_forward_{p}"] = serve_p50_ms(out["probe"]["runs"][p], one)
                out[f"serve_p50_ms_{p}"] = rnd(ms, 2)
        out["probe"].pop("runs")
    print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in out.items() if not isinstance(v, dict)), flush=True)
    p = out["probe"]
    print(
        f"  probe CV fp32 {p['cv']['fp32']}, int8 {p['cv']['int8']}; auto: {p['auto']} ({p['auto_reason']})"
    )
    return out


def photo_set(root: Path) -> Path:
    sys.path.insert(0, str(REPO / "examples"))
    from build_photo_crops import build

    out = root / "photos"
    build(out, per_class=40)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Lite0 on emoji and MiniLM on 360 fortunes")
    ap.add_argument("--reps", type=int, default=3, help="repeats of every speed figure (median reported)")
    args = ap.parse_args()
    if args.reps < 1:
        ap.error(f"--reps {args.reps}: must be at least 1")
    print(f"CPU: {cpu_model()} (AVX-512 VNNI: {'yes' if vnni() else 'no'}); {machine_load()}", flush=True)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="headstart-quantize-") as tmp:
        tmp_root = Path(tmp)
        tasks = [("lite0-emoji", "efficientnet_lite0", EMOJI, True)]
        if not args.quick:
            photos = photo_set(tmp_root)
            tasks += [
                ("lite2-emoji", "efficientnet_lite2", EMOJI, False),
                ("lite0-photos", "efficientnet_lite0", photos, False),
                ("lite2-photos", "efficientnet_lite2", photos, False),
            ]
        tasks.append(
            ("minilm-fortunes", "minilm-l6", fortunes_csv(tmp_root, 360 if args.quick else None), False)
        )
        results = {name: task(name, bb, data, serve=serve, reps=args.reps) for name, bb, data, serve in tasks}
    img, txt = results["lite0-emoji"], results["minilm-fortunes"]
    result = {
        "image_int8_speedup": rnd(img["e2e_int8_s"] / img["e2e_fp32_s"]),
        "image_pipeline_ratio": img["pipeline_ratio"],
        "image_pipeline_ceiling": img["pipeline_ceiling"],
        "text_ort_speedup": rnd(txt["e2e_fp32_s"] / txt["eager_s"]),
        "text_int8_speedup": rnd(txt["e2e_int8_s"] / txt["eager_s"]),
        "serve_latency_ratio": rnd(img["serve_p50_ms_int8"] / img["serve_p50_ms_fp32"]),
        "accuracy_losses": sum(r["probe"]["auto_loses"] for r in results.values()),
        "auto_choice": {k: r["probe"]["auto"] for k, r in results.items()},
        "cpu": cpu_model(),
        "vnni": vnni(),
        "quick": args.quick,
        "tasks": results,
    }
    emit_json(result, KEYS)


if __name__ == "__main__":
    main()
