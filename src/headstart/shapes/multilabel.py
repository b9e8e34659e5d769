"""`--task multilabel`: a set of labels per item (`a|b` in a table, or one file linked into several class
folders), for images and texts.

    headstart probe DATA --task multilabel        # one-vs-rest on cached embeddings, thresholds per label
    headstart predict RUN a.png                   # a.png	face, smiling   (--json: labels, scores)

The head has one sigmoid output per label (run.json `classes`); the read-out state (shape.json) holds each
label's temperature and threshold, tuned on val (headstart.shapes.multilabel_fit):
`score = sigmoid(output / temperature)`, a label is on when `score >= threshold`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.errors import HeadstartError
from headstart.intervals import fmt_ci
from headstart.shapes.linear import LinearShape

if TYPE_CHECKING:
    from headstart.data import Dataset, Item
    from headstart.head import LinearHead

#: The per-label rows the CLI table shows at most (the report and --json have them all).
TABLE_LABELS = 30


class MultilabelShape(LinearShape):
    name = "multilabel"
    modalities = ("image", "text", "audio")
    item_score_name = "label-set F1"
    headline = (("map", "mAP"), ("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"))

    def targets(self, ds: Dataset, items: list[Item]) -> np.ndarray:
        """(N, K) 0/1 over `ds.classes`; a label the classes do not hold is left out (see `notes`)."""
        from headstart.data.targets import label_set

        index = {c: k for k, c in enumerate(ds.classes)}
        Y = np.zeros((len(items), len(ds.classes)), dtype=np.float32)
        for i, it in enumerate(items):
            for lab in label_set(it.label):
                if lab in index:
                    Y[i, index[lab]] = 1.0
        return Y

    def output_names(self, ds: Dataset) -> list[str]:
        return list(ds.classes)

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
        from headstart.shapes.multilabel_fit import RULE, cross_fitted_outputs, fit_ovr

        head, chosen, selection, how = fit_ovr(X_train, Y_train, X_val, Y_val, C=C)
        state = {"rule": RULE, "C": chosen, "C_chosen_by": how, "C_selection": selection}
        Z_val = head.logits(X_val) if len(X_val) else np.zeros((0, head.weight.shape[0]), np.float32)
        # Thresholds and temperatures from val together with the cross-fitted training outputs: many
        # more positives per label than val alone holds (a fit's re-tune has val only).
        Z_cf = cross_fitted_outputs(X_train, Y_train, chosen, seed=seed)
        state["readout_tuned_on"] = f"val ({len(Y_val)}) and 5-fold cross-fitted train ({len(Y_train)})"
        both = (np.concatenate([Z_cf, Z_val]), np.concatenate([Y_train, Y_val]))
        return head, self.readout(*both, state, "val and cross-fitted train")

    def readout(
        self, Z_val: np.ndarray, Y_val: np.ndarray, state: dict[str, Any], source: str = "val"
    ) -> dict[str, Any]:
        """Each label's temperature and threshold (re)tuned on `source` outputs: a fit's val; the probe's
        val and cross-fitted train."""
        from headstart.shapes.multilabel_fit import tune_readout

        return {**state, **tune_readout(Z_val, Y_val, source)}

    def embed_data(self, cfg: Any, bb: Any, ds: Dataset) -> Any:
        """The base's, then: every label must have training items (a label without has no head row)."""
        emb = super().embed_data(cfg, bb, ds)
        absent = [c for k, c in enumerate(emb.ds.classes) if not emb.Y["train"][:, k].any()]
        if absent:
            raise HeadstartError(
                f"the training split of {cfg.data} has no item labeled {absent[:5]}"
                + (" (after skipping unreadable files)" if emb.ds.skipped else ""),
                fix="add training items with those labels, or remove those labels",
            )
        return emb

    def split_metrics(
        self, Z: np.ndarray, Y: np.ndarray, state: dict[str, Any], *, seed: int
    ) -> dict[str, Any]:
        from headstart.shapes.multilabel_fit import multilabel_scores

        return multilabel_scores(Z, Y, state, seed=seed)

    def answers(self, Z: np.ndarray, state: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
        from headstart.shapes.multilabel_fit import scores_of

        S, thr = scores_of(Z, state)
        out = []
        for s in S:
            on = [names[k] for k in np.argsort(-s) if s[k] >= thr[k]]
            out.append(
                {
                    "labels": on,
                    "scores": {lab: round(float(p), 4) for lab, p in zip(names, s, strict=True)},
                    "summary": ", ".join(on) if on else "(no label)",
                }
            )
        return out

    def metric_table(self, metrics: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
        """One row per scored split (mAP, micro-/macro-F1, subset accuracy), then one per label of the
        last one (test, else val): its AP, F1, precision and recall, and its threshold."""
        cols = [
            "scope",
            "n",
            "mAP / AP",
            "micro-F1 / F1",
            "macro-F1 / precision",
            "exact / recall",
            "threshold",
        ]
        rows: list[list[str]] = []
        splits = [s for s in ("train", "val", "test") if isinstance(metrics.get(s), dict)]
        for s in splits:
            m = metrics[s]
            rows.append(
                [
                    s,
                    str(m["n"]),
                    fmt_ci(m["map"], m["map_ci"]),
                    fmt_ci(m["micro_f1"], m["micro_f1_ci"]),
                    fmt_ci(m["macro_f1"], m["macro_f1_ci"]),
                    fmt_ci(m["subset_accuracy"], m["subset_accuracy_ci"]),
                    "",
                ]
            )
        last = splits[-1] if splits else None
        per_label = metrics[last]["per_label"] if last else {}
        for lab, v in list(per_label.items())[:TABLE_LABELS]:
            rows.append(
                [
                    f"  {lab} ({last})",
                    str(v["support"]),
                    fmt_ci(v["ap"], v["ap_ci"]),
                    fmt_ci(v["f1"], v["f1_ci"]),
                    fmt_ci(v["precision"], v["precision_ci"]),
                    fmt_ci(v["recall"], v["recall_ci"]),
                    f"{v['threshold']:.3f}",
                ]
            )
        return f"multi-label scores ({len(per_label)} labels; 95% intervals)", cols, rows

    def notes(self, ds: Dataset, items: list[Item], state: dict[str, Any]) -> list[str]:
        from headstart.data.targets import label_set

        out = []
        names = state.get("outputs", [])
        fallback = [
            lab
            for lab, why in zip(names, state.get("threshold_source", []), strict=False)
            if why.startswith("fallback")
        ]
        if fallback:
            out.append(f"threshold 0.5 (no positive to tune it on) for: {', '.join(fallback)}")
        known = set(ds.classes)
        unknown = sorted({lab for it in items for lab in label_set(it.label)} - known)
        if unknown:
            out.append(f"labels the run does not know, not scored: {', '.join(unknown[:10])}")
        applied = sum(bool(c.get("applied")) for c in state.get("calibration", []))
        out.append(
            f"per-label temperature applied (lowers val NLL, not ECE) for {applied} of {len(names)} labels"
        )
        return out

    def report_sections(self) -> list[Any]:
        from headstart.report.sections import labels

        return [("labels", "Labels", labels.section)]


SHAPE = MultilabelShape()
