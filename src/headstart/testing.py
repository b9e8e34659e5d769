"""The tiny test backbones: a few thousand parameters each, the real families' code paths, no download.

Importing this module registers them, through the same public plug-in API any family uses:

- `test_efficientnet_lite` (images): EfficientNet-Lite0 at width 0.5, depth 0.25, 32 px, random init;
- `test_text_encoder` (text): a BERT with hidden size 32 and 2 layers, and a WordPiece tokenizer;
- `test_llama` (text): a Llama decoder of the same size, through the dequantised-GGUF cache writer;
- `test_whisper_encoder` (audio): a Whisper encoder with d_model 32 and 2 layers.

They are not part of the production registry: the tests import this module (tests/conftest.py sets
`HEADSTART_BACKBONE_MODULES=headstart.testing`, so a `headstart` subprocess registers them too), and
`headstart backbones --all` loads it to list them. Random-init weights are seeded: every build of a test
model is the same network.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from headstart.backbones import efficientnet_lite, llm, whisper_ct2
from headstart.backbones.hf_text import TextSource, create_hf_text_backbone, load_local_weights
from headstart.backbones.registry import BackboneSpec, register_backbone
from headstart.backbones.text import TextBackbone
from headstart.backbones.whisper_weights import WhisperDims
from headstart.fileio import cache_dir

TEST_WORDS = " ".join(
    (
        "the a an and or of to in on is are was it this that with for at by from as be have not",
        "cat dog bird fish horse cow sheep mouse lion tiger animal pet farm zoo fur tail paw",
        "car bus train plane ship bike truck road engine wheel fuel drive fly sail ride",
        "red blue green big small fast slow happy sad good bad old new one two three",
    )
).split()


def tiny_tokenizer() -> Any:
    """A tiny WordPiece tokenizer (special tokens, letters, TEST_WORDS): what the test models read."""
    from transformers import BertTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *[f"##{c}" for c in letters]]
    vocab += [w for w in TEST_WORDS if w not in vocab]
    return BertTokenizerFast(
        vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, model_max_length=64
    )


# The shape both tiny text models share (transformers config fields): hidden 32, 2 layers of 4 heads.
_TINY_TRANSFORMER = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


# -- test_text_encoder ---------------------------------------------------------------------------------


def build_test_text_folder(dest: Path) -> Path:
    """Write a tiny random-init BERT (hidden 32, 2 layers) + WordPiece tokenizer to `dest`, atomically."""
    from transformers import BertConfig, BertModel

    if (dest / "model.safetensors").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tok = tiny_tokenizer()
        tok.save_pretrained(str(tmp))
        config = BertConfig(vocab_size=len(tok), **_TINY_TRANSFORMER)
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
        load_local_weights(bb, weights)
    return bb


# -- test_llama ----------------------------------------------------------------------------------------


def build_test_llama_folder(dest: Path) -> Path:
    """A tiny random-init LlamaForCausalLM (hidden 32, 2 layers) + WordPiece tokenizer, written to `dest`
    through the same atomic cache writer as the dequantised GGUF models."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (dest / llm.SOURCE_FILE).is_file():
        return dest
    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        **_TINY_TRANSFORMER,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    return llm.save_causal_lm(model, tok, dest, {"name": "test_llama", "source": "random init"})


def _test_llama_folder() -> Path:
    return build_test_llama_folder(cache_dir() / "test_models" / "test_llama")


# -- registration ----------------------------------------------------------------------------------------

efficientnet_lite.FAMILY.register(
    "test_efficientnet_lite",
    efficientnet_lite.EfficientNetLiteCfg(
        "efficientnet-lite0", 32, overrides=(("width_coefficient", 0.5), ("depth_coefficient", 0.25))
    ),
    embed_dim=1280,  # EfficientNet-Lite keeps its 1280-channel head at any width
    description="tiny random-init EfficientNet-Lite for tests",
    is_test_model=True,
)
register_backbone(
    BackboneSpec(
        name="test_text_encoder",
        family="hf-text",
        builder=build_test_text_encoder,
        embed_dim=32,
        license="Apache-2.0",
        description="tiny random-init BERT for tests",
        weights_file=lambda: None,
        is_test_model=True,
    )
)
llm.register_folder_lm(
    "test_llama",
    _test_llama_folder,
    embed_dim=32,
    description="tiny random-init Llama for tests",
    is_test_model=True,
)
# Same code path, a few thousand parameters per layer (1500 positions: Whisper's 30 s window is fixed).
whisper_ct2.FAMILY.register(
    "test_whisper_encoder",
    whisper_ct2.WhisperSource(WhisperDims(n_mels=80, d_model=32, layers=2, heads=2, ffn=64)),
    embed_dim=32,
    description="tiny random-init Whisper encoder for tests",
    is_test_model=True,
)
