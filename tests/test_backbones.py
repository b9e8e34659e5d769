from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

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
