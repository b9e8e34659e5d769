"""`headstart embed` and `headstart search`: exact and HNSW search, the file formats, text queries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE
from headstart.cli import main
from headstart.errors import HeadstartError
from headstart.explore.index import ExactIndex, FaissIndex, build_index
from headstart.explore.index_file import load_index_file, sidecars
from test_text import animal_vehicle_rows, write_csv


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, dict]:
    rc = main([str(a) for a in argv] + ["--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_exact_search_is_brute_force_cosine_best_first() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 16)).astype(np.float32) * rng.uniform(0.1, 9, (200, 1)).astype(np.float32)
    Q = rng.standard_normal((7, 16)).astype(np.float32)
    cos = (Q / np.linalg.norm(Q, axis=1, keepdims=True)) @ (X / np.linalg.norm(X, axis=1, keepdims=True)).T
    scores, ids = ExactIndex(X).search(Q, 10)
    np.testing.assert_array_equal(ids, np.argsort(-cos, axis=1)[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(cos, ids, axis=1), rtol=1e-5)
    scores, ids = ExactIndex(X[:5]).search(Q, 10)  # k beyond the items: all of them, ordered
    assert ids.shape == (7, 5)
    np.testing.assert_array_equal(ids, np.argsort(-cos[:, :5], axis=1))


def test_hnsw_finds_each_item_itself_first_and_reuses_its_cached_graph() -> None:
    pytest.importorskip("faiss")
    X = np.random.default_rng(1).standard_normal((300, 32)).astype(np.float32)
    first = FaissIndex(X)
    assert first.kind == "faiss-hnsw" and not first.cached
    scores, ids = first.search(X, 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(300))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    again = FaissIndex(X)
    assert again.cached
    np.testing.assert_array_equal(again.search(X[:20], 5)[1], first.search(X[:20], 5)[1])
    assert isinstance(build_index(X), ExactIndex)  # 300 items: exact search is the faster there
    assert isinstance(build_index(X, "hnsw"), FaissIndex)


def test_embed_to_parquet_then_search_finds_the_item_itself(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "emb.parquet"
    rc, r = _cli_json(capsys, "embed", image_folder, "--backbone", TEST_BACKBONE, "--out", out)
    assert rc == 0 and r["n"] == 20
    table = pq.read_table(out)
    assert table.column_names == ["id", "source", "label", "split", "vector"]
    assert table.schema.field("vector").type == pa.list_(pa.float32())
    meta = table.schema.metadata
    assert json.loads(meta[b"backbone"]) == TEST_BACKBONE and json.loads(meta[b"modality"]) == "image"
    assert json.loads(meta[b"dim"]) == len(table.column("vector")[0])

    query = sorted((image_folder / "blue").iterdir())[3]
    rc, r = _cli_json(capsys, "search", out, query, tmp_path / "missing.png", "--k", 3)
    assert rc == 0 and r["backend"] == "exact"
    hits = r["results"][0]["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["source"] == str(query) and hits[0]["label"] == "blue" and hits[0]["score"] > 0.999
    assert hits[1]["score"] < hits[0]["score"]
    assert list(r["errors"]) == [str(tmp_path / "missing.png")]

    rc, r = _cli_json(capsys, "search", out, tmp_path / "missing.png")  # no query readable: exit 2
    assert rc == 2 and "missing.png" in r["error"]
    before = out.read_bytes()
    rc, r = _cli_json(capsys, "embed", image_folder, "--backbone", TEST_BACKBONE, "--out", out)
    assert rc == 2 and str(out) in r["error"] and "--overwrite" in r["fix"] and out.read_bytes() == before


def test_search_says_which_backend_answered(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("faiss")
    import headstart.explore.index

    out = tmp_path / "emb.npy"
    assert main(["embed", str(image_folder), "--backbone", TEST_BACKBONE, "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(headstart.explore.index, "HNSW_MIN_ITEMS", 10)  # 20 items: HNSW from 10 up
    query = sorted((image_folder / "red").iterdir())[0]
    for flags, backend in (([], "faiss-hnsw"), (["--exact"], "exact")):
        rc, r = _cli_json(capsys, "search", out, query, "--k", 5, *flags)
        assert rc == 0 and r["backend"] == backend
        assert r["results"][0]["hits"][0]["source"] == str(query)


def test_text_index_reads_a_txt_query_file_as_its_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = animal_vehicle_rows(6)
    data = write_csv(tmp_path / "texts.csv", rows)
    out = tmp_path / "emb.npy"
    rc, r = _cli_json(capsys, "embed", data, "--backbone", "test_text_encoder", "--out", out)
    assert rc == 0 and r["modality"] == "text" and all(p.is_file() for p in sidecars(out))
    target = rows[4]["text"]
    (tmp_path / "q.txt").write_text(target + "\n", encoding="utf-8")
    rc, r = _cli_json(
        capsys, "search", out, tmp_path / "q.txt", tmp_path / "nope.txt", rows[7]["text"], "--k", 2
    )
    assert rc == 0
    by_query = {res["query"]: res["hits"] for res in r["results"]}
    # The file's content was searched, not its name: the identical text in the index comes first.
    assert by_query[str(tmp_path / "q.txt")][0]["source"] == target
    assert by_query[str(tmp_path / "q.txt")][0]["score"] > 0.999
    assert by_query[rows[7]["text"]][0]["source"] == rows[7]["text"]  # a plain text is the text
    assert "file not found" in r["errors"][str(tmp_path / "nope.txt")]


def test_npy_with_sidecars_of_another_export_is_refused(tmp_path: Path) -> None:
    from headstart.explore.index_file import write_index_file

    out = tmp_path / "e.npy"
    meta = {"backbone": "x", "modality": "image"}
    write_index_file(out, np.ones((3, 4), np.float32), [("a", "l", "train")] * 3, meta)
    assert load_index_file(out).X.shape == (3, 4)
    np.save(out, np.ones((5, 4), np.float32))  # the matrix replaced, the sidecars not
    with pytest.raises(HeadstartError, match=r"e\.npy .*5 vectors of 4, 3 rows"):
        load_index_file(out)


def test_unknown_out_suffix_exits_2_before_any_embedding(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import headstart.explore.embedded

    def never(*a: object, **k: object) -> None:
        raise AssertionError("embedded before the --out check")

    monkeypatch.setattr(headstart.explore.embedded, "embed_dataset", never)
    out = tmp_path / "emb.csv"
    rc, r = _cli_json(capsys, "embed", image_folder, "--backbone", TEST_BACKBONE, "--out", out)
    assert rc == 2 and str(out) in r["error"] and ".parquet" in r["fix"] and not out.exists()
