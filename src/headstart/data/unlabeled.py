"""Unlabeled inputs (distillation transfer sets, domain-adversarial target data, continued pretraining).

Images and audio: a folder, searched recursively (OS junk, hidden names, broken links and symlink loops are
listed in `Unlabeled.skipped`; unreadable files are skipped later, when decoded).
Text: as `headstart.data.unlabeled_text` reads it (a `.txt` file of lines or paragraphs, a folder of `.txt`
files, or a CSV / JSONL / Parquet table with a `text` column); empty texts are skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from headstart.errors import HeadstartError


@dataclass
class Unlabeled:
    """Sources to feed a backbone: file paths (images, audio) or the texts themselves."""

    sources: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def _texts(path: Path) -> Unlabeled:
    from headstart.data.unlabeled_text import read_unlabeled

    got = read_unlabeled(path)
    skipped = {str(path): f"{got.skipped_empty} empty text(s)"} if got.skipped_empty else {}
    return Unlabeled(got.texts, skipped)


def load_unlabeled(path: str | Path, modality: str) -> Unlabeled:
    """The unlabeled inputs under `path` for a backbone of `modality`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise HeadstartError(f"unlabeled data {p} does not exist", fix="check the path")
    got = _texts(p) if modality == "text" else _files(p)
    if modality != "text":
        _check_modality(p, got.sources, modality)
    if not got.sources:
        raise HeadstartError(
            f"no usable unlabeled {modality} inputs in {p} ({len(got.skipped)} skipped)",
            fix="point at a folder of files, or (text) a .txt file with one text per line or a table with a "
            "`text` column",
        )
    return got


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _check_modality(path: Path, sources: list[str], modality: str) -> None:
    """Refuse files that are mostly of another modality (texts or tables for an image model, images for an
    audio one ...) by their suffix, before any of them is decoded."""
    from collections import Counter

    from headstart.data.audio import is_audio_path
    from headstart.data.text import TABLE_SUFFIXES

    def kind(src: str) -> str | None:
        suffix = Path(src).suffix.lower()
        if suffix in (".txt", *TABLE_SUFFIXES):
            return "text"
        return "audio" if is_audio_path(src) else "image" if suffix in _IMAGE_SUFFIXES else None

    found, n = Counter(kind(s) for s in sources).most_common(1)[0] if sources else (None, 0)
    if found is not None and found != modality and 2 * n > len(sources):
        raise HeadstartError(
            f"{path} holds {found} inputs ({n} of {len(sources)} files) but the model reads {modality}",
            fix=f"give a folder of {modality} files (or use a {found} model)",
        )


def _files(path: Path) -> Unlabeled:
    if path.is_file():
        return Unlabeled([str(path)])
    from headstart.data.layouts import list_files

    skipped: dict[str, str] = {}  # junk, hidden names, broken links, loops: listed, never read
    return Unlabeled([str(p) for p in list_files(path, skipped)], skipped)
