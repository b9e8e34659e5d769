"""Nearest-neighbour search over real embeddings: recall@10 and per-query speed of FAISS HNSW vs exact search.

What is measured (`headstart.explore.index`, the code `headstart search` runs):

- The items: sentences of the Debian `fortunes` corpus (every file of /usr/share/games/fortunes, split on
  `%` lines as examples/build_fortunes.py reads them, attribution lines dropped, then split into sentences
  of 4+ words and at most 300 characters, deduplicated; about 26,600), shuffled with a fixed seed and
  embedded with the text backbone `minilm-l6` (all-MiniLM-L6-v2, 384 dims) through the feature cache
  (HEADSTART_CACHE or ~/.cache/headstart: the first run embeds, later runs read the cache). The first
  `--queries` sentences are held out as queries; the next `--items` are the index.
- `exact`: `ExactIndex` (numpy: one matrix product, argpartition, sort). Its top 10 is the ground truth.
- `hnsw`: `FaissIndex` (IndexHNSWFlat, M=32, efConstruction=80, inner product on unit vectors), built once
  (`build_s`, not cached here) and searched at several efSearch values: recall@10 = the share of the exact
  top 10 that HNSW returns, over all queries. `ef_search` is the smallest value with recall@10 >= 0.95
  (the largest tried if none reaches it); `recall_at_10` and `ann_speedup` are at that value.
- `ann_speedup`: exact time / HNSW time for the whole batch of queries (= per-query speed-up), each the best
  of 3, both on `--threads` threads (1 by default: a fair per-query comparison).
- `load_s`: reading the index back from a .parquet written by the same code `headstart embed` uses.

Run (from the repository root):

    .venv/bin/python benchmarks/search.py            # ~25,600 items, 1,000 queries
    .venv/bin/python benchmarks/search.py --quick    # 10,000 items, 500 queries (< 5 min once cached)

Needs the Debian package `fortunes` and faiss (`pip install 'headstart[search]'`). The last line printed is
one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, Timer, emit_json, machine_load, rnd

KEYS = ("recall_at_10", "ann_speedup", "n_items", "dim", "backend", "cpu", "ef_search")
BACKBONE = "minilm-l6"
EF_VALUES = (16, 32, 48, 64, 96, 128, 256)
TARGET_RECALL = 0.95
K = 10
SINGLE = 200  # queries timed one at a time (as `headstart search` with a few queries runs)


def fortune_sentences() -> list[str]:
    """Distinct sentences of every fortunes file, in a fixed order."""
    sys.path.insert(0, str(REPO / "examples"))
    from build_fortunes import FORTUNES, read_fortunes

    files = sorted(p for p in FORTUNES.glob("*") if p.is_file() and p.suffix not in (".dat", ".u8"))
    if not files:
        raise SystemExit(f"no fortunes under {FORTUNES}: install the Debian package `fortunes`")
    out: set[str] = set()
    for path in files:
        for fortune in read_fortunes(path):
            for s in re.split(r"(?<=[.!?])\s+", " ".join(fortune.split())):
                if len(s.split()) >= 4 and len(s) <= 300:
                    out.add(s)
    return sorted(out)


def best_of(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def measure(X: np.ndarray, Q: np.ndarray, threads: int) -> dict[str, Any]:
    """Exact vs HNSW on `threads` threads: batched over all of `Q` at each efSearch, then one query at a
    time (the first SINGLE queries) at the chosen efSearch."""
    import faiss
    from threadpoolctl import threadpool_limits

    from headstart.explore.index import ExactIndex, FaissIndex

    faiss.omp_set_num_threads(threads)
    with threadpool_limits(threads):
        exact = ExactIndex(X)
        exact_s, (_, truth) = best_of(lambda: exact.search(Q, K))
        with Timer() as t_build:
            hnsw = FaissIndex(X, cache=False)
        sweep = []
        for ef in EF_VALUES:
            hnsw.ef_search = ef
            sec, (_, ids) = best_of(lambda: hnsw.search(Q, K))
            sweep.append(
                {"ef_search": ef, "recall_at_10": recall(ids, truth), "s": sec, "speedup": exact_s / sec}
            )
        chosen = next((r for r in sweep if r["recall_at_10"] >= TARGET_RECALL), sweep[-1])
        hnsw.ef_search = chosen["ef_search"]
        one = Q[:SINGLE]
        exact1_s, _ = best_of(lambda: [exact.search(q[None], K) for q in one])
        hnsw1_s, _ = best_of(lambda: [hnsw.search(q[None], K) for q in one])
    us = 1e6 / len(one)
    timed = {"exact_s": exact_s, "build_s": t_build.s, "exact1_us": exact1_s * us, "hnsw1_us": hnsw1_s * us}
    return {**timed, "sweep": sweep, "chosen": chosen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10,000 items and 500 queries")
    ap.add_argument("--items", type=int, help="index size (default: all sentences, 10,000 with --quick)")
    ap.add_argument("--queries", type=int, help="held-out queries (default 1,000, 500 with --quick)")
    ap.add_argument("--threads", type=int, default=1, help="threads of numpy and FAISS while timing")
    args = ap.parse_args()
    n_q = args.queries or (500 if args.quick else 1000)
    t_start = time.perf_counter()
    print(f"search benchmark ({'quick' if args.quick else 'full'}): {BACKBONE}; {machine_load()}")

    texts = fortune_sentences()
    random.Random(0).shuffle(texts)
    n_items = min(args.items or (10_000 if args.quick else len(texts)), len(texts) - n_q)
    texts = texts[: n_q + n_items]
    print(f"  {len(texts)} fortune sentences: {n_q} held-out queries, {n_items} items")

    import faiss

    from headstart.backbones import create_backbone
    from headstart.explore.index import HNSW_EF_CONSTRUCTION, HNSW_M
    from headstart.explore.index_file import load_index_file, write_index_file
    from headstart.features import embed
    from headstart.train.precision import machine_key

    with Timer() as t:
        feats = embed(create_backbone(BACKBONE), texts, progress=True)
    if len(feats.paths) != len(texts):
        raise SystemExit(
            f"{len(texts) - len(feats.paths)} sentences not embedded: {list(feats.bad.items())[:3]}"
        )
    s = feats.stats
    print(f"  embedded in {t.s:.1f} s ({s['cache_hits']} from the cache, {s['forwards']} computed)")
    Q, X = feats.X[:n_q], feats.X[n_q:]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fortunes.parquet"
        rows = [(txt, "fortune", "train") for txt in texts[n_q:]]
        write_index_file(path, X, rows, {"backbone": BACKBONE, "modality": "text"})
        load_s, loaded = best_of(lambda: load_index_file(path))
        assert np.array_equal(loaded.X, X)
    print(f"  .parquet index of {X.shape[0]} x {X.shape[1]}: read back in {load_s:.3f} s")

    m = measure(X, Q, args.threads)
    sweep, chosen = m["sweep"], m["chosen"]
    print(
        f"  exact (numpy, {args.threads} thread(s)): {m['exact_s'] * 1e6 / n_q:8.1f} us/query "
        f"(batch of {n_q}, best of 3)"
    )
    print(f"  HNSW (M={HNSW_M}, efConstruction={HNSW_EF_CONSTRUCTION}) built in {m['build_s']:.2f} s")
    for r in sweep:
        print(
            f"    efSearch {r['ef_search']:4d}: recall@10 {r['recall_at_10']:.4f}, "
            f"{r['s'] * 1e6 / n_q:7.1f} us/query, {r['speedup']:5.1f}x exact"
        )
    print(
        f"  chosen efSearch {chosen['ef_search']} (smallest with recall@10 >= {TARGET_RECALL}): recall@10 "
        f"{chosen['recall_at_10']:.4f}, {chosen['speedup']:.2f}x the speed of exact per query (batched)"
    )
    print(
        f"  one query at a time ({SINGLE} queries, best of 3): exact {m['exact1_us']:.1f} us, HNSW "
        f"{m['hnsw1_us']:.1f} us per query: {m['exact1_us'] / m['hnsw1_us']:.2f}x"
    )
    total = time.perf_counter() - t_start
    print(f"  total wall time {total:.1f} s; {machine_load()}")
    emit_json(
        {
            "recall_at_10": rnd(chosen["recall_at_10"], 4),
            "ann_speedup": rnd(chosen["speedup"], 2),
            "ef_search": chosen["ef_search"],
            "n_items": int(X.shape[0]),
            "n_queries": n_q,
            "dim": int(X.shape[1]),
            "backend": f"faiss-hnsw (faiss {faiss.__version__}) vs exact numpy",
            "cpu": machine_key(),
            "threads": args.threads,
            "exact_us_per_query": rnd(m["exact_s"] * 1e6 / n_q, 1),
            "hnsw_us_per_query": rnd(chosen["s"] * 1e6 / n_q, 1),
            "build_s": rnd(m["build_s"], 2),
            "single_query_speedup": rnd(m["exact1_us"] / m["hnsw1_us"], 2),
            "exact_single_us": rnd(m["exact1_us"], 1),
            "hnsw_single_us": rnd(m["hnsw1_us"], 1),
            "load_s": rnd(load_s, 3),
            "sweep": [{k: rnd(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in sweep],
            "embedded": {
                "cache_hits": int(s["cache_hits"]),
                "forwards": int(s["forwards"]),
                "s": rnd(t.s, 1),
            },
            "corpus": "fortunes sentences (Debian `fortunes`)",
            "quick": bool(args.quick),
            "total_s": rnd(total, 1),
        },
        KEYS,
    )


if __name__ == "__main__":
    main()
