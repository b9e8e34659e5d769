"""Bad-input corpus, report and output: what a run records and prints is what happened, never a quiet cut.

DANN's metrics count the target inputs it used; the model card lists what trained; `evaluate` shows every
recorded mistake under a heading that counts them; piped tables keep whole names; an emoji class name is
drawn in the report's charts without a missing-glyph warning.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from badinput import run_cli
from conftest import TEST_BACKBONE, draw_item, make_image_folder

EMOJI_CLASS = "\N{FOX FACE} blue"  # DejaVu Sans (matplotlib's own font) has no fox face


@pytest.fixture(scope="module")
def dann_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`headstart fit --strategy partial:1 --target-unlabeled` on the tiny backbone; one class is an emoji."""
    from headstart.cli import main

    root = tmp_path_factory.mktemp("dann-report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        data = make_image_folder(root / "data", ("red", "blue", "green"), per_class=8)
        (data / "blue").rename(data / EMOJI_CLASS)
        target = root / "target"
        target.mkdir()
        for i in range(12):  # the same pictures, colours inverted
            draw_item(("red", "blue", "green")[i % 3], 90_000 + i).point(lambda v: 255 - v).save(
                target / f"{i:02d}.png"
            )
        (target / "broken.png").write_bytes(b"not an image")  # skipped: not counted as used
        run = root / "run"
        argv = ["fit", data, "--backbone", TEST_BACKBONE, "--strategy", "partial:1", "--epochs", "1"]
        argv += ["--no-augment", "--target-unlabeled", target, "--out", run, "--json"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            assert main([str(a) for a in argv]) == 0
    return run


def test_dann_metrics_count_the_target_inputs_used(dann_run: Path) -> None:
    metrics = json.loads((dann_run / "metrics.json").read_text())
    assert metrics["objective"]["n_target"] == 12 and metrics["objective"]["skipped_target"] == 1
    assert metrics["unlabeled"] == 12  # was 0: only distillation's transfer set was counted


def _card_row(html: str, key: str) -> str:
    card = html[html.index('<section id="card"') :]
    m = re.search(rf"<th[^>]*>{re.escape(key)}</th>\s*<td[^>]*>(.*?)</td>", card, re.S)
    assert m, f"the model card has no {key!r} row"
    return m.group(1)


def test_model_card_lists_the_groups_that_trained(dann_run: Path) -> None:
    from headstart.report import build_report

    groups = json.loads((dann_run / "run.json").read_text())["trained_groups"]
    assert groups  # partial:1 trains the last group
    row = _card_row(build_report(dann_run).html, "trained")
    assert all(g in row for g in groups), row
    assert "the head and backbone groups" in row


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        ({"kind": "probe"}, "the head only"),
        ({"kind": "fit", "pretrained": True, "trained_groups": []}, "the head only"),  # strategy head
        (
            {"kind": "fit", "pretrained": True, "trained_groups": ["blocks.5", "head_conv"], "delta": {}},
            "the head and backbone groups blocks.5, head_conv",
        ),
        ({"kind": "fit", "pretrained": False, "trained_groups": ["a", "b"]}, "every layer and the head"),
        (
            {
                "kind": "fit",
                "trained_groups": ["layer.1"],
                "adapter": {"method": "lora", "r": 4, "groups": ["layer.1"]},
            },
            "the head and LoRA adapters (r = 4) in groups layer.1",
        ),
        (
            {
                "kind": "fit",
                "trained_groups": ["layer.1"],
                "merged_from": {"run": "x"},
                "delta": {"file": "d"},
            },
            "the head and backbone groups layer.1 (LoRA adapters merged",
        ),
        ({"kind": "fit"}, "not recorded"),  # never an empty list that reads as "nothing trained"
    ],
)
def test_model_card_says_what_each_strategy_trained(run: dict, expected: str) -> None:
    from headstart.report.sections.card import what_trained

    assert expected in str(what_trained(run))


def _glyph_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def test_report_draws_an_emoji_class_name_without_glyph_warnings(dann_run: Path) -> None:
    from headstart.report import build_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = build_report(dann_run)
    assert report.sections["data"] and report.sections["training"]  # the charts were drawn
    assert _glyph_warnings(caught) == []
    assert EMOJI_CLASS in report.html  # the page itself keeps the real name


