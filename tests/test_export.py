"""ONNX export of a trained run: parity with PyTorch on the run's own files, card, temperature, int8."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, probe_run
from headstart.errors import HeadstartError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One probe run (tiny test backbone, 3 classes) shared by the tests of this file."""
    return probe_run(tmp_path_factory.mktemp("export"), per_class=10)


def _ort(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_matches_pytorch_on_the_runs_own_files(run_dir: Path, tmp_path: Path) -> None:
    from headstart.export import export_onnx_model, read_card
    from headstart.model import load_model

    out = tmp_path / "m.onnx"
    report = export_onnx_model(run_dir, out)
    par = report["parity"]
    assert par["n"] == 12  # the 6 test + 6 val files of the run's split
    assert par["top1_agreement"] == 1.0
    assert par["max_abs_diff"] < 1e-4
    assert out.is_file() and (tmp_path / "m.card.json").is_file()

    # The exported graph answers like the run on an input it never saw during the check.
    model = load_model(run_dir)
    src = str(sorted((run_dir.parent / "data" / "green").glob("*.png"))[0])
    x = model.backbone.load_item(src)[None]
    logits, proba = _ort(out).run(["logits", "probabilities"], {"input": x})
    want, _, _ = model.logits([src], cache=False)
    np.testing.assert_allclose(logits, want, atol=1e-4)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)

    # Everything needed to feed it travels with it: the card file and the ONNX metadata agree.
    card = read_card(out)
    assert card["classes"] == model.classes
    assert card["preprocess"]["input_size"] == model.backbone.preprocess.input_size
    assert card["preprocess"]["mean"] == list(model.backbone.preprocess.mean)
    assert card["backbone"]["name"] == TEST_BACKBONE
    assert card["parity"]["top1_agreement"] == 1.0
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["classes"]) == model.classes
    assert json.loads(props["headstart.card"])["identity"] == card["identity"]


def test_probabilities_use_the_calibration_temperature(run_dir: Path, tmp_path: Path) -> None:
    from headstart.export import export_onnx_model
    from headstart.model import softmax
    from headstart.runs import CALIBRATION_FILE

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / CALIBRATION_FILE).write_text(json.dumps({"temperature": 2.5}))
    report = export_onnx_model(run)  # default: RUN/model.onnx
    assert report["onnx"] == str(run / "model.onnx")
    assert report["temperature"] == 2.5
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    logits, proba = _ort(run / "model.onnx").run(None, {"input": x})
    np.testing.assert_allclose(proba, softmax(logits / 2.5), atol=1e-6)
    assert not np.allclose(proba, softmax(logits), atol=1e-3)


def test_quantize_writes_an_int8_copy_and_reports_its_test_accuracy(run_dir: Path, tmp_path: Path) -> None:
    from headstart.export import export_onnx_model

    report = export_onnx_model(run_dir, tmp_path / "m.onnx", quantize=True)
    q = report["quantized"]
    assert Path(q["onnx"]).is_file()
    # The conv net quantized statically (QDQ); the head stays one float Gemm (see export/quantize.py).
    assert q["quantized_ops"]["QuantizeLinear"] > 0 and q["quantized_ops"]["MatMulInteger"] == 0
    t = q["test"]
    assert t["n"] == 6
    assert t["accuracy_change"] == pytest.approx(t["accuracy_int8"] - t["accuracy_float"])
    assert 0.0 <= q["check_top1_agreement"] <= 1.0
    d = t["int8_minus_float"]
    assert q["recommended"] == (not (d["diff"] < 0 and d["p"] < 0.05))
    assert ("warning" in q) != q["recommended"]
    out = _ort(Path(q["onnx"])).run(["probabilities"], {"input": np.zeros((2, 3, 32, 32), np.float32)})[0]
    assert out.shape == (2, 3)


def test_refuses_an_export_that_disagrees(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headstart.export as export
    from headstart.export import parity

    real = parity.run_onnx
    monkeypatch.setattr(parity, "run_onnx", lambda s, b, chunk=32: -real(s, b, chunk))
    with pytest.raises(HeadstartError, match="disagrees with PyTorch"):
        export.export_onnx_model(run_dir, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.card.json").exists()


def test_without_the_runs_files_it_asks_for_inputs(run_dir: Path, tmp_path: Path) -> None:
    from headstart.export import export_onnx_model

    run = tmp_path / "moved"
    shutil.copytree(run_dir, run)
    rows = (run / "split.csv").read_text().splitlines()
    (run / "split.csv").write_text("\n".join([rows[0]] + ["gone/" + r.lstrip("/") for r in rows[1:]]) + "\n")
    with pytest.raises(HeadstartError, match="no usable inputs") as e:
        export_onnx_model(run, tmp_path / "m.onnx")
    assert "--check" in (e.value.fix or "")
    files = [str(p) for p in sorted((run_dir.parent / "data" / "red").glob("*.png"))[:4]]
    report = export_onnx_model(run, tmp_path / "m.onnx", check_inputs=files)
    assert report["parity"]["n"] == 4 and report["parity"]["inputs"] == "check_inputs"


def test_a_model_whose_batches_are_not_one_tensor_is_refused(run_dir: Path, tmp_path: Path) -> None:
    from headstart.export import export_onnx_model
    from headstart.model import load_model

    model = load_model(run_dir)
    real = model.backbone.collate
    model.backbone.collate = lambda ex: {"input_ids": real(ex)}  # what a text family returns
    with pytest.raises(HeadstartError, match="not exportable to ONNX yet"):
        export_onnx_model(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from headstart.cli import main

    assert main(["export", str(run_dir), "--onnx", "--out", str(tmp_path / "c.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parity"]["top1_agreement"] == 1.0
    assert main(["export", str(run_dir), "--onnx", "--out", str(tmp_path / "c.txt"), "--json"]) == 2
    assert "does not end in .onnx" in json.loads(capsys.readouterr().out)["error"]
