"""`predict`, `serve` and `export` on the fast forward (issue 21): the cached ONNX backbone and the head on
the CPU, at the run's precision; the whole int8 model exported; and the same answers from all three."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import TEST_BACKBONE


def _split(run: Path, split: str) -> list[str]:
    from headstart.model import load_model
    from headstart.runs import read_split_rows, resolve_item

    model = load_model(run)
    return [str(resolve_item(run, r, model.run_info)) for r in read_split_rows(run) if r.split == split]


def _serve(run: Path, files: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(/health, each file's single /predict answer, the /predict/batch answers), checking that every answer
    says which forward answered it (the same one /health names)."""
    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    client = TestClient(create_app(run, max_batch=64))
    health = client.get("/health").json()
    single = []
    for f in files:
        r = client.post("/predict?top=99", files={"file": (Path(f).name, Path(f).read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        assert r.headers["x-headstart-forward"] == health["forward"]
        single.append(r.json())
    batch = client.post(
        "/predict/batch?top=99",
        files=[("file", (Path(f).name, Path(f).read_bytes(), "image/png")) for f in files],
    )
    assert batch.status_code == 200 and batch.headers["x-headstart-forward"] == health["forward"]
    return health, single, batch.json()["results"]


def _proba(answer: dict[str, Any], classes: list[str]) -> list[float]:
    by_label = {t["label"]: t["probability"] for t in answer["top"]}
    return [by_label[c] for c in classes]


def test_serve_answers_a_probe_run_through_the_cached_onnx_backbone_like_pytorch(
    three_class_folder: Path, tmp_path: Path
) -> None:
    from headstart.api import probe
    from headstart.model import load_model
    from headstart.serve import Predictor

    run = probe(three_class_folder, backbone=TEST_BACKBONE, out=tmp_path / "run", progress=False).run_dir
    assert not (run / "model.onnx").exists()  # no export: the server must not need one to skip PyTorch
    test = _split(run, "test")
    model = load_model(run)
    health, single, batch = _serve(run, test)
    assert health["engine"] == "onnx" and health["forward"] == "onnx-fp32" and health["precision"] == "fp32"

    proba, kept, bad = model.predict_proba(test, cache=False)  # in-process predict: the same fast forward
    assert not bad and kept == list(range(len(test)))
    assert model.last_forward == {"backend": "onnx", "precision": "fp32"}
    eager = Predictor(model, engine="torch")  # eager PyTorch, whole classifier
    assert eager.forward == "torch"
    ref = eager.predict([eager.decode(Path(p).read_bytes(), name=p) for p in test])
    for answers in (single, batch):
        got = np.array([_proba(a, model.classes) for a in answers])
        np.testing.assert_allclose(got, ref, atol=1e-4)
    np.testing.assert_allclose(proba, ref, atol=1e-4)


def test_a_fine_tuned_run_serves_its_own_network_through_onnx_runtime(
    three_class_folder: Path, tmp_path: Path
) -> None:
    from headstart.backbones import create_backbone
    from headstart.model import load_model
    from headstart.serve import Predictor
    from headstart.train import fit

    out = tmp_path / "run"
    run = fit(
        three_class_folder, backbone=TEST_BACKBONE, strategy="partial:2", out=out, epochs=2, progress=False
    )
    run = run.run_dir
    model = load_model(run)
    served = Predictor(model)
    assert served.forward == "onnx-fp32"
    # The cached export is the fine-tuned network's (its key includes the delta), not the base's.
    base = create_backbone(TEST_BACKBONE)
    assert model.backbone.delta_sha256 and model.backbone.key != base.key
    assert served.onnx_path is not None and served.onnx_path.stem == model.backbone.key
    test = _split(run, "test")
    examples = [served.decode(Path(p).read_bytes(), name=p) for p in test]
    eager = Predictor(model, engine="torch")
    np.testing.assert_allclose(served.predict(examples), eager.predict(examples), atol=1e-4)


@pytest.mark.parametrize("onnx_faster", [True, False])
def test_a_text_run_serves_through_onnx_runtime_only_where_it_is_faster_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, onnx_faster: bool
) -> None:
    import headstart.features as features
    from headstart.api import probe
    from headstart.model import load_model
    from headstart.serve import Predictor

    words = {"animal": ["cat", "dog", "horse", "cow"], "vehicle": ["car", "bus", "train", "truck"]}
    lines = ["text,label"] + [f"the {w} {i},{lab}" for lab, ws in words.items() for w in ws for i in range(3)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    run = probe(
        tmp_path / "t.csv", backbone="test_text_encoder", out=tmp_path / "run", progress=False
    ).run_dir
    monkeypatch.setattr(features, "onnx_beats_eager", lambda bb: onnx_faster)
    model = load_model(run)
    served, eager = Predictor(model), Predictor(model, engine="torch")
    assert served.forward == ("onnx-fp32" if onnx_faster else "torch")
    examples = [served.decode_text(t) for t in ("the cat 1", "a bus on the road", "dog")]
    np.testing.assert_allclose(served.predict(examples), eager.predict(examples), atol=1e-4)


def test_an_int8_run_answers_the_same_top1_in_predict_serve_and_its_exported_model(
    three_class_folder: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    from headstart.api import probe
    from headstart.backbones import create_backbone
    from headstart.export import export_onnx_model
    from headstart.features import embed
    from headstart.model import load_model
    from headstart.quantize_forward import STATIC, Int8Forward

    run = probe(
        three_class_folder,
        backbone=TEST_BACKBONE,
        out=tmp_path / "run",
        precision="int8",
        progress=False,
        seed=0,
    ).run_dir
    model = load_model(run)
    assert model.precision == "int8"
    test = _split(run, "test")
    assert len(test) >= 4

    proba, kept, bad = model.predict_proba(test, cache=False)  # in-process predict
    assert not bad and kept == list(range(len(test)))
    assert model.last_forward == {"backend": "onnx-int8", "precision": "int8"}
    top1 = proba.argmax(1)
    # Not the float features: a float-trained path would answer otherwise on these logits.
    bb = create_backbone(TEST_BACKBONE, pretrained=False)
    E_fp32 = embed(bb, test, cache=False, progress=False).X
    E_int8 = embed(bb, test, int8=Int8Forward(bb, _split(run, "train")), cache=False, progress=False).X
    assert np.abs(model.head.logits(E_int8) - model.head.logits(E_fp32)).max() > 1e-3

    health, single, batch = _serve(run, test)
    assert health["forward"] == "onnx-int8" and health["precision"] == "int8"
    for answers in (single, batch):
        assert [model.classes.index(a["label"]) for a in answers] == top1.tolist()

    # The exported model of an int8 run is the whole int8 network: its quantized backbone and the head.
    report = export_onnx_model(run)
    out = Path(report["onnx"])
    assert report["parity"]["top1_agreement"] == 1.0 and report["quantized"]["method"] == STATIC
    import onnx

    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("QuantizeLinear") >= ops.count("Conv") > 0  # every convolution's input quantized
    batch_x = model.backbone.collate([model.backbone.load_item(p) for p in test])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits, exported_proba = sess.run(None, {"input": batch_x.numpy()})
    assert logits.argmax(1).tolist() == top1.tolist()
    np.testing.assert_allclose(exported_proba, proba, atol=1e-5)
    t = report["quantized"]["test"]
    assert t["n"] == len(test) and len(t["accuracy_int8_ci"]) == 2 and "p" in t["int8_minus_float"]


def test_export_quantize_writes_the_static_int8_network_calibrated_on_the_training_split(
    three_class_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    from badinput import run_cli
    from headstart.api import probe
    from headstart.export import export_onnx_model
    from headstart.export.graph import ort_session, run_onnx
    from headstart.model import load_model
    from headstart.quantize_forward import STATIC, Int8Forward

    run = probe(three_class_folder, backbone=TEST_BACKBONE, out=tmp_path / "run", progress=False).run_dir
    report = export_onnx_model(run, quantize=True)
    q = report["quantized"]
    qpath = Path(q["onnx"])
    assert qpath.name == "model.int8.onnx" and q["method"] == STATIC
    ops = [n.op_type for n in onnx.load(str(qpath)).graph.node]
    assert ops.count("QuantizeLinear") >= ops.count("Conv") > 0 and q["quantized_ops"]["MatMulInteger"] == 0
    # The very int8 backbone a probe at int8 would calibrate on this training split (training items only).
    model = load_model(run)
    train = _split(run, "train")
    int8 = Int8Forward(model.backbone, train)
    assert q["int8_id"] == int8.identity.id and 0 < q["calibration_items"] <= len(train)
    test = _split(run, "test")
    batch = model.backbone.collate([model.backbone.load_item(p) for p in test])
    np.testing.assert_allclose(
        run_onnx(ort_session(qpath), batch), model.head.logits(int8(batch)), atol=1e-4, rtol=1e-5
    )
    t = q["test"]
    assert t["n"] == len(test)
    for name in ("float", "int8"):
        lo, hi = t[f"accuracy_{name}_ci"]
        assert lo <= t[f"accuracy_{name}"] <= hi
    d = t["int8_minus_float"]
    assert d["diff"] == pytest.approx(t["accuracy_change"]) and 0 <= d["p"] <= 1
    assert (
        q["recommended"] == (not (d["diff"] < 0 and d["p"] < 0.05)) and ("warning" in q) != q["recommended"]
    )
    # The CLI prints the comparison with its intervals.
    res = run_cli(capsys, "export", run, "--onnx", "--quantize", "--out", tmp_path / "m.onnx")
    assert res.code == 0, res.err
    assert "95 % Wilson" in res.out and "McNemar p" in res.out and STATIC in res.out
