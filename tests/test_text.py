"""Text: encoders and decoder LMs through their real loaders, text data, length bucketing, a text probe."""

from __future__ import annotations

import csv
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.backbones import create_backbone
from headstart.backbones.text import TextBackbone
from headstart.data import load_dataset
from headstart.errors import HeadstartError
from headstart.features import by_size, embed
from headstart.testing import TEST_WORDS

ANIMALS = TEST_WORDS[TEST_WORDS.index("cat") : TEST_WORDS.index("paw") + 1]
VEHICLES = TEST_WORDS[TEST_WORDS.index("car") : TEST_WORDS.index("ride") + 1]
FILLER = TEST_WORDS[: TEST_WORDS.index("as") + 1]


def sentence(words: list[str], rng: random.Random) -> str:
    n = rng.randint(3, 14)  # varied lengths, so batches need padding
    return " ".join(rng.choice(words) if rng.random() < 0.5 else rng.choice(FILLER) for _ in range(n))


def write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = ("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def animal_vehicle_rows(n_per_class: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {"text": sentence(words, rng), "label": label}
        for label, words in (("animal", ANIMALS), ("vehicle", VEHICLES))
        for _ in range(n_per_class)
    ]


@pytest.fixture
def text_encoder() -> TextBackbone:
    return create_backbone("test_text_encoder")  # type: ignore[return-value]


