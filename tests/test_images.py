from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.backbones.base import PreprocessConfig
from headstart.data.images import BadImage, load_image_tensor, open_image

CFG = PreprocessConfig(input_size=16, resize=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.mark.parametrize(
    ("mode", "value", "expect"),
    [
        ("L", 128, (128, 128, 128)),
        ("LA", (0, 0), (255, 255, 255)),  # fully transparent -> white background
        ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("P", 3, None),
        ("I;16", 40000, None),
    ],
)
def test_every_mode_becomes_rgb(
    tmp_path: Path, mode: str, value: object, expect: tuple[int, ...] | None
) -> None:
    img = Image.new(mode, (8, 6), value)  # type: ignore[arg-type]
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, fmt)
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (8, 6)
    if expect is not None:
        assert out.getpixel((0, 0)) == expect


def test_sixteen_bit_greys_keep_their_contrast(tmp_path: Path) -> None:
    a = np.zeros((4, 8), dtype=np.uint16)
    a[:, 4:] = 60000
    a[:, :4] = 1000
    Image.fromarray(a).save(tmp_path / "g.png")  # uint16 -> mode I;16
    out = np.asarray(open_image(tmp_path / "g.png"))
    assert out[0, 0, 0] == 0 and out[0, 7, 0] == 255  # not clipped to white everywhere


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = open_image(tmp_path / "r.jpg")
    assert out.size == (10, 20)  # upright: portrait
    assert out.getpixel((5, 2))[0] > 200 and out.getpixel((5, 17))[0] < 60  # white half now on top


def test_bad_files_raise_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image at all")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    reasons = {}
    for name, kw in [
        ("empty.png", {}),
        ("text.png", {}),
        ("cut.jpg", {}),
        ("big.png", {"max_pixels": 50_000}),
        ("missing.png", {}),
    ]:
        with pytest.raises(BadImage) as e:
            open_image(tmp_path / name, **kw)
        reasons[name] = e.value.reason
    assert "empty" in reasons["empty.png"]
    assert "not an image" in reasons["text.png"]
    assert "truncated" in reasons["cut.jpg"]
    assert "pixel limit" in reasons["big.png"] and "--max-pixels" in reasons["big.png"]
    assert "cannot read" in reasons["missing.png"]


def test_jpeg_draft_decodes_small_and_preprocessing_is_exact(tmp_path: Path) -> None:
    Image.new("RGB", (800, 400), (255, 0, 0)).save(tmp_path / "big.jpg", quality=95)
    small = open_image(tmp_path / "big.jpg", draft_to=64)
    assert min(small.size) >= 64 and small.size[0] <= 200  # decoded at 1/4 or 1/8 scale, not full size
    x = load_image_tensor(tmp_path / "big.jpg", CFG)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 8, 8], [1.0, -1.0, -1.0], atol=0.03)  # (255/255-0.5)/0.5 = 1


def test_normalize_matches_the_formula() -> None:
    from headstart.data.images import normalize

    cfg = PreprocessConfig(input_size=4, resize=4, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    a = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    got = normalize(Image.fromarray(a), cfg)
    ref = (a / 255.0 - np.array(cfg.mean)) / np.array(cfg.std)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"] and got.shape == (3, 4, 5)
    np.testing.assert_allclose(got, ref.transpose(2, 0, 1), atol=1e-5)


SHAPES = [(80, 80), (73, 73), (20, 480), (480, 20), (512, 256), (256, 512), (640, 480), (1024, 1024)]


def test_resize_crop_is_bit_identical_to_the_full_resize_then_the_crop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kept-region passes (dyadic scales) must give PIL's full resize's pixels exactly, on every
    shape: squares and landscapes and portraits, up and down, both filters; and they must be taken."""
    from headstart.data import images

    def full(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
        w, h = img.size
        scale = cfg.resize / min(w, h)
        nw, nh = max(cfg.input_size, round(w * scale)), max(cfg.input_size, round(h * scale))
        img = img.resize((nw, nh), images._INTERP[cfg.interpolation])
        left, top = (nw - cfg.input_size) // 2, (nh - cfg.input_size) // 2
        return np.asarray(img.crop((left, top, left + cfg.input_size, top + cfg.input_size)))

    resize = Image.Image.resize
    boxed: list[tuple[int, int]] = []  # sizes PIL resized with a box: the kept-region passes that ran
    took: list[tuple[int, int]] = []  # the shapes that took them

    def spy(
        self: Image.Image, size: tuple[int, int], *a: object, box: object = None, **k: object
    ) -> Image.Image:
        if box is not None:
            boxed.append(self.size)
        return resize(self, size, *a, box=box, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", spy)
    rng = np.random.default_rng(0)
    for resize_to, size, interp in [(256, 224, "bicubic"), (292, 260, "bicubic"), (64, 56, "bilinear")]:
        cfg = PreprocessConfig(size, resize_to, (0.5,) * 3, (0.5,) * 3, interpolation=interp)
        for w, h in SHAPES:
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            before = len(boxed)
            np.testing.assert_array_equal(np.asarray(images.resize_crop(img, cfg)), full(img, cfg))
            if len(boxed) > before:
                took.append((w, h))
    assert len(took) >= 10 and any(h > w for w, h in took)  # it ran, on portraits too
