"""Bad-input corpus: the server under bad, huge and hostile requests (issue 13, items 4 and 9).

- Every decode-corpus file (`test_badinput_decode.CORPUS`) sent to /predict: a decompression bomb or an
  image over --max-pixels gets 413 naming the file, its size and the fix; unreadable files 422 with the
  reason; odd but usable images 200. In /predict/batch each bad file is its own item's error.
- A text over --max-text-mb (1 MB by default; the model reads a few hundred tokens) is refused with 413
  while it streams in, before any parsing; in a batch, that item's error. A larger limit lets a 9.6 MB
  text in, and it is tokenized only as far as the model reads it (a prefix; the answer is the same), so
  it does not take seconds; the server keeps no copy of served texts.
- A request still being decoded does not block others (decoding runs off the event loop).
- A short soak on loopback: good, bad and large requests from several threads; every good one answers
  what it answers alone, every bad one its 4xx, never a 5xx, and memory does not grow. (The latency
  figures under load are for benchmarks/serve.py, not timed assertions here.)
"""

from __future__ import annotations

import io
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from badinput import assert_refused, run_cli
from conftest import TEST_BACKBONE, draw_item, make_image_folder
from headstart.testing import TEST_WORDS
from test_badinput_decode import BAD, CORPUS, png_bomb

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

