"""The page `GET /` of `headstart serve` returns: drop a file (or type a text), see the top classes.

One self-contained HTML page: inline CSS and script, no network access but the page's own POST to
`predict`. The values filled in are escaped; the script builds the answer with textContent only.
"""

from __future__ import annotations

import html
from pathlib import Path

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>headstart: __TITLE__</title>
<style>
body{font:15px/1.4 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}
#drop{border:2px dashed #888;border-radius:8px;padding:2.5rem;text-align:center;cursor:pointer}
#drop.over{background:#eef4ff;border-color:#36c}
.row{display:flex;align-items:center;gap:.5rem;margin:.25rem 0}
.name{width:11rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{height:1rem;background:#36c;border-radius:3px}
.err{color:#b00}
img{max-width:12rem;max-height:12rem;display:block;margin:1rem 0}
</style></head><body>
<h1>__TITLE__</h1>
<p id="info">__INFO__</p>
<p id="tokenrow" hidden><label>Token <input id="token" type="password" size="30"></label></p>
<div id="drop">Drop a file here, or click to choose one
<input id="file" type="file" hidden></div>
<div id="text" hidden><textarea id="q" rows="4" style="width:100%"></textarea>
<button id="send">Classify</button></div>
<img id="preview" alt="" hidden>
<div id="out"></div>
<script>
const needsToken = __TOKEN__, modality = "__MODALITY__";
const $ = (id) => document.getElementById(id);
if (needsToken) $("tokenrow").hidden = false;
if (modality === "text") { $("drop").hidden = true; $("text").hidden = false; }
function headers() {
  const h = {};
  if (needsToken) h["Authorization"] = "Bearer " + $("token").value;
  return h;
}
function show(res) {
  const out = $("out"); out.textContent = "";
  if (res.error) { const p = document.createElement("p"); p.className = "err";
    p.textContent = res.error + (res.fix ? " (" + res.fix + ")" : ""); out.append(p); return; }
  for (const t of res.top) {
    const row = document.createElement("div"); row.className = "row";
    const name = document.createElement("span"); name.className = "name"; name.textContent = t.label;
    const bar = document.createElement("div"); bar.className = "bar";
    bar.style.width = Math.max(2, Math.round(t.probability * 300)) + "px";
    const pct = document.createElement("span"); pct.textContent = (t.probability * 100).toFixed(1) + " %";
    row.append(name, bar, pct); out.append(row);
  }
}
async function send(body, extra) {
  $("out").textContent = "...";
  try {
    const r = await fetch("predict", {method: "POST", body, headers: {...headers(), ...extra}});
    show(await r.json());
  } catch (e) { show({error: String(e)}); }
}
function sendFile(f) {
  if (!f) return;
  if (f.type.startsWith("image/")) { $("preview").src = URL.createObjectURL(f); $("preview").hidden = false; }
  const fd = new FormData(); fd.append("file", f); send(fd, {});
}
const drop = $("drop");
drop.onclick = () => $("file").click();
$("file").onchange = (e) => sendFile(e.target.files[0]);
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => {
  e.preventDefault(); drop.classList.remove("over"); sendFile(e.dataTransfer.files[0]);
};
$("send").onclick = () => send(JSON.stringify({text: $("q").value}), {"Content-Type": "application/json"});
</script></body></html>
"""


def render_page(ref: str, classes: list[str], *, token_required: bool, modality: str) -> str:
    """The page for the model served as `ref`: its name, its first classes, a token field if needed."""
    info = f"{len(classes)} classes: {', '.join(classes[:12])}"
    if len(classes) > 12:
        info += ", ..."
    return (
        _PAGE.replace("__TITLE__", _escape(Path(ref).name or ref))
        .replace("__INFO__", _escape(info))
        .replace("__TOKEN__", "true" if token_required else "false")
        .replace("__MODALITY__", _escape(modality))
    )


def _escape(s: str) -> str:
    return html.escape(s, quote=True)
