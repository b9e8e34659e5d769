"""Test-time augmentation (headstart.tta, `evaluate --tta K`): the averaged logits, the report beside the
plain prediction, and what is refused before anything is embedded."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import probe_run
from headstart.errors import HeadstartError


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return probe_run(tmp_path_factory.mktemp("tta"), per_class=12)


def _test_sources(run: Path) -> list[str]:
    from headstart.runs import read_split_rows

    data = Path(json.loads((run / "run.json").read_text())["data_root"])
    return [str(data / r.path) for r in read_split_rows(run) if r.split == "test"]


def test_logits_are_the_mean_over_the_image_and_its_views(run: Path) -> None:
    from headstart.model import load_model
    from headstart.tta import TTA_SEED, tta_logits
    from headstart.views import embed_views

    model = load_model(run)
    sources = _test_sources(run)
    E, _, _ = model.embed(sources)
    z = tta_logits(model, sources, model.head.logits(E), 3, progress=False)
    V, _ = embed_views(
        model.backbone, sources, [model.backbone.item_hash(s) for s in sources], 3, seed=TTA_SEED
    )
    want = np.mean([model.head.logits(E), *(model.head.logits(V[:, i]) for i in range(3))], axis=0)
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(z, model.head.logits(E), atol=1e-4)  # the views moved the logits
    # Training views (seed 0) are another draw: a views run never sees its test-time views.
    V0, _ = embed_views(model.backbone, sources, [model.backbone.item_hash(s) for s in sources], 3, seed=0)
    assert not np.allclose(V0, V)


def test_evaluate_reports_tta_beside_the_plain_prediction(run: Path) -> None:
    from headstart.evaluate import evaluate_run

    res = evaluate_run(run, tta=2, latency=False, save=False)
    t = res["tta"]
    assert t["k"] == 2 and t["plain_accuracy"] == pytest.approx(res["metrics"]["accuracy"])
    assert t["metrics"]["accuracy"] == pytest.approx(t["accuracy"])
    assert t["gain"]["diff"] == pytest.approx(t["accuracy"] - t["plain_accuracy"])
    assert t["beyond_noise"] == (t["gain"]["p"] < 0.05)
    assert np.mean(t["plain_correct"]) == pytest.approx(t["plain_accuracy"]) and len(t["correct"]) == res["n"]
    assert t["latency"]["tta_p50_ms"] > t["latency"]["plain_p50_ms"] > 0  # 3 images forwarded, not 1
    assert evaluate_run(run, latency=False, save=False)["tta"] is None


def test_what_is_refused(run: Path) -> None:
    from headstart.cli import main
    from headstart.tta import check_tta

    for k in (-1, 33):
        with pytest.raises(HeadstartError, match="--tta must be an integer"):
            check_tta(SimpleNamespace(modality="image", precision="fp32", path="r"), k)  # type: ignore[arg-type]
    with pytest.raises(HeadstartError, match="text run"):
        check_tta(SimpleNamespace(modality="text", precision="fp32", path="r"), 2)  # type: ignore[arg-type]
    with pytest.raises(HeadstartError, match="int8 frozen forward"):
        check_tta(SimpleNamespace(modality="image", precision="int8", path="r"), 2)  # type: ignore[arg-type]
    check_tta(SimpleNamespace(modality="text", precision="int8", path="r"), 0)  # off: nothing to refuse
    assert main(["evaluate", str(run), "--tta", "99", "--no-latency"]) == 2
