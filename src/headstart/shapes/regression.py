"""`--task regress`: one number per item (image, text or audio), read from the `label` column.

    headstart probe DATA --task regress      # ridge on cached embeddings, strength by CV on train
    headstart predict RUN FILE --json        # {"value": 3.21, "interval": [2.5, 3.9], ...}

The model is the backbone and a one-output linear head that gives the value itself (the standardisation
of features and target folded in: headstart.shapes.regression_fit), so load, export and serve are a
probe's. Val scores the run and fits the split-conformal half-width `q` (shape.json `halfwidth`): a
prediction v comes with [v - q, v + q], which holds the true value of 90 % of new items like val's.
Every split records MAE, RMSE and R^2 with bootstrap intervals, the train mean as the baseline to beat
(a paired difference), the interval's coverage, and each item's true and predicted value (the report's
scatter) and score (minus its absolute error: auto's paired verdicts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.data.targets import parse_target
from headstart.shapes.linear import LinearShape
from headstart.shapes.regression_fit import COVERAGE, conformal_halfwidth, fit_ridge, regression_metrics
from headstart.shapes.regression_table import digits_for, metric_rows

if TYPE_CHECKING:
    from collections.abc import Callable

    from headstart.data import Dataset, Item
    from headstart.head import LinearHead
    from headstart.report.loader import RunFiles


class RegressionShape(LinearShape):
    name = "regress"
    outputs_are_labels = False
    item_score_name = "minus the absolute error"
    headline = (("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²"))

    def targets(self, ds: Dataset, items: list[Item]) -> np.ndarray:
        return np.array([parse_target(it.label, str(it.path)) for it in items], dtype=np.float64)

    def output_names(self, ds: Dataset) -> list[str]:
        return ["value"]

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
        """Ridge by CV on train; the conformal half-width from val's absolute errors."""
        head, state = fit_ridge(X_train, Y_train, seed=seed, C=C)
        if Y_val is None or not len(Y_val):
            return head, self.readout(np.zeros((0, 1)), np.zeros(0), state)
        return head, self.readout(head.logits(X_val), Y_val, state)

    def readout(self, Z_val: np.ndarray, Y_val: np.ndarray, state: dict[str, Any]) -> dict[str, Any]:
        """The conformal half-width from the absolute errors of val's outputs `Z_val` (a probe's, or a
        fine-tuned model's: headstart.shapes.linear_fit)."""
        n_val = len(Y_val)
        if n_val:
            pred = np.asarray(Z_val, dtype=np.float64).reshape(n_val, -1)[:, 0]  # (N, 1) or (N,)
            q, why = conformal_halfwidth(np.asarray(Y_val, dtype=np.float64) - pred, COVERAGE)
        else:
            q, why = None, "there is no val split to fit it on"
        state = {k: v for k, v in state.items() if k != "no_interval"}
        state |= {"coverage": COVERAGE, "halfwidth": q, "calibration_n": n_val}
        if q is None:
            state["no_interval"] = why
        return state

    def split_metrics(
        self, Z: np.ndarray, Y: np.ndarray, state: dict[str, Any], *, seed: int
    ) -> dict[str, Any]:
        pred = np.asarray(Z, dtype=np.float64).reshape(len(Y), -1)[:, 0]
        y = np.asarray(Y, dtype=np.float64)
        out = regression_metrics(
            y,
            pred,
            baseline=float(state.get("target_mean", 0.0)),
            halfwidth=state.get("halfwidth"),
            seed=seed,
            coverage=float(state.get("coverage", COVERAGE)),
        )
        # Per item, for the report's scatter and auto's paired verdicts (higher is better).
        out |= {"true": y.tolist(), "pred": pred.tolist(), "item_scores": (-np.abs(pred - y)).tolist()}
        return out

    def answers(self, Z: np.ndarray, state: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
        q = state.get("halfwidth")
        dg = digits_for([q if q else state.get("target_scale")])
        out = []
        for v in np.asarray(Z, dtype=np.float64).reshape(len(Z), -1)[:, 0]:
            v = float(v)
            if q is None:
                why = state.get("no_interval", "none was fitted")
                out.append({"value": v, "interval": None, "no_interval": why, "summary": f"{v:.{dg}f}"})
                continue
            lo, hi = v - q, v + q
            out.append(
                {
                    "value": v,
                    "interval": [lo, hi],
                    "coverage": state.get("coverage", COVERAGE),
                    "summary": f"{v:.{dg}f} [{lo:.{dg}f}, {hi:.{dg}f}]",
                }
            )
        return out

    def metric_table(self, metrics: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
        cols, rows = metric_rows(metrics)
        return "Regression scores (95% intervals; MAE minus the train mean's: a tie holds 0)", cols, rows

    def notes(self, ds: Dataset, items: list[Item], state: dict[str, Any]) -> list[str]:
        lines = []
        if state.get("lambda") is not None:
            how = f"by {state.get('cv_folds')}-fold CV on train" if state.get("cv_folds") else "from --C"
            lines.append(
                f"the probe's ridge strength {state['lambda']:.3g} per item ({how}; a fine-tune starts there)"
            )
        q = state.get("halfwidth")
        if q is not None:
            n, cov = state.get("calibration_n"), state.get("coverage", COVERAGE)
            lines.append(f"{cov:.0%} interval: prediction \u00b1 {q:.4g} (from {n} val items)")
        elif state.get("no_interval"):
            lines.append(f"no interval on predictions: {state['no_interval']}")
        return lines

    def report_sections(self) -> list[tuple[str, str, Callable[[RunFiles], tuple[Any, bool]]]]:
        from headstart.report.sections import regression

        return [("regression", "Predicted against true values", regression.section)]


SHAPE = RegressionShape()
