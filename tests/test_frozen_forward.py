"""The frozen forward through ONNX Runtime for text, and at int8 (issue 21)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from headstart.backbones import create_backbone
from headstart.features import embed
from headstart.onnx_forward import PARITY_ATOL

TEXTS = [
    "the cat",
    "a big red dog and a small blue bird on the farm",
    "fish",
    "one two three four five six seven eight nine red blue green fast slow happy sad good bad old new",
    "the horse is in the zoo",
    "car bus train plane ship bike truck road engine wheel",
    "happy",
    "the sheep and the cow are on the farm with the old dog",
]


def test_text_embeddings_through_onnx_runtime_match_pytorch_on_length_bucketed_batches(monkeypatch) -> None:
    from headstart.onnx_forward import OnnxForward

    bb = create_backbone("test_text_encoder")
    lengths: list[list[int]] = []
    call = OnnxForward.__call__

    def spy(self, batch):
        lengths.append(batch["attention_mask"].sum(1).tolist())
        return call(self, batch)

    monkeypatch.setattr(OnnxForward, "__call__", spy)
    ref = embed(bb, TEXTS, backend="torch", cache=False, progress=False)
    got = embed(bb, TEXTS, backend="onnx", cache=False, progress=False, batch_size=3)
    assert got.stats["backend"] == "onnx" and ref.stats["backend"] == "torch"
    assert got.paths == ref.paths == TEXTS
    np.testing.assert_allclose(got.X, ref.X, atol=PARITY_ATOL * max(1.0, float(np.abs(ref.X).max())))
    # Length-bucketed: each batch's texts are no shorter than the previous batch's, padding stays small.
    flat = [n for batch in lengths for n in batch]
    assert len(lengths) == 3 and flat == sorted(flat)


@pytest.mark.parametrize("onnx_faster", [True, False])
def test_auto_runs_text_through_onnx_runtime_only_where_a_timed_forward_says_it_is_faster(
    monkeypatch, onnx_faster: bool
) -> None:
    import headstart.features as features
    from headstart.onnx_forward import OnnxForward

    bb = create_backbone("test_text_encoder")
    timed: list[str] = []

    def planted(forward, x) -> float:  # ORT 1 s and eager 2 s, or the reverse
        timed.append("onnx" if isinstance(forward, OnnxForward) else "eager")
        return 1.0 if (timed[-1] == "onnx") == onnx_faster else 2.0

    monkeypatch.setattr(features, "forward_seconds", planted)
    got = embed(bb, TEXTS, backend="auto", cache=False, progress=False)
    assert got.stats["backend"] == ("onnx" if onnx_faster else "torch") and sorted(timed) == ["eager", "onnx"]
    again = embed(bb, TEXTS, backend="auto", cache=False, progress=False)  # remembered: not timed again
    assert again.stats["backend"] == got.stats["backend"] and len(timed) == 2


def test_text_export_is_checked_on_padded_batches_of_different_lengths() -> None:
    from headstart.onnx_forward import float_export, varied_input

    bb = create_backbone("test_text_encoder")
    batch = varied_input(bb, 3)
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3  # the parity batch is padded
    _, meta = float_export(bb)
    assert meta["ok"] and meta["max_abs_diff"] <= PARITY_ATOL


def test_text_export_runs_eager_attention_without_the_sdpa_nan_guard_and_restores_the_model() -> None:
    import onnx

    from headstart.onnx_forward import EXPORT_ATTENTION, OnnxForward

    bb = create_backbone("test_text_encoder")
    before = bb.hf_model.config._attn_implementation
    assert before != EXPORT_ATTENTION  # else this test proves nothing
    fwd = OnnxForward(bb)
    # The sdpa graph's guard on masked rows (IsNaN + Where) cost MiniLM 12 % of its int8 forward.
    assert "IsNaN" not in {n.op_type for n in onnx.load(str(fwd.path)).graph.node}
    assert f".{EXPORT_ATTENTION}-attention" in fwd.path.name  # an older (sdpa) export is not reused
    assert bb.hf_model.config._attn_implementation == before  # PyTorch runs as it did
    assert fwd.meta["ok"] and fwd.meta["max_abs_diff"] <= PARITY_ATOL


# -- int8 ------------------------------------------------------------------------------------------------

IMAGE_BACKBONE = "test_efficientnet_lite"


def _int8_probe(folder, out):
    from headstart.api import probe

    return probe(folder, backbone=IMAGE_BACKBONE, out=out, precision="int8", progress=False, seed=0)


def _split(run, split: str) -> list[str]:
    from headstart.model import load_model
    from headstart.runs import read_split_rows, resolve_item

    model = load_model(run)
    return [str(resolve_item(run, r, model.run_info)) for r in read_split_rows(run) if r.split == split]


def test_a_head_trained_on_int8_features_answers_the_same_in_predict_serve_and_in_process(
    three_class_folder, tmp_path, monkeypatch
) -> None:
    from headstart.estimator import ProbeClassifier
    from headstart.model import load_model, softmax
    from headstart.quantize_forward import STATIC, Int8Forward
    from headstart.serve.predictor import Predictor

    run = _int8_probe(three_class_folder, tmp_path / "run").run_dir
    model = load_model(run)
    rec = model.info["frozen_forward"]
    assert model.precision == "int8" and rec["int8"]["method"] == STATIC
    assert rec["gate"]["fp32"]["accuracy_ci"] and "int8_minus_fp32" in rec["gate"]  # the comparison stays
    train, test = _split(run, "train"), _split(run, "test")
    assert 0 < len(rec["int8"]["calibration"]) <= len(train) and test

    # In process: the int8 forward built from the training split, then the head.
    bb = create_backbone(IMAGE_BACKBONE, pretrained=False)
    E_int8 = embed(bb, test, int8=Int8Forward(bb, train), cache=False, progress=False).X
    E_fp32 = embed(bb, test, cache=False, progress=False).X
    assert np.abs(E_int8 - E_fp32).max() > 1e-3  # int8 features are not the float ones
    top1 = model.head.logits(E_int8).argmax(1)

    proba, kept, bad = model.predict_proba(test)
    assert not bad and kept == list(range(len(test)))
    np.testing.assert_array_equal(proba.argmax(1), top1)
    expected = softmax(model.head.logits(E_int8) / model.temperature)
    np.testing.assert_allclose(proba, expected, atol=1e-5)  # these very features, not float ones
    loaded = ProbeClassifier.load(run)  # the scikit-learn face of the same run
    np.testing.assert_allclose(loaded.predict_proba(test), softmax(model.head.logits(E_int8)), atol=1e-5)
    served = Predictor(model)
    assert served.engine == "onnx-int8"
    with_bytes = [served.decode(Path(p).read_bytes(), name=p) for p in test]
    np.testing.assert_array_equal(served.predict(with_bytes).argmax(1), top1)
    np.testing.assert_allclose(served.predict(with_bytes), expected, atol=1e-5)

    # A fresh cache (another machine): the int8 backbone is rebuilt from the recorded calibration items,
    # byte for byte (its sha256 is checked), and answers the same.
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "fresh-cache"))
    again = load_model(run)
    np.testing.assert_array_equal(again.predict_proba(test)[0].argmax(1), top1)


def test_an_int8_run_whose_backbone_cannot_be_rebuilt_is_refused_not_served_float(
    three_class_folder, tmp_path, monkeypatch
) -> None:
    import shutil

    from headstart.errors import HeadstartError
    from headstart.export import export_onnx_model
    from headstart.model import load_model

    run = _int8_probe(three_class_folder, tmp_path / "run").run_dir
    test = _split(run, "test")
    keep = tmp_path / "kept"
    keep.mkdir()
    for p in test:
        shutil.copy(p, keep / f"{len(list(keep.iterdir()))}.png")
    shutil.rmtree(three_class_folder)  # the calibration items (training split) are gone
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "fresh-cache"))  # and so is the cached model
    model = load_model(run)
    with pytest.raises(HeadstartError, match="calibration items"):
        model.predict_proba(sorted(keep.iterdir()))
    # Never the float network under its head, even with inputs to check the export against.
    with pytest.raises(HeadstartError, match="calibration items"):
        export_onnx_model(run, tmp_path / "m.onnx", check_inputs=sorted(keep.iterdir()))
    assert not (tmp_path / "m.onnx").exists()


def test_the_feature_cache_never_hands_float_features_to_an_int8_forward_or_back(image_folder) -> None:
    from headstart.quantize_forward import Int8Forward

    bb = create_backbone(IMAGE_BACKBONE, pretrained=False)
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    int8 = Int8Forward(bb, paths[:8])
    fp32 = embed(bb, paths, progress=False)
    q = embed(bb, paths, int8=int8, progress=False)
    assert q.stats["cache_hits"] == 0 and q.stats["forwards"] == len(paths)  # nothing from the float entries
    assert q.stats["precision"] == "int8" and fp32.stats["precision"] == "fp32"
    assert np.abs(q.X - fp32.X).max() > 1e-3
    again_fp32, again_q = embed(bb, paths, progress=False), embed(bb, paths, int8=int8, progress=False)
    assert again_fp32.stats["cache_hits"] == again_q.stats["cache_hits"] == len(paths)
    np.testing.assert_array_equal(again_fp32.X, fp32.X)
    np.testing.assert_array_equal(again_q.X, q.X)
    # Another calibration set is another int8 model: its own entries too.
    other = Int8Forward(bb, paths[8:16])
    assert other.cache_key != int8.cache_key
    assert embed(bb, paths, int8=other, progress=False).stats["cache_hits"] == 0
    # A float cache handed in explicitly is not where int8 features go, nor where they are read from.
    from headstart.feature_cache import FeatureCache

    float_cache = FeatureCache(bb.key)
    handed = embed(bb, paths, int8=int8, cache=float_cache, progress=False)
    np.testing.assert_array_equal(handed.X, q.X)
    np.testing.assert_array_equal(embed(bb, paths, cache=float_cache, progress=False).X, fp32.X)


def _planted_gate(monkeypatch, *, int8_loses: bool) -> list[str]:
    """int8 is faster; the probe's CV hits on int8 features are planted (all wrong when it loses)."""
    import headstart.frozen_precision as fp
    from headstart.verdicts import cheap_cv

    monkeypatch.setattr(fp, "int8_speed", lambda *a, **k: {"fp32_s": 1.0, "int8_s": 0.5, "faster": True})
    calls: list[str] = []

    def hits(X, y, n_classes, *, C, n_folds, seed, knn=True):
        which = "fp32" if len(calls) % 2 == 0 else "int8"  # the gate scores fp32, then int8, per repeat
        calls.append(which)
        return {"probe": np.full(len(y), not (which == "int8" and int8_loses))}

    monkeypatch.setattr(cheap_cv, "cv_hits", hits)
    return calls


