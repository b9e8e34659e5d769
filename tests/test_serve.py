"""The prediction server: answers like the model, refuses bad requests with 4xx JSON, and keeps answering."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TEST_BACKBONE, draw_item, probe_run

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return probe_run(tmp_path_factory.mktemp("serve"), per_class=8)


@pytest.fixture(scope="module")
def client(run_dir: Path):
    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    return TestClient(create_app(run_dir, token=TOKEN, max_bytes=200_000, max_batch=4))


def _jpeg(label: str = "blue", seed: int = 7, size: int = 64) -> bytes:
    buf = io.BytesIO()
    draw_item(label, seed, size=size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _file(data: bytes, name: str = "x.jpg") -> dict:
    return {"file": (name, data, "image/jpeg")}


def test_prediction_equals_the_models_own(client, run_dir: Path, tmp_path: Path) -> None:
    from headstart.model import load_model

    data = _jpeg()
    r = client.post("/predict?top=3", files=_file(data), headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    (tmp_path / "x.jpg").write_bytes(data)
    model = load_model(run_dir)
    proba, _, _ = model.predict_proba([tmp_path / "x.jpg"], cache=False)
    want = {c: float(p) for c, p in zip(model.classes, proba[0], strict=True)}
    assert body["label"] == max(want, key=want.get)
    assert body["probability"] == pytest.approx(want[body["label"]], abs=1e-5)
    assert [t["label"] for t in body["top"]] == sorted(want, key=want.get, reverse=True)
    assert sum(t["probability"] for t in body["top"]) == pytest.approx(1.0, abs=1e-5)
    # A raw image body gives the same answer as the form upload.
    raw = client.post("/predict?top=3", content=data, headers={**AUTH, "Content-Type": "image/jpeg"})
    assert raw.json() == body


def test_batch_reports_bad_items_and_predicts_the_rest(client) -> None:
    files = [
        ("file", ("a.jpg", _jpeg("red", 1), "image/jpeg")),
        ("file", ("broken.jpg", _jpeg("red", 2)[:300], "image/jpeg")),
        ("file", ("b.jpg", _jpeg("green", 3), "image/jpeg")),
    ]
    r = client.post("/predict/batch", files=files, headers=AUTH)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["file"] for x in res] == ["a.jpg", "broken.jpg", "b.jpg"]
    assert "label" in res[0] and "label" in res[2]
    assert "truncated or corrupt" in res[1]["error"]
    too_many = [("file", (f"{i}.jpg", _jpeg(seed=i), "image/jpeg")) for i in range(5)]
    assert client.post("/predict/batch", files=too_many, headers=AUTH).status_code == 413


def test_health_model_and_page(client, run_dir: Path) -> None:
    h = client.get("/health").json()
    # No export in the run: the cached ONNX backbone and the head answer on the CPU (not PyTorch).
    assert h["status"] == "ok" and h["engine"] == "onnx" and h["forward"] == "onnx-fp32" and h["classes"] == 3
    card = client.get("/model", headers=AUTH).json()
    run = json.loads((run_dir / "run.json").read_text())
    assert card["classes"] == run["classes"]
    assert card["backbone"]["card"]["name"] == TEST_BACKBONE
    assert card["temperature"] == 1.0 and card["metrics"]["test"]["n"] > 0
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "fetch(" in page.text and "http://" not in page.text and "https://" not in page.text


@pytest.mark.parametrize(
    ("kwargs", "status", "says"),
    [
        ({"content": b"x" * 250_000, "headers": {"Content-Type": "image/jpeg"}}, 413, "limit"),
        # no Content-Length (chunked): the bytes actually read are counted
        ({"content": iter([b"x" * 100_000] * 3), "headers": {"Content-Type": "image/jpeg"}}, 413, "limit"),
        ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "not accepted"),
        ({"json": {"text": "a red square"}}, 415, "JSON bodies are for text models"),
        ({"files": {"photo": ("a.jpg", b"\xff\xd8", "image/jpeg")}}, 422, "unknown form field"),
        ({"files": _file(b"GIF89a not really")}, 422, "cannot use"),
        ({"files": _file(b"")}, 422, "empty file"),
        ({"content": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data"}}, 400, "boundary"),
    ],
)
def test_bad_requests_get_4xx_json(client, kwargs: dict, status: int, says: str) -> None:
    kwargs = {**kwargs, "headers": {**AUTH, **kwargs.get("headers", {})}}
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]


def test_corrupt_image_is_422_with_the_reason(client) -> None:
    r = client.post("/predict", files=_file(_jpeg()[:300], "half.jpg"), headers=AUTH)
    assert r.status_code == 422
    assert "half.jpg" in r.json()["error"] and "truncated or corrupt" in r.json()["error"]


def test_token_is_required(client) -> None:
    assert client.post("/predict", files=_file(_jpeg())).status_code == 401
    r = client.post("/predict", files=_file(_jpeg()), headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/model").status_code == 401
    assert client.get("/health").status_code == 200


def test_still_answers_after_bad_requests(client) -> None:
    for _ in range(3):
        client.post("/predict", files=_file(b"\x89PNG\r\n\x1a\n garbage"), headers=AUTH)
        client.post("/predict", content=b"{", headers={**AUTH, "Content-Type": "application/json"})
        client.post("/predict/batch", files={"nope": ("a", b"a")}, headers=AUTH)
    big = Image.new("RGB", (3000, 3000), (255, 0, 0))
    buf = io.BytesIO()
    big.save(buf, "PNG")  # 27 kB of bytes, 9 MP: decoded fine
    r = client.post("/predict", files=_file(buf.getvalue(), "big.png"), headers=AUTH)
    assert r.status_code == 200, r.text
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["errors"] >= 9


def test_serves_through_onnx_when_this_models_export_is_there(run_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from headstart.export import export_onnx_model
    from headstart.model import CALIBRATION_FILE
    from headstart.serve import create_app

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    torch_client = TestClient(create_app(run, engine="torch"))
    export_onnx_model(run)
    onnx_client = TestClient(create_app(run))
    assert onnx_client.get("/health").json()["forward"] == "onnx-export"
    data = _jpeg("green", 11)
    a = torch_client.post("/predict?top=3", files=_file(data)).json()
    b = onnx_client.post("/predict?top=3", files=_file(data)).json()
    np.testing.assert_allclose(
        [t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]], atol=1e-5
    )
    # A re-calibrated run no longer matches its export: the server answers through the backbone and head.
    (run / CALIBRATION_FILE).write_text(json.dumps({"temperature": 3.0}))
    assert TestClient(create_app(run)).get("/health").json()["forward"] == "onnx-fp32"
