"""Bad-input corpus: predict and export on text runs, store references, tables (issue 13, items 1, 6, 10).

- `predict` on a text run reads each FILE as one UTF-8 text (never classifies its name); a missing,
  non-UTF-8, empty file or a folder gets an ERROR line with the reason, exit 1 and a fix; literal texts go
  in `--text` or `-` (stdin lines); `--text` on an image run is refused.
- `predict` takes a stored model (NAME, NAME:vN, NAME@alias) as `evaluate` does.
- `export --onnx` of a text run (its split holds texts longer than a file name may be) finishes, with its
  parity and int8 test-accuracy checks; a text model the exporter cannot trace is a clear error.
- A table with neither a `text` nor a `path` column says the columns it has and what each kind needs; a
  CSV's default model name is its stem.

Every refusal: the exit code, the message names the input and a fix, no traceback, nothing written changed.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from badinput import assert_refused, run_cli, tree_digest
from conftest import TEST_BACKBONE, make_image_folder
from headstart.testing import TEST_WORDS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ANIMALS = TEST_WORDS[TEST_WORDS.index("cat") : TEST_WORDS.index("paw") + 1]
VEHICLES = TEST_WORDS[TEST_WORDS.index("car") : TEST_WORDS.index("ride") + 1]
FILLER = TEST_WORDS[: TEST_WORDS.index("as") + 1]


def _long_text(words: list[str], rng: random.Random) -> str:
    """80-100 words: longer than a file name may be (255 bytes), as real texts are."""
    n = rng.randint(80, 100)
    return " ".join(rng.choice(words) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(n))


def _write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A text probe run (tiny encoder, long texts), an image probe run, and a store holding the text run."""
    from headstart.api import probe
    from headstart.store import ModelStore

    root = tmp_path_factory.mktemp("badpredict")
    rng = random.Random(0)
    rows = [
        {"text": _long_text(words, rng), "label": label}
        for label, words in (("animal", ANIMALS), ("vehicle", VEHICLES))
        for _ in range(20)
    ]
    assert min(len(r["text"].encode()) for r in rows) > 255
    w: dict[str, Any] = {"root": root, "rows": rows, "store": root / "models"}
    w["texts"] = _write_csv(root / "texts.csv", rows, ("text", "label"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        probe(w["texts"], backbone="test_text_encoder", out=root / "text_run", progress=False)
        images = make_image_folder(root / "images", per_class=8)
        probe(images, backbone=TEST_BACKBONE, out=root / "image_run", backend="torch", progress=False)
    w["text_run"], w["image_run"], w["images"] = root / "text_run", root / "image_run", images
    store = ModelStore(w["store"])
    store.register(w["text_run"], "reviews")
    store.promote("reviews", 1, "production")
    return w


def _labels(res: Any) -> list[dict[str, Any]]:
    assert "Traceback" not in res.text, res.text
    return json.loads(res.out)


# -- predict on a text run: files are read, literal texts are explicit -------------------------------------


def test_a_text_file_is_read_as_its_text_not_classified_by_its_name(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.model import load_model

    model = load_model(world["text_run"])
    known = tmp_path / "known.txt"

    def label_of(source: str) -> str:
        proba, kept, _ = model.predict_proba([source], cache=False)
        assert kept == [0]
        return model.classes[int(proba[0].argmax())]

    # A training text the model gets right, of the other class than the file's *name* would get: read
    # as a name (the old bug), the file would come out with the wrong class.
    name_label = label_of(str(known))
    text, label = next(
        (r["text"], r["label"])
        for r in world["rows"]
        if r["label"] != name_label and label_of(r["text"]) == r["label"]
    )
    known.write_text(text, encoding="utf-8")
    res = run_cli(capsys, "predict", world["text_run"], known, "--text", text, "--json")
    assert res.code == 0, res.text
    by_file, by_text = _labels(res)
    assert by_file["file"] == str(known) and by_file["label"] == label
    assert by_text["text"] == text and by_text["probability"] == pytest.approx(by_file["probability"])


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("does_not_exist.txt", None, "file not found"),
        ("latin1.txt", "café au lait".encode("latin-1"), "not UTF-8 text (line 1, byte 0xe9)"),
        ("empty.txt", b"", "empty text"),
        ("blank.txt", b" \n\t\n", "whitespace-only text"),
        ("folder.txt", "dir", "a folder, not a text file"),
        (
            "reviews.csv",
            b"text,label\na cat,animal\n",
            "a .csv table, not one text (pass its texts one per line to -)",
        ),
    ],
)
def test_an_unusable_text_file_gets_its_reason_and_exit_1(
    world: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes | str | None,
    reason: str,
) -> None:
    bad = tmp_path / name
    if content == "dir":
        bad.mkdir()
    elif content is not None:
        bad.write_bytes(content)  # type: ignore[arg-type]
    good = tmp_path / "good.txt"
    good.write_text(world["rows"][0]["text"], encoding="utf-8")
    before = tree_digest(world["text_run"])
    res = run_cli(capsys, "predict", world["text_run"], good, bad)
    assert_refused(res, names=bad, code=1)  # the ERROR line names it; stderr says the fix
    assert f"{bad}\tERROR\t{reason}" in res.out
    assert res.out.splitlines()[0].startswith(f"{good}\t")  # the usable file is still labeled
    assert "--text" in res.err
    assert tree_digest(world["text_run"]) == before
    res = run_cli(capsys, "predict", world["text_run"], bad, "--json")
    assert res.code == 1 and _labels(res) == [{"file": str(bad), "error": reason}]


def test_literal_texts_come_from_text_flags_and_stdin_lines(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [world["rows"][0]["text"], world["rows"][-1]["text"]]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"{texts[0]}\n\n{texts[1]}\n".encode())))
    res = run_cli(capsys, "predict", world["text_run"], "-", "--text", "a red bus", "--json")
    out = _labels(res)
    assert res.code == 0
    assert [(r.get("line"), r["text"]) for r in out] == [(1, texts[0]), (2, texts[1]), (None, "a red bus")]
    assert all(r["label"] in ("animal", "vehicle") for r in out)

    res = run_cli(capsys, "predict", world["text_run"], "--text", "  ")
    assert res.code == 1 and "'  '\tERROR\t" in res.out  # a blank text is an item with a reason

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9\n")))
    assert_refused(run_cli(capsys, "predict", world["text_run"], "-"), names="stdin")