@pytest.mark.parametrize("int8_loses", [True, False])
def test_auto_keeps_float_when_int8_loses_beyond_noise(three_class_folder, tmp_path, monkeypatch, int8_loses):
    from headstart.api import probe
    from headstart.model import load_model

    calls = _planted_gate(monkeypatch, int8_loses=int8_loses)
    r = probe(
        three_class_folder, backbone=IMAGE_BACKBONE, out=tmp_path / "run", precision="auto", progress=False
    )
    rec = r.metrics["frozen_forward"]
    assert calls and rec["gate"]["holds"] is not int8_loses
    assert rec["precision"] == ("fp32" if int8_loses else "int8")
    assert load_model(r.run_dir).precision == rec["precision"]
    if int8_loses:
        assert "loses accuracy beyond noise" in rec["reason"] and "int8" not in rec


def test_auto_keeps_float_without_embedding_int8_when_int8_is_not_faster(image_folder, monkeypatch) -> None:
    import headstart.frozen_precision as fp
    from headstart.api import probe

    monkeypatch.setattr(
        fp, "int8_speed", lambda *a, **k: {"fp32_s": 1.0, "int8_s": 1.2, "faster": False, "items": 16}
    )
    monkeypatch.setattr(fp, "accuracy_gate", lambda *a, **k: pytest.fail("the gate ran"))
    r = probe(image_folder, backbone=IMAGE_BACKBONE, save=False, precision="auto", progress=False)
    assert r.metrics["frozen_forward"]["precision"] == "fp32"
    assert "not faster" in r.metrics["frozen_forward"]["reason"]


