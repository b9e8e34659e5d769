"""Prompt tuning and prefix tuning: only the learned vectors and the head train (every backbone weight
bit-identical), the run stores just the vectors, predict equals the trained module, merge refuses, export
traces the vectors as constants, and unusable backbones or recipes are refused. Tiny models."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from headstart.backbones import create_backbone
from headstart.errors import HeadstartError
from headstart.recipes import BUILT_IN, Phase, PromptSpec, Recipe, get_recipe
from test_lora import _fit_capturing
from test_text import animal_vehicle_rows, write_csv

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TEXTS = ["the cat is red", "a dog and a bird fly to the zoo on a bus", "one fast car", "a slow lion"]
KINDS = ["prompt-tuning", "prefix-tuning"]


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("text") / "animals.csv", animal_vehicle_rows(24))


_RUNS: dict[str, tuple[Any, Any]] = {}


@pytest.fixture
def fitted(text_csv: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """fitted(kind) -> (report, trainer) of a tiny run on the tiny encoder, once per kind per module."""

    def get(kind: str) -> tuple[Any, Any]:
        if kind not in _RUNS:
            # The probe head separates this data already, so no epoch would beat it: the built-in recipe
            # with a zero head instead, so the vectors have something to learn.
            built = get_recipe(f"{kind}:4", 3)
            phase = replace(built.phases[0], epochs=3, head_init="zeros")
            _RUNS[kind] = _fit_capturing(
                text_csv,
                "test_text_encoder",
                strategy=replace(built, phases=(phase,)),
                out=tmp_path_factory.mktemp("runs") / kind,
                epochs=3,
                lr=3e-3,  # the vectors learn at 10x: 3e-2
                batch_size=8,
                val=0.0,
            )
        return _RUNS[kind]

    return get


def _batch(bb: Any, texts: list[str] = TEXTS) -> Any:
    return bb.collate([bb.load_item(t) for t in texts])


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_vectors_and_head_train_and_predict_equals_the_trained_module(kind: str, fitted) -> None:  # type: ignore[no-untyped-def]
    from headstart.adapters import ADAPTER_FILE, inject_adapter
    from headstart.adapters.prompt import is_adapter_param
    from headstart.model import load_model
    from headstart.runs import load_tensors

    report, trainer = fitted(kind)
    losses = [row["train_loss"] for row in trainer.history]
    assert losses[-1] < losses[0], losses
    # Every backbone weight is bit-identical to the base; only the learned vectors are new.
    base = create_backbone("test_text_encoder").state_dict()
    after = {k: v for k, v in trainer.backbone.state_dict().items() if not is_adapter_param(k)}
    assert set(after) == set(base)
    assert all(torch.equal(base[k], after[k]) for k in base)
    # The vectors moved away from their init (the same seed draws the same vocabulary tokens).
    fresh = create_backbone("test_text_encoder")
    inject_adapter(fresh, PromptSpec(kind, n_tokens=4), seed=0)  # type: ignore[arg-type]
    init = {k: v for k, v in fresh.state_dict().items() if is_adapter_param(k)}
    run = report.run_dir
    stored = load_tensors(run / ADAPTER_FILE)
    assert set(stored) == set(init) and all(not torch.equal(stored[k], init[k]) for k in init)
    # The run stores the vectors + head only: a few KB (the base encoder's weights are ~100x that).
    assert (run / ADAPTER_FILE).stat().st_size < 5_000
    assert not (run / "delta.safetensors").exists()
    m = report.metrics
    n_head = trainer.head.weight.numel() + trainer.head.bias.numel()
    assert m["trainable_params"] == sum(v.numel() for v in stored.values()) + n_head
    assert m["stored_bytes"] < m["full_bytes"] / 20
    info = json.loads((run / "run.json").read_text())
    assert info["adapter"]["method"] == kind and info["adapter"]["n_tokens"] == 4

    # load -> predict (length-bucketed batches, through the feature cache) == the trained module.
    model = load_model(run)
    logits, kept, bad = model.logits(TEXTS)
    trainer.net.eval()
    with torch.no_grad():
        want = torch.cat([trainer.net(_batch(trainer.backbone, [t]), 0) for t in TEXTS]).numpy()
    assert kept == list(range(len(TEXTS))) and not bad
    np.testing.assert_allclose(logits, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_merge_refuses_with_exit_2_and_export_traces_the_vectors(
    kind: str,
    fitted,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from headstart.cli import main
    from headstart.export import export_onnx_model

    report, _ = fitted(kind)
    code = main(["merge", str(report.run_dir), "--out", str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "merged").exists()
    assert "there are no weights to merge it into" in err and "serve the run as it is" in err
    if kind == "prompt-tuning":
        assert "prompt tuning learns input vectors" in err
    # The learned vectors are constants of the exported graph: ONNX Runtime agrees with PyTorch.
    out = export_onnx_model(report.run_dir, tmp_path / "model.onnx")  # checked on the run's test texts
    assert out["parity"]["top1_agreement"] == 1.0 and out["parity"]["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_decoder_stays_causal_and_pools_the_text_only(kind: str) -> None:
    """On the tiny Llama: a token's state never depends on the tokens after it (the prefix mask keeps the
    causal triangle), and the pool reads the text's own positions, not the virtual ones."""
    from headstart.adapters import inject_adapter
    from headstart.adapters.prompt import n_virtual

    bb = create_backbone("test_llama")
    inject_adapter(bb, PromptSpec(kind, n_tokens=3))  # type: ignore[arg-type]
    bb.eval()
    short, long = _batch(bb, ["the cat"]), _batch(bb, ["the cat is red and slow"])
    t = short["input_ids"].shape[1] - 1  # the shared tokens (the tokenizer ends each text with [SEP])
    assert torch.equal(short["input_ids"][:, :t], long["input_ids"][:, :t])
    with torch.no_grad():
        hs, hl = bb.forward_groups(short)["hidden"], bb.forward_groups(long)["hidden"]
        n = n_virtual(bb)
        torch.testing.assert_close(hs[:, : n + t], hl[:, : n + t], atol=1e-5, rtol=1e-5)
        text_only = bb.pool.norm(hs[:, n:]).mean(dim=1)
        torch.testing.assert_close(bb(short), text_only, atol=1e-6, rtol=1e-6)


