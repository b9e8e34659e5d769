"""Audio clips in: decoded with soundfile, mixed to mono, resampled, checked.

What happens to awkward files:
- unreadable, empty, or holding NaN/inf samples: `BadInput` with the reason (callers skip and report it);
- silent (mono peak below -80 dBFS): `BadInput("silent ...")`: an embedding of nothing is noise;
- longer than `max_seconds` (Whisper sees 30 s): the first `max_seconds` are kept, and the clip reports
  its original length in `truncated_from` (only that much is decoded, so a 2-hour file costs 30 s);
  `long_clips` finds such clips from their headers alone, so datasets note every cut (`Dataset.note_cuts`);
- clipped (samples at full scale): kept; `clipped_fraction` says how much, with a warning above 0.1 %;
- any rate or channel count: averaged to mono, resampled to `sample_rate` (polyphase, anti-aliased).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from headstart.errors import BadInput

log = logging.getLogger(__name__)

#: Extensions read as audio; .mp3 only where this libsndfile decodes it (see `audio_suffixes`).
BASE_AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus")
SILENCE_DBFS = -80.0
CLIP_LEVEL = 0.999  # |sample| at or above this is taken as clipped (int16 full scale is 0.99997)
CLIP_WARN_FRACTION = 0.001


@cache
def audio_suffixes() -> frozenset[str]:
    """Audio file extensions this installation can decode (mp3 needs libsndfile >= 1.1)."""
    suffixes = set(BASE_AUDIO_SUFFIXES)
    try:
        import soundfile

        if "MP3" in soundfile.available_formats():
            suffixes.add(".mp3")
    except (ImportError, OSError):
        pass
    return frozenset(suffixes)


def is_audio_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in audio_suffixes()


@dataclass(frozen=True)
class AudioClip:
    """One decoded clip: mono float32 `samples` at `sample_rate`, and what was done to get there."""

    samples: np.ndarray
    sample_rate: int
    original_rate: int
    channels: int
    truncated_from: float | None  # the file's length in seconds when only the start was kept
    clipped_fraction: float  # of the file's samples (all channels) at full scale

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def long_clips(paths: list[str], max_seconds: float) -> dict[str, float]:
    """{path: length in seconds} of the clips longer than `max_seconds`, from the headers (no decoding).

    Files whose header cannot be read are left out: decoding them later skips them with the reason."""
    import soundfile as sf

    out: dict[str, float] = {}
    for p in paths:
        try:
            info = sf.info(p)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError):
            continue
        if info.samplerate > 0 and info.frames > max_seconds * info.samplerate:
            out[p] = info.frames / info.samplerate
    return out


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase resampling (scipy, which scikit-learn brings); linear interpolation without it."""
    if src == dst:
        return x
    try:
        from scipy.signal import resample_poly
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        n_out = round(len(x) * dst / src)
        return np.interp(np.arange(n_out) * (src / dst), np.arange(len(x)), x).astype(np.float32)
    g = math.gcd(src, dst)
    return resample_poly(x, dst // g, src // g).astype(np.float32)


def read_audio(
    path: str | Path,
    *,
    sample_rate: int = 16_000,
    max_seconds: float | None = 30.0,
    silence_dbfs: float = SILENCE_DBFS,
) -> AudioClip:
    """Decode `path` to mono float32 at `sample_rate`; raises BadInput for files that cannot be used."""
    import soundfile as sf

    src = str(path)
    try:
        with sf.SoundFile(src) as f:
            rate, channels, n_frames = int(f.samplerate), int(f.channels), int(f.frames)
            limit = -1
            truncated_from = None
            if max_seconds is not None and n_frames > max_seconds * rate:
                limit = int(max_seconds * rate)
                truncated_from = n_frames / rate
            data = f.read(frames=limit, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise BadInput(src, f"not a readable audio file ({_short(e)})") from e
    except OSError as e:
        raise BadInput(src, f"cannot read ({e.strerror or e})") from e
    if data.size == 0 or rate <= 0:
        raise BadInput(src, "empty: no audio samples")
    if not np.isfinite(data).all():
        raise BadInput(src, "holds NaN or infinite samples")
    clipped = float(np.mean(np.abs(data) >= CLIP_LEVEL))
    mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    peak = float(np.abs(mono).max())
    if peak <= 10 ** (silence_dbfs / 20):
        level = f"{20 * math.log10(peak):.0f} dBFS" if peak > 0 else "digital zero"
        raise BadInput(src, f"silent (peak {level}, below {silence_dbfs:.0f} dBFS)")
    if clipped > CLIP_WARN_FRACTION:
        log.warning("%s: %.2f%% of samples are clipped (at full scale)", src, 100 * clipped)
    if truncated_from is not None:
        log.info("%s: %.1f s long, using its first %.0f s", src, truncated_from, max_seconds)
    samples = resample(np.ascontiguousarray(mono, dtype=np.float32), rate, sample_rate)
    if max_seconds is not None:
        samples = samples[: int(max_seconds * sample_rate)]
    return AudioClip(samples, sample_rate, rate, channels, truncated_from, clipped)


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # libsndfile prefixes messages with the path, which the caller already names
    return text.split(": ", 1)[-1] if ": " in text else text