JSON = {"Content-Type": "application/json"}
HUGE_CHARS = 9_600_000
MB = 1024 * 1024


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An image probe run (tiny EfficientNet-Lite) and a text probe run (tiny BERT)."""
    from headstart.api import probe

    root = tmp_path_factory.mktemp("badserve")
    rng = random.Random(0)
    animals, vehicles = TEST_WORDS[TEST_WORDS.index("cat") :][:17], TEST_WORDS[TEST_WORDS.index("car") :][:15]
    lines = ["text,label"] + [
        f"{' '.join(rng.choice(words) for _ in range(rng.randint(3, 9)))},{label}"
        for label, words in (("animal", animals), ("vehicle", vehicles))
        for _ in range(20)
    ]
    (root / "texts.csv").write_text("\n".join(lines) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        images = make_image_folder(root / "images", classes=("red", "blue", "green"), per_class=6)
        probe(images, backbone=TEST_BACKBONE, out=root / "image_run", backend="torch", progress=False)
        probe(root / "texts.csv", backbone="test_text_encoder", out=root / "text_run", progress=False)
    return {"image": root / "image_run", "text": root / "text_run"}


@pytest.fixture(scope="module")
def image_app(runs: dict[str, Path]) -> Any:
    from headstart.serve import create_app

    return create_app(runs["image"], max_batch=8)


@pytest.fixture(scope="module")
def text_app(runs: dict[str, Path]) -> Any:
    from headstart.serve import create_app

    return create_app(runs["text"], max_batch=8)


def _jpeg(label: str = "blue", seed: int = 7, size: int = 64) -> bytes:
    buf = io.BytesIO()
    draw_item(label, seed, size=size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _huge_text(seed: int = 0, chars: int = HUGE_CHARS) -> str:
    """~9.6 MB of words the tiny tokenizer knows; its first words depend on the seed."""
    rng = random.Random(seed)
    head = " ".join(rng.choice(TEST_WORDS) for _ in range(200))
    return (head + " " + "the cat sat on the farm " * (chars // 24))[:chars]


# -- images: the decoding guard over HTTP -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(CORPUS))
def test_every_corpus_file_gets_its_status_and_reason(image_app: Any, name: str) -> None:
    from fastapi.testclient import TestClient

    data, says = CORPUS[name][0](), CORPUS[name][1]
    r = TestClient(image_app).post("/predict", files={"file": (name, data, "application/octet-stream")})
    # A raw body (read into a bytearray, decoded in place) gets the same answer, named "body".
    raw = TestClient(image_app).post("/predict", content=data, headers={"Content-Type": "image/png"})
    same = (r.status_code, json.loads(r.text.replace(name, "body")))
    assert (raw.status_code, raw.json()) == same, raw.text
    if says is None:
        assert r.status_code == 200, r.text
        return
    body = r.json()
    assert name in body["error"], body
    if "limit" in says:  # the server's own limit is 40 MP; the size and the fix are named
        assert r.status_code == 413, body
        assert "is over the 40,000,000-pixel limit" in body["error"] and says.split()[0] in body["error"]
        assert "--max-pixels" in body["fix"]
    else:
        assert r.status_code == 422, body
        assert says in body["error"]


def test_a_bomb_in_a_batch_is_that_items_error_only(image_app: Any) -> None:
    from fastapi.testclient import TestClient

    files = [
        ("file", ("a.jpg", _jpeg("red", 1), "image/jpeg")),
        ("file", ("bomb.png", png_bomb(30000, 30000), "image/png")),
        ("file", ("big.png", png_bomb(7000, 7000), "image/png")),  # 49 MP: over the server's 40 MP
        ("file", ("empty.png", b"", "image/png")),
        ("file", ("b.jpg", _jpeg("green", 3), "image/jpeg")),
    ]
    r = TestClient(image_app).post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["file"] for x in res] == ["a.jpg", "bomb.png", "big.png", "empty.png", "b.jpg"]
    assert "label" in res[0] and "label" in res[4]
    assert res[1]["error"].startswith("30000x30000 is over the 40,000,000-pixel limit")
    assert res[2]["error"].startswith("7000x7000 is over the 40,000,000-pixel limit")
    assert res[3]["error"] == "empty file (0 bytes)"
    # A raw body (no form) is refused the same way.
    raw = TestClient(image_app).post(
        "/predict", content=png_bomb(14000, 14000), headers={"Content-Type": "image/png"}
    )
    assert raw.status_code == 413 and "14000x14000" in raw.json()["error"]


def test_the_servers_max_pixels_is_the_one_applied(runs: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    r = TestClient(create_app(runs["image"], max_pixels=1000)).post(
        "/predict", files={"file": ("s.jpg", _jpeg())}
    )
    assert r.status_code == 413 and "64x64 is over the 1,000-pixel limit" in r.json()["error"]


@pytest.mark.parametrize(("flag", "kind"), [("--max-pixels", "image"), ("--max-text-mb", "text")])
def test_serve_refuses_a_limit_that_would_refuse_everything(
    capsys: pytest.CaptureFixture[str], runs: dict[str, Path], flag: str, kind: str
) -> None:
    res = run_cli(capsys, "serve", runs[kind], flag, "0")
    assert_refused(res, names=f"{flag} 0")


# -- texts: a huge one is cut before tokenizing ------------------------------------------------------------


def test_encode_head_gives_the_whole_texts_tokens_from_a_prefix(text_app: Any) -> None:
    from headstart.serve import encode_head

    bb = text_app.state.predictor.model.backbone
    seen: list[int] = []

    def spy(text: str) -> Any:
        seen.append(len(text))
        return bb.encode(text)

    rng = random.Random(1)
    cases = [
        " ".join(rng.choice(TEST_WORDS) for _ in range(40_000)),  # ~190k characters of words
        " " * 50_000 + "a red cat and a blue bus " * 2000,  # a blank start: the prefix must grow
        "x" * 30_000 + " the cat",  # no whitespace to cut at: cut inside the word
        "a dog " * 10,  # short: encoded whole
    ]
    for text in cases:
        seen.clear()
        got = encode_head(spy, text, bb.max_length)
        want = bb.encode(text)
        assert list(got) == list(want) and len(got) <= bb.max_length
        assert bool(got.truncated) == bool(want.truncated)
        assert max(seen) <= 4 * 4 * 4096, seen  # at most two growths past the first prefix
    with pytest.raises(Exception, match="empty text"):
        encode_head(bb.encode, " " * 100_000, bb.max_length)


def test_a_text_over_the_text_limit_is_refused_naming_it(runs: dict[str, Path], text_app: Any) -> None:
    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    client = TestClient(text_app)
    reads = text_app.state.predictor.model.backbone.max_length
    big = json.dumps({"text": _huge_text(1, 2 * MB)}).encode()
    declared = client.post("/predict", content=big, headers=JSON)
    streamed = client.post("/predict", content=iter([big[:MB], big[MB:]]), headers=JSON)  # no length
    for r in (declared, streamed):
        assert r.status_code == 413, r.text
        assert r.json()["error"] == (
            f"request body over the 1,048,576-byte limit for one text (this model reads only its first "
            f"{reads} tokens)"
        )
        assert r.json()["fix"] == "send the start of the text (or raise --max-text-mb)"
    fits = client.post("/predict", json={"text": _huge_text(1, MB - 100)})
    assert fits.status_code == 200 and "label" in fits.json(), fits.text
    # In a batch (its body may hold --max-batch texts), a text over the limit is that item's error only.
    res = client.post("/predict/batch", json={"texts": ["a red cat", _huge_text(2, MB + 1), "a bus"]})
    assert res.status_code == 200, res.text
    items = res.json()["results"]
    assert "label" in items[0] and "label" in items[2]
    assert items[1] == {
        "file": "text[1]",
        "error": "1,048,577 characters: over the 1,048,576-byte limit for one text "
        "(send its start, or raise --max-text-mb)",
    }
    over = client.post("/predict/batch", json={"texts": [_huge_text(3, MB)] * 9})  # max_batch 8
    assert over.status_code == 413 and over.json()["error"].endswith(
        "8,388,608-byte limit for a batch of texts"
    )
    # Under a lower --max-mb, that is the limit, and the flag the fix names.
    small = TestClient(create_app(runs["text"], max_bytes=100_000)).post(
        "/predict", content=big, headers=JSON
    )
    assert small.status_code == 413 and small.json()["fix"].endswith("(or raise --max-mb)"), small.text


def test_a_huge_text_is_answered_from_its_start_quickly(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    text_app = create_app(runs["text"], max_batch=8, max_text_bytes=10 * MB)  # a 9.6 MB text fits
    client = TestClient(text_app)
    bb = text_app.state.predictor.model.backbone
    seen: list[int] = []
    encode = bb.encode
    monkeypatch.setattr(bb, "encode", lambda text: seen.append(len(text)) or encode(text))
    huge = _huge_text(3)
    r = client.post("/predict?top=2", json={"text": huge})
    assert r.status_code == 200, r.text
    assert max(seen) < 20_000  # the tokenizer never saw the 9.6 MB
    assert r.json() == client.post("/predict?top=2", json={"text": huge[:20_000]}).json()
    batch = client.post("/predict/batch", json={"texts": ["a red cat", huge, "  ", "a bus"]}).json()[
        "results"
    ]
    assert [("label" in x, x.get("error")) for x in batch] == [
        (True, None),
        (True, None),
        (False, "empty text"),
        (True, None),
    ]
    assert bb.input_notes["truncated"] == {}  # served texts are not kept
    over = client.post("/predict", content=iter([b'{"text": "' + b"a" * 1_000_000] * 11), headers=JSON)
    assert over.status_code == 413 and "limit" in over.json()["error"]


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"text": "caf\xe9"}', b"[" * 100_000, b'{"text": "a"} trailing'],
    ids=["unclosed", "not-utf8", "nested-too-deep", "trailing-data"],
)
def test_malformed_json_is_400_naming_the_problem(text_app: Any, body: bytes) -> None:
    from fastapi.testclient import TestClient

    r = TestClient(text_app).post("/predict", content=body, headers=JSON)
    assert r.status_code == 400 and "body is not valid JSON" in r.json()["error"], r.text


# -- concurrency on a real server (loopback) ----------------------------------------------------------------


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """`app` served by uvicorn in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_a_request_still_decoding_does_not_block_the_others(
    text_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    predictor = text_app.state.predictor
    release, entered = threading.Event(), threading.Event()
    decode = predictor.decode_text

    def slow(text: str, name: str) -> Any:
        if text.startswith("slow"):
            entered.set()
            assert release.wait(30)
        return decode(text, name)

    monkeypatch.setattr(predictor, "decode_text", slow)
    with live_server(text_app) as url, httpx.Client(base_url=url, timeout=30) as client:
        answers: list[int] = []
        hung = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{url}/predict", json={"text": "slow cat"}).status_code)
        )
        hung.start()
        try:
            assert entered.wait(10)
            for _ in range(3):  # answered while the first request is still being decoded
                assert client.post("/predict", json={"text": "a red cat"}).status_code == 200
            assert client.get("/health").status_code == 200
            assert not answers
        finally:
            release.set()
            hung.join(30)
        assert answers == [200]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.parametrize("kind", ["text", "image"])
