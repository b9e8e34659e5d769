"""Decoding any image a user has into the exact tensor a backbone expects.

EXIF orientation is applied, every mode (L, LA, P, RGBA, CMYK, I;16, I, F) becomes RGB (transparency
over white), JPEGs decode at reduced size when the target is smaller (draft mode), and files that are
empty, truncated, not images or too large raise `BadImage` with the reason.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from headstart.backbones.base import PreprocessConfig
from headstart.errors import BadInput

DEFAULT_MAX_PIXELS = 64_000_000

_INTERP = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class BadImage(BadInput):
    """A file that cannot be used as an image; `reason` is short and names the problem."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit/float greys: scale the real range to 8 bits (Pillow's convert would clip to white).
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(
    path: str | Path, *, draft_to: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode `path` to an RGB image, upright. `draft_to`: smallest side needed (lets JPEG decode small)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BadImage(path, f"cannot read ({e.strerror or e})") from e
    if size == 0:
        raise BadImage(path, "empty file (0 bytes)")
    try:
        img = Image.open(path)
    except UnidentifiedImageError as e:
        raise BadImage(path, "not an image (unrecognised format)") from e
    except OSError as e:
        raise BadImage(path, f"truncated or corrupt ({e})") from e
    return _decode(img, path, draft_to=draft_to, max_pixels=max_pixels)


def open_image_bytes(
    data: bytes, *, name: str = "upload", draft_to: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """`open_image` for bytes already in memory (an upload): same checks and decoding, no temp file."""
    if not data:
        raise BadImage(name, "empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise BadImage(name, "not an image (unrecognised format)") from e
    except OSError as e:
        raise BadImage(name, f"truncated or corrupt ({e})") from e
    return _decode(img, name, draft_to=draft_to, max_pixels=max_pixels)


def _decode(img: Image.Image, path: object, *, draft_to: int | None, max_pixels: int) -> Image.Image:
    try:
        w, h = img.size
        if w * h > max_pixels:
            raise BadImage(
                path, f"{w}x{h} is over the {max_pixels:,}-pixel limit (raise --max-pixels to allow it)"
            )
        if draft_to and img.format == "JPEG":
            # Decode at the smallest power-of-two scale that still covers the target (much less work).
            img.draft("RGB", (draft_to, draft_to))
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(path, f"truncated or corrupt ({e})") from e


def resize_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Shorter side to `cfg.resize`, then the centre `cfg.input_size` square.

    Two steps on purpose: one resize of just the kept region (PIL's `box`) would be a quarter less work,
    but PIL's vertical pass then differs from the full resize by up to 23/255 on portrait images.
    """
    w, h = img.size
    scale = cfg.resize / min(w, h)
    nw, nh = max(cfg.input_size, round(w * scale)), max(cfg.input_size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _INTERP.get(cfg.interpolation, Image.Resampling.BICUBIC))
    left, top = (nw - cfg.input_size) // 2, (nh - cfg.input_size) // 2
    return img.crop((left, top, left + cfg.input_size, top + cfg.input_size))


def normalize(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """RGB image -> float32 CHW array, normalised as the weights expect (one pass over the pixels)."""
    a = np.asarray(img)
    std, mean = np.asarray(cfg.std, dtype=np.float32), np.asarray(cfg.mean, dtype=np.float32)
    out = np.empty((3, *a.shape[:2]), dtype=np.float32)
    np.multiply(a.transpose(2, 0, 1), (1.0 / (255.0 * std))[:, None, None], out=out)
    out += (-mean / std)[:, None, None]
    return out


def load_image_tensor(
    path: str | Path, cfg: PreprocessConfig, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """File -> the normalised (3, S, S) float32 array a backbone expects."""
    return normalize(resize_crop(open_image(path, draft_to=cfg.resize, max_pixels=max_pixels), cfg), cfg)


def load_image_bytes(
    data: bytes, cfg: PreprocessConfig, *, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Encoded image bytes -> the same normalised (3, S, S) float32 array `load_image_tensor` gives."""
    img = open_image_bytes(data, name=name, draft_to=cfg.resize, max_pixels=max_pixels)
    return normalize(resize_crop(img, cfg), cfg)
