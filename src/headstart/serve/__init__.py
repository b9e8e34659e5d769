"""An HTTP prediction server for a run folder or a stored model (FastAPI; `headstart serve` runs it).

    app = create_app("runs/demo", token="s3cret")        # or "emoji@production" from the model store

POST /predict          one input: multipart field "file" (images, audio), a raw image/audio body, or
                       JSON {"text": ...} for text models -> {"label", "probability", "top": [...]}
POST /predict/batch    several "file" fields, or JSON {"texts": [...]} -> {"results": [...]}, where an
                       unreadable item (also an image over --max-pixels) gets {"error": reason} and the
                       others still get their prediction
GET  /health           liveness and what is loaded;  GET /model  the model card;  GET /  a drop-a-file page

The model loads once. Every bad request gets a 4xx with a JSON {"error", "fix"}: the server never
crashes on input, and a body over --max-mb is refused while it streams in, as is a text model's text
over --max-text-mb (the model reads only its first tokens; in a batch, that text is its item's error).

Layout: `predictor.py` is the model side (loading, decoding uploads, batching, the forward, top-k);
`http.py` the FastAPI app (routes, token, limits, error answers); `body.py` reading a body within its
limit (raw, form, JSON); `page.py` the page at GET /.
"""

from headstart.serve.body import HTTPError, parse_json
from headstart.serve.http import DEFAULT_MAX_BATCH, DEFAULT_MAX_BYTES, DEFAULT_MAX_TEXT_BYTES, create_app
from headstart.serve.predictor import (
    CHARS_PER_TOKEN,
    DEFAULT_TOP,
    SERVE_MAX_PIXELS,
    Predictor,
    encode_head,
    load_served_model,
    matching_export,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_TEXT_BYTES",
    "DEFAULT_TOP",
    "SERVE_MAX_PIXELS",
    "HTTPError",
    "Predictor",
    "create_app",
    "encode_head",
    "load_served_model",
    "matching_export",
    "parse_json",
]
