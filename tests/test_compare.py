"""`compare`: strategies side by side under a budget, negative transfer, overfitting, recommendation."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder
from headstart.verdicts.compare import choose_strategies, compare
from headstart.verdicts.select import overfitting, select, transfer_verdict

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BLIND = "test_blind_lite"


def _row(strategy: str, correct: np.ndarray, train: float | None = None, params: int = 100, **kw) -> dict:
    from headstart.intervals import wilson

    val = float(correct.mean())
    return {
        "strategy": strategy,
        "val_accuracy": val,
        "val_accuracy_ci": list(wilson(int(correct.sum()), len(correct))),
        "train_accuracy": train if train is not None else val,
        "trainable_params": params,
        **kw,
    }


def _items(n: int, right: int, seed: int = 0) -> np.ndarray:
    c = np.zeros(n, bool)
    c[np.random.default_rng(seed).choice(n, right, replace=False)] = True
    return c


def test_a_difference_inside_the_noise_recommends_the_cheaper_probe() -> None:
    # 82 validation items: partial:2 gets 3 more right than the probe (the user's report: 65.9 vs 62.2%).
    probe = _items(82, 51)
    partial = probe.copy()
    partial[np.flatnonzero(~probe)[:3]] = True
    correct = {"probe": probe, "partial:2": partial}
    rows = [_row("probe", probe, params=10), _row("partial:2", partial, params=10_000)]
    sel = select(rows, correct)
    assert rows[1]["val_accuracy"] > rows[0]["val_accuracy"]
    assert sel["strategy"] == "probe" and not sel["separated"]
    assert "no strategy beat the probe beyond noise on 82 validation items" in sel["reason"]
    assert sel["settle"]["strategy"] == "partial:2" and sel["settle"]["val_items"] > 82


def test_a_strategy_truly_better_beyond_noise_is_recommended() -> None:
    probe = _items(300, 180)
    full = probe.copy()
    full[np.flatnonzero(~probe)[:45]] = True  # +15 points on the same 300 items
    lpft = probe.copy()
    lpft[np.flatnonzero(~probe)[:44]] = True  # as good as full within noise, and cheaper
    correct = {"probe": probe, "full": full, "lp-ft": lpft}
    rows = [
        _row("probe", probe, params=10),
        _row("full", full, params=3_000_000, stored_bytes=9),
        _row("lp-ft", lpft, params=3_000_000, stored_bytes=8),
    ]
    sel = select(rows, correct)
    assert sel["separated"] and sel["best"] == "full"
    assert sel["strategy"] == "lp-ft"  # the cheapest of those not significantly worse than the best
    assert sel["tests"]["full"]["beats_reference"] and sel["tests"]["full"]["p_holm"] < 0.05


def test_many_challengers_need_holm_correction_to_win() -> None:
    probe = _items(200, 120)
    correct = {"probe": probe}
    rows = [_row("probe", probe, params=1)]
    for i in range(5):  # five challengers each 4 items better: p ~ 0.125 alone, nowhere near after Holm
        c = probe.copy()
        c[np.flatnonzero(~probe)[i * 4 : i * 4 + 4]] = True
        correct[f"s{i}"] = c
        rows.append(_row(f"s{i}", c, params=100))
    assert select(rows, correct)["strategy"] == "probe"


def test_rows_identical_to_the_probe_do_not_dilute_the_holm_correction() -> None:
    """Fine-tunes that kept the probe's head predict exactly as it does: no item can tell them apart, so
    they are no hypotheses to correct for (Tarone); rows that differ on some item are."""
    probe = _items(200, 120)
    better = probe.copy()
    better[np.flatnonzero(~probe)[:7]] = True  # 7 discordant, all its way: McNemar p 0.016
    correct = {"probe": probe, "full": better}
    rows = [_row("probe", probe, params=1), _row("full", better, params=100)]
    for i in range(3):  # kept the probe's head
        correct[f"same{i}"] = probe.copy()
        rows.append(_row(f"same{i}", probe, params=50))
    sel = select(rows, correct)
    assert sel["strategy"] == "full" and sel["tests"]["full"]["p_holm"] == sel["tests"]["full"]["p"]
    assert sel["tests"]["same0"]["p_holm"] == 1.0
    for i in range(3):  # now each differs on two items, one either way: tested, and counted
        c = probe.copy()
        c[np.flatnonzero(probe)[i]], c[np.flatnonzero(~probe)[-1 - i]] = False, True
        correct[f"same{i}"] = c
    sel = select(rows, correct)
    assert sel["strategy"] == "probe" and sel["tests"]["full"]["p_holm"] > 0.05


def _likelihood_pair(n: int = 60, k: int = 6, extra: float = 1.0, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Labels, a probe's val logits, and a challenger's: the probe's plus `extra` for the true class on
    every item (more sure of the truth everywhere, right on a few more items)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    probe = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    return y, probe, probe + extra * np.eye(k)[y]


def _evidence(y: np.ndarray, **logits: np.ndarray) -> tuple[list[dict], dict, dict]:
    from headstart.calibration import tempered_nll

    correct = {name: z.argmax(1) == y for name, z in logits.items()}
    nll = {name: tempered_nll(z, y)[1] for name, z in logits.items()}
    rows = [_row(name, correct[name], params=10 if name == "probe" else 10_000) for name in logits]
    return rows, correct, nll


def test_the_likelihood_test_separates_what_mcnemar_alone_cannot() -> None:
    y, probe, better = _likelihood_pair(extra=0.25)
    rows, correct, nll = _evidence(y, probe=probe, full=better)
    only = int((correct["full"] & ~correct["probe"]).sum())
    assert 0 < only <= 5 and not (~correct["full"] & correct["probe"]).any()  # McNemar p >= 0.0625
    assert select(rows, correct)["strategy"] == "probe"  # right/wrong alone: a tie
    sel = select(rows, correct, nll=nll)
    t = sel["tests"]["full"]
    assert sel["strategy"] == "full" and t["rule_test"].startswith("tempered log-likelihood")
    assert t["p"] >= 0.05 > t["p_holm"] and t["likelihood"]["gain"] > 0 and t["likelihood"]["ci"][0] > 0
    assert "inside the noise by McNemar alone" in sel["reason"]


def test_a_confidence_scale_alone_is_no_win() -> None:
    """The same logits times 3: the same predictions, sharper; tempering takes the scale out."""
    from headstart.calibration import nll as mean_nll

    y, probe, _ = _likelihood_pair()
    rows, correct, nll = _evidence(y, probe=probe, sharper=3.0 * probe)
    assert mean_nll(3.0 * probe, y) != pytest.approx(mean_nll(probe, y), rel=0.05)  # raw NLL would differ
    assert nll["sharper"] == pytest.approx(nll["probe"], abs=1e-3)
    sel = select(rows, correct, nll=nll)
    assert sel["strategy"] == "probe" and not sel["tests"]["sharper"]["beats_reference"]


def test_a_likelihood_gain_with_fewer_right_beyond_noise_is_no_win() -> None:
    y, probe, _ = _likelihood_pair(n=200)
    right = probe.argmax(1) == y
    worse = probe + 2.0 * np.eye(probe.shape[1])[y] * right[:, None]  # surer where the probe is right
    flip = np.flatnonzero(right)[:6]  # ... but 6 of those items now just wrong: fewer right
    rival = np.where(np.eye(probe.shape[1])[y[flip]] > 0, -np.inf, worse[flip]).max(1)
    worse[flip, y[flip]] = rival - 0.05
    rows, correct, nll = _evidence(y, probe=probe, full=worse)
    assert correct["full"].sum() == correct["probe"].sum() - 6
    sel = select(rows, correct, nll=nll)
    assert sel["tests"]["full"]["likelihood"]["gain"] > 0  # more likely on the whole, yet less accurate
    assert sel["tests"]["full"]["p"] < 0.05  # 6 items the probe alone gets right: McNemar p 0.031
    assert sel["strategy"] == "probe" and not sel["tests"]["full"]["beats_reference"]


def test_a_likelihood_gain_with_an_accuracy_tie_behind_is_a_win() -> None:
    """Two fewer right of 200 is a tie (McNemar p 0.5), and a tie's sign decides nothing: the row that is
    more likely beyond noise wins, and the reason says its accuracy is inside the noise."""
    y, probe, _ = _likelihood_pair(n=200)
    right = probe.argmax(1) == y
    better = probe + 2.0 * np.eye(probe.shape[1])[y] * right[:, None]  # surer where the probe is right
    flip = np.flatnonzero(right)[:2]  # ... but 2 of those items now just wrong
    rival = np.where(np.eye(probe.shape[1])[y[flip]] > 0, -np.inf, better[flip]).max(1)
    better[flip, y[flip]] = rival - 0.05
    rows, correct, nll = _evidence(y, probe=probe, full=better)
    assert correct["full"].sum() == correct["probe"].sum() - 2  # behind on the point estimate
    sel = select(rows, correct, nll=nll)
    t = sel["tests"]["full"]
    assert t["diff"] < 0 and t["p"] >= 0.05 and t["likelihood"]["gain"] > 0 and t["p_holm"] < 0.05
    assert sel["strategy"] == "full" and "inside the noise by McNemar alone" in sel["reason"]


def test_a_row_without_likelihoods_is_still_paired_and_one_on_other_items_is_flagged(tmp_path: Path) -> None:
    """A run with val predictions but no per-item likelihoods (written before they were recorded) pairs
    with the probe on right/wrong, unflagged; only a run whose val items differ is 'not paired'."""
    from headstart.verdicts.compare import _Comparison

    cmp = _Comparison(tmp_path, TEST_BACKBONE, 0, tmp_path, False, expected=[0, 1, 1])
    old = {"strategy": "full", "warnings": []}
    cmp.add(old, {"val": {"pred": [0, 1, 0], "true": [0, 1, 1]}})
    assert not old["warnings"] and list(cmp.correct["full"]) == [True, True, False] and "full" not in cmp.nll
    new = {"strategy": "lp-ft", "warnings": []}
    cmp.add(new, {"val": {"pred": [0, 1, 1], "true": [0, 1, 1], "nll_tempered": [0.1, 0.2, 0.3]}})
    assert not new["warnings"] and list(cmp.nll["lp-ft"]) == [0.1, 0.2, 0.3]
    other = {"strategy": "partial:2", "warnings": []}
    cmp.add(other, {"val": {"pred": [0, 1], "true": [0, 1]}})
    assert other["warnings"] == ["not paired with the probe: its validation items differ (skipped files?)"]
    assert "partial:2" not in cmp.correct


def test_overfitting_is_the_same_test_for_every_row() -> None:
    val = _items(80, 56)  # 0.70, interval about [0.59, 0.79]
    twins = [_row("probe", val, train=1.0), _row("head", val, train=1.0)]
    assert overfitting(twins[0]) == overfitting(twins[1]) is True
    assert not overfitting(_row("full", val, train=0.95))  # 0.95 - 0.79 < 0.2


def test_scratch_cut_short_is_inconclusive_and_a_tie_is_no_negative_transfer() -> None:
    probe = _items(60, 20)
    scratch = _items(60, 22, seed=3)
    rows = [
        _row("probe", probe),
        _row("scratch", scratch, epochs_run=1, epochs_planned=1, recipe_epochs=15, cut_short=True),
    ]
    v = transfer_verdict(rows, {"probe": probe, "scratch": scratch})
    assert v["negative_transfer"] is None and v["reason"].startswith("inconclusive: scratch ran 1 of its 15")
    rows[1].update(epochs_run=15, epochs_planned=15, cut_short=False)
    v = transfer_verdict(rows, {"probe": probe, "scratch": scratch})
    assert v["negative_transfer"] is False  # near chance both: a tie is no verdict of negative transfer
    clearly = probe | _items(60, 50, seed=4)
    v = transfer_verdict(rows, {"probe": probe, "scratch": clearly})
    assert v["negative_transfer"] is True


def test_planted_cross_split_copies_are_regrouped(tmp_path: Path) -> None:
    from PIL import Image

    from headstart.data import load_dataset
    from headstart.data.grouped_split import regroup, write_manifest
    from headstart.data.leakage import find_leaks

    data = make_image_folder(tmp_path / "d", ("red", "blue"), per_class=20)
    ds = load_dataset(data, seed=0)
    train = [it for it in ds.split("train") if it.label == "red"]
    for i, it in enumerate(train[:6]):  # near copies of training images: resized, re-encoded, renamed
        Image.open(it.path).resize((52, 52)).save(data / "red" / f"copy_{i}.jpg", quality=92)
    ds = load_dataset(data, seed=0)
    leaks = find_leaks(ds)
    assert leaks["n_near"] >= 1  # some copies were drawn into val or test
    grouped, moved = regroup(ds, leaks)
    assert moved["moved"] >= 1 and not find_leaks(grouped)["n_near"]
    manifest = write_manifest(grouped, tmp_path / "split")
    again = load_dataset(manifest, seed=123)  # the manifest's own split wins over any seed
    assert {str(it.path): it.split for it in again.items} == {
        str(it.path.resolve()): it.split for it in grouped.items
    }


def test_strategies_follow_data_size() -> None:
    small, large = choose_strategies(8), choose_strategies(50)
    # The frozen heads come first (priced in probe passes), then the baseline, then the fine-tunes.
    assert small[:2] == ["multi-depth", "scratch"] and {"partial:2", "lp-ft"} <= set(small)
    # Augmented views are asked for by name (--strategies views): no measured gain yet.
    assert "views" not in small + choose_strategies(8, "text")
    assert "head" not in small + large  # the probe's own pipeline: its row would repeat the probe's
    assert "full" not in small and "full" in large


@pytest.fixture(scope="module")
def data3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("cmp") / "data", ("red", "blue", "green"), per_class=12)


def test_compare_end_to_end_runs_each_strategy_within_budget(data3: Path, tmp_path: Path) -> None:
    budget = 45.0  # generous: on a busy machine the probe, its CV and the domain distance take a while
    out = tmp_path / "cmp"
    result = compare(data3, TEST_BACKBONE, budget_s=budget, out=out, progress=False)
    names = [r["strategy"] for r in result["rows"]]
    assert names[0] == "probe"
    # Every chosen strategy either has a row or is listed as not started, with its reason (a strategy
    # whose one epoch would not fit its share is skipped, and a later one may still run).
    assert sorted(names[1:] + result["skipped"]) == sorted(choose_strategies(result["train_per_class"]))
    assert set(result["skip_reasons"]) == set(result["skipped"])
    assert len(names) >= 2
    for r in result["rows"]:
        assert r["val_accuracy"] is not None and r["test_accuracy"] is not None
        assert r["trainable_params"] > 0 and r["stored_bytes"] > 0
        assert Path(r["run_dir"]).is_dir()
    # Budget: training stops at the step that crosses a fit's share; evaluating and saving come on top.
    assert result["elapsed_s"] <= budget + 10, result["elapsed_s"]
    saved = json.loads((out / "compare.json").read_text())
    assert saved["rows"] == result["rows"] and saved["flags"] == result["flags"]
    assert saved["recommendation"]["strategy"] in names
    assert saved["rule_based"]["strategy"]
    for r in result["rows"]:  # every score carries its interval
        lo, hi = r["val_accuracy_ci"]
        assert lo <= r["val_accuracy"] <= hi and r["test_accuracy_ci"][0] <= r["test_accuracy"]
    assert all(r["epochs_run"] <= r["epochs_planned"] for r in result["rows"][1:])


def test_no_strategy_starts_once_the_budget_is_spent(data3: Path, tmp_path: Path) -> None:
    # The probe alone takes longer than 10 ms, so nothing after it may start.
    result = compare(
        data3, TEST_BACKBONE, budget_s=0.01, strategies=["head", "scratch"], out=tmp_path, progress=False
    )
    assert [r["strategy"] for r in result["rows"]] == ["probe"]
    assert result["skipped"] == ["head", "scratch"]
    assert result["recommendation"]["strategy"] == "probe"


def test_a_row_over_its_share_leaves_less_for_the_rows_after_it(
    data3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fine-tune whose one epoch needs more than its share (but under HARD_CAP shares) runs on what the
    rows after it would have had: its priced cost comes off the budget, so a later row whose epoch no
    longer fits is skipped and says why; the priced total stays inside the budget. Priced with a step of
    20 s per 32 items, so the real (tiny) fits' seconds never matter."""
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.verdicts import plan

    monkeypatch.setattr(plan, "_step_seconds", lambda bb, batch_size, device="auto": 20.0 * batch_size / 32)
    ds, bb = load_dataset(data3, seed=0), create_backbone(TEST_BACKBONE, pretrained=False)
    sizes = {k: len(ds.split(k)) for k in ("train", "val", "test")}

    def one_epoch(strategy: str) -> float:
        kw = {"n_train": sizes["train"], "n_eval": sizes["val"], "n_test": sizes["test"], "share_s": 1.0}
        return plan.epoch_plan(bb, strategy, **kw)["one_epoch_s"]

    a, b = one_epoch("scratch"), one_epoch("partial:2")
    share = 0.75 * a  # scratch's epoch is over its share but inside HARD_CAP shares
    assert 2 * share - a < b <= 2 * share  # partial:2 no longer fits what scratch leaves; it fit its share
    budget = plan.probe_seconds(bb, len(ds.items)) + 2 * share
    two = ["scratch", "partial:2"]
    result = compare(data3, TEST_BACKBONE, budget_s=budget, strategies=two, out=tmp_path, progress=False)
    assert [r["strategy"] for r in result["rows"]] == ["probe", "scratch"]
    assert result["rows"][1]["epochs_planned"] == 1
    assert result["skipped"] == ["partial:2"]
    left = re.search(r"the budget has (\d+) s left", result["skip_reasons"]["partial:2"])
    assert left and abs(int(left.group(1)) - (2 * share - a)) <= 1


