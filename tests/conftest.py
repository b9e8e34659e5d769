"""Shared fixtures: an isolated cache, tiny synthetic image datasets, the tiny test backbones."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The tiny test backbones (headstart.testing) plug into the registry like any family: named here, so a
# `headstart` subprocess of a test (fit, torchrun) registers them too.
_families = [m for m in os.environ.get("HEADSTART_BACKBONE_MODULES", "").split(",") if m]
os.environ["HEADSTART_BACKBONE_MODULES"] = ",".join(dict.fromkeys([*_families, "headstart.testing"]))

TEST_BACKBONE = "test_efficientnet_lite"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own feature/ONNX cache, so cache hits are never left over from another test."""
    root = tmp_path_factory.mktemp("hs-cache")
    monkeypatch.setenv("HEADSTART_CACHE", str(root))
    return root


def draw_item(label: str, seed: int, size: int = 48) -> Image.Image:
    """A class-distinct picture: colour and shape depend on the class, position and jitter on the seed."""
    rng = np.random.default_rng(seed)
    palette = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 180, 60)}
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in palette[label])
    x0, y0 = (int(v) for v in rng.integers(2, size // 3, 2))
    x1, y1 = x0 + size // 2, y0 + size // 2
    if label == "blue":
        d.ellipse((x0, y0, x1, y1), fill=colour)
    elif label == "green":
        d.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
    else:
        d.rectangle((x0, y0, x1, y1), fill=colour)
    return img


def make_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("red", "blue"),
    per_class: int = 10,
    seed: int = 0,
    fmt: str = "PNG",
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for ci, c in enumerate(classes):
        (root / c).mkdir(exist_ok=True)
        for i in range(per_class):
            ext = "png" if fmt == "PNG" else "jpg"
            draw_item(c, seed * 10_000 + ci * 1000 + i).save(root / c / f"{c}_{i:03d}.{ext}", fmt)
    return root


def probe_run(root: Path, per_class: int = 8) -> Path:
    """A probe run of the tiny test backbone on three classes, under `root`, with a feature cache of its
    own (a module-scoped fixture outlives each test's isolated cache)."""
    from headstart.api import probe

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        data = make_image_folder(root / "data", classes=("red", "blue", "green"), per_class=per_class)
        probe(data, backbone=TEST_BACKBONE, out=root / "run", progress=False)
    return root / "run"


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture
def three_class_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data3", classes=("red", "blue", "green"), per_class=12)


@pytest.fixture
def tiny_backbone():
    from headstart.backbones import create_backbone

    return create_backbone(TEST_BACKBONE, pretrained=False)


def tiny_vit_folder(root: Path, with_processor: bool = True) -> Path:
    """A random-init ViT (32 px, hidden 32, 2 layers) saved as a transformers folder (`hf:<folder>`)."""
    import json

    import torch
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ViTModel(cfg, add_pooling_layer=False).save_pretrained(root)
    if with_processor:
        (root / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "do_resize": True,
                    "size": {"height": 32, "width": 32},
                    "do_normalize": True,
                    "image_mean": [0.5, 0.5, 0.5],
                    "image_std": [0.5, 0.5, 0.5],
                    "resample": 2,
                    "image_processor_type": "ViTImageProcessor",
                }
            )
        )
    return root


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`)"
)


def render_headless(page: Path, tmp: Path, window: str = "1280,4000") -> tuple[str, Path]:
    """`page` as headless Chromium renders it: (the DOM after loading, a screenshot of `window` pixels).
    Fails when Chromium does, or logs a console line or a failed load (the pages have no script)."""
    shot = tmp / "shot.png"
    proc = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={tmp / 'profile'}",
            f"--screenshot={shot}",
            f"--window-size={window}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln or "net::ERR" in ln] == []
    return proc.stdout, shot