def mean_pool_reference(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a user would write: the whole transformers model, then a masked mean over tokens."""
    with torch.inference_mode():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1)


# -- encoders --------------------------------------------------------------------------------------------


def test_tiny_encoder_loads_with_text_inputs_groups_and_card(text_encoder: TextBackbone) -> None:
    bb = text_encoder
    assert bb.modality == "text" and bb.supports_onnx  # an encoder exports (dynamic batch and length)
    assert bb.group_names == ["embeddings", "layer0", "layer1"]
    assert bb.card.family == "hf-text:bert" and bb.card.weights_sha256 and bb.embed_dim == 32
    text = "the cat is on the road"
    assert bb.item_hash(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()
    ids = bb.load_item(text)
    assert len(ids) == len(text.split()) + 2 and 1 not in ids  # [CLS] words [SEP], no [UNK] (id 1)
    batch = bb.collate([bb.load_item("a cat"), ids])
    assert batch["input_ids"].shape == (2, len(ids))  # padded to the longest of this batch only
    assert batch["attention_mask"].sum(1).tolist() == [4, len(ids)]
    # The same folder twice is the same network (random init saved once, read back).
    assert create_backbone("test_text_encoder").key == bb.key


def test_groups_compose_to_the_whole_model_and_padding_does_not_change_a_text(
    text_encoder: TextBackbone,
) -> None:
    bb = text_encoder
    texts = ["the cat is red", "a dog and a bird fly to the zoo on a bus with the old horse", "hi"]
    batch = bb.collate([bb.load_item(t) for t in texts])
    with torch.inference_mode():
        pooled = bb(batch)
        alone = torch.cat([bb(bb.collate([bb.load_item(t)])) for t in texts])
        state = bb.forward_groups(batch, 0, 1)
        resumed = bb.pool(bb.forward_groups(state, 1))
    torch.testing.assert_close(pooled, mean_pool_reference(bb.hf_model, batch))
    torch.testing.assert_close(pooled, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(resumed, pooled)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_hf_folder_of_a_text_encoder_routes_to_the_text_family(tmp_path: Path, family: str) -> None:
    from transformers import AutoConfig, AutoModel

    from headstart.testing import build_test_text_folder

    tok_folder = build_test_text_folder(tmp_path / "tok")
    sizes = {"vocab_size": 200, "max_position_embeddings": 70, "pad_token_id": 0}
    if family == "distilbert":
        sizes |= {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64}
    else:
        sizes |= {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
        }
    torch.manual_seed(1)
    model = AutoModel.from_config(AutoConfig.for_model(family, **sizes)).eval()
    folder = tmp_path / family
    model.save_pretrained(folder)
    for f in tok_folder.glob("tokenizer*.json"):
        (folder / f.name).write_bytes(f.read_bytes())
    bb = create_backbone(f"hf:{folder}")
    assert isinstance(bb, TextBackbone) and bb.card.family == f"hf-text:{family}"
    assert bb.group_names == ["embeddings", "layer0", "layer1"]
    batch = bb.collate([bb.load_item(t) for t in ("the cat", "a bus on the road with a red car", "hi")])
    with torch.inference_mode():
        torch.testing.assert_close(bb(batch), mean_pool_reference(model, batch))


def test_over_length_texts_are_truncated_and_counted(text_encoder: TextBackbone) -> None:
    bb = text_encoder
    long_text = " ".join(["cat"] * 500)
    feats = embed(bb, [long_text, "a dog", long_text + " dog"], cache=False, progress=False)
    assert feats.X.shape == (3, 32) and not feats.bad
    assert bb.truncated_count == 2
    assert bb.input_notes["truncated"] == {long_text: 502.0, long_text + " dog": 503.0}  # with [CLS] [SEP]
    assert len(bb.load_item(long_text)) == bb.max_length == 64


def test_empty_text_is_a_bad_input_not_a_crash(text_encoder: TextBackbone) -> None:
    feats = embed(text_encoder, ["a cat", "   ", "a dog"], cache=False, progress=False)
    assert feats.paths == ["a cat", "a dog"] and feats.bad == {"   ": "empty text"}


# -- length bucketing ------------------------------------------------------------------------------------


def test_length_bucketing_keeps_results_and_order_and_pads_less(
    text_encoder: TextBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(3)
    texts = [sentence(ANIMALS + VEHICLES, rng) for _ in range(40)]
    order = by_size(text_encoder, [(str(i), t) for i, t in enumerate(texts)])
    lengths = [len(text_encoder.encode(t)) for _, t in order]
    assert lengths == sorted(lengths) and sorted(i for i, _ in order) == sorted(str(i) for i in range(40))

    embed(text_encoder, texts[:1], cache=False, progress=False)  # the ONNX export collates its own examples
    padded: list[int] = []
    collate = text_encoder.collate

    def counting_collate(examples: list) -> dict:
        batch = collate(examples)
        padded.append(int(batch["attention_mask"].numel()))
        return batch

    monkeypatch.setattr(text_encoder, "collate", counting_collate)
    bucketed = embed(text_encoder, texts, cache=False, batch_size=8, progress=False)
    cells_bucketed, padded[:] = sum(padded), []
    monkeypatch.setattr(text_encoder, "sort_key", lambda source: None)
    plain = embed(text_encoder, texts, cache=False, batch_size=8, progress=False)
    assert bucketed.paths == plain.paths == texts  # input order restored
    np.testing.assert_allclose(bucketed.X, plain.X, atol=1e-5, rtol=1e-4)
    assert cells_bucketed < sum(padded)  # fewer (padded) token positions computed


# -- data ------------------------------------------------------------------------------------------------


def test_csv_with_multiline_texts_skips_empty_ones_and_is_detected_without_a_flag(tmp_path: Path) -> None:
    rows = animal_vehicle_rows(6)
    rows[0]["text"] = "a cat\non two lines"
    rows += [{"text": "", "label": "animal"}, {"text": " \n\t ", "label": "vehicle"}]
    ds = load_dataset(write_csv(tmp_path / "t.csv", rows))
    assert ds.modality == "text" and ds.layout == "text-table" and ds.classes == ["animal", "vehicle"]
    assert len(ds.items) == 12 and {it.split for it in ds.items} == {"train", "val", "test"}
    assert sorted(ds.skipped.values()) == ["empty text", "whitespace-only text"]
    by_text = {it.text: it for it in ds.items}
    assert str(by_text["a cat\non two lines"].path) == f"{tmp_path / 't.csv'}:2"
    # the row after a two-line record starts on line 4
    assert str(by_text[rows[1]["text"]].path) == f"{tmp_path / 't.csv'}:4"
    assert all(it.source == it.text for it in ds.items)


def test_jsonl_and_parquet_tables_with_their_own_split(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{**r, "split": ("train", "val", "test")[i % 3]} for i, r in enumerate(animal_vehicle_rows(6))]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    for name in ("t.jsonl", "t.parquet"):
        ds = load_dataset(tmp_path / name)
        assert ds.modality == "text" and len(ds.items) == 12
        assert [it.split for it in ds.items] == [r["split"] for r in rows]
        assert ds.items[0].text == rows[0]["text"] and str(ds.items[0].path).endswith(f"{name}:1")


def test_non_utf8_table_is_an_error_naming_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"text,label\na cat,animal\na bus,vehicle\ncaf\xe9 au lait,animal\n")
    with pytest.raises(HeadstartError, match=r"bad\.csv:4 is not UTF-8"):
        load_dataset(path, modality="text")


def test_txt_folders_skip_empty_and_non_utf8_files_with_reasons(tmp_path: Path) -> None:
    rng = random.Random(0)
    for label, words in (("animal", ANIMALS), ("vehicle", VEHICLES)):
        (tmp_path / "d" / label).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "d" / label / f"{i}.txt").write_text(sentence(words, rng), encoding="utf-8")
    (tmp_path / "d" / "animal" / "empty.txt").write_text("  \n")
    (tmp_path / "d" / "vehicle" / "latin1.txt").write_bytes(b"first line\nd\xe9j\xe0 vu\n")
    ds = load_dataset(tmp_path / "d")
    assert ds.modality == "text" and ds.layout == "text-class-folders" and len(ds.items) == 10
    assert ds.skipped[str(tmp_path / "d" / "animal" / "empty.txt")] == "whitespace-only text"
    assert ds.skipped[str(tmp_path / "d" / "vehicle" / "latin1.txt")].startswith("not UTF-8 text (line 2")
    assert all(it.text and it.path.suffix == ".txt" for it in ds.items)


def test_table_without_text_column_is_still_an_image_manifest(tmp_path: Path) -> None:
    from headstart.data.text import is_text_data

    path = write_csv(tmp_path / "m.csv", [{"path": "a.png", "label": "x"}], ("path", "label"))
    assert not is_text_data(path)
    with pytest.raises(HeadstartError, match=r"lacks column\(s\) \['label'\]"):
        load_dataset(write_csv(tmp_path / "t.csv", [{"text": "a cat"}], ("text",)), modality="text")


# -- a probe on text -------------------------------------------------------------------------------------


def test_probe_on_a_tiny_text_task_beats_chance_with_the_tiny_encoder(tmp_path: Path) -> None:
    from headstart.api import probe

    data = write_csv(tmp_path / "animals_vehicles.csv", animal_vehicle_rows(40))
    report = probe(data, backbone="test_text_encoder", out=tmp_path / "run", progress=False)
    assert report.data["modality"] == "text"
    assert report.metrics["test"]["n"] == 12
    assert report.metrics["test"]["accuracy"] >= 0.8  # chance is 0.5
    assert (tmp_path / "run" / "head.safetensors").is_file()


# -- decoder LMs -----------------------------------------------------------------------------------------


def test_tiny_llama_loads_through_the_cached_folder_and_matches_the_whole_model() -> None:
    from headstart.backbones.llm import load_causal_lm

    bb = create_backbone("test_llama")
    assert isinstance(bb, TextBackbone) and bb.modality == "text"
    assert bb.group_names == ["embeddings", "layer0", "layer1"] and bb.card.family == "llm:llama"
    texts = ["the cat is red", "a dog and a bird fly to the zoo on a bus", "hi"]
    batch = bb.collate([bb.load_item(t) for t in texts])
    with torch.inference_mode():
        pooled = bb(batch)
        alone = torch.cat([bb(bb.collate([bb.load_item(t)])) for t in texts])
        hidden = bb.lm.model(**batch).last_hidden_state  # the LM's own forward (final norm included)
    m = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(pooled, (hidden * m).sum(1) / m.sum(1))
    torch.testing.assert_close(pooled, alone, atol=1e-5, rtol=1e-4)  # right padding changes nothing
    lm, tok = load_causal_lm("test_llama")
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()  # tied, stored once
    with torch.inference_mode():
        logits = lm(**tok(["the cat"], return_tensors="pt", return_token_type_ids=False)).logits
    assert logits.shape[-1] == lm.config.vocab_size


def test_gguf_models_are_dequantised_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from headstart.backbones import llm
    from headstart.backbones.llm import GGUFSource
    from headstart.fileio import sha256_file
    from headstart.testing import build_test_llama_folder

    tiny = build_test_llama_folder(tmp_path / "tiny")
    fake = tmp_path / "pkg" / "fake.gguf"
    fake.parent.mkdir()
    fake.write_bytes(b"GGUF not really")
    src = GGUFSource(
        "fake-lm", "fake-pkg", "fake_pkg", fake.name, sha256_file(fake), "Apache-2.0", "none", "none", "", 32
    )
    monkeypatch.setitem(llm._SOURCES, "fake-lm", src)
    monkeypatch.setattr(llm, "gguf_file", lambda s: fake)
    calls: list[Path] = []

    def fake_dequantise(path: Path) -> tuple:
        calls.append(path)
        return AutoModelForCausalLM.from_pretrained(tiny).eval(), AutoTokenizer.from_pretrained(tiny)

    monkeypatch.setattr(llm, "dequantise_gguf", fake_dequantise)
    first = llm.build_gguf_backbone("fake-lm")
    second = llm.build_gguf_backbone("fake-lm")
    assert calls == [fake]  # dequantised once
    cached = llm.cache_folder("fake-lm", src.sha256)
    meta = json.loads((cached / "source.json").read_text())
    assert meta["gguf_sha256"] == src.sha256 and meta["model_sha256"] == sha256_file(
        cached / "model.safetensors"
    )
    assert first.card.weights_sha256 == src.sha256 and first.key == second.key
    batch = first.collate([first.load_item("the cat and the dog")])
    with torch.inference_mode():
        torch.testing.assert_close(first(batch), second(batch))
    assert not any(p.name.startswith(".") for p in cached.parent.iterdir())  # no temp folder left behind

    fake.write_bytes(b"GGUF other bytes")  # a changed file no longer matches its published hash
    with pytest.raises(HeadstartError, match="does not match the published sha256"):
        llm.build_gguf_backbone("fake-lm")


def test_text_backbones_are_listed_and_test_models_hidden() -> None:
    from headstart.backbones import list_backbones

    names = {s.name for s in list_backbones()}
    assert {"minilm-l6", "smollm2-135m"} <= names and "test_text_encoder" not in names
    assert {"test_text_encoder", "test_llama"} <= {s.name for s in list_backbones(include_test=True)}
    assert len(TEST_WORDS) > 50


# -- real weights ----------------------------------------------------------------------------------------


@pytest.mark.real_weights
def test_minilm_similar_sentences_are_closer_than_unrelated_ones() -> None:
    from headstart.fileio import sha256_file

    bb = create_backbone("minilm-l6")
    assert bb.card.weights_file and sha256_file(bb.card.weights_file) == bb.card.weights_sha256
    assert bb.card.license == "Apache-2.0" and bb.embed_dim == 384 and bb.max_length == 256
    feats = embed(
        bb,
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The new movie is awesome.",
            "The new film is so great.",
            "The stock market fell sharply today.",
        ],
        cache=False,
        progress=False,
    )
    X = feats.X
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)  # its Normalize module
    sim = X @ X.T
    assert sim[0, 1] > 0.6 and sim[2, 3] > 0.6
    assert max(sim[0, 2], sim[0, 4], sim[1, 3], sim[2, 4]) < 0.3


@pytest.mark.real_weights
def test_smollm2_card_hash_and_fast_cached_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uses the user's cache (~/.cache/headstart): the one-time dequantisation (~25 s) happens once ever."""
    from headstart.backbones.llm import _SOURCES, ensure_cached, gguf_file
    from headstart.fileio import sha256_file

    monkeypatch.delenv("HEADSTART_CACHE", raising=False)
    ensure_cached("smollm2-135m")
    bb = create_backbone("smollm2-135m")  # from the float safetensors cache (timed in benchmarks, not here)
    path = gguf_file(_SOURCES["smollm2-135m"])
    assert path is not None and sha256_file(path) == bb.card.weights_sha256 == _SOURCES["smollm2-135m"].sha256
    assert bb.card.license == "Apache-2.0" and bb.embed_dim == 576 and len(bb.group_names) == 31
    feats = embed(bb, ["The cat sat on the mat.", "Stocks fell sharply."], cache=False, progress=False)
    assert feats.X.shape == (2, 576) and np.isfinite(feats.X).all()
