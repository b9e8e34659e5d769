"""Micro-batches and streamed inputs: the same optimizer steps as whole batches decoded up front."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TEST_BACKBONE, make_image_folder
from headstart.backbones import create_backbone
from headstart.recipes import Phase, Recipe
from headstart.train.classify import Classification
from headstart.train.data import Split, streamed_split
from headstart.train.loop import Trainer
from headstart.train.micro_batch import GHOST_BATCH, micro_batch_size, saved_bytes

MICRO_BATCH = Classification.micro_batch


def _files(folder: Path) -> tuple[list[str], torch.Tensor]:
    files = sorted(str(f) for f in folder.rglob("*.png"))
    return files, torch.tensor([0 if "/red/" in f else 1 for f in files])


def _train(
    split: Split, monkeypatch: pytest.MonkeyPatch, mb: str, recipe: Recipe
) -> tuple[Trainer, list[int]]:
    """A Trainer fitted under activation budget `mb` MB, and the micro-batch sizes its steps used."""
    monkeypatch.setenv("HEADSTART_ACTIVATION_MB", mb)
    used: list[int] = []

    def spy(self: Classification, trainer: Trainer, n: int) -> int:
        used.append(MICRO_BATCH(self, trainer, n))
        return used[-1]

    monkeypatch.setattr(Classification, "micro_batch", spy)
    bb = create_backbone(TEST_BACKBONE, pretrained=True)
    tr = Trainer(bb, 2, recipe, precision="fp32", augment=False, prefix_cache=False, seed=3)
    return tr.fit(split, split), used


def test_micro_batches_give_the_whole_batch_gradient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One step over 16 items, whole and as 16 micro-batches of one: the same gradient in every weight.
    (Weights after AdamW would not do: it turns float noise in near-zero gradients into full-size steps.)"""
    files, y = _files(make_image_folder(tmp_path / "d", per_class=8))
    bb = create_backbone(TEST_BACKBONE, pretrained=True)
    split = streamed_split(bb, files, y, max_pixels=10**8)
    one_step = Recipe("r", (Phase("p", train_top=2, epochs=1, head_init="zeros", lr=1e-2),), batch_size=16)
    whole, used_whole = _train(split, monkeypatch, "100000", one_step)
    tiny, used_tiny = _train(split, monkeypatch, "0.000001", one_step)  # one item per micro-batch
    assert used_whole == [16] and used_tiny == [1]
    grads = [{n: p.grad for n, p in t.net.named_parameters() if p.grad is not None} for t in (whole, tiny)]
    assert grads[0].keys() == grads[1].keys() and any("groups" in n for n in grads[0])  # backbone groups too
    assert float(grads[0]["head.weight"].abs().max()) > 1e-3  # a real gradient, not zeros agreeing
    for n, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][n], rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
    assert [r["steps"] for r in tiny.history if r["kind"] == "train"] == [1]


def test_batch_statistics_get_ghost_batches_no_smaller_than_the_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BatchNorm in training mode normalises over each micro-batch: never fewer than GHOST_BATCH items."""
    files, y = _files(make_image_folder(tmp_path / "d", per_class=8))
    bb = create_backbone(TEST_BACKBONE, pretrained=True)
    split = streamed_split(bb, files, y, max_pixels=10**8)
    phase = Phase("p", train_top=2, epochs=1, head_init="zeros", batchnorm="batch")
    tr, used = _train(split, monkeypatch, "0.000001", Recipe("b", (phase,), batch_size=16))
    assert used and set(used) == {GHOST_BATCH} and GHOST_BATCH < 16
    assert [r["micro_batch"] for r in tr.history if r["kind"] == "train"] == [GHOST_BATCH]


def test_streamed_split_decodes_on_demand_and_matches_decoded(tmp_path: Path) -> None:
    files, y = _files(make_image_folder(tmp_path / "d", per_class=3))
    bb = create_backbone(TEST_BACKBONE, pretrained=True)
    split = streamed_split(bb, files, y, max_pixels=10**8)
    split.prefetch([4, 5])
    got = split.fetch([5, 0, 4])
    for i, x in zip([5, 0, 4], got, strict=True):
        torch.testing.assert_close(torch.as_tensor(x), torch.as_tensor(bb.load_item(files[i])))
    assert not split.examples._pending  # type: ignore[union-attr]  # nothing held after the batch


def test_saved_bytes_counts_activations_not_weights() -> None:
    lin = torch.nn.Linear(100, 100)
    x = torch.randn(10, 100)
    n = saved_bytes(lambda: torch.relu(lin(x)).sum(), lin.parameters())
    assert 0 < n <= 3 * 10 * 100 * 4  # the input and the relu output: no 40 kB weight matrix
    assert micro_batch_size(100.0, 32, budget=450) == 4
    assert micro_batch_size(100.0, 32, budget=10) == 1 and micro_batch_size(1.0, 32, budget=10**6) == 32
    assert (
        micro_batch_size(100.0, 32, budget=10, floor=8) == 8 and micro_batch_size(100.0, 4, 10, floor=8) == 4
    )