def test_the_timed_forward_is_remembered_per_machine_and_backbone(image_folder) -> None:
    from headstart.frozen_precision import int8_speed
    from headstart.quantize_forward import Int8Forward

    bb = create_backbone(IMAGE_BACKBONE, pretrained=False)
    int8 = Int8Forward(bb, sorted(str(p) for p in image_folder.rglob("*.png"))[:8])
    first, second = int8_speed(bb, int8), int8_speed(bb, int8)
    assert not first["remembered"] and second["remembered"]
    assert first["fp32_s"] == second["fp32_s"] > 0 and first["faster"] == second["faster"]


def test_text_int8_is_dynamic_needs_no_calibration_and_stays_close_to_float() -> None:
    from headstart.quantize_forward import DYNAMIC, Int8Forward

    bb = create_backbone("test_text_encoder")
    int8 = Int8Forward(bb)  # a transformer: dynamic int8, no calibration items
    assert int8.identity.method == DYNAMIC and int8.identity.calibration == ()
    q = embed(bb, TEXTS, int8=int8, cache=False, progress=False).X
    f = embed(bb, TEXTS, cache=False, progress=False).X
    cos = (q * f).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(f, axis=1)
    assert cos.min() > 0.9


def test_int8_with_the_torch_backend_is_refused_before_any_data_is_read(tmp_path) -> None:
    from headstart.config import ProbeConfig
    from headstart.errors import HeadstartError

    with pytest.raises(HeadstartError, match="ONNX Runtime") as e:
        ProbeConfig(tmp_path / "does-not-exist", precision="int8", backend="torch")
    assert "--backend auto" in e.value.fix
    with pytest.raises(HeadstartError, match="'int4'"):
        ProbeConfig(tmp_path / "does-not-exist", precision="int4")


