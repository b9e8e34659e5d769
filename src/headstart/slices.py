"""Slices: every headline score per subgroup of the evaluated items, its gap to the overall score, and the
guard that keeps `models promote` from moving an alias to a version that is worse on a slice.

Where an item's slice comes from: the `group` (or `slice`) column of a manifest or text table, kept in the
run's split.csv; or `evaluate --slices FILE`, a CSV of `path,group` (file items; paths relative to FILE's
folder, or absolute) or `text,group` (texts: the text itself, exactly as in the data), which replaces them.

Which interval, and why (see `headstart.intervals` for the intervals themselves):
- **Gap of a slice's accuracy to the overall accuracy.** A slice and the rest of the items are disjoint,
  so slice - overall = (1 - n_slice/N) x (slice - rest) exactly: the gap gets Newcombe's interval for two
  independent proportions (Wilson-based, good at small n), scaled by that factor, and Fisher's exact
  p-value. No resampling noise, valid for a slice of a handful of items.
- **Gap of macro-F1 and balanced accuracy.** No closed form: a bootstrap stratified by slice (each slice,
  and the ungrouped items, resampled within itself, so every resample keeps the slice sizes of the test
  set), slice minus overall on the same resample, 1,000 times. Tested only from MIN_BOOTSTRAP_N items:
  below that a slice's bootstrap has too few distinct resamples to be trusted.
- **Flags.** A slice is flagged below overall on a score when its gap is negative and the p-value, Holm-
  corrected over every slice and score tested, is under 0.05: ten slices do not give ten chances to
  raise a false alarm.
- **Promotion.** The candidate's accuracy on each slice against the current holder's. Evaluated on the
  same items (the same sources and labels, checked by a hash; e.g. two runs of the same data and split),
  the comparison is paired: the exact McNemar test and a paired bootstrap interval (`paired_difference`),
  from the per-item correctness evaluation.json keeps per slice. Otherwise the two are independent
  samples: Newcombe's interval and Fisher's exact test. A slice regresses when the candidate is worse,
  the 95 % interval of the difference excludes 0 and the Holm-corrected p-value is under 0.05. Accuracy
  is what is compared: it is the score whose per-item correctness makes the paired test possible.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError

MIN_BOOTSTRAP_N = 20
#: Headline scores computed per slice; accuracy's gap is closed form, the others' bootstrapped.
SCORES = ("accuracy", "macro_f1", "balanced_accuracy")
SCORE_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "balanced_accuracy": "balanced accuracy"}
SLICES_HELP = (
    "a `group` (or `slice`) column in a manifest or text table, or `headstart evaluate RUN --slices "
    "FILE` with a CSV of path,group (texts: text,group)"
)


# -- where the slices come from --------------------------------------------------------------------------
def read_slice_file(path: str | Path, modality: str) -> dict[str, str]:
    """{item key: slice} of a slice CSV: key = the absolute path of a file item, or a text itself."""
    from headstart.data.items import row_group

    path = Path(path).expanduser()
    key_col = "text" if modality == "text" else "path"
    columns = f"{key_col},group"
    if not path.is_file():
        raise HeadstartError(f"--slices {path}: no such file", fix=f"give a CSV with columns {columns}")
    try:
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline=""))
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise HeadstartError(f"--slices {path} is not UTF-8 CSV ({e})", fix="save it as UTF-8 CSV") from e
    have = reader.fieldnames or []
    if key_col not in have or not {"group", "slice"} & set(have):
        raise HeadstartError(
            f"--slices {path} has columns {have}; a {modality} run needs {columns} (or {key_col},slice)",
            fix=f"name its columns {columns}"
            + (" (for texts, the text itself, exactly as in the data)" if key_col == "text" else ""),
        )
    out: dict[str, str] = {}
    for n, r in enumerate(rows, 2):
        where = f"{path}:{n}"
        key, group = r.get(key_col) or "", row_group(r, where)
        if not key.strip() or group is None:
            raise HeadstartError(
                f"{where} has an empty {key_col} or group", fix="fill it in, or remove the row"
            )
        if key_col == "path":
            p = Path(key.strip()).expanduser()
            key = os.path.abspath(p if p.is_absolute() else path.parent / p)
        if out.get(key, group) != group:
            raise HeadstartError(
                f"{where}: {key!r} is in two slices ({out[key]!r} and {group!r})", fix="keep one row per item"
            )
        out[key] = group
    if not out:
        raise HeadstartError(f"--slices {path} has no rows", fix=f"add {columns} rows")
    return out


def groups_from_file(
    sources: Sequence[str], mapping: dict[str, str], modality: str, path: str | Path
) -> list[str | None]:
    """Each evaluated item's slice in a slice file's mapping (None: not listed); none listed: an error."""
    keys = list(sources) if modality == "text" else [os.path.abspath(s) for s in sources]
    groups = [mapping.get(k) for k in keys]
    if not any(g is not None for g in groups):
        example = next(iter(mapping))
        raise HeadstartError(
            f"--slices {path} names none of the {len(sources)} evaluated items (it lists e.g. {example!r}; "
            f"they are e.g. {keys[0]!r})",
            fix="give paths relative to the slice file's folder (or absolute)"
            if modality != "text"
            else "give each text exactly as it is in the data",
        )
    return groups


# -- scores per slice ------------------------------------------------------------------------------------
def _resamples(codes: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) item indices; each column draws within its own stratum (slice), so sizes stay fixed."""
    rng = np.random.default_rng(seed)
    idx = np.empty((n_boot, len(codes)), dtype=np.int64)
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        idx[:, members] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
    return idx


