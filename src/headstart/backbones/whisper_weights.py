"""Whisper encoder weights in CTranslate2's model.bin, mapped to and from transformers' `WhisperEncoder`.

`load_whisper_encoder` reads any CTranslate2 Whisper conversion (tiny..large: the shape is read off the
tensors) with `ct2_format.read_ct2` (no CTranslate2 runtime needed) into a `WhisperEncoder`; the decoder
is never materialised. `hf_encoder_to_ct2` is the inverse, as the converter lays it out, which lets the
tests (and random-init models) go through the same reader as the real weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.backbones.ct2_format import Ct2Model, read_ct2, write_ct2
from headstart.errors import HeadstartError

SPEC_NAME = "WhisperSpec"


@dataclass(frozen=True)
class WhisperDims:
    n_mels: int = 80
    d_model: int = 384
    layers: int = 4
    heads: int = 6
    ffn: int = 1536
    positions: int = 1500


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
