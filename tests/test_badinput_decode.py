"""Bad-input corpus: image files every reader decodes or skips with a reason (issue 13, item 4).

One decoding guard (`headstart.data.images`) serves probe, fit, predict, evaluate and serve. A
decompression bomb (a PNG of a few kB claiming hundreds of megapixels) is refused from its header as
"WxH is over the N-pixel limit (raise --max-pixels ...)", also when PIL's own process-wide check fires
first; empty, truncated and non-image files are skipped with their reason; odd but usable images (CMYK,
16-bit, alpha, palette with transparency, 1x1) are decoded. A verb skips, lists the reason, and still
writes its run; nothing written before changes.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from badinput import run_cli, tree_digest
from conftest import TEST_BACKBONE, draw_item, make_image_folder


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def png_bomb(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of width x height, built row block by row block (never in memory).

    Deflate packs at most ~1000:1, so 30000x30000 (112 MB of rows) is ~110 kB and 14000x14000 ~24 kB.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = [z.compress(row * min(256, height - y)) for y in range(0, height, 256)]
    idat.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(idat))
        + _png_chunk(b"IEND", b"")
    )


def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _cmyk() -> bytes:
    return _encode(draw_item("red", 1).convert("CMYK"), "JPEG", quality=90)


def _grey16() -> bytes:
    a = (np.linspace(0, 60_000, 48 * 48).reshape(48, 48)).astype(np.uint16)
    img = Image.fromarray(a)  # uint16 -> mode I;16
    assert img.mode == "I;16"
    return _encode(img, "PNG")


def _alpha() -> bytes:
    img = draw_item("red", 2).convert("RGBA")
    img.putalpha(128)
    return _encode(img, "PNG")


def _palette_transparent() -> bytes:
    img = draw_item("red", 3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _encode(img, "PNG", transparency=0)


# name -> (bytes, the reason's telling part; None: decoded and used)
CORPUS: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "bomb_900mp.png": (lambda: png_bomb(30000, 30000), "30000x30000 is over the 64,000,000-pixel limit"),
    "bomb_196mp.png": (lambda: png_bomb(14000, 14000), "14000x14000 is over the 64,000,000-pixel limit"),
    "big_81mp.png": (lambda: png_bomb(9000, 9000), "9000x9000 is over the 64,000,000-pixel limit"),
    "empty.png": (lambda: b"", "empty file (0 bytes)"),
    "truncated.jpg": (lambda: _encode(draw_item("red", 4), "JPEG")[:300], "truncated or corrupt"),
    "not_an_image.png": (lambda: b"just some text, not a PNG\n", "not an image"),
    # Headers PIL's plugins refuse with ValueError, not OSError:
    "short_header.png": (
        lambda: b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", b"\0\0\0\4\0"),
        "truncated or corrupt",
    ),
    "bad_header.ppm": (lambda: b"P6\n4x 4\n255\n" + bytes(48), "truncated or corrupt"),
    "cmyk.jpg": (_cmyk, None),
    "grey16.png": (_grey16, None),
    "alpha.png": (_alpha, None),
    "palette_transparent.png": (_palette_transparent, None),
    "one_pixel.png": (lambda: _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), None),
}
BAD = {name: says for name, (_, says) in CORPUS.items() if says}
USABLE = [name for name, (_, says) in CORPUS.items() if not says]


def test_the_bombs_are_small_and_trip_pils_own_check() -> None:
    data = png_bomb(30000, 30000)
    assert len(data) < 120_000  # 109 kB claiming 900 megapixels
    assert len(png_bomb(14000, 14000)) < 30_000
    with Image.open(io.BytesIO(png_bomb(9000, 9000))) as img:
        assert img.size == (9000, 9000) and img.mode == "1"  # a valid PNG, not just a header
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))


@pytest.mark.parametrize("name", list(CORPUS))
def test_every_reader_decodes_or_refuses_with_the_reason(name: str, tmp_path: Path) -> None:
    from headstart.data.images import BadImage, ImageTooLarge, open_image, open_image_bytes

    data, says = CORPUS[name][0](), CORPUS[name][1]
    path = tmp_path / name
    path.write_bytes(data)
    for read in (lambda: open_image(path, draft_to=64), lambda: open_image_bytes(data, name=name)):
        if says is None:
            img = read()
            assert img.mode == "RGB" and min(img.size) >= 1
            continue
        with pytest.raises(BadImage) as e:
            read()
        assert says in e.value.reason and name in str(e.value)
        assert isinstance(e.value, ImageTooLarge) == ("limit" in says)
        if "limit" in says:
            assert "raise --max-pixels" in e.value.reason


@pytest.mark.filterwarnings("error")
def test_pils_warning_band_is_refused_the_same_under_warnings_as_errors() -> None:
    """100 MP: PIL only warns (between its limit and twice that); with -W error that warning raises."""
    from headstart.data.images import ImageTooLarge, open_image_bytes

    with pytest.raises(ImageTooLarge, match="10000x10000 is over the 64,000,000-pixel limit"):
        open_image_bytes(png_bomb(10000, 10000), name="warned.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's, on the refused one
def test_max_pixels_can_be_raised_past_pils_own_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL refuses over 2 x MAX_IMAGE_PIXELS inside Image.open; --max-pixels above that must still work."""
    from headstart.data.images import ImageTooLarge, open_image_bytes

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # PIL: refuse over 2 MP (restored after)
    data = _encode(Image.new("RGB", (1500, 1500), (10, 200, 10)), "PNG")  # 2.25 MP
    with pytest.raises(ImageTooLarge, match="1500x1500 is over the 2,000,000-pixel limit"):
        open_image_bytes(data, max_pixels=2_000_000)
    assert open_image_bytes(data, max_pixels=3_000_000).size == (1500, 1500)