def test_chart_labels_spell_out_what_the_font_lacks() -> None:
    from headstart.report import plots

    names = ["\N{FOX FACE}", "\N{DOG FACE}", "plain"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.class_counts(names, {"train": dict.fromkeys(names, 3)})
    assert _glyph_warnings(caught) == []
    labels = [plots._short(n) for n in names]
    assert len(set(labels)) == 3 and labels[2] == "plain"  # two emoji classes stay distinguishable
    if ord("\N{FOX FACE}") not in plots._fonts()[1]:
        assert labels[0] == "[fox face]"


def test_the_cost_chart_prints_plain_numbers_and_stacks_close_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """With TeX parsing off (class names may hold "$"), matplotlib's own log-axis labels printed as raw TeX
    ($\\mathdefault{10^{1}}$) across the axis; a narrow range is drawn linear; labels of points close together
    stack instead of overprinting."""
    from headstart.report import plots

    figs = []
    monkeypatch.setattr(plots, "_svg_uri", lambda fig: figs.append(fig) or "")
    rows = [
        {"strategy": "probe", "train_s": 3.5, "latency_ms": 13.07, "test_accuracy": 0.70},
        {"strategy": "multi-depth", "train_s": 2.5, "latency_ms": 13.28, "test_accuracy": 0.69},
        {"strategy": "partial:2", "train_s": 15.0, "latency_ms": 12.91, "test_accuracy": 0.70},
        {"strategy": "lp-ft", "train_s": 28.0, "latency_ms": 12.94, "test_accuracy": 0.70},
    ]
    plots.accuracy_vs_cost(rows, "multi-depth")
    (fig,) = figs
    fig.canvas.draw()
    train, latency = fig.axes
    assert train.get_xscale() == "log" and latency.get_xscale() == "linear"  # 11x range vs 1.03x
    labels = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels(which="both")]
    assert any(labels) and not any("$" in t or "mathdefault" in t for t in labels)
    offsets = {a.get_text(): a.xyann[1] for a in latency.texts}
    assert offsets["partial:2"] != offsets["lp-ft"]  # 0.03 ms and 0 points apart: one label below the other


# -- printed tables -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from headstart.api import probe

    root = tmp_path_factory.mktemp("probe-report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        data = make_image_folder(root / "data", ("red", "blue"), per_class=12)
        probe(data, backbone=TEST_BACKBONE, out=root / "run", progress=False)
    return root / "run"


def test_evaluate_shows_every_recorded_mistake_and_counts_them(
    probe_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Evaluating on other data writes nothing into the run: the counts come from --json."""
    # Labels swapped: what the probe gets right is now a mistake, so there are more than 8 of them.
    data = make_image_folder(tmp_path / "swapped", ("red", "blue"), per_class=12)
    (data / "red").rename(data / "tmp")
    (data / "blue").rename(data / "red")
    (data / "tmp").rename(data / "blue")
    ev = json.loads(run_cli(capsys, "evaluate", probe_run, data, "--no-latency", "--json").out)
    res = run_cli(capsys, "evaluate", probe_run, data, "--no-latency")
    assert res.code == 0, res.text
    recorded = ev["mistakes"]
    n_wrong = ev["n"] - sum(row[i] for i, row in enumerate(ev["metrics"]["confusion"]))
    assert len(recorded) > 8, "the swap should give more mistakes than the old 8 rows"
    heading = f"top {len(recorded)} of {n_wrong}" if n_wrong > len(recorded) else f"all {len(recorded)}"
    assert f"Most confident mistakes ({heading})" in res.out
    assert all(Path(m["source"]).name in res.out for m in recorded)


LONG_BACKBONE = "test_backbone_with_a_rather_long_registered_name_" + "x" * 40


def test_backbones_table_keeps_whole_names_when_piped(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from headstart.backbones import registry

    registry.list_backbones()  # the built-in families register first
    spec = registry.BackboneSpec(
        name=LONG_BACKBONE,
        family="test",
        builder=lambda **_: None,
        embed_dim=8,
        license="MIT [see the card]",  # markup-looking text is printed as is
        description="a long description that would be cut at eighty columns " * 2,
        weights_file=lambda: None,
        is_test_model=True,
    )
    monkeypatch.setitem(registry._REGISTRY, LONG_BACKBONE, spec)
    monkeypatch.setenv("COLUMNS", "80")  # what a pipe gets by default
    res = run_cli(capsys, "backbones", "--all")
    assert res.code == 0, res.text
    assert LONG_BACKBONE in res.out and "MIT [see the card]" in res.out
    assert spec.description.strip() in res.out


def test_models_list_keeps_whole_names_when_piped(
    probe_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from headstart.store import ModelStore

    name = "a-model-name-long-enough-to-be-cut-at-eighty-columns-" + "n" * 30
    alias = "production-candidate-with-a-long-alias-" + "a" * 20
    ModelStore(tmp_path / "models").register(probe_run, name, alias=alias)
    monkeypatch.setenv("COLUMNS", "80")
    res = run_cli(capsys, "models", "list", "--store", tmp_path / "models")
    assert res.code == 0, res.text
    assert name in res.out and f"@{alias}" in res.out and TEST_BACKBONE in res.out