def test_nothing_to_label_and_text_flags_on_an_image_run_are_refused(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused(run_cli(capsys, "predict", world["text_run"]), names=world["text_run"])
    res = run_cli(capsys, "predict", world["image_run"], "--text", "a red square")
    assert_refused(res, names=world["image_run"])
    assert "image model" in res.text
    assert_refused(run_cli(capsys, "predict", world["text_run"], "--text", "x", "--top", "0"), names="--top")


def test_image_predict_reports_a_missing_file_per_item(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Already so before issue 13, and kept: the text case above follows the same shape."""
    good = sorted(world["images"].rglob("*.png"))[0]
    res = run_cli(capsys, "predict", world["image_run"], good, tmp_path / "gone.png", "--backend", "torch")
    assert_refused(res, names=tmp_path / "gone.png", code=1)
    assert res.out.splitlines()[0].startswith(f"{good}\t")


# -- predict takes store references as evaluate does ---------------------------------------------------------


@pytest.mark.parametrize(
    "ref", ["reviews", "reviews:v1", "reviews:1", "reviews@production", "reviews@latest"]
)
def test_predict_accepts_store_references(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], ref: str
) -> None:
    text = world["rows"][0]["text"]
    want = _labels(run_cli(capsys, "predict", world["text_run"], "--text", text, "--json"))
    before = tree_digest(world["store"])
    res = run_cli(capsys, "predict", ref, "--store", world["store"], "--text", text, "--json")
    assert res.code == 0, res.text
    assert _labels(res) == want
    assert tree_digest(world["store"]) == before


@pytest.mark.parametrize(
    ("ref", "names"),
    [
        ("reviews@staging", "staging"),
        ("reviews:v9", "v9"),
        ("nomodel", "nomodel"),
        ("runs/gone", "runs/gone"),
    ],
)
def test_predict_refuses_an_unknown_reference_naming_it(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], ref: str, names: str
) -> None:
    before = tree_digest(world["store"])
    res = run_cli(capsys, "predict", ref, "--store", world["store"], "--text", "a cat")
    assert_refused(res, names=names)
    assert tree_digest(world["store"]) == before


def test_evaluate_and_predict_resolve_references_alike(world: dict[str, Any]) -> None:
    """One resolver: evaluate's RUN and predict's RUN go through the same function."""
    import headstart.commands.evaluate as evaluate_cmd
    from headstart.commands import run_folder

    assert evaluate_cmd.run_folder is run_folder
    folder, stored = run_folder("reviews@production", world["store"])
    assert stored and folder == world["store"] / "reviews" / "v1"
    assert run_folder(world["text_run"]) == (world["text_run"], False)


# -- export --onnx of a text run ---------------------------------------------------------------------------


def test_export_onnx_of_a_text_run_finishes_with_parity_and_test_accuracy(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    from headstart.export import onnx_feed, read_card
    from headstart.model import load_model

    out = tmp_path / "text.onnx"
    res = run_cli(capsys, "export", world["text_run"], "--onnx", "--out", out, "--quantize", "--json")
    assert "Traceback" not in res.text and res.code == 0, res.text
    report = json.loads(res.out)
    par = report["parity"]
    assert par["n"] == 12 and par["top1_agreement"] == 1.0 and par["max_abs_diff"] < 1e-4
    assert report["quantized"]["test"]["n"] == 6  # the int8 copy is measured on the run's test texts
    card = read_card(out)
    assert [i["name"] for i in card["inputs"]] == ["input_ids", "attention_mask"]
    assert card["modality"] == "text" and card["preprocess"]["tokenizer_file"] == "text.tokenizer.json"

    # The graph answers like the run on texts it never saw, fed through the tokenizer written beside it.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tmp_path / "text.tokenizer.json"))
    model = load_model(world["text_run"])
    texts = ["a cat and a dog on the farm", world["rows"][5]["text"]]
    assert [tok.encode(t).ids for t in texts] == [list(model.backbone.load_item(t)) for t in texts]
    batch = model.backbone.collate([model.backbone.load_item(t) for t in texts])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], onnx_feed(batch))
    want, _, _ = model.logits(texts, cache=False)
    assert abs(logits - want).max() < 1e-4

    # --check takes files: for a text run each file is one text.
    f = tmp_path / "check.txt"
    f.write_text(texts[0], encoding="utf-8")
    res = run_cli(
        capsys, "export", world["text_run"], "--onnx", "--out", tmp_path / "c.onnx", "--check", f, "--json"
    )
    assert res.code == 0, res.text
    assert json.loads(res.out)["parity"]["n"] == 1


def test_serve_uses_a_text_runs_export_and_answers_as_pytorch(world: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    import numpy as np

    from headstart.export import export_onnx_model
    from headstart.model import load_model
    from headstart.serve import Predictor

    run = tmp_path / "run"
    shutil.copytree(world["text_run"], run)
    export_onnx_model(run)  # RUN/model.onnx: what serve picks up
    model = load_model(run)
    onnx, torch_ = Predictor(model), Predictor(model, engine="torch")
    assert onnx.engine == "onnx"
    examples = [onnx.decode_text(r["text"]) for r in world["rows"][:3]] + [onnx.decode_text("a cat")]
    np.testing.assert_allclose(onnx.predict(examples), torch_.predict(examples), atol=1e-5)


def test_a_text_model_the_exporter_cannot_trace_is_a_clear_error(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import headstart.export.graph as export

    def fail(*a: Any, **k: Any) -> None:
        raise RuntimeError("Exporting the operator 'aten::scaled_dot_product_attention' is not supported")

    monkeypatch.setattr(export.torch.onnx, "export", fail)
    before = tree_digest(world["text_run"])
    res = run_cli(capsys, "export", world["text_run"], "--onnx", "--out", tmp_path / "m.onnx")
    assert_refused(res, names=world["text_run"])
    assert "test_text_encoder" in res.text and "headstart serve" in res.text
    assert not (tmp_path / "m.onnx").exists() and tree_digest(world["text_run"]) == before


# -- tables and model names --------------------------------------------------------------------------------


def test_a_table_without_text_or_path_column_says_what_it_has_and_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"sentence": f"a {w} on the road", "label": "vehicle"} for w in VEHICLES[:6]]
    table = _write_csv(tmp_path / "data.csv", rows, ("sentence", "label"))
    before = tree_digest(tmp_path)
    res = run_cli(capsys, "probe", table, "--backbone", "test_text_encoder", "--out", tmp_path / "run")
    assert_refused(res, names=table)
    for said in ("'sentence'", "`text,label`", "`path,label`"):
        assert said in res.text, res.text
    assert tree_digest(tmp_path) == before


def test_a_csv_gives_its_stem_as_the_default_model_name(tmp_path: Path) -> None:
    from headstart.store import default_name

    table = _write_csv(tmp_path / "reviews.csv", [{"text": "a cat", "label": "animal"}], ("text", "label"))
    assert default_name(table) == "reviews"
    assert default_name(tmp_path / "reviews.csv") == "reviews"
    (tmp_path / "run.v2").mkdir()
    assert default_name(tmp_path / "run.v2") == "run.v2"  # a folder keeps its whole name