@pytest.fixture(scope="module")
def blind_backbone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 'pretrained' backbone whose stem weights are zero: its features carry nothing about the pixels,
    while the same architecture trained from scratch sees them."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import save_file

    from headstart.backbones import registry
    from headstart.backbones.efficientnet_lite import build_efficientnet_lite
    from headstart.backbones.registry import BackboneSpec, get_spec, register_backbone

    net = EfficientNet.from_name(
        "efficientnet-lite0", width_coefficient=0.5, depth_coefficient=0.25, image_size=32
    )
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["_conv_stem.weight"] = torch.zeros_like(state["_conv_stem.weight"])
    path = tmp_path_factory.mktemp("blind") / "blind.safetensors"
    save_file(state, str(path))

    def build(*, pretrained: bool = True, **kw):
        if pretrained:
            return build_efficientnet_lite(TEST_BACKBONE, pretrained=True, weights=path, **kw)
        return build_efficientnet_lite(TEST_BACKBONE, pretrained=False, **kw)

    spec = get_spec(TEST_BACKBONE)
    register_backbone(
        BackboneSpec(
            name=BLIND,
            family=spec.family,
            builder=build,
            embed_dim=spec.embed_dim,
            license=spec.license,
            description="test backbone whose pretrained stem discards the input",
            weights_file=lambda: path,
            is_test_model=True,
        )
    )
    yield BLIND
    registry._REGISTRY.pop(BLIND, None)  # leave the registry as other test modules expect it


