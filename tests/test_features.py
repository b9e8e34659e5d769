from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.errors import HeadstartError
from headstart.feature_cache import FeatureCache
from headstart.features import embed


def _count_forwards(backbone) -> list[int]:
    calls: list[int] = []
    backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls


def test_second_run_is_served_from_the_cache_without_backbone_work(image_folder: Path, tiny_backbone) -> None:
    paths = sorted(image_folder.rglob("*.png"))
    calls = _count_forwards(tiny_backbone)
    first = embed(tiny_backbone, paths, backend="torch", batch_size=8, progress=False)
    assert first.stats["forwards"] == len(paths) and sum(calls) == len(paths)
    calls.clear()
    second = embed(tiny_backbone, paths, backend="torch", batch_size=8, progress=False)
    assert calls == [] and second.stats["forwards"] == 0 and second.stats["cache_hits"] == len(paths)
    np.testing.assert_array_equal(first.X, second.X)
    assert len(FeatureCache(tiny_backbone.key)) == len(paths)


def test_cache_is_keyed_by_content_not_by_path(tmp_path: Path, image_folder: Path, tiny_backbone) -> None:
    paths = sorted(image_folder.rglob("*.png"))[:4]
    embed(tiny_backbone, paths, backend="torch", progress=False)
    copies = []
    for i, p in enumerate(paths):
        copies.append(tmp_path / f"copy{i}.png")
        shutil.copy(p, copies[-1])
    again = embed(tiny_backbone, [*copies, *copies], backend="torch", progress=False)
    assert again.stats["forwards"] == 0 and again.X.shape == (8, tiny_backbone.embed_dim)


def test_embeddings_equal_a_plain_forward_in_eval_mode(image_folder: Path, tiny_backbone) -> None:
    from headstart.data.images import load_image_tensor

    paths = sorted(image_folder.rglob("*.png"))[:5]
    tiny_backbone.train()  # embed must switch BatchNorm to its running statistics
    got = embed(tiny_backbone, paths, backend="torch", cache=False, progress=False).X
    assert not tiny_backbone.training
    x = torch.from_numpy(np.stack([load_image_tensor(p, tiny_backbone.preprocess) for p in paths]))
    with torch.inference_mode():
        ref = tiny_backbone(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_bad_files_are_skipped_with_reasons_or_fail_in_strict_mode(image_folder: Path, tiny_backbone) -> None:
    good = sorted(image_folder.rglob("*.png"))[:3]
    (image_folder / "red" / "zero.png").write_bytes(b"")
    (image_folder / "red" / "notes.png").write_text("hello")
    bad = [
        image_folder / "red" / "zero.png",
        image_folder / "red" / "notes.png",
        image_folder / "red" / "gone.png",
    ]
    out = embed(tiny_backbone, [*good, *bad], backend="torch", progress=False)
    assert out.X.shape[0] == 3 and out.paths == [str(p) for p in good]
    assert set(out.bad) == {str(p) for p in bad}
    assert "empty" in out.bad[str(bad[0])] and "not an image" in out.bad[str(bad[1])]
    with pytest.raises(HeadstartError, match="3 unreadable") as e:
        embed(tiny_backbone, [*good, *bad], backend="torch", strict=True, progress=False)
    assert "zero.png" in str(e.value)


def test_onnx_runtime_path_matches_pytorch(image_folder: Path, tiny_backbone, isolated_cache: Path) -> None:
    paths = sorted(image_folder.rglob("*.png"))[:6]
    ref = embed(tiny_backbone, paths, backend="torch", cache=False, progress=False)
    out = embed(tiny_backbone, paths, backend="onnx", cache=False, progress=False)
    assert out.stats["backend"] == "onnx"
    np.testing.assert_allclose(out.X, ref.X, atol=1e-4)
    assert list((isolated_cache / "onnx").glob("*.onnx"))  # exported once, reused after


def test_images_decoded_into_reused_buffers_embed_as_a_fresh_array_per_item(
    image_folder: Path, tiny_backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode path that writes into reused batch buffers gives bit for bit the features of
    load_item + collate, also when a bad file leaves a batch short and a buffer comes back with the
    previous batch's pixels in it; and it keeps no more buffers than batches in flight."""
    from headstart import features
    from headstart.backbones.base import Backbone

    good = sorted(image_folder.rglob("*.png"))
    (image_folder / "red" / "zero.png").write_bytes(b"")
    paths = [*good[:5], image_folder / "red" / "zero.png", *good[5:]]  # bad item inside the first batch
    assert tiny_backbone.decodes_into
    made: list[np.ndarray] = []  # the buffers themselves, so no id is recycled
    take = features.BatchBuffers.take
    monkeypatch.setattr(features.BatchBuffers, "take", lambda self: made.append(b := take(self)) or b)
    fast = embed(tiny_backbone, paths, backend="torch", batch_size=4, workers=2, cache=False, progress=False)
    n_batches = -(-len(paths) // 4)
    assert len(made) == n_batches >= 5 and len({id(b) for b in made}) <= 2 + 2  # reused: workers + 2 at most

    monkeypatch.setattr(Backbone, "decodes_into", property(lambda self: False))
    plain = embed(tiny_backbone, paths, backend="torch", batch_size=4, workers=2, cache=False, progress=False)
    assert fast.paths == plain.paths and str(paths[5]) in fast.bad
    np.testing.assert_array_equal(fast.X, plain.X)


def test_a_forward_that_returns_a_view_of_its_input_keeps_its_features(
    image_folder: Path, tiny_backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reused buffers are refilled after each forward: features that are a view of the input (a plugin
    whose forward slices its input) are copied first, never overwritten by the next batch's pixels."""
    from headstart import features
    from headstart.data.images import load_image_tensor

    def make_forward(backbone, backend, dev):
        return (lambda x: x.numpy()[:, 0, 0, :4]), "torch"  # a view of the batch

    monkeypatch.setattr(features, "make_forward", make_forward)
    paths = sorted(image_folder.rglob("*.png"))
    got = embed(tiny_backbone, paths, backend="torch", batch_size=4, cache=False, progress=False)
    want = np.stack([load_image_tensor(p, tiny_backbone.preprocess)[0, 0, :4] for p in paths])
    np.testing.assert_array_equal(got.X, want)


def test_an_image_embed_starts_with_a_quarter_batch_and_gives_the_same_features(
    image_folder: Path, tiny_backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forward starts on a small first batch (less waiting for one thread to decode a whole batch);
    every later batch is full, and the features are those of one item at a time."""
    from headstart import features

    real = features.make_forward
    sizes: list[int] = []

    def make_forward(backbone, backend, dev):
        forward, name = real(backbone, backend, dev)
        return (lambda x: sizes.append(len(x)) or forward(x)), name

    monkeypatch.setattr(features, "make_forward", make_forward)
    paths = sorted(image_folder.rglob("*.png"))
    got = embed(tiny_backbone, paths, backend="torch", batch_size=4, cache=False, progress=False)
    assert len(paths) > 5 and sizes[0] == 1 and set(sizes[1:-1]) == {4} and sum(sizes) == len(paths)
    one = embed(tiny_backbone, paths, backend="torch", batch_size=1, cache=False, progress=False)
    np.testing.assert_allclose(got.X, one.X, atol=1e-4)  # float rounding: eager convs vary by batch
