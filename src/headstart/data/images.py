"""Decoding any image a user has into the exact tensor a backbone expects.

EXIF orientation is applied, every mode (L, LA, P, RGBA, CMYK, I;16, I, F) becomes RGB (transparency
over white), JPEGs decode at reduced size when the target is smaller (draft mode), and files that are
empty, truncated, not images or too large raise `BadImage` with the reason.

The pixel limit is this module's one guard against decompression bombs (a 100 kB PNG can claim a
900-megapixel canvas): every reader (probe, fit, predict, evaluate, serve) decodes through `open_image`
or `open_image_bytes`, and a canvas over `max_pixels` is refused from its header, before any pixel is
decoded, as `ImageTooLarge` naming its size. PIL's own process-wide check (`Image.MAX_IMAGE_PIXELS`)
can fire first, inside `Image.open`; it becomes the same refusal.
"""

from __future__ import annotations

import io
import math
import re
import struct
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from headstart.errors import BadInput
from headstart.modality import PreprocessConfig

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


class ImageTooLarge(BadImage):
    """An image whose canvas is over the pixel limit (a decompression bomb, or just too big to decode)."""

    def __init__(self, path: object, size: tuple[int, int] | None, pixels: int, max_pixels: int) -> None:
        what = f"{size[0]}x{size[1]}" if size else f"{pixels:,} pixels"
        super().__init__(
            path, f"{what} is over the {max_pixels:,}-pixel limit (raise --max-pixels to allow it)"
        )
        self.size, self.pixels, self.max_pixels = size, pixels, max_pixels


_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)  # the warning: under -W error


def _let_pil_allow(max_pixels: int) -> None:
    """Raise PIL's process-wide limit to `max_pixels` when a caller allows more than it does.

    PIL checks first (inside `Image.open`), warns over MAX_IMAGE_PIXELS and refuses over twice that;
    without this, --max-pixels could never be raised past PIL's default. Only ever raised, never
    lowered (threads may race here harmlessly), and left alone if someone set it to None (no limit).
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def claimed_size(fp: IO[bytes]) -> tuple[int, int] | None:
    """The canvas size an image's header claims, read by the same plugin `Image.open` would pick, without
    PIL's bomb check and without decoding: for the message after that check refused a file (its error
    gives a pixel count, not the size), and for the server's choice of lane. None when the plugin cannot
    tell (or the bytes are no image).
    """
    Image.init()
    fp.seek(0)
    prefix = fp.read(16)
    for fmt in Image.ID:  # Image.open's own order and acceptance rule
        factory, accept = Image.OPEN[fmt]
        try:
            ok = accept(prefix) if accept else True
        except Exception:  # some plugins' checks read past a prefix this short (an empty upload)
            continue
        if not ok or isinstance(ok, str):
            continue
        fp.seek(0)
        try:
            w, h = factory(fp, "").size
            return int(w), int(h)
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # not this format: Image.open tries the next one too
        except Exception:
            return None
    return None


def _too_large(path: object, e: Exception, max_pixels: int, fp: IO[bytes] | None = None) -> ImageTooLarge:
    """PIL's bomb error or warning (raised before our own check could run) -> our refusal, with the size."""
    size = claimed_size(fp) if fp is not None else None
    if size:
        return ImageTooLarge(path, size, size[0] * size[1], max_pixels)
    m = re.search(r"\((\d+) pixels\)", str(e))  # PIL's message: "Image size (N pixels) exceeds ..."
    return ImageTooLarge(path, None, int(m.group(1)) if m else 0, max_pixels)


def _open(fp: IO[bytes], path: object, max_pixels: int) -> Image.Image:
    """`Image.open` on a readable binary file, every failure a `BadImage` with its reason."""
    _let_pil_allow(max_pixels)
    try:
        return Image.open(fp)
    except UnidentifiedImageError as e:
        raise BadImage(path, "not an image (unrecognised format)") from e
    except _BOMB as e:
        raise _too_large(path, e, max_pixels, fp) from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        # A header cut short or full of nonsense: plugins raise all of these (a PNG cut inside its
        # header: ValueError "Truncated IHDR chunk").
        raise BadImage(path, f"truncated or corrupt ({e})") from e


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
        f = path.open("rb")
    except OSError as e:
        raise BadImage(path, f"cannot read ({e.strerror or e})") from e
    with f:  # our own handle: closed on every path, also when PIL refuses the file
        return _decode(_open(f, path, max_pixels), path, draft_to=draft_to, max_pixels=max_pixels)


