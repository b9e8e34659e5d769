"""End-to-end linear probe: a cold `probe()`, the same call on a warm cache, and the head fit itself.

What is measured (EfficientNet-Lite0, packaged ImageNet weights, on the CPU):

- `first_s`: wall time of `headstart.api.probe(folder, backbone="efficientnet_lite0", save=False,
  progress=False)` with a fresh, empty HEADSTART_CACHE: every image is embedded, and the one-time ONNX
  export of the backbone happens inside this call too (it is what a first run on a new machine costs).
  Python imports of headstart/torch are done before the clock starts (printed separately).
- `second_s`: the same call again in the same process: every embedding is a cache hit, so the backbone
  does no work (checked: metrics["embed"]["forwards"] == 0). `cache_speedup` = first_s / second_s.
- `head_fit_s`: `headstart.head.fit_head` at one fixed C (`Cs=(C,)`, C = the C the cold probe chose)
  on the standardised-inside-fit_head embeddings of 70 % of the files (stratified; the embeddings come
  from `embed()` on the same files, i.e. from the cache). Measured in a fresh child process: its first
  call is `head_fit_cold_s` (it includes the one-time import of torch._dynamo by the first
  torch.optim step); `head_fit_s` is the median of three further, warm calls.
- `sklearn_fit_s`: `StandardScaler` + `LogisticRegression(C=C, max_iter=1000, solver="lbfgs")` on the
  same 70 % (scaling inside the timing on both sides: fit_head standardises internally), median of
  three. Same objective as fit_head (sklearn's C convention, unpenalised intercept).
- `head_acc`, `sklearn_acc`: accuracy of each on the held-out 30 %.
- Extra: `head_path_s`, fit_head with its default C path and the held-out 30 % as X_val (the
  selection work a probe does), warm.

The dataset is a folder of class sub-folders (the 9 emoji classes of examples/emoji/images) of
distinct augmented 320 px JPEGs (see _common.py): 112 per class (1,008 images) in a full run, 25 per
class (225) with --quick. Everything (images, HEADSTART_CACHE) lives in a temporary directory.

Run (from the repository root):

    .venv/bin/python benchmarks/probe.py            # ~1,000 images; about a minute or two
    .venv/bin/python benchmarks/probe.py --quick    # 225 images; < 1 min

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from _common import Timer, emit_json, isolated_cache, machine_load, make_class_folder, rnd

KEYS = ("first_s", "second_s", "cache_speedup", "head_fit_s", "sklearn_fit_s", "head_acc", "sklearn_acc")
BACKBONE = "efficientnet_lite0"
REPEATS = 3


def _median_time(fn: Callable[[], Any], repeats: int = REPEATS) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def fit_child(npz: str) -> None:
    """Child mode (fresh process, so the first fit is really cold): time the heads, print one JSON line."""
    data = np.load(npz)
    Xtr, ytr, Xte, yte = data["Xtr"], data["ytr"], data["Xte"], data["yte"]
    C, k = float(data["C"]), int(data["k"])
    import torch  # noqa: F401  (imported before any clock: a process-level cost, not the fit's)
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from headstart.head import fit_head

    def head() -> Any:
        return fit_head(Xtr, ytr, k, Cs=(C,))[0]

    def sk() -> Any:
        scaler = StandardScaler().fit(Xtr)
        model = LogisticRegression(C=C, max_iter=1000, solver="lbfgs").fit(scaler.transform(Xtr), ytr)
        return scaler, model

    with Timer() as t_cold:
        head()
    head_s, h = _median_time(head)
    sk_s, (scaler, model) = _median_time(sk)
    path_s, (_, path_C, path_scores) = _median_time(lambda: fit_head(Xtr, ytr, k, X_val=Xte, y_val=yte))
    head_pred = h.proba(Xte).argmax(1)
    sk_pred = model.predict(scaler.transform(Xte))
    print(
        json.dumps(
            {
                "head_fit_cold_s": t_cold.s,
                "head_fit_s": head_s,
                "sklearn_fit_s": sk_s,
                "head_path_s": path_s,
                "path_C": path_C,
                "path_scores": {str(c): v for c, v in path_scores.items()},
                "head_acc": float((head_pred == yte).mean()),
                "sklearn_acc": float((sk_pred == yte).mean()),
                "agreement": float((head_pred == sk_pred).mean()),
                "sklearn_iters": int(np.max(model.n_iter_)),
            }
        )
    )


def stratified_split(y: np.ndarray, test: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test, stratify=y, random_state=seed)
    return np.sort(tr), np.sort(te)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="225 images instead of 1,008; under a minute")
    ap.add_argument("--fit-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fit_child:
        fit_child(args.fit_child)
        return

    per_class = 25 if args.quick else 112
    t_start = time.perf_counter()
    with isolated_cache("headstart-bench-probe-") as root:
        print(f"probe benchmark ({'quick' if args.quick else 'full'}): {BACKBONE}; {machine_load()}")
        with Timer() as t:
            labels = make_class_folder(root / "data", per_class, size=320, quality=90)
        n = sum(len(v) for v in labels.values())
        print(f"  wrote {n} distinct 320 px JPEGs, {len(labels)} classes x {per_class}, in {t.s:.1f} s")

        with Timer() as t:
            import headstart.api
            import headstart.backbones
            import headstart.features
            import headstart.head
        print(f"  imports (headstart, torch): {t.s:.1f} s (before the clock)")

        def run_probe() -> Any:
            return headstart.api.probe(root / "data", backbone=BACKBONE, save=False, progress=False)

        with Timer() as t1:
            r1 = run_probe()
        with Timer() as t2:
            r2 = run_probe()
        first_s, second_s = t1.s, t2.s
        e1, e2 = r1.metrics["embed"], r2.metrics["embed"]
        for tag, r, t, e in (("cold", r1, first_s, e1), ("warm", r2, second_s, e2)):
            tm = r.timings
            print(
                f"  probe(), {tag} cache: {t:6.2f} s   ({e['n_files']} files: {e['forwards']} forwards, "
                f"{e['cache_hits']} cache hits, backend {e['backend']}; "
                f"load data {tm['load_data_s']:.2f} s, "
                f"backbone {tm['load_backbone_s']:.2f} s, hash+cache {tm['hash_and_cache_s']:.2f} s, "
                f"embed {tm['embed_s']:.2f} s, fit head {tm['fit_head_s']:.2f} s, "
                f"evaluate {tm['evaluate_s']:.2f} s)"
            )
        ok = e2["forwards"] == 0
        print(
            f"  second call did no backbone work (forwards == 0): {'yes' if ok else 'NO'} "
            f"(forwards = {e2['forwards']})"
        )
        cache_speedup = first_s / second_s
        print(f"  cache speedup (first/second): {cache_speedup:.1f}x")
        C = float(r1.metrics.get("C") or 0.01)
        test_acc = r1.metrics.get("test", {}).get("accuracy", float("nan"))
        print(f"  probe chose C = {C:g} on its val split; its test accuracy {test_acc:.3f}")

        # Embeddings of the same files (from the cache), 70/30 stratified, fits timed in a fresh process.
        classes = sorted(labels)
        paths = [p for c in classes for p in labels[c]]
        y = np.array([i for i, c in enumerate(classes) for _ in labels[c]])
        bb = headstart.backbones.create_backbone(BACKBONE)
        feats = headstart.features.embed(bb, paths, progress=False)
        if feats.paths != paths:
            raise SystemExit(f"embed() skipped files: {feats.bad}")
        print(
            f"  embeddings for the head fits: {feats.X.shape}, {feats.stats['cache_hits']} cache hits, "
            f"{feats.stats['forwards']} forwards"
        )
        tr, te = stratified_split(y, 0.3, seed=0)
        npz = root / "emb.npz"
        np.savez(npz, Xtr=feats.X[tr], ytr=y[tr], Xte=feats.X[te], yte=y[te], C=C, k=len(classes))
        out = subprocess.run(
            [sys.executable, __file__, "--fit-child", str(npz)], check=True, capture_output=True, text=True
        )
        fit = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"  fit on {len(tr)} x {feats.X.shape[1]}, {len(classes)} classes, C = {C:g}; "
            f"accuracy on the held-out {len(te)}:"
        )
        print(
            f"    headstart fit_head:         {fit['head_fit_s']:6.3f} s warm (median of {REPEATS}), "
            f"{fit['head_fit_cold_s']:.3f} s cold (first call in a fresh process)   "
            f"acc {fit['head_acc']:.3f}"
        )
        print(
            f"    sklearn StandardScaler+LR:  {fit['sklearn_fit_s']:6.3f} s (median of {REPEATS}, "
            f"{fit['sklearn_iters']} lbfgs iterations)                        acc {fit['sklearn_acc']:.3f}"
        )
        print(
            f"    fit_head / sklearn time: {fit['head_fit_s'] / fit['sklearn_fit_s']:.2f}x; "
            f"predictions agree on {fit['agreement']:.1%}"
        )
        scores = ", ".join(f"{c}: {v:.3f}" for c, v in fit["path_scores"].items())
        print(
            f"    fit_head over the default C path with X_val: {fit['head_path_s']:.3f} s "
            f"(chose C = {fit['path_C']:g}; held-out acc by C: {scores})"
        )
    total = time.perf_counter() - t_start
    print(f"  total wall time {total:.1f} s; {machine_load()}")

    emit_json(
        {
            "first_s": rnd(first_s, 2),
            "second_s": rnd(second_s, 3),
            "cache_speedup": rnd(cache_speedup, 2),
            "head_fit_s": rnd(fit["head_fit_s"], 4),
            "sklearn_fit_s": rnd(fit["sklearn_fit_s"], 4),
            "head_acc": rnd(fit["head_acc"], 4),
            "sklearn_acc": rnd(fit["sklearn_acc"], 4),
            "head_fit_cold_s": rnd(fit["head_fit_cold_s"], 3),
            "head_path_s": rnd(fit["head_path_s"], 3),
            "C": C,
            "second_forwards": int(e2["forwards"]),
            "n_images": n,
            "quick": bool(args.quick),
            "total_s": rnd(total, 1),
        },
        KEYS,
    )


if __name__ == "__main__":
    main()
