"""Weight averaging (headstart.train.averaging): the EMA's arithmetic and its swap around evaluation, the
greedy soup's choice, and both through a fit and a killed-and-resumed fit."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from conftest import TEST_BACKBONE, make_image_folder
from headstart.errors import HeadstartError
from headstart.recipes import Phase, Recipe
from headstart.train.averaging import EMA_WARMUP, Ema, Soup, average


def _trainer(params: list[torch.nn.Parameter], **phase: Any) -> SimpleNamespace:
    return SimpleNamespace(
        params=params,
        phase=Phase("p", **phase),
        pos=SimpleNamespace(done_in_phase=0, epoch=1),
        best={"state": None, "score": None, "epoch": None},
    )


def test_ema_follows_the_warmed_up_average_and_swaps_for_evaluation() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    t = _trainer([w], ema=0.9)
    ema = Ema()
    ema.before_train(t)
    want = torch.zeros(3)
    for n, value in enumerate((1.0, 2.0, 4.0, 8.0), start=1):
        with torch.no_grad():
            w.fill_(value)
        ema.after_step(t)
        d = min(0.9, (1 + n) / (EMA_WARMUP + n))
        want = d * want + (1 - d) * value
    assert ema.shadow is not None and torch.allclose(ema.shadow[0], want)
    ema.after_train(t)  # evaluation sees the average ...
    assert torch.allclose(w.detach(), want)
    ema.after_epoch(t)  # ... and training goes on from its own weights
    assert torch.equal(w.detach(), torch.full((3,), 8.0))
    ema.after_fit(t)  # no best weights kept: the average is what the fit returns
    assert torch.allclose(w.detach(), want)


def test_ema_off_in_a_phase_without_it() -> None:
    w = torch.nn.Parameter(torch.ones(2))
    t = _trainer([w])
    ema = Ema()
    ema.before_train(t)
    ema.after_step(t)
    ema.after_train(t)
    assert ema.shadow is None and ema.state_dict() is None and torch.equal(w.detach(), torch.ones(2))


class _Quadratic:
    """A task whose score is -(w - 1)^2 for its one weight: the average of 0 and 2 beats both."""

    start_is_candidate = True

    def __init__(self) -> None:
        self.w = torch.zeros(1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"w": self.w.clone(), "steps": torch.tensor(7)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.w = state["w"].clone()

    def evaluate(self, trainer: Any, totals: Any) -> dict[str, float]:
        return {"val_loss": float((self.w - 1.0) ** 2)}

    def score(self, metrics: dict[str, float]) -> tuple[float, ...]:
        return (-metrics["val_loss"],)


def test_greedy_soup_keeps_a_member_only_when_the_average_does_not_get_worse() -> None:
    task = _Quadratic()
    t = SimpleNamespace(task=task, pos=SimpleNamespace(epoch=0), history=[], best={"epoch": 2, "state": None})
    soup = Soup(3)
    for epoch, w in enumerate((0.0, 2.4, 10.0, 1.6), start=1):  # scores -1, -1.96, -81, -0.36
        task.w = torch.tensor([w])
        t.pos.epoch, t.score = epoch, task.score(task.evaluate(t, None))
        soup.after_epoch(t)
    assert [c["epoch"] for c in soup.kept] == [4, 1, 2]  # the 3 best, best first (10.0 dropped)
    soup.after_fit(t)
    # 1.6 alone -0.36; with 0.0: w 0.8, -0.04 (better: kept); with 2.4 too: w 1.33, -0.11 (worse: left out)
    assert task.w.item() == pytest.approx(0.8)
    assert t.best["soup"] == [4, 1] and t.history[-1]["kind"] == "soup"
    assert t.history[-1]["members"] == [4, 1] and t.best["score"] == [pytest.approx(-0.04)]


def test_a_soup_that_helps_nothing_leaves_the_best_weights() -> None:
    task = _Quadratic()
    t = SimpleNamespace(task=task, pos=SimpleNamespace(epoch=0), history=[], best={"epoch": 1, "state": None})
    soup = Soup(2)
    for epoch, w in enumerate((1.0, 5.0), start=1):
        task.w = torch.tensor([w])
        t.pos.epoch, t.score = epoch, task.score(task.evaluate(t, None))
        soup.after_epoch(t)
    soup.after_fit(t)
    assert task.w.item() == 1.0 and "soup" not in t.best and t.history == []


def test_a_time_budget_keeps_the_soups_tastings_in_reserve() -> None:
    """A soup of 3 tastes 2 averages after the last epoch, each about an epoch's closing work: a budget
    that would fit one more step and epoch end stops the epoch when the tastings would not fit too."""
    import time

    from headstart.train.callbacks import Budget
    from headstart.train.loop import default_callbacks

    def stops(budget: Budget) -> bool:
        engine = SimpleNamespace(agree=lambda vote: vote)
        trainer = SimpleNamespace(engine=engine, step_seconds=0.1, stop_epoch=False)
        trainer.started = time.perf_counter() - 7.0  # 7 s spent of 10
        budget.tail_s = 1.0  # an epoch's closing work (precise BatchNorm, validation) took 1 s
        budget.after_step(trainer)
        return trainer.stop_epoch

    assert not stops(Budget(10.0))  # 7 + 0.1 + 1 fits
    assert stops(Budget(10.0, closing_evals=2))  # + 2 tastings of about 1 s each does not
    souped = [
        c
        for c in default_callbacks(Recipe("r", [Phase("p")], soup=3), budget_s=10.0)
        if isinstance(c, Budget)
    ]
    assert [b.closing_evals for b in souped] == [2]
    plain = [c for c in default_callbacks(Recipe("r", [Phase("p")]), budget_s=10.0) if isinstance(c, Budget)]
    assert [b.closing_evals for b in plain] == [0]


def test_average_of_states() -> None:
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([2.0, 4.0]), "n": torch.tensor(9)}
    out = average([a, b])
    assert torch.equal(out["w"], torch.tensor([1.0, 3.0])) and out["n"].item() == 3


def test_the_summary_names_them() -> None:
    r = Recipe("r", (Phase("p", train_top=1, ema=0.99),), soup=3)
    assert (
        r.summary()
        == "p: top 1 groups + head, 5 ep, lr 0.001, EMA 0.99; greedy soup of the 3 best evaluations"
    )


def test_bad_values_are_refused() -> None:
    with pytest.raises(HeadstartError, match="ema must be in"):
        Phase("p", ema=1.0).validate()
    for soup in (1, -2, 100):
        with pytest.raises(HeadstartError, match="soup must be 0"):
            Recipe("r", (Phase("p"),), soup=soup).validate()


def _recipe(folder: Path, *, soup: int, ema: float, epochs: int = 3) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    phase = {"name": "ft", "train_top": 1, "epochs": epochs, "head_init": "probe", "augment": False}
    recipe = {"name": "averaged", "soup": soup, "phases": [{**phase, "ema": ema, "patience": None}]}
    (folder / "recipe.json").write_text(json.dumps(recipe))
    return str(folder / "recipe.json")


def test_a_fit_with_ema_and_soup_records_what_it_averaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headstart.report import read_run_files
    from headstart.report.sections import training
    from headstart.train import fit
    from headstart.train.classify import Classification

    data = make_image_folder(tmp_path / "data", ("red", "blue", "green"), per_class=10)
    runs = {}
    for name, kw in (("plain", {"soup": 0, "ema": 0.0}), ("ema", {"soup": 0, "ema": 0.9})):
        out = tmp_path / name
        recipe = _recipe(tmp_path / f"r-{name}", **kw)
        rep = fit(data, backbone=TEST_BACKBONE, strategy=recipe, out=out, progress=False)
        runs[name] = [round(r["val_loss"], 6) for r in rep.history if r["kind"] == "train"]
    assert runs["ema"] != runs["plain"]  # the epochs were evaluated on the average, not the weights

    # Every evaluation scoring alike, the greedy soup takes all three it kept: the probe start and
    # epochs 1 and 2 (epoch 3 ties the last kept, so it is not kept).
    monkeypatch.setattr(Classification, "score", lambda self, metrics: (0.0,))
    out = tmp_path / "soup"
    fit(
        data,
        backbone=TEST_BACKBONE,
        strategy=_recipe(tmp_path / "s", soup=3, ema=0.0),
        out=out,
        progress=False,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())["epochs"]
    soups = [r for r in history if r["kind"] == "soup"]
    assert all(abs(r["val_loss"] - soups[-1]["val_loss"]) > 1e-5 for r in history if r["kind"] != "soup")
    assert metrics["soup"] == [0, 1, 2] and soups[-1]["members"] == [0, 1, 2]
    # the run's weights are the soup: its val loss is the soup's evaluation, not any epoch's
    assert metrics["val"]["loss"] == pytest.approx(soups[-1]["val_loss"], abs=1e-5)
    html, computed = training.section(read_run_files(out))
    assert computed and "greedy soup of epochs 0, 1, 2" in html


def test_resume_keeps_the_ema_and_the_soup(tmp_path: Path) -> None:
    from test_train import _cli

    data = make_image_folder(tmp_path / "data", ("red", "blue", "green"), per_class=10)
    recipe = _recipe(tmp_path / "r", soup=3, ema=0.8, epochs=4)
    args = ["fit", str(data), "--backbone", TEST_BACKBONE, "--strategy", recipe, "--json"]
    whole = _cli([*args, "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    assert _cli([*args, "--out", str(out)], kill_after_epoch=2).returncode == -9
    resumed = _cli([*args, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ha = json.loads((tmp_path / "whole" / "history.json").read_text())["epochs"]
    hb = json.loads((out / "history.json").read_text())["epochs"]
    assert [r["val_loss"] for r in ha] == pytest.approx([r["val_loss"] for r in hb], abs=1e-6)
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a["soup"] == b["soup"] and a["val"]["loss"] == pytest.approx(b["val"]["loss"], abs=1e-6)


def test_a_checkpoint_recipe_from_before_these_fields_still_matches() -> None:
    from headstart.recipes import get_recipe
    from headstart.train.callbacks import with_defaults

    now = get_recipe("lp-ft", 9).to_dict()
    old = {k: v for k, v in now.items() if k != "soup"}
    old["phases"] = [{k: v for k, v in p.items() if k != "ema"} for p in now["phases"]]
    assert with_defaults(old) == now
    changed = {**old, "batch_size": now["batch_size"] * 2}
    assert with_defaults(changed) != now  # another recipe is still another recipe