def test_negative_transfer_end_to_end_when_pretrained_features_are_blind(
    blind_backbone: str, tmp_path: Path
) -> None:
    # Enough validation items (3 x 6) for scratch's win to be told from noise.
    data = make_image_folder(tmp_path / "d", ("red", "blue", "green"), per_class=40)
    result = compare(
        data, blind_backbone, budget_s=40, strategies=["scratch", "head"], out=tmp_path / "c", progress=False
    )
    rows = {r["strategy"]: r for r in result["rows"]}
    assert set(rows) == {"probe", "scratch", "head"}
    # Constant features: the probe and the head can do no better than one class for everything.
    assert rows["probe"]["val_accuracy"] <= rows["scratch"]["val_accuracy"]
    assert result["flags"]["negative_transfer"]


def test_cli_compare_json(data3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from headstart.cli import main

    out = tmp_path / "cli"
    argv = [str(data3), "--backbone", TEST_BACKBONE, "--strategies", "head", "--out", str(out)]
    assert main(["compare", *argv, "--budget", "40s", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["strategy"] for r in result["rows"]] == ["probe", "head"]
    assert result["budget_s"] == 40.0
    assert json.loads((out / "compare.json").read_text())["rows"] == result["rows"]
    # The rows were paired on val by their tempered likelihoods (each run recorded its own)
    t = result["selection"]["tests"]["head"]
    n_val = len(json.loads((out / "probe" / "metrics.json").read_text())["val"]["nll_tempered"])
    assert t["rule_test"].startswith("tempered log-likelihood") and t["likelihood"]["n"] == n_val == t["n"]
    assert main(["compare", *argv, "--budget", "1m"]) == 0  # the rich table
    text = capsys.readouterr().out
    assert "probe" in text and "head" in text and "recommended" in text
    with pytest.raises(SystemExit):
        main(["compare", *argv, "--budget", "soon"])


def test_compare_regroups_copies_by_default_and_keeps_them_on_request(tmp_path: Path) -> None:
    from PIL import Image

    from headstart.data import load_dataset

    data = make_image_folder(tmp_path / "d", ("red", "blue"), per_class=20)
    for i, it in enumerate([it for it in load_dataset(data, seed=0).split("train")][:8]):
        Image.open(it.path).resize((52, 52)).save(data / it.label / f"copy_{i}.jpg", quality=92)
    res = compare(data, TEST_BACKBONE, budget_s=30, strategies=["head"], out=tmp_path / "g", progress=False)
    lk = res["leakage"]
    assert lk["regrouped"] and lk["moved"] >= 1 and lk["n_near"] >= 1
    assert set(lk["probe_raw"]) == {"val", "test"} and "test" in lk["probe_grouped"]
    assert Path(res["data_used"]).is_file()  # the grouped split every row was trained and scored on
    kept = compare(
        data,
        TEST_BACKBONE,
        budget_s=30,
        strategies=["head"],
        out=tmp_path / "k",
        keep_duplicates=True,
        progress=False,
    )
    assert not kept["leakage"]["regrouped"] and kept["data_used"] == str(data)


def test_same_data_seed_and_budget_give_the_same_rows(
    data3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget is an epoch plan from the remembered step time, not a stopwatch: a second run plans the
    same epochs, so it trains the same models and recommends the same strategy."""
    from headstart.verdicts import rank

    # As if a training step took 6 s (the tiny test network takes milliseconds): the budget binds.
    monkeypatch.setattr(rank, "finetune_step_seconds", lambda bb, *a, **k: 6.0)
    kw = {"budget_s": 45, "strategies": ["partial:2", "scratch"], "progress": False}
    a = compare(data3, TEST_BACKBONE, out=tmp_path / "a", **kw)
    b = compare(data3, TEST_BACKBONE, out=tmp_path / "b", **kw)
    keys = ("strategy", "val_accuracy", "test_accuracy", "epochs_planned", "epochs_run")
    assert [[r.get(k) for k in keys] for r in a["rows"]] == [[r.get(k) for k in keys] for r in b["rows"]]
    assert a["recommendation"] == b["recommendation"]
    tuned = a["rows"][1:]
    assert [r["strategy"] for r in tuned] == ["partial:2", "scratch"]
    for r in tuned:  # the plan, not the clock or the cap, set how long each trained
        assert r["epochs_planned"] < r["recipe_epochs"] and r["epochs_run"] <= r["epochs_planned"]
        assert r["cut_short"] and not r["budget_stopped"]


@pytest.mark.parametrize("name", ["test_text_encoder", "test_whisper_encoder"])
def test_text_and_audio_backbones_get_a_timed_step_and_are_left_as_they_were(name: str) -> None:
    """Their plans come from a timed step too (no clock in the plan); timing one trains a throw-away
    step, which must leave the backbone's weights, flags and modes as they were."""
    import torch

    import headstart.testing  # noqa: F401  (registers the test backbones)
    from headstart.backbones import create_backbone
    from headstart.verdicts.rank import train_step_seconds

    bb = create_backbone(name)
    bb.eval()
    weights = {k: v.clone() for k, v in bb.state_dict().items()}
    flags = [p.requires_grad for p in bb.parameters()]
    (seconds,) = train_step_seconds(bb, [2])
    assert seconds > 0
    assert all(torch.equal(weights[k], v) for k, v in bb.state_dict().items())
    assert flags == [p.requires_grad for p in bb.parameters()] and not bb.training