def test_prefix_mask_lets_each_query_see_the_prefix_and_its_own_past() -> None:
    """Under SDPA a causal layer gets no mask (is_causal); with a prefix the key axis is longer than the
    query axis, so the triangle must be written out: every prefix column, then keys <= the query."""
    from types import SimpleNamespace

    from headstart.adapters.prompt import _extended_mask

    q = torch.zeros(1, 4, 8)
    causal = SimpleNamespace(is_causal=True, config=SimpleNamespace(_attn_implementation="sdpa"))
    mask = _extended_mask(causal, None, q, 2)  # type: ignore[arg-type]
    want = torch.cat([torch.ones(4, 2, dtype=torch.bool), torch.ones(4, 4, dtype=torch.bool).tril()], 1)
    assert torch.equal(mask[0, 0], want)
    eager = SimpleNamespace(is_causal=True, config=SimpleNamespace(_attn_implementation="eager"))
    additive = _extended_mask(eager, None, q, 2)  # type: ignore[arg-type]
    assert torch.equal(additive[0, 0] == 0, want)
    padded = torch.tensor([[[[True, True, False]]]])  # an encoder's padding mask: the prefix is prepended
    assert _extended_mask(SimpleNamespace(), padded, q, 2).tolist() == [[[[True, True, True, True, False]]]]  # type: ignore[arg-type]
    assert _extended_mask(SimpleNamespace(), None, q, 2) is None  # type: ignore[arg-type]


def test_refusals_name_the_input_and_the_fix() -> None:
    from headstart.adapters import inject_adapter

    image = create_backbone("test_efficientnet_lite")
    with pytest.raises(HeadstartError, match=r"test_efficientnet_lite.*text backbone") as e:
        inject_adapter(image, PromptSpec("prompt-tuning"))
    assert "lora" in (e.value.fix or "")
    # The vectors enter below the first layer: a recipe that does not train the embeddings is refused.
    with pytest.raises(HeadstartError, match="does not train the embeddings") as e:
        inject_adapter(create_backbone("test_text_encoder"), PromptSpec("prompt-tuning"), top_groups=1)
    assert "train_top" in (e.value.fix or "")
    with pytest.raises(HeadstartError, match="prefix-tuning:N"):
        get_recipe("prefix-tuning:0", 3)
    with pytest.raises(HeadstartError, match="prompt-tuning:x"):
        get_recipe("prompt-tuning:x", 3)


def test_recipes_round_trip_and_lora_options_are_refused() -> None:
    import argparse

    from headstart.train.api import lora_strategy

    assert {"prompt-tuning", "prefix-tuning"} <= set(BUILT_IN)
    for name, n in (("prompt-tuning", 20), ("prefix-tuning", 10), ("prompt-tuning:7", 7)):
        r = get_recipe(name, 3)
        assert isinstance(r.adapter, PromptSpec) and r.adapter.n_tokens == n
        assert r.phases[0].train_top == "all" and r.phases[0].head_init == "probe"
        assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    user = Recipe.from_dict(
        {
            "name": "mine",
            "phases": [{"name": "p", "train_top": "all"}],
            "adapter": {"method": "prefix-tuning", "n_tokens": 5},
        }
    )
    assert user.adapter == PromptSpec("prefix-tuning", 5)
    with pytest.raises(HeadstartError, match="unknown field"):
        Recipe.from_dict(
            {"name": "x", "phases": [asdict_phase()], "adapter": {"method": "prompt-tuning", "r": 4}}
        )
    ns = argparse.Namespace(
        strategy="prompt-tuning", lora_r=4, lora_alpha=None, lora_dropout=None, lora_targets=None
    )
    with pytest.raises(HeadstartError, match="need a LoRA strategy"):
        lora_strategy(ns)  # type: ignore[arg-type]


def asdict_phase() -> dict[str, Any]:
    return asdict(Phase("p", train_top="all"))
