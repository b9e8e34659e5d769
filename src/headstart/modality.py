"""The kinds of input headstart reads, and how an image is prepared for a backbone's weights.

`Modality` is a `StrEnum`: a member equals its string (`Modality.TEXT == "text"`), prints and formats as
it, and serialises to JSON as it, so run files and older string comparisons keep working while code
switches to the enum.

`PreprocessConfig` is the image modality's preprocessing. It lives here, below both `backbones.base` and
`data.images`, so that neither imports the other to name it. Text and audio preprocessing are defined by
the backbones that read them (`backbones.text.TextPreprocess`, `backbones.whisper_ct2.AudioPreprocess`);
every kind satisfies `Preprocess`: `to_dict()` is what identifies it in a backbone's cache key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol


class Modality(StrEnum):
    IMAGE = "image"
    TEXT = "text"
    AUDIO = "audio"

    @classmethod
    def parse(cls, value: str) -> Modality | str:
        """The member for a known modality; any other string as is (a user-built backbone may read
        inputs of its own kind, to which no image/text/audio path applies)."""
        try:
            return cls(value)
        except ValueError:
            return value


class Preprocess(Protocol):
    """What every modality's preprocessing offers: a JSON-able description (part of the cache key)."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image must be prepared for these weights (taken from the weights' own pretrained config).

    Images are resized so the shorter side is `resize`, centre-cropped to `input_size`, scaled to
    0..1 and normalised with `mean`/`std` (per RGB channel, in 0..1 units).
    """

    input_size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
