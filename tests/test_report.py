"""The HTML report: every section from a real run folder, escaping, no network, rendered by a real browser."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_BACKBONE, make_image_folder, needs_chromium, render_headless
from headstart.cli import main
from headstart.errors import HeadstartError
from headstart.report import SECTIONS, build_report, read_run_files, write_report

EVIL_CLASS = "<script>alert(1)"  # a legal folder name
EVIL_FILE = '<img src=x onerror="alert(2)">.png'


class _Page(HTMLParser):
    """Collects what the checks need: tags, attributes, section ids, meta tags, and parse problems."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.section_headings: dict[str, str] = {}
        self._section: str | None = None
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "section":
            self._section = a.get("id")
        if tag == "h2" and self._section:
            self._in_h2 = True
        if tag not in ("meta", "img", "br", "link", "input"):
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2 and self._section:
            self.section_headings[self._section] = self.section_headings.get(self._section, "") + data


def _parse(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    p.close()
    assert p.stack == [], f"unclosed tags: {p.stack}"
    return p


def _meta(page: _Page, name: str) -> list[str]:
    content = next(a["content"] for t, a in page.tags if t == "meta" and a.get("name") == name)
    return [s for s in (content or "").split(",") if s]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real probe run (tiny backbone), evaluated for real, plus fit/compare/curve/leakage files."""
    from headstart.api import probe
    from headstart.evaluate import evaluate_run
    from headstart.explore.clusters import cluster_dataset

    tmp = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(tmp / "cache"))
        data = make_image_folder(tmp / "data", classes=("red", "blue"), per_class=10)
        (data / "blue").rename(data / EVIL_CLASS)
        (data / "red" / EVIL_FILE).write_bytes(b"")  # unreadable: listed under skipped files
        ood = make_image_folder(tmp / "ood", classes=("green",), per_class=4)
        run = probe(data, backbone=TEST_BACKBONE, out=tmp / "run", backend="torch", progress=False).run_dir
        # Every file in a slice, half of them named like a script: the Slices section escapes it.
        files = sorted(p for p in data.rglob("*.png") if p.stat().st_size)
        rows = [f'"{p}",{"lit" if i % 2 else EVIL_CLASS}' for i, p in enumerate(files)]
        (tmp / "slices.csv").write_text("\n".join(["path,group", *rows]))
        evaluate_run(run, ood=ood, backend="torch", slices=tmp / "slices.csv")
        cluster_dataset(data, TEST_BACKBONE, out=run, backend="torch", progress=False)  # clusters.json
    ev = json.loads((run / "evaluation.json").read_text())
    # Mistakes are whatever the tiny model got wrong; add one whose file is gone, and one real one.
    real = data / "red" / "red_000.png"
    ev["mistakes"] = [
        {"source": str(real), "label": "red", "pred": EVIL_CLASS, "confidence": 0.97},
        {"source": str(tmp / "gone.png"), "label": EVIL_CLASS, "pred": "red", "confidence": 0.9},
        *ev["mistakes"],
    ]
    (run / "evaluation.json").write_text(json.dumps(ev))
    epochs = [
        {
            "epoch": e,
            "phase": "linear probe" if e <= 3 else "fine-tune",
            "train_loss": 1.2 / e,
            "train_acc": min(0.99, 0.5 + 0.06 * e),
            "val_loss": 1.0 / e + 0.02 * max(0, e - 6),
            "val_acc": min(0.9, 0.45 + 0.05 * e),
            "seconds": 1.5,
        }
        for e in range(1, 11)
    ]
    (run / "history.json").write_text(json.dumps({"epochs": epochs, "best_epoch": 6}))
    rows = [
        {
            "strategy": s,
            "val_accuracy": v,
            "test_accuracy": t,
            "test_macro_f1": t - 0.01,
            "train_s": 3.0 * (i + 1),
            "trainable_params": 2562 * (i + 1),
            "stored_bytes": 10_000 * (i + 1),
            "run_dir": f"runs/{s}",
        }
        for i, (s, v, t) in enumerate([("head", 0.8, 0.78), ("lp-ft", 0.9, 0.88), (EVIL_CLASS, 0.5, 0.5)])
    ]
    compare = {
        "rows": rows,
        "flags": {"negative_transfer": False, "overfitting": ["full"]},
        "recommendation": {"strategy": "lp-ft", "reason": "best validation accuracy"},
    }
    (run / "compare.json").write_text(json.dumps(compare))
    points = [
        {
            "method": m,
            "labels_per_class": n,
            "seed": s,
            "test_accuracy": min(1.0, g * (0.4 + 0.05 * n) + 0.01 * s),
        }
        for m, g in (("probe", 1.0), ("knn", 0.9))
        for n in (1, 2, 4, 8)
        for s in (0, 1)
    ]
    (run / "curve.json").write_text(json.dumps({"labels_per_class": [1, 2, 4, 8], "points": points}))
    pair = {"a": str(real), "b": f"{data}/{EVIL_CLASS}/x.png", "splits": ["train", "test"]}
    leakage = {"exact": [pair], "near": [], "n_exact": 1, "n_near": 0}
    (run / "leakage.json").write_text(json.dumps(leakage))
    group = {"n": 3, "correct": 2, "accuracy": 2 / 3, "accuracy_ci": [0.21, 0.94]}
    overlap = {  # what `headstart overlap RUN` writes (the tiny model has no label space: made up here)
        "supported": True,
        "check": "pretrained-classifier",
        "backbone": TEST_BACKBONE,
        "label_space": "ImageNet-1k",
        "threshold": 0.5,
        "n": 6,
        "n_overlap": 3,
        "per_class": {
            EVIL_CLASS: {"n": 3, "n_overlap": 3, "named_classes": [EVIL_CLASS], "top_confident": []}
        },
        "unnamed_labels": ["red"],
        "accuracy": {"overlap": group, "rest": group, "gap": 0.0, "p_value": 1.0, "beyond_noise": False},
    }
    (run / "overlap.json").write_text(json.dumps(overlap))
    return run


@pytest.fixture(scope="module")
def report_path(run_dir: Path) -> Path:
    path = write_report(run_dir)  # drawing the charts is the slow part: once for the module
    assert path == run_dir / "report.html"
    return path


@pytest.fixture(scope="module")
def bare_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run as `probe` left it: no evaluation, history, comparison, curve or leakage check."""
    bare = tmp_path_factory.mktemp("bare") / "run"
    bare.mkdir()
    for name in ("run.json", "metrics.json", "data.json", "head.safetensors"):
        shutil.copy(run_dir / name, bare / name)
    return bare


def test_report_has_every_section_escaped_and_offline(report_path: Path) -> None:
    path = report_path
    text = path.read_text(encoding="utf-8")
    page = _parse(text)
    ids = [sid for sid, _ in SECTIONS]
    assert _meta(page, "headstart-sections") == ids
    assert _meta(page, "headstart-sections-computed") == ids  # every file was there
    for sid, title in SECTIONS:
        assert page.section_headings.get(sid) == title
    assert "not computed" not in text

    # Nothing runs, nothing is fetched: no scripts, every src/href is inline or an in-page anchor.
    assert not [a for t, a in page.tags if t in ("script", "link", "iframe", "object")]
    for _, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:", "#")), f"{key}={value[:60]}"
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", text)

    # Names from data are shown as text, never as markup.
    assert "<script" not in text.lower()
    assert not [a for _, a in page.tags if "onerror" in a], "an attribute made from a file name"
    assert "&lt;script&gt;alert(1)" in text
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;.png" in text

    imgs = [a for t, a in page.tags if t == "img"]
    assert all(a.get("alt") for a in imgs), "every image has alt text"
    thumbs = [a for a in imgs if a["src"].startswith("data:image/jpeg")]
    assert len(thumbs) >= 1  # the mistake whose file exists; the missing one gets a placeholder
    assert "file not available" in text and "no preview" not in text
    # counts, history, calibration, curve, accuracy against cost (compare)
    assert sum(a["src"].startswith("data:image/svg+xml") for a in imgs) == 5
    assert "recommended" in text and "lp-ft" in text


def test_sections_without_data_say_how_to_compute_them(bare_run: Path, tmp_path: Path) -> None:
    report = build_report(bare_run)
    assert report.sections == {
        "overview": True,
        "data": True,
        "compare": False,
        "training": False,
        "confusion": True,  # metrics.json of a probe run has one
        "overlap": False,
        "slices": False,
        "calibration": False,
        "ood": False,
        "curve": False,
        "mistakes": False,
        "card": True,
        "performance": False,
        "clusters": False,
    }
    assert report.html.count("not computed") == 11  # the 10 sections, and the leakage check under data
    assert f"headstart evaluate {bare_run}" in report.html
    _parse(report.html)
    broken = tmp_path / "broken"
    shutil.copytree(bare_run, broken)
    (broken / "history.json").write_text("{not json")
    assert "not readable JSON" in read_run_files(broken).problems["history.json"]
    with pytest.raises(HeadstartError, match=r"no run\.json"):
        build_report(tmp_path)


def test_cli_prints_the_path(bare_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(bare_run), "--out", str(out), "--open-path-only"]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(bare_run), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["path"] == str((bare_run / "report.html").resolve()) and got["sections"]["card"] is True
    assert (bare_run / "report.html").is_file()
    assert main(["report", str(tmp_path), "--json"]) == 2


@needs_chromium
def test_report_renders_in_a_headless_browser(report_path: Path, tmp_path: Path) -> None:
    from PIL import Image

    dom, shot = render_headless(report_path, tmp_path)
    for sid, title in SECTIONS:
        assert f'<section id="{sid}"' in dom and f"<h2>{title}</h2>" in dom
    assert "&lt;script&gt;alert(1)" in dom and "<script" not in dom.lower()

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (4000, 1280)
    assert pixels.std() > 20  # text, tables and charts, not a blank page
    assert (pixels < 128).mean() > 0.01  # a real amount of dark ink
    top = pixels[:900]
    assert (top < 250).mean() > 0.02  # the header and first tables are drawn at the top