def _boot_scores(y: np.ndarray, p: np.ndarray, k: int, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Macro-F1 and balanced accuracy of each resample (rows of idx), in chunks of 100 resamples."""
    from headstart.intervals import _confusions, balanced_accuracy_from_confusion, macro_f1_from_confusion

    cms = [_confusions(y, p, k, idx[i : i + 100]) for i in range(0, len(idx), 100)]
    return {
        "macro_f1": np.concatenate([macro_f1_from_confusion(cm) for cm in cms]),
        "balanced_accuracy": np.concatenate([balanced_accuracy_from_confusion(cm) for cm in cms]),
    }


def _boot_p(d: np.ndarray) -> float:
    """Two-sided bootstrap p-value that the gap is 0: twice the smaller tail beyond 0 (add-one)."""
    d = d[~np.isnan(d)]
    tail = min((d >= 0).sum(), (d <= 0).sum())
    return float(min(1.0, 2 * (tail + 1) / (len(d) + 1)))


def _item_order(sources: Sequence[str], labels: Sequence[int], members: np.ndarray) -> tuple[np.ndarray, str]:
    """The slice's items sorted by (source, label), and a hash of that list: equal hashes = the same items."""
    keyed = sorted((sources[i], int(labels[i]), int(i)) for i in members)
    digest = hashlib.sha256("\n".join(f"{s}\t{lab}" for s, lab, _ in keyed).encode()).hexdigest()
    return np.array([i for *_, i in keyed], dtype=np.int64), digest


def slice_scores(
    y: np.ndarray,
    pred: np.ndarray,
    groups: Sequence[str | None],
    sources: Sequence[str],
    classes: list[str],
    *,
    origin: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """evaluation.json's "slices": every headline score per slice with its interval, the gap to overall
    with its interval and Holm-corrected p-value, the flags, and per-item correctness (for promotion's
    paired test). None when no item has a slice."""
    from headstart.intervals import ALPHA, holm, unpaired_difference
    from headstart.metrics import classification_metrics

    names = sorted({g for g in groups if g is not None})
    if not names:
        return None
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    codes = np.array([names.index(g) if g is not None else -1 for g in groups])
    k, n_all = len(classes), len(y)
    right = y == pred
    overall = classification_metrics(y, pred, classes)
    idx = _resamples(codes, n_boot, seed)
    boot_all = _boot_scores(y, pred, k, idx)
    rows: dict[str, dict[str, Any]] = {}
    tests: list[tuple[str, str, float]] = []  # (slice, score, p) of every test run, for Holm
    for s, name in enumerate(names):
        members = np.flatnonzero(codes == s)
        m = classification_metrics(y[members], pred[members], classes)
        n_s, rest = len(members), np.flatnonzero(codes != s)
        row: dict[str, Any] = {"n": n_s}
        for score in SCORES:
            row[score], row[f"{score}_ci"] = m.get(score), m.get(f"{score}_ci")
        w = len(rest) / n_all  # slice - overall = w * (slice - rest), for accuracy
        diff = unpaired_difference(int(right[members].sum()), n_s, int(right[rest].sum()), len(rest))
        row["accuracy_gap"] = row["accuracy"] - overall["accuracy"]
        row["accuracy_gap_ci"] = [w * c for c in diff["ci"]] if len(rest) else [0.0, 0.0]
        if len(rest):
            tests.append((name, "accuracy", diff["p"]))
        boot_s = _boot_scores(y, pred, k, idx[:, members])
        for score in SCORES[1:]:
            gaps = boot_s[score] - boot_all[score]
            row[f"{score}_gap"] = (row[score] or 0.0) - float(overall.get(score) or 0.0)
            row[f"{score}_gap_ci"] = [float(v) for v in np.nanpercentile(gaps, [2.5, 97.5])]
            if n_s >= MIN_BOOTSTRAP_N and len(rest):
                tests.append((name, score, _boot_p(gaps)))
        order, digest = _item_order(sources, y, members)
        row.update(items_sha256=digest, correct="".join("1" if right[i] else "0" for i in order))
        rows[name] = row
    for (name, score, _), p in zip(tests, holm([p for *_, p in tests]), strict=True):
        rows[name][f"{score}_gap_p"] = p
    for row in rows.values():
        row["below_overall"] = [
            s for s in SCORES if row[f"{s}_gap"] < 0 and row.get(f"{s}_gap_p", 1.0) < ALPHA
        ]
    n_grouped = int((codes >= 0).sum())
    return {
        "origin": origin,
        "n_grouped": n_grouped,
        "n_ungrouped": n_all - n_grouped,
        "scores": list(SCORES),
        "method": "95% intervals of the gap: accuracy Newcombe (slice vs rest, Fisher exact p), "
        f"macro-F1 and balanced accuracy stratified bootstrap x{n_boot} (tested from n >= {MIN_BOOTSTRAP_N});"
        " flagged below overall when Holm-corrected p < 0.05",
        "flagged": [name for name, row in rows.items() if row["below_overall"]],
        "by_slice": rows,
    }


# -- promotion: the candidate against the alias's current holder, slice by slice --------------------------
def _correct(row: dict[str, Any]) -> tuple[int, int]:
    n = int(row.get("n") or 0)
    bits = row.get("correct")
    if isinstance(bits, str) and len(bits) == n:
        return bits.count("1"), n
    return round(float(row.get("accuracy") or 0.0) * n), n


def compare_slices(candidate: dict[str, Any] | None, holder: dict[str, Any] | None) -> dict[str, Any]:
    """The candidate's accuracy minus the holder's on every slice both were scored on (see the module
    docstring): {"compared", "reason", "by_slice", "regressed", "not_compared"}."""
    from headstart.intervals import ALPHA, holm, paired_difference, unpaired_difference

    cand = (candidate or {}).get("by_slice") or {}
    held = (holder or {}).get("by_slice") or {}
    common = sorted(set(cand) & set(held))
    out: dict[str, Any] = {"compared": bool(common), "reason": "", "by_slice": {}, "regressed": []}
    out["not_compared"] = sorted(set(cand) ^ set(held))
    if not cand or not held:
        side = "either version" if not cand and not held else "the candidate" if not cand else "the holder"
        out["reason"] = f"{side} has no slices in its evaluation.json ({SLICES_HELP}, then register it)"
        return out
    if not common:
        out["reason"] = f"no slice names in common (candidate: {sorted(cand)}, holder: {sorted(held)})"
        return out
    for name in common:
        a, b = cand[name], held[name]
        bits_a, bits_b = a.get("correct"), b.get("correct")
        paired = (
            bool(a.get("items_sha256"))
            and a.get("items_sha256") == b.get("items_sha256")
            and isinstance(bits_a, str)
            and isinstance(bits_b, str)
            and len(bits_a) == len(bits_b)
        )
        if paired:
            r = paired_difference([c == "1" for c in bits_a], [c == "1" for c in bits_b])
        else:
            r = unpaired_difference(*_correct(a), *_correct(b))
        out["by_slice"][name] = {
            "diff": r["diff"],
            "ci": r["ci"],
            "p": r["p"],
            "paired": bool(paired),
            "n_candidate": a.get("n"),
            "n_holder": b.get("n"),
        }
    rows = out["by_slice"]
    for name, p in zip(common, holm([rows[n]["p"] for n in common]), strict=True):
        r = rows[name]
        r["p_holm"] = p
        r["regressed"] = bool(r["diff"] < 0 and r["ci"][1] < 0 and p < ALPHA)
    out["regressed"] = [n for n in common if rows[n]["regressed"]]
    return out


def _slices_of(version_dir: Path) -> dict[str, Any] | None:
    from headstart.runs import EVALUATION_FILE

    try:
        ev = json.loads((version_dir / EVALUATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return ev.get("slices") if isinstance(ev, dict) and isinstance(ev.get("slices"), dict) else None


def promotion_guard(
    candidate_dir: Path, holder_dir: Path | None, *, force: bool, what: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the slice comparison, what the promote event records). Refuses, naming the slices and by how much,
    when the candidate regresses on one, unless `force` (then the event says it was forced)."""
    if holder_dir is None:
        return {"compared": False, "reason": "the alias has no other current holder", "regressed": []}, {}
    result = compare_slices(_slices_of(candidate_dir), _slices_of(holder_dir))
    result["holder"] = holder_dir.name
    if not result["regressed"]:
        return result, {}
    worse = "; ".join(
        f"{n}: {r['diff']:+.3f} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}], p(Holm) {r['p_holm']:.3g} "
        f"({'paired' if r['paired'] else 'unpaired'}, n {r['n_candidate']})"
        for n, r in result["by_slice"].items()
        if r["regressed"]
    )
    if not force:
        raise HeadstartError(
            f"{what} would regress against {holder_dir.name} on slice(s) beyond noise (accuracy difference, "
            f"95% interval): {worse}",
            fix="improve the candidate on those slices, or pass --force to promote anyway (recorded)",
        )
    return result, {
        "forced": True,
        "regressed_slices": {n: result["by_slice"][n]["diff"] for n in result["regressed"]},
    }
