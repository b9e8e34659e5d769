"""Most confident mistakes: a gallery with thumbnails of the images, or the texts."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from headstart.report.html import Html, esc, join, not_computed, note, num, tag
from headstart.report.loader import RunFiles, eval_cmd, find_file

THUMB_PX = 160
MAX_MISTAKES = 24


def section(files: RunFiles) -> tuple[Html, bool]:
    ev = files.evaluation
    if not ev or "mistakes" not in ev:
        return not_computed("no list of mistakes", eval_cmd(files)), False
    mistakes = [m for m in ev.get("mistakes") or [] if isinstance(m, dict)]
    if not mistakes:
        return note("No mistakes on the evaluated split.", "good"), True
    modality = files.info.modality or "image"
    shown = mistakes[:MAX_MISTAKES]
    cards = [_mistake_card(m, modality, files) for m in shown]
    intro = f"The {len(shown)} wrong predictions the model was surest of"
    if len(mistakes) > len(shown):
        intro += f" (of {len(mistakes)})"
    return join(
        [
            tag("p", intro + ": often mislabelled data, or classes that overlap."),
            tag("div", join(cards), class_="gallery"),
        ]
    ), True


def _mistake_card(m: dict[str, Any], modality: str, files: RunFiles) -> Html:
    source = str(m.get("source", ""))
    caption = join(
        [
            tag("span", join(["labelled ", tag("b", m.get("label", "?"))]), class_="true"),
            tag("span", join(["predicted ", tag("b", m.get("pred", "?"))]), class_="pred"),
            tag("span", f"confidence {num(m.get('confidence'), 2)}", class_="conf"),
        ]
    )
    if modality == "text":
        visual = tag("blockquote", source)
    else:
        path = find_file(source, files)
        thumb = thumbnail(path) if path and modality == "image" else None
        if thumb:
            alt = f"{Path(source).name}: labelled {m.get('label')}, predicted {m.get('pred')}"
            visual = Html(f'<img src="{esc(thumb)}" alt="{esc(alt)}">')
        else:
            visual = tag("div", "file not available" if path is None else "no preview", class_="placeholder")
        caption = join([caption, tag("span", Path(source).name, class_="file", title=source)])
    return tag("figure", join([visual, tag("figcaption", caption)]), class_="mistake")


def thumbnail(path: Path, px: int = THUMB_PX) -> str | None:
    """A small inline JPEG of an image file (`px` its longest side at most), or None when it cannot be
    decoded."""
    from headstart.data.images import open_image
    from headstart.errors import BadInput

    try:
        img = open_image(path, draft_to=px * 2)
    except BadInput:
        return None
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=82, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
