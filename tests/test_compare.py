"""`compare`: strategies side by side under a budget, negative transfer, overfitting, recommendation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TEST_BACKBONE, make_image_folder
from headstart.verdicts.compare import (
    choose_strategies,
    compare,
    flags,
    negative_transfer,
    recommend_measured,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BLIND = "test_blind_lite"


def _row(strategy: str, val: float, train: float | None = None, params: int = 100, warnings=()) -> dict:
    return {
        "strategy": strategy,
        "val_accuracy": val,
        "train_accuracy": train if train is not None else val,
        "trainable_params": params,
        "warnings": list(warnings),
    }


def test_negative_transfer_flag_from_rows() -> None:
    scratch_wins = [_row("probe", 0.5), _row("head", 0.55), _row("partial:2", 0.6), _row("scratch", 0.8)]
    assert negative_transfer(scratch_wins)
    tie = [_row("probe", 0.7), _row("scratch", 0.7)]
    assert negative_transfer(tie)
    transfer_wins = [_row("probe", 0.9), _row("lp-ft", 0.95), _row("scratch", 0.6)]
    assert not negative_transfer(transfer_wins)
    # Everyone perfect: the data cannot tell the methods apart, so nothing is flagged.
    assert not negative_transfer([_row("probe", 1.0), _row("scratch", 1.0)])
    assert not negative_transfer([_row("probe", 0.4)])  # no baseline run


def test_overfitting_flag_and_recommendation_from_rows() -> None:
    rows = [
        _row("probe", 0.8, train=0.85, params=10),
        _row("full", 0.8, train=1.0, params=10_000),  # gap 0.2: not above the threshold
        _row("partial:2", 0.7, train=0.95, params=500),  # gap 0.25
        _row("lp-ft", 0.75, params=900, warnings=["overfitting: train accuracy 0.99 vs val 0.75 ..."]),
        _row("scratch", 0.5),
    ]
    f = flags(rows)
    assert f["overfitting"] == ["partial:2", "lp-ft"]
    assert not f["negative_transfer"]
    rec = recommend_measured(rows)
    assert rec["strategy"] == "probe"  # tied with full on val, far fewer trainable parameters
    assert "full" in rec["reason"]


def test_strategies_follow_data_size() -> None:
    small, large = choose_strategies(8), choose_strategies(50)
    assert small[0] == "scratch" and {"head", "partial:2", "lp-ft"} <= set(small)
    assert "full" not in small and "full" in large


@pytest.fixture(scope="module")
def data3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("cmp") / "data", ("red", "blue", "green"), per_class=12)


def test_compare_end_to_end_runs_each_strategy_within_budget(data3: Path, tmp_path: Path) -> None:
    budget = 20.0  # generous: on a busy machine the probe alone can take several seconds
    out = tmp_path / "cmp"
    result = compare(data3, TEST_BACKBONE, budget_s=budget, out=out, progress=False)
    names = [r["strategy"] for r in result["rows"]]
    assert names[0] == "probe"
    # Every chosen strategy either has a row or is listed as not started for lack of budget.
    assert names[1:] + result["skipped"] == choose_strategies(result["train_per_class"])
    assert len(names) >= 2
    for r in result["rows"]:
        assert r["val_accuracy"] is not None and r["test_accuracy"] is not None
        assert r["trainable_params"] > 0 and r["stored_bytes"] > 0
        assert Path(r["run_dir"]).is_dir()
    # Budget: training stops at the step that crosses a fit's share; evaluating and saving come on top.
    assert result["elapsed_s"] <= budget + 10, result["elapsed_s"]
    saved = json.loads((out / "compare.json").read_text())
    assert saved["rows"] == result["rows"] and saved["flags"] == result["flags"]
    assert saved["flags"]["negative_transfer"] == negative_transfer(saved["rows"])
    assert saved["recommendation"]["strategy"] in names
    assert saved["rule_based"]["strategy"]


def test_no_strategy_starts_once_the_budget_is_spent(data3: Path, tmp_path: Path) -> None:
    # The probe alone takes longer than 10 ms, so nothing after it may start.
    result = compare(
        data3, TEST_BACKBONE, budget_s=0.01, strategies=["head", "scratch"], out=tmp_path, progress=False
    )
    assert [r["strategy"] for r in result["rows"]] == ["probe"]
    assert result["skipped"] == ["head", "scratch"]
    assert result["recommendation"]["strategy"] == "probe"


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
    data3: Path, blind_backbone: str, tmp_path: Path
) -> None:
    result = compare(
        data3, blind_backbone, budget_s=15, strategies=["scratch", "head"], out=tmp_path / "c", progress=False
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
    assert main(["compare", *argv, "--budget", "1m"]) == 0  # the rich table
    text = capsys.readouterr().out
    assert "probe" in text and "head" in text and "recommended" in text
    with pytest.raises(SystemExit):
        main(["compare", *argv, "--budget", "soon"])
