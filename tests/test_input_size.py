"""Input size matched to the data: `size:<N>:<backbone>`, `fit --input-size`, compare's measured choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder
from headstart.backbones import create_backbone
from headstart.errors import HeadstartError


def test_a_sized_backbone_reads_smaller_inputs_under_its_own_name_and_key() -> None:
    plain, small = create_backbone(TEST_BACKBONE), create_backbone(f"size:64:{TEST_BACKBONE}")
    assert small.name == f"size:64:{TEST_BACKBONE}" and small.preprocess.input_size == 64
    assert small.key != plain.key  # never the same cache entries
    assert small.example_input(2).shape[-1] == 64 and small(small.example_input(2)).shape == (
        2,
        plain.embed_dim,
    )
    with pytest.raises(HeadstartError, match="not images"):
        create_backbone("size:64:test_text_encoder")
    with pytest.raises(HeadstartError, match="size:<pixels>:<backbone>"):
        create_backbone(f"size:big:{TEST_BACKBONE}")


def test_fit_at_a_smaller_input_records_it_and_predicts_at_it(tmp_path: Path) -> None:
    from headstart.model import load_model
    from headstart.train import fit

    data = make_image_folder(tmp_path / "d", ("red", "blue", "green"), per_class=8)
    r = fit(
        data,
        backbone=TEST_BACKBONE,
        strategy="partial:1",
        epochs=1,
        input_size=64,
        out=tmp_path / "run",
        progress=False,
    )
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert r.backbone == info["backbone"]["name"] == f"size:64:{TEST_BACKBONE}"
    m = load_model(tmp_path / "run")
    assert m.backbone.preprocess.input_size == 64
    files = sorted(str(p) for p in (data / "red").glob("*.png"))[:2]
    assert m.backbone.load_item(files[0]).shape[-1] == 64
    assert m.predict_proba(files)[0].shape == (2, 3)


@pytest.mark.parametrize(("smaller_hits", "chosen"), [(1.0, 32), (0.5, None)])
def test_the_smallest_size_that_loses_nothing_is_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smaller_hits: float, chosen: int | None
) -> None:
    from headstart.verdicts import cheap_cv
    from headstart.verdicts.input_size import choose_input_size

    data = make_image_folder(tmp_path / "d", ("red", "blue", "green"), per_class=12)
    calls: list[int] = []

    def planted(X: np.ndarray, y: np.ndarray, *args: object, **kw: object) -> dict[str, np.ndarray]:
        # Called once per size, native first: the native input gets every item right, the smaller one
        # `smaller_hits` of them.
        calls.append(len(y))
        hit = np.ones(len(y), bool)
        if len(calls) > 1:
            hit[: round(len(y) * (1 - smaller_hits))] = False
        return {"probe": hit}

    monkeypatch.setattr(cheap_cv, "cv_hits", planted)
    decided = choose_input_size(data, f"size:64:{TEST_BACKBONE}")  # native 64 px: the candidate is 32
    assert decided["native"] == 64 and set(decided["tests"]) == {"32"} and len(calls) == 2
    assert decided["chosen"] == chosen and decided["reason"]


def test_compare_runs_the_trained_rows_at_the_size_and_the_heads_at_the_native_one(tmp_path: Path) -> None:
    from headstart.verdicts.compare import compare

    data = make_image_folder(tmp_path / "d", ("red", "blue", "green"), per_class=10)
    result = compare(
        data,
        TEST_BACKBONE,
        budget_s=40,
        strategies=["multi-depth", "partial:1"],
        out=tmp_path / "cmp",
        progress=False,
        input_size="64",
    )
    names = {
        r["strategy"]: json.loads((Path(r["run_dir"]) / "run.json").read_text())["backbone"]["name"]
        for r in result["rows"]
    }
    assert names["probe"] == TEST_BACKBONE and names["multi-depth"] == f"depths:{TEST_BACKBONE}"
    assert names["partial:1"] == f"size:64:{TEST_BACKBONE}" and result["input_size"]["chosen"] == 64
