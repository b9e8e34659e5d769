"""`headstart cluster`: the automatic k, the adjusted Rand index, suspected mislabels, the map page (escaped,
offline), the run report's section, and bad --k refused before any embedding."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder, needs_chromium, render_headless
from headstart.cli import main
from headstart.explore.clusters import MISLABEL_SHARE, cluster_embeddings
from headstart.report.sections.clusters import standalone_page


def _blobs(per: int = 20, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Three well-separated Gaussian blobs labelled A, B, C (in that order)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 6
    X = np.concatenate([c + rng.normal(size=(per, dim)) for c in centres]).astype(np.float32)
    return X, [lab for lab in "ABC" for _ in range(per)]


def test_three_blobs_give_k3_and_ari_one() -> None:
    X, labels = _blobs()
    r = cluster_embeddings(X, labels)
    assert r.criterion == "silhouette" and r.k == 3
    assert max(r.silhouettes, key=lambda k: r.silhouettes[k]) == 3 and {2, 4} <= set(r.silhouettes)
    assert r.ari == pytest.approx(1.0)
    assert [c["size"] for c in r.clusters] == [20, 20, 20]
    assert all(c["majority_share"] == 1.0 for c in r.clusters)
    assert r.mislabels == []  # clean labels: nothing suspected
    assert r.coords.shape == (60, 2)
    given = cluster_embeddings(X, labels, k=5)
    assert given.criterion == "given" and given.k == 5 and given.ari < 1.0


def test_a_planted_mislabel_is_the_top_suspect() -> None:
    X, labels = _blobs()
    labels[7] = "B"  # an item of blob A labelled B
    r = cluster_embeddings(X, labels, sources=[f"item{i}" for i in range(len(labels))])
    top = r.mislabels[0]
    assert (top["index"], top["source"], top["label"]) == (7, "item7", "B")
    assert top["neighbours_label"] == "A" and top["score"] == 1.0
    assert all(m["score"] >= MISLABEL_SHARE for m in r.mislabels)
    assert len(r.mislabels) == 1  # its blob-A neighbours see one B among ten: 0.1, not suspected
    others = np.round(np.delete(r.mislabel_scores[:20], 7), 3)
    assert set(others.tolist()) == {0.0, 0.1}  # some neighbours of the plant see it, none other


def _text_summary(text: str) -> dict:
    return {
        "data": "texts.csv",
        "backbone": "tiny",
        "modality": "text",
        "n": 2,
        "k": 2,
        "criterion": "given",
        "ari": 0.0,
        "clusters": [{"cluster": 0, "size": 1, "majority_label": "<b>x</b>", "majority_share": 1.0}],
        "mislabel_rule": {"neighbours": 10, "metric": "cosine", "min_share": 0.7},
        "mislabels": [
            {
                "index": 0,
                "source": text,
                "label": "<b>x</b>",
                "score": 1.0,
                "neighbours_label": "y",
                "cluster": 0,
            }
        ],
        "points": [
            {"source": text, "label": "<b>x</b>", "split": "train", "cluster": 0, "x": 0.0, "y": 1.0},
            {"source": "plain", "label": "y", "split": "train", "cluster": 1, "x": 1.0, "y": 0.0},
        ],
    }


def test_map_page_shows_texts_escaped() -> None:
    evil = '<script>alert("x")</script> & more'
    html = standalone_page(_text_summary(evil), resolve=lambda s: None)
    assert "<script" not in html.lower() and "<b>x</b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in html
    assert html.count('class="pt"') == 2 and html.count('class="ring"') == 1  # the suspect is ringed
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_big_maps_are_sampled_keeping_every_suspect() -> None:
    from headstart.report.sections.clusters import MAP_POINTS, body

    n = MAP_POINTS + 500
    points = [{"source": f"t{i}", "label": "a", "cluster": i % 3, "x": i, "y": -i} for i in range(n)]
    flagged = set(range(0, n, 250))
    summary = {"modality": "text", "k": 3, "n": n, "points": points, "clusters": []}
    summary["mislabels"] = [{"index": i, "source": f"t{i}", "score": 0.8} for i in sorted(flagged)]
    html = body(summary, resolve=lambda s: None)
    assert html.count('class="pt"') == MAP_POINTS and html.count('class="ring"') == len(flagged)
    assert f"Showing {MAP_POINTS:,} of {n:,} items" in html


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A probe run of a small image folder, then `headstart cluster --out RUN --json` on the same data."""
    from headstart.api import probe

    tmp = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(tmp / "cache"))
        data = make_image_folder(tmp / "data", classes=("red", "blue", "green"), per_class=6)
        run = probe(data, backbone=TEST_BACKBONE, out=tmp / "run", backend="torch", progress=False).run_dir
        shutil.copytree(run, tmp / "bare")
        argv = ["cluster", str(data), "--backbone", TEST_BACKBONE, "--backend", "torch", "--out", str(run)]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main([*argv, "--json"]) == 0
    return run, tmp / "bare", json.loads(buf.getvalue())


def test_cli_writes_json_csv_and_map(clustered: tuple[Path, Path, dict]) -> None:
    run, _, got = clustered
    assert got["n"] == 18 and 2 <= got["k"] <= 6 and got["criterion"] == "silhouette"
    assert -1.0 <= got["ari"] <= 1.0 and "points" not in got  # --json leaves the coordinates to the file
    assert sorted(Path(p).name for p in got["written"]) == ["clusters.csv", "clusters.html", "clusters.json"]
    saved = json.loads((run / "clusters.json").read_text())
    assert saved["k"] == got["k"] and len(saved["points"]) == 18
    assert {p["label"] for p in saved["points"]} == {"red", "blue", "green"}
    with open(run / "clusters.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 18 and set(rows[0]) == {"source", "label", "split", "cluster", "mislabel_score"}
    page = (run / "clusters.html").read_text()
    assert page.count('class="pt"') == 18 and page.count("data:image/jpeg;base64,") >= 18  # thumbnails


def test_report_section_with_and_without_clusters(clustered: tuple[Path, Path, dict]) -> None:
    from headstart.report import build_report

    run, bare, _ = clustered
    without = build_report(bare)
    assert without.sections["clusters"] is False
    assert f"headstart cluster DATA --backbone B --out {bare}" in without.html
    report = build_report(run)
    assert report.sections["clusters"] is True
    assert '<svg class="hs-map"' in report.html and "adjusted Rand index" in report.html
    assert '<span class="swatch" style="background:#4c78a8"></span>0</td>' in report.html  # markup, not text


@needs_chromium
def test_report_with_the_map_renders_in_a_headless_browser(
    clustered: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    from PIL import Image

    from headstart.report import write_report

    dom, shot = render_headless(write_report(clustered[0]), tmp_path, window="1280,1400")
    assert '<section id="clusters"' in dom and dom.count('class="pt"') == 18
    assert (np.asarray(Image.open(shot).convert("L")) < 128).mean() > 0.01  # drawn, not blank


@pytest.mark.parametrize("k", ["0", "999"])
def test_bad_k_exits_2_before_embedding(
    k: str, image_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import headstart.explore.embedded as embedded

    def refuse(*a: object, **kw: object) -> None:
        raise AssertionError("embedded before checking --k")

    monkeypatch.setattr(embedded, "embed_dataset", refuse)
    assert main(["cluster", str(image_folder), "--backbone", TEST_BACKBONE, "--k", k]) == 2
    err = capsys.readouterr().err
    assert f"--k {k}" in err and "fix:" in err
    with pytest.raises(SystemExit) as e:
        main(["cluster", str(image_folder), "--k", "many"])
    assert e.value.code == 2