# -- through the verbs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Class folders holding every corpus file (in red/), and a probe run made from clean data."""
    from headstart.api import probe

    root = tmp_path_factory.mktemp("baddecode")
    data = make_image_folder(root / "data", per_class=6)
    for name, (build, _) in CORPUS.items():
        (data / "red" / name).write_bytes(build())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        clean = make_image_folder(root / "clean", per_class=6)
        probe(clean, backbone=TEST_BACKBONE, out=root / "run", backend="torch", progress=False)
    return {"root": root, "data": data, "run": root / "run"}


def _json(out: str) -> Any:
    start = min(i for i in (out.find("{"), out.find("[")) if i >= 0)
    return json.loads(out[start:])


def _assert_skipped_with_reasons(skipped: dict[str, str], data: Path) -> None:
    by_name = {Path(p).name: reason for p, reason in skipped.items()}
    assert set(by_name) == set(BAD), by_name
    for name, says in BAD.items():
        assert says in by_name[name], (name, by_name[name])
    assert all(str(data) in p for p in skipped)


@pytest.mark.parametrize(
    "verb",
    [
        ["probe", "--backend", "torch"],
        ["fit", "--strategy", "partial:1", "--epochs", "1", "--batch-size", "8"],
    ],
    ids=["probe", "fit"],
)
def test_probe_and_fit_skip_each_bad_file_with_its_reason_and_write_the_run(
    capsys: pytest.CaptureFixture[str], world: dict[str, Any], tmp_path: Path, verb: list[str]
) -> None:
    data = world["data"]
    before = tree_digest(data)
    out = tmp_path / "run"
    res = run_cli(capsys, verb[0], data, *verb[1:], "--backbone", TEST_BACKBONE, "--out", out, "--json")
    assert res.code == 0 and "Traceback" not in res.text, res.text
    report = _json(res.out)
    _assert_skipped_with_reasons(report["data"]["skipped"], data)
    # The odd but usable images were read: 6 red + 5 usable, 6 blue.
    assert report["data"]["n_items"] == 12 + len(USABLE)
    assert (out / "run.json").is_file()
    assert tree_digest(data) == before


def test_predict_and_evaluate_list_each_bad_file_with_its_reason(
    capsys: pytest.CaptureFixture[str], world: dict[str, Any]
) -> None:
    data, run = world["data"], world["run"]
    before = tree_digest(world["root"])
    files = sorted((data / "red").iterdir())
    res = run_cli(capsys, "predict", run, *files, "--json")
    assert res.code == 1 and "Traceback" not in res.text, res.text  # 1: some inputs were not labeled
    results = {Path(r["file"]).name: r for r in _json(res.out)}
    assert set(results) == {f.name for f in files}
    for name, says in BAD.items():
        assert says in results[name]["error"], results[name]
    assert all("label" in results[n] for n in results if n not in BAD)

    res = run_cli(capsys, "evaluate", run, data, "--no-latency", "--backend", "torch", "--json")
    assert res.code == 0 and "Traceback" not in res.text, res.text
    _assert_skipped_with_reasons(_json(res.out)["skipped"], data)
    assert tree_digest(world["root"]) == before  # DATA given: evaluate writes nothing


def test_the_fix_the_reason_names_exists_on_predict_and_fit(
    capsys: pytest.CaptureFixture[str], world: dict[str, Any], tmp_path: Path
) -> None:
    """The skip reason says "raise --max-pixels": predict and fit take it (both default to 64 M)."""
    good = next(f for f in sorted((world["data"] / "red").iterdir()) if f.name not in BAD)
    res = run_cli(capsys, "predict", world["run"], good, "--max-pixels", "100", "--json")
    assert res.code == 1 and "over the 100-pixel limit" in _json(res.out)[0]["error"], res.text
    res = run_cli(capsys, "predict", world["run"], good, "--max-pixels", "10000", "--json")
    assert res.code == 0 and "label" in _json(res.out)[0], res.text
    out = tmp_path / "fit"
    res = run_cli(
        capsys,
        "fit",
        world["data"],
        "--backbone",
        TEST_BACKBONE,
        "--strategy",
        "partial:1",
        "--epochs",
        "1",
        "--out",
        out,
        "--max-pixels",
        "100",
    )
    assert res.code == 2 and "Traceback" not in res.text and not out.exists(), res.text
    assert "100-pixel limit" in res.text and "unrecognized arguments" not in res.text, res.text
