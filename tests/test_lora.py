"""LoRA: default targets per architecture, only adapter + head train, bit-identical reload, the head kept,
merge parity and export, recipes and CLI options. Tiny random-init models through the real loaders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import make_image_folder, tiny_vit_folder
from headstart.backbones import create_backbone
from headstart.errors import HeadstartError
from headstart.recipes import BUILT_IN, LoraSpec, Phase, Recipe, get_recipe
from test_audio import make_tone_folder
from test_text import animal_vehicle_rows, write_csv

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def vit_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"hf:{tiny_vit_folder(tmp_path_factory.mktemp('vit') / 'tiny-vit')}"


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("text") / "animals.csv", animal_vehicle_rows(24))


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tone_folder(tmp_path_factory.mktemp("audio") / "tones", per_class=6)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("img") / "data", ("red", "blue", "green"), per_class=10)


def _input(bb: Any, n: int = 3) -> Any:
    if bb.modality == "image":
        return torch.randn(n, 3, bb.preprocess.input_size, bb.preprocess.input_size)
    if bb.modality == "audio":
        return torch.randn(n, bb.audio.n_mels, bb.audio.n_frames).clamp(min=-1.0)
    texts = ["the cat is red", "a dog and a bird fly to the zoo on a bus", "one fast car"][:n]
    return bb.collate([bb.load_item(t) for t in texts])


EXPECTED_TARGETS = {
    "test_text_encoder": ["query", "key", "value", "attention.output.dense"],
    "test_llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "test_whisper_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "vit": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


@pytest.mark.parametrize("name", list(EXPECTED_TARGETS))
def test_default_targets_per_architecture_and_zero_init_changes_nothing(name: str, vit_name: str) -> None:
    from headstart.adapters import inject_adapter

    bb = create_backbone(vit_name if name == "vit" else name)
    x = _input(bb)
    with torch.no_grad():
        before = bb(x)
    info = inject_adapter(bb, LoraSpec(r=2))
    assert info["target_modules"] == EXPECTED_TARGETS[name]
    assert "attention projections" in info["targets_reason"]
    # Four attention projections in each of the two transformer layers, nothing elsewhere.
    assert info["n_modules"] == 8
    lora_names = [n for n, _ in bb.named_parameters() if ".lora_" in n]
    assert lora_names and all(bb.trainable_filter(n) for n in lora_names)
    assert not any(bb.trainable_filter(n) for n, _ in bb.named_parameters() if ".lora_" not in n)
    # Exact adapter size: r x (in + out) per adapted linear layer.
    from headstart.adapters.lora import lora_modules

    expected = sum(
        2 * (m.get_base_layer().in_features + m.get_base_layer().out_features)
        for m in lora_modules(bb).values()
    )
    assert info["trainable_params"] == expected
    # B starts at zero: the injected network computes exactly what the base does, so the pristine cached
    # embeddings used to initialise the head stay exact.
    with torch.no_grad():
        assert torch.equal(bb(x), before)


def test_all_linear_user_targets_and_unknown_names() -> None:
    from headstart.adapters import inject_adapter

    bb = create_backbone("test_llama")
    info = inject_adapter(bb, LoraSpec(r=1, target_modules=("all-linear",)))
    assert info["n_modules"] == 14  # 4 attention + 3 MLP projections per layer
    bb = create_backbone("test_llama")
    info = inject_adapter(bb, LoraSpec(r=1, target_modules=("q_proj", "v_proj")), top_groups=1)
    assert info["n_modules"] == 2 and info["groups"] == ["layer1"]
    with pytest.raises(HeadstartError, match="no linear layer named"):
        inject_adapter(create_backbone("test_llama"), LoraSpec(target_modules=("query",)))


def test_trainable_fraction_is_small_at_a_low_rank() -> None:
    from headstart.adapters import inject_adapter

    bb = create_backbone("test_text_encoder")
    info = inject_adapter(bb, LoraSpec(r=1))
    assert info["trainable_params"] / info["base_params"] < 0.05


def _fit_capturing(data: Path, backbone: str, **kw: Any) -> tuple[Any, Any]:
    """fit(), returning the report and the in-memory Trainer (its backbone + head, as trained)."""
    import headstart.train.loop as loop
    from headstart.train import fit

    seen: dict[str, Any] = {}
    real = loop.Trainer.fit

    def spy(self, train, val):  # type: ignore[no-untyped-def]
        seen["trainer"] = self
        return real(self, train, val)

    kw.setdefault("progress", False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop.Trainer, "fit", spy)
        report = fit(data, backbone=backbone, strategy=kw.pop("strategy", "lora"), **kw)
    return report, seen["trainer"]


_RUNS: dict[str, tuple[Any, Any]] = {}


@pytest.fixture
def fitted(text_csv: Path, tones: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """fitted(backbone) -> (report, trainer) of a LoRA fit, run once per backbone for the whole module."""

    def get(backbone: str) -> tuple[Any, Any]:
        if backbone not in _RUNS:
            audio = backbone == "test_whisper_encoder"
            # Tones are separated perfectly by the probe head, so no LoRA epoch would beat it: start audio
            # from a zero head (a user-written LoRA recipe) so the adapter has something to learn.
            zero_head = Recipe(
                "lora-zero-head",
                (
                    Phase(
                        "lora", train_top="all", epochs=2, lr=3e-3, backbone_lr_ratio=1.0, head_init="zeros"
                    ),
                ),
                adapter=LoraSpec(),
            )
            _RUNS[backbone] = _fit_capturing(
                tones if audio else text_csv,
                backbone,
                strategy=zero_head if audio else "lora",
                out=tmp_path_factory.mktemp("runs") / backbone,
                epochs=2,
                lr=3e-3,
                batch_size=8,
                val=0.0,  # best epoch by training loss, not a tiny validation split
            )
        return _RUNS[backbone]

    return get


@pytest.mark.parametrize("backbone", ["test_text_encoder", "test_llama", "test_whisper_encoder"])
def test_lora_fit_trains_only_adapter_and_head_and_reloads_bit_identical(backbone: str, fitted) -> None:  # type: ignore[no-untyped-def]
    from headstart.adapters import ADAPTER_FILE
    from headstart.model import load_model
    from headstart.runs import load_tensors

    report, trainer = fitted(backbone)
    run = report.run_dir
    trained = trainer.backbone
    # Base weights bit-identical after training; every LoRA B moved away from zero.
    base = create_backbone(backbone).state_dict()
    after = {k.replace(".base_layer.", "."): v for k, v in trained.state_dict().items() if ".lora_" not in k}
    assert set(after) == set(base)
    assert all(torch.equal(base[k], after[k]) for k in base), [
        k for k in base if not torch.equal(base[k], after[k])
    ][:3]
    lora_b = {k: v for k, v in trained.state_dict().items() if ".lora_B." in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())

    # The run stores the adapter + head + base reference, never the base weights.
    files = {f.name for f in run.iterdir()}
    assert {ADAPTER_FILE, "head.safetensors", "run.json"} <= files and "delta.safetensors" not in files
    info = json.loads((run / "run.json").read_text())
    assert info["adapter"]["file"] == ADAPTER_FILE and info["adapter"]["r"] == 8
    assert info["backbone"]["key"] and "delta" not in info
    stored = load_tensors(run / ADAPTER_FILE)
    assert stored and all(".lora_" in k for k in stored)
    m = report.metrics
    n_head = trainer.head.weight.numel() + trainer.head.bias.numel()
    assert m["trainable_params"] == sum(v.numel() for v in stored.values()) + n_head
    assert m["stored_bytes"] < m["full_bytes"]

    # Reload: base + the same injection + adapter tensors + head == the in-memory model, to the bit.
    model = load_model(run)
    x = _input(model.backbone)
    trainer.net.eval()
    with torch.no_grad():
        want = trainer.net(x, 0)
        got = model.module()(x)
    assert torch.equal(got, want)
    assert model.backbone.key != create_backbone(backbone).key  # its own feature-cache entries


def test_a_dropped_or_swapped_head_is_caught(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """PEFT #310: the classification head lost on save/reload. The head must come back exactly, and a
    changed head file must be refused, not silently replaced by a fresh one."""
    import shutil

    from headstart.model import load_model
    from headstart.runs import HEAD_FILE, save_head

    report, trainer = fitted("test_text_encoder")
    run = Path(shutil.copytree(report.run_dir, tmp_path / "run"))
    model = load_model(run)
    np.testing.assert_array_equal(model.head.weight, trainer.head.weight.detach().numpy())
    np.testing.assert_array_equal(model.head.bias, trainer.head.bias.detach().numpy())
    x = _input(model.backbone)
    trainer.net.eval()
    with torch.no_grad():
        want = trainer.net(x, 0)
        # A fresh (zero or random) head -- what a reload that drops the head produces -- differs.
        assert not torch.equal(torch.zeros_like(want), want)
        assert not torch.allclose(model.module()(x), torch.zeros_like(want))
    fresh = type(model.head)(weight=np.zeros_like(model.head.weight), bias=np.zeros_like(model.head.bias))
    save_head(run / HEAD_FILE, fresh, model.classes)
    with pytest.raises(HeadstartError, match="does not match its recorded sha256"):
        load_model(run)


def test_merge_matches_the_adapter_and_exports_to_onnx(vit_name: str, images: Path, tmp_path: Path) -> None:
    from headstart.commands.merge import merge_run
    from headstart.export import export_onnx_model
    from headstart.model import load_model

    report, _ = _fit_capturing(images, vit_name, out=tmp_path / "run", epochs=2, batch_size=8, val=0.0)
    summary = merge_run(report.run_dir, tmp_path / "merged")
    merged_dir = Path(summary["out"])
    info = json.loads((merged_dir / "run.json").read_text())
    assert "adapter" not in info and info["delta"]["file"] == "delta.safetensors"
    assert info["merged_from"]["adapter"]["r"] == 8
    adapter, merged = load_model(report.run_dir), load_model(merged_dir)
    assert not any(".lora_" in k or "base_layer" in k for k in merged.backbone.state_dict())
    x = _input(adapter.backbone, 4)
    with torch.no_grad():
        a, b = adapter.module()(x), merged.module()(x)
    assert not torch.equal(a, load_model_base_logits(adapter, x))  # the adapter did change the model
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert merged.backbone.supports_onnx and not adapter.backbone.supports_onnx
    out = export_onnx_model(merged_dir)
    assert out["parity"]["top1_agreement"] == 1.0
    with pytest.raises(HeadstartError, match="no adapter to merge"):
        merge_run(merged_dir, tmp_path / "again")


def load_model_base_logits(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Logits of the same head on the base backbone (no adapter)."""
    from headstart.model import Classifier, linear_from_head

    base = create_backbone(model.info["backbone"]["name"]).eval()
    with torch.no_grad():
        return Classifier(base, linear_from_head(model.head)).eval()(x)