def open_image_bytes(
    data: bytes | bytearray,
    *,
    name: str = "upload",
    draft_to: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """`open_image` for bytes already in memory (an upload): same checks and decoding, no temp file."""
    if not data:
        raise BadImage(name, "empty file (0 bytes)")
    img = _open(_memory_file(data), name, max_pixels)
    return _decode(img, name, draft_to=draft_to, max_pixels=max_pixels)


def _memory_file(data: bytes | bytearray) -> IO[bytes]:
    """A file reading `data` in place. io.BytesIO shares a bytes object but copies any other buffer
    whole at once (a server's 10 MB upload: ~10 ms holding the GIL, while every other request waits)."""
    if isinstance(data, bytes):
        return io.BytesIO(data)
    return io.BufferedReader(_ViewReader(memoryview(data)))


class _ViewReader(io.RawIOBase):
    """A read-only, seekable raw file over a memoryview (reads copy only what they return)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view, self._pos = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        part = self._view[self._pos : self._pos + len(b)]
        b[: len(part)] = part
        self._pos += len(part)
        return len(part)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = max(0, offset + (0, self._pos, len(self._view))[whence])
        return self._pos

    def tell(self) -> int:
        return self._pos


def _decode(img: Image.Image, path: object, *, draft_to: int | None, max_pixels: int) -> Image.Image:
    try:
        w, h = img.size
        if w * h > max_pixels:  # from the header: nothing decoded yet
            raise ImageTooLarge(path, (w, h), w * h, max_pixels)
        if draft_to and img.format == "JPEG":
            # Decode at the smallest power-of-two scale that still covers the target (much less work).
            img.draft("RGB", (draft_to, draft_to))
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except BadImage:
        raise
    except _BOMB as e:  # a frame or tile bigger than the canvas (GIF, TIFF): PIL's check in load
        raise _too_large(path, e, max_pixels) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(path, f"truncated or corrupt ({e})") from e


def resize_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Shorter side to `cfg.resize`, then the centre `cfg.input_size` square.

    PIL resizes in two passes, horizontal then vertical, each rounded to 8 bits. Where both axes' scales
    are dyadic fractions (old size / new size = p / 2^k: every square image at a resize of 256, as
    Lite0's), each pass computed over just the kept columns, then just the kept rows (PIL's `box`, one
    axis at a time) has exactly the full resize's arithmetic, so the pixels are bit-identical for a fifth
    less work (emoji at Lite0: 0.61 -> 0.50 ms). Elsewhere the plain resize, then the crop: there a box's
    float rounding moves some pixels by 1/255 (and one box over both axes may take the passes in the
    other order).
    """
    w, h = img.size
    s = cfg.input_size
    scale = cfg.resize / min(w, h)
    nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
    left, top = (nw - s) // 2, (nh - s) // 2
    resample = _INTERP.get(cfg.interpolation, Image.Resampling.BICUBIC)
    if (nw, nh) != (w, h) and _dyadic(w, nw) and _dyadic(h, nh):
        sx, sy = w / nw, h / nh  # exact, and so is every coordinate below
        if nw != w:
            img = img.resize((s, h), resample, box=(left * sx, 0, (left + s) * sx, h))
        else:
            img = img.crop((left, 0, left + s, h))
        if nh != h:
            return img.resize((s, s), resample, box=(0, top * sy, s, (top + s) * sy))
        return img.crop((0, top, s, top + s))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample)
    return img.crop((left, top, left + s, top + s))


def _dyadic(num: int, den: int) -> bool:
    """Whether num / den is p / 2^k with num * 2^k < 2^24: then every box coordinate (a multiple of 1 / 2^k
    no larger than num) is exact even in the float32 PIL takes it in, and PIL's arithmetic on it is exact
    in doubles."""
    d = den // math.gcd(num, den)
    return d & (d - 1) == 0 and num * d < 1 << 24


def normalize(img: Image.Image, cfg: PreprocessConfig, *, out: np.ndarray | None = None) -> np.ndarray:
    """RGB image -> float32 CHW array, normalised as the weights expect (one pass over the pixels);
    written into `out` (a slot of a reused batch buffer) when given."""
    a = np.asarray(img)
    std, mean = np.asarray(cfg.std, dtype=np.float32), np.asarray(cfg.mean, dtype=np.float32)
    if out is None:
        out = np.empty((3, *a.shape[:2]), dtype=np.float32)
    np.multiply(a.transpose(2, 0, 1), (1.0 / (255.0 * std))[:, None, None], out=out)
    out += (-mean / std)[:, None, None]
    return out


def load_image_tensor(
    path: str | Path,
    cfg: PreprocessConfig,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """File -> the normalised (3, S, S) float32 array a backbone expects (written into `out` if given)."""
    img = open_image(path, draft_to=cfg.resize, max_pixels=max_pixels)
    return normalize(resize_crop(img, cfg), cfg, out=out)


def load_image_bytes(
    data: bytes | bytearray,
    cfg: PreprocessConfig,
    *,
    name: str = "upload",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Encoded image bytes -> the same normalised (3, S, S) float32 array `load_image_tensor` gives."""
    img = open_image_bytes(data, name=name, draft_to=cfg.resize, max_pixels=max_pixels)
    return normalize(resize_crop(img, cfg), cfg)
