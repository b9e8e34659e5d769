"""Continued pretraining (`headstart adapt`): MLM and causal LM on tiny models, the adapted backbone found
by name with its parent in the card, bad unlabeled input, and no half-written backbone folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from headstart.backbones import create_backbone, list_backbones
from headstart.backbones.home import CARD_FILE
from headstart.errors import HeadstartError
from headstart.pretrain import adapt, read_unlabeled

# A tiny, very repetitive "domain": four sentences in the test tokenizer's vocabulary.
DOMAIN = [
    "the cat is on the farm with a dog",
    "a red bus and a blue car drive on the road",
    "the old horse has a big tail",
    "two fast planes fly to the zoo",
]
GENERAL = ["a happy bird and a sad fish", "one small mouse is in the new ship", "the lion was not slow"]


@pytest.fixture(autouse=True)
def backbones_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "backbones"
    monkeypatch.setenv("HEADSTART_BACKBONES", str(home))
    return home


def write_lines(path: Path, texts: list[str], n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.write_text("\n".join(rng.choice(texts) for _ in range(n)) + "\n", encoding="utf-8")
    return path


def pooled(bb: torch.nn.Module, texts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return bb(bb.collate([bb.load_item(t) for t in texts]))


def test_mlm_lowers_held_out_perplexity_and_the_backbone_is_found_by_name(
    tmp_path: Path, backbones_home: Path
) -> None:
    data = write_lines(tmp_path / "domain.txt", DOMAIN, 120)
    report = adapt(
        "test_text_encoder", data, name="enc-adapted", epochs=3, lr=1e-3, head_epochs=3, progress=False
    )
    ppl = report.perplexity["domain"]
    assert report.objective == "mlm" and report.fresh_head
    assert ppl["after"] < 0.85 * ppl["before"], ppl  # the encoder itself learned the domain
    # The control (head alone, same steps) and the adaptation ran the same number of steps.
    control = [h for h in report.history if h["phase"] == "control"]
    adapted = [h for h in report.history if h["phase"] == "adapt"]
    assert [h["steps"] for h in control] == [h["steps"] for h in adapted] and report.head_warmup_steps > 0
    assert ppl["before"] == control[-1]["held_out_perplexity"]
    assert report.by_name and report.folder == backbones_home / "enc-adapted"
    card = json.loads((report.folder / CARD_FILE).read_text())
    assert card["perplexity"]["domain"] == ppl and card["data"]["texts"] == 120

    parent = create_backbone("test_text_encoder")
    bb = create_backbone("enc-adapted")
    assert bb.card.parent["name"] == "test_text_encoder"
    assert bb.card.parent["weights_sha256"] == parent.card.weights_sha256
    assert bb.card.license == parent.card.license and "MLM on 120 texts" in bb.card.pretraining_data
    assert bb.group_names == parent.group_names and bb.embed_dim == parent.embed_dim
    assert bb.key != parent.key  # a different network: the feature cache keeps them apart
    assert not torch.allclose(pooled(bb, DOMAIN), pooled(parent, DOMAIN))
    assert "enc-adapted" in {s.name for s in list_backbones()}

    # Adapting the adapted backbone continues with its trained head: no fresh head, no warm-up.
    again = adapt("enc-adapted", data, name="enc-adapted-2", epochs=1, lr=1e-3, progress=False)
    assert not again.fresh_head and again.head_warmup_steps == 0
    assert create_backbone("enc-adapted-2").card.parent["name"] == "enc-adapted"


def test_clm_lowers_perplexity_scores_general_text_and_the_cli_prints_how_to_use_it(
    tmp_path: Path, backbones_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.cli import main

    data = write_lines(tmp_path / "domain.txt", DOMAIN, 120)
    general = write_lines(tmp_path / "general.txt", GENERAL, 40, seed=1)
    args = ["adapt", "--backbone", "test_llama", "--unlabeled", str(data), "--name", "llama-dom"]
    args += ["--epochs", "3", "--lr", "3e-3", "--mix-general", str(general), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    ppl = out["perplexity"]
    assert out["objective"] == "clm" and not out["fresh_head"] and out["head_warmup_steps"] == 0
    assert ppl["domain"]["after"] < 0.7 * ppl["domain"]["before"], ppl
    assert ppl["general"]["before"] > 0 and ppl["general"]["after"] > 0  # the forgetting check ran
    assert out["general"]["train_chunks"] > 0 and out["general"]["mix_fraction"] == 0.2

    bb = create_backbone("llama-dom")
    parent = create_backbone("test_llama")
    assert bb.group_names == parent.group_names == ["embeddings", "layer0", "layer1"]
    assert bb.card.parent["name"] == "test_llama" and bb.card.family == "adapted:llm:llama"
    assert not torch.allclose(pooled(bb, DOMAIN), pooled(parent, DOMAIN))

    assert main(["adapt", "--backbone", "test_llama", "--unlabeled", str(data), "--name", "llama-2"]) == 0
    text = capsys.readouterr().out
    assert "headstart fit DATA --backbone llama-2" in text and "perplexity" in text
    # Written outside the backbones home: used by its folder path, still carded with its parent.
    elsewhere = tmp_path / "elsewhere" / "llama-3"
    assert main(["adapt", "--backbone", "llama-dom", "--unlabeled", str(data), "--out", str(elsewhere)]) == 0
    assert f"--backbone {elsewhere}" in capsys.readouterr().out.replace("\n", "")
    assert "llama-3" not in {s.name for s in list_backbones()}
    by_path = create_backbone(str(elsewhere))
    assert by_path.name == str(elsewhere) and by_path.card.parent["name"] == "llama-dom"


def test_txt_layouts_tables_and_folders_are_read_and_empty_texts_counted(tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("first text\n\n   \nsecond text\nthird\n", encoding="utf-8")
    r = read_unlabeled(lines)
    assert r.texts == ["first text", "second text", "third"] and r.skipped_empty == 2 and r.layout == "lines"

    paras = tmp_path / "paras.txt"
    paras.write_text("a wrapped\nparagraph here\n\nanother one\nover two lines\n\n\n", encoding="utf-8")
    r = read_unlabeled(paras)
    assert r.texts == ["a wrapped paragraph here", "another one over two lines"] and r.layout == "paragraphs"
    assert read_unlabeled(lines, "paragraphs").texts == ["first text", "second text third"]
    assert read_unlabeled(paras, "lines").texts[:2] == ["a wrapped", "paragraph here"]

    table = tmp_path / "t.csv"
    table.write_text('text,label\n"multi\nline",a\n"  ",b\nplain,c\n', encoding="utf-8")
    r = read_unlabeled(table)
    assert r.texts == ["multi\nline", "plain"] and r.skipped_empty == 1

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("three\n", encoding="utf-8")
    (folder / "notes.md").write_text("ignored\n", encoding="utf-8")
    r = read_unlabeled(folder)
    assert r.texts == ["one", "two", "three"] and r.files == 2
    first = r.sha256
    (folder / "sub" / "b.txt").write_text("three!\n", encoding="utf-8")
    assert read_unlabeled(folder).sha256 != first  # the data hash follows the content


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", "holds no text"),
        ("blank.txt", b"  \n\n\t\n", "3 empty"),
        ("latin1.txt", "caf\u00e9 au lait\n".encode("latin-1"), "latin1.txt:1 is not UTF-8"),
        ("latin1.csv", "text\nna\u00efve\n".encode("latin-1"), "latin1.csv:2 is not UTF-8"),
        ("nocol.csv", b"body,label\nhello,a\n", "no `text` column"),
        ("one.txt", b"only one text\n", "needs at least 2"),
    ],
)
def test_bad_unlabeled_input_is_a_clear_error(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(HeadstartError, match=message) as err:
        adapt("test_text_encoder", path, name="never", progress=False)
    assert name in str(err.value) and err.value.fix
    assert not (tmp_path / "backbones").exists()  # nothing written


def test_a_failed_write_leaves_no_folder_and_keeps_the_previous_backbone(
    tmp_path: Path, backbones_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headstart.pretrain.folder as folder

    data = write_lines(tmp_path / "domain.txt", DOMAIN, 40)
    kwargs = {"epochs": 1, "head_epochs": 1, "progress": False}

    def crash(src: Path, dest: Path) -> None:
        (dest / "partial.json").write_text("{}")
        raise OSError("disk full")

    copy_parent_files = folder.copy_parent_files
    monkeypatch.setattr(folder, "copy_parent_files", crash)
    with pytest.raises(OSError, match="disk full"):
        adapt("test_text_encoder", data, name="enc", **kwargs)
    # No backbone, no temp folder left behind: only the runs' checkpoints, which --resume finishes from.
    assert [p.name for p in backbones_home.iterdir()] == [".enc.training"]
    assert "enc" not in {s.name for s in list_backbones()}

    monkeypatch.setattr(folder, "copy_parent_files", copy_parent_files)
    first = adapt("test_text_encoder", data, name="enc", resume=True, **kwargs)
    assert [p.name for p in backbones_home.iterdir()] == ["enc"]  # the checkpoints go once it is in
    sha = first.card["weights_sha256"]
    with pytest.raises(HeadstartError, match="already exists"):  # refused before any training
        adapt("test_text_encoder", data, name="enc", **kwargs)
    monkeypatch.setattr(folder, "copy_parent_files", crash)
    with pytest.raises(OSError):
        adapt("test_text_encoder", data, name="enc", overwrite=True, seed=1, **kwargs)
    assert sorted(p.name for p in backbones_home.iterdir()) == [".enc.training", "enc"]
    assert json.loads((backbones_home / "enc" / CARD_FILE).read_text())["weights_sha256"] == sha

    # Weights changed after the card was written are refused at load.
    weights = backbones_home / "enc" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(HeadstartError, match="does not match the sha256 in its card"):
        create_backbone("enc")


def test_adapted_names_cannot_shadow_packaged_backbones_or_hold_paths(tmp_path: Path) -> None:
    data = write_lines(tmp_path / "domain.txt", DOMAIN, 20)
    with pytest.raises(HeadstartError, match="already names"):
        adapt("test_text_encoder", data, name="test_llama", progress=False)
    with pytest.raises(HeadstartError, match="cannot name a backbone"):
        adapt("test_text_encoder", data, name="../escape", progress=False)
    with pytest.raises(HeadstartError, match="text backbones"):
        adapt("test_efficientnet_lite", data, name="img", progress=False)


def test_masking_is_bert_style_and_never_touches_special_or_padding_tokens() -> None:
    from headstart.pretrain.objectives import IGNORE, Chunk, collate, mask_tokens

    rng = random.Random(0)
    chunks = []
    for _ in range(400):
        n = rng.randint(1, 30)
        chunks.append(Chunk([2, *(rng.randint(10, 99) for _ in range(n)), 3], [1, *[0] * n, 1]))
    batch = collate(chunks, pad_id=0)
    masked, labels = mask_tokens(batch, mask_id=4, vocab_size=100, generator=torch.Generator().manual_seed(0))
    chosen = labels != IGNORE
    assert not (chosen & ~batch["real"]).any()  # [CLS], [SEP] and padding are never predicted
    assert chosen.any(dim=1).all()  # every sequence predicts at least one token, even a one-word text
    assert torch.equal(labels[chosen], batch["input_ids"][chosen])
    share = chosen.sum() / batch["real"].sum()
    as_mask = (masked[chosen] == 4).float().mean()
    kept = (masked[chosen] == batch["input_ids"][chosen]).float().mean()
    assert 0.14 < share < 0.19 and 0.75 < as_mask < 0.85 and 0.07 < kept < 0.15, (share, as_mask, kept)
    assert torch.equal(masked[~chosen], batch["input_ids"][~chosen])


def test_causal_lm_loss_ignores_padding() -> None:
    from headstart.backbones.llm import load_causal_lm
    from headstart.pretrain.objectives import Chunk, clm_loss, collate

    lm, _ = load_causal_lm("test_llama")
    chunks = [Chunk([2, 40, 41, 42, 43, 44], [1, 0, 0, 0, 0, 0]), Chunk([2, 50, 51], [1, 0, 0])]
    with torch.no_grad():
        together, n = clm_loss(lm, collate(chunks, pad_id=0))
        alone = [clm_loss(lm, collate([c], pad_id=0)) for c in chunks]
    assert n == sum(k for _, k in alone) == 5 + 2
    torch.testing.assert_close(together, sum(v for v, _ in alone), rtol=1e-4, atol=1e-4)


def test_compare_runs_adapt_then_fine_tune_on_the_training_texts_only(tmp_path: Path) -> None:
    """`compare --strategies adapt+head`: continued pretraining on the train split's texts, then the
    strategy on the adapted backbone, in the same table as the probe."""
    import csv

    from headstart.verdicts.compare import compare

    data = tmp_path / "texts.csv"
    rng = random.Random(0)
    with open(data, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(48):
            label = i % 2
            # Numbered: identical texts in one class are one item (the loader keeps one copy).
            w.writerow([f"{rng.choice(DOMAIN[:2] if label else DOMAIN[2:])} ({i})", f"c{label}"])
    out = tmp_path / "cmp"
    result = compare(
        data, "test_text_encoder", budget_s=120, strategies=["adapt+head"], out=out, progress=False
    )
    rows = {r["strategy"]: r for r in result["rows"]}
    assert set(rows) == {"probe", "adapt+head"}
    run = json.loads((Path(rows["adapt+head"]["run_dir"]) / "run.json").read_text())
    assert run["backbone"]["card"]["parent"]["name"] == "test_text_encoder"
    from headstart.data import load_dataset

    train = {it.text for it in load_dataset(data, seed=0).split("train")}
    texts_file = out / "adapted-backbones" / "adapt-head" / "adapt-train-texts.csv"
    adapted_on = texts_file.read_text(encoding="utf-8").splitlines()[1:]
    assert adapted_on and set(adapted_on) <= train  # never a val/test text