def test_text_merge_parity(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from headstart.commands.merge import merge_run
    from headstart.model import load_model

    report, _ = fitted("test_llama")
    merged_dir = Path(merge_run(report.run_dir, tmp_path / "merged")["out"])
    adapter, merged = load_model(report.run_dir), load_model(merged_dir)
    x = _input(adapter.backbone)
    with torch.no_grad():
        torch.testing.assert_close(merged.module()(x), adapter.module()(x), atol=1e-5, rtol=1e-5)
    # predict_proba goes through the feature cache: the merged and adapter models have their own keys.
    texts = ["the cat is red", "a fast bus on the road"]
    pa, _, _ = adapter.predict_proba(texts)
    pm, _, _ = merged.predict_proba(texts)
    np.testing.assert_allclose(pm, pa, atol=1e-5)


def test_recipe_cli_options_and_listing(tmp_path: Path) -> None:
    import argparse

    from headstart.train.api import lora_strategy as _strategy

    assert "lora" in BUILT_IN
    r = get_recipe("lora", 7)
    assert r.adapter == LoraSpec() and r.phases[0].train_top == "all"
    assert r.phases[0].backbone_lr_ratio == 1.0 and r.phases[0].head_init == "probe"
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    r16 = get_recipe("lora:16", 7)
    assert r16.adapter is not None and (r16.adapter.r, r16.adapter.alpha) == (16, 32.0)
    assert "LoRA" in r.summary() and "r 8" in r.summary()
    with pytest.raises(HeadstartError, match="lora:R"):
        get_recipe("lora:x", 7)

    def ns(**kw: Any) -> argparse.Namespace:
        base = {"strategy": "lora", "lora_r": None, "lora_alpha": None, "lora_dropout": None}
        return argparse.Namespace(**{**base, "lora_targets": None, **kw})

    assert _strategy(ns()) == "lora"
    custom = _strategy(ns(lora_r=4, lora_targets="q_proj, v_proj", lora_dropout=0.0))
    assert custom.adapter == LoraSpec(r=4, alpha=8.0, dropout=0.0, target_modules=("q_proj", "v_proj"))
    with pytest.raises(HeadstartError, match="need a LoRA strategy"):
        _strategy(ns(strategy="full", lora_r=4))
    with pytest.raises(HeadstartError, match="rank"):
        LoraSpec.from_dict({"r": 0})