def test_soak_mixed_requests_from_several_threads(kind: str, text_app: Any, image_app: Any) -> None:
    """Good, bad and large requests at once: goods answer as alone, bads their 4xx, no 5xx, no growth."""
    import httpx

    app = text_app if kind == "text" else image_app
    if kind == "text":
        good = [
            {"json": {"text": t}}
            for t in ("a red cat", "the bus on the road", "a dog and a cow", "fly a plane")
        ]
        bad = [
            ({"content": b"{", "headers": JSON}, 400),
            ({"json": {"txt": "a cat"}}, 422),
            ({"json": {"text": "   "}}, 422),
            ({"content": b"a cat", "headers": {"Content-Type": "text/plain"}}, 415),
        ]
        large = [  # the largest texts accepted (1 MB), and 9.6 MB ones, refused as they stream in
            ({"content": json.dumps({"text": _huge_text(s, chars)}).encode(), "headers": JSON}, status)
            for s, (chars, status) in enumerate([(MB - 100, 200), (HUGE_CHARS, 413), (MB - 100, 200)])
        ]
    else:
        good = [
            {"files": {"file": (f"{i}.jpg", _jpeg(c, i))}}
            for i, c in enumerate(("red", "blue", "green", "red"))
        ]
        bad = [
            ({"files": {"file": (n, CORPUS[n][0]())}}, 413 if "limit" in says else 422)
            for n, says in BAD.items()
        ]
        noise = np.random.default_rng(0).integers(0, 256, (1800, 1800, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, "PNG", compress_level=1)
        assert 9_000_000 < len(buf.getvalue()) < 10 * 1024 * 1024  # a large but valid upload
        large = [({"files": {"file": ("noise.png", buf.getvalue())}}, 200)] * 2
        large += [({"files": {"file": ("bomb.png", png_bomb(30000, 30000))}}, 413)]
    outcomes: list[tuple[str, int, bool]] = []  # (kind of request, status, answer as expected)
    lock = threading.Lock()
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        want = [client.post("/predict", **g).json() for g in good]  # alone, idle
        assert all("label" in w for w in want), want
        rss_before = _rss_mb()

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=url, timeout=60) as c:
                for _ in range(30):
                    if rng.random() < 0.7:
                        i = rng.randrange(len(good))
                        r = c.post("/predict", **good[i])
                        row = ("good", r.status_code, r.status_code == 200 and r.json() == want[i])
                    else:
                        req, status = rng.choice(bad)
                        r = c.post("/predict", **req)
                        row = ("bad", r.status_code, r.status_code == status and "error" in r.json())
                    with lock:
                        outcomes.append(row)

        def heavy() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                for req, status in large:
                    r = c.post("/predict", **req)
                    with lock:
                        outcomes.append(("large", r.status_code, r.status_code == status))

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
        threads.append(threading.Thread(target=heavy))
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert client.get("/health").json()["status"] == "ok"
        rss_after = _rss_mb()
    assert len(outcomes) == 90 + len(large)
    assert not [o for o in outcomes if o[1] >= 500], outcomes
    assert all(ok for _, _, ok in outcomes), [o for o in outcomes if not o[2]]
    if kind == "text":
        assert app.state.predictor.model.backbone.input_notes["truncated"] == {}
    # Generous: transient buffers come and go; a leak of every large request would show.
    assert rss_after - rss_before < 250, (rss_before, rss_after)