def _quantized_gathers(path: Path) -> list[str]:
    """The Gather nodes of an ONNX file that read an int8/uint8 table (a quantized embedding)."""
    import onnx

    graph = onnx.load(str(path)).graph
    ints = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    tables = {i.name for i in graph.initializer if i.data_type in ints}
    return [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in tables]


def test_text_int8_quantizes_the_embedding_tables_and_a_run_of_the_earlier_method_rebuilds_it() -> None:
    from headstart.errors import HeadstartError
    from headstart.quantize_forward import DYNAMIC, DYNAMIC_MATMUL, STATIC, Int8Forward, Int8Identity

    bb = create_backbone("test_text_encoder")
    new = Int8Forward(bb)
    assert new.identity.method == DYNAMIC and _quantized_gathers(new.ensure())
    # A run recorded before the tables were quantized gets its own model back, MatMul/Gemm only.
    old = Int8Forward(bb, expected=Int8Identity(DYNAMIC_MATMUL, new.identity.float_sha256, ()))
    assert old.identity.method == DYNAMIC_MATMUL and old.cache_key != new.cache_key
    assert not _quantized_gathers(old.ensure())
    f = embed(bb, TEXTS, cache=False, progress=False).X
    for int8 in (new, old):
        q = embed(bb, TEXTS, int8=int8, cache=False, progress=False).X
        assert ((q * f).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(f, axis=1)).min() > 0.9
    with pytest.raises(HeadstartError, match="is not the one"):  # a conv net's method on a transformer
        Int8Forward(bb, expected=Int8Identity(STATIC, new.identity.float_sha256, ("0" * 64,)))


def test_later_sessions_load_onnx_runtimes_optimized_copy_with_the_same_outputs(monkeypatch, caplog) -> None:
    from headstart import onnx_forward
    from headstart.onnx_forward import OnnxForward, cached_session, feed, optimized_path, varied_input

    bb = create_backbone(IMAGE_BACKBONE, pretrained=False)
    fwd = OnnxForward(bb)  # the first session writes the copy
    opt = optimized_path(fwd.path)
    assert opt.is_file() and not list(opt.parent.glob("*.tmp"))
    x = feed(varied_input(bb, 3))
    ref = onnx_forward._session(fwd.path, 1).run(None, x)[0]
    opened: list[tuple[Path, bool]] = []
    plain = onnx_forward._session

    def spy(path, threads, *, optimize=True, save_to=None):
        opened.append((Path(path), optimize))
        return plain(path, threads, optimize=optimize, save_to=save_to)

    monkeypatch.setattr(onnx_forward, "_session", spy)
    assert np.array_equal(cached_session(fwd.path, 1).run(None, x)[0], ref)
    assert opened == [(opt, False)]  # loaded as optimized, not optimized again
    opt.write_bytes(b"not a model")  # damaged: made again, with a warning
    assert np.array_equal(cached_session(fwd.path, 1).run(None, x)[0], ref)
    assert "does not load" in caplog.text and opt.stat().st_size > 1000
    # Where the copy cannot be written, a plain session still answers.
    monkeypatch.setattr(onnx_forward, "optimized_path", lambda p: p.parent / "missing-dir" / "x.onnx")
    assert np.array_equal(cached_session(fwd.path, 1).run(None, x)[0], ref)
    # The copy belongs to the file it was made from: a rewritten file gets another name.
    st = fwd.path.stat()
    os.utime(fwd.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    monkeypatch.undo()
    assert optimized_path(fwd.path) != opt
