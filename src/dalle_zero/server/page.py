"""The web page of ``dalle serve`` (``GET /``): one self-contained HTML document, no external assets.

It reads ``GET /health`` to show the model and set the form's limits (candidates only with a
reranker), sends the form to ``POST /generate`` with ``fetch()``, and shows the images (upscaled
with nearest neighbour, since models may draw tiny images), their reranker scores, the seed used
and the timing. A prime image is sent as a ``data:`` URL (image-to-image).

A model draws only what its captions taught it, so the model's example captions (``examples`` of
``/health``) are shown under the caption box as buttons that fill it in, the first one as its
placeholder, and the response's warnings (e.g. mostly unseen words) are shown above the images.
Handlers are attached with ``addEventListener``, never as ``on...=`` attributes.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dalle-zero</title>
<style>
  :root { color-scheme: light dark; --muted: #888; --accent: #3b6fd4; --error: #c0392b; --warn: #b9770e; }
  body { font: 15px/1.4 system-ui, sans-serif; max-width: 980px; margin: 1.5em auto; padding: 0 1em; }
  h1 { font-size: 1.4em; margin: 0 0 .2em; }
  #model { color: var(--muted); margin: 0 0 1em; }
  form { display: grid; gap: .8em; }
  textarea { width: 100%; box-sizing: border-box; font: inherit; padding: .5em; min-height: 3.2em; }
  .row { display: flex; flex-wrap: wrap; gap: .8em 1.2em; align-items: end; }
  label { display: flex; flex-direction: column; font-size: .85em; color: var(--muted); }
  label input { font: inherit; width: 7em; padding: .25em .35em; }
  label input[type=file] { width: 16em; }
  button { font: inherit; padding: .45em 1.4em; cursor: pointer; }
  #go { background: var(--accent); color: #fff; border: 0; border-radius: 4px; }
  #go:disabled { opacity: .6; cursor: wait; }
  #status { min-height: 1.4em; margin: .8em 0; }
  #status.error { color: var(--error); }
  #examples { display: flex; flex-wrap: wrap; gap: .3em .4em; align-items: baseline; max-height: 7.5em;
    overflow-y: auto; }
  #examples[hidden] { display: none; }
  .example { font-size: .85em; padding: .15em .6em; border: 1px solid #8886; border-radius: 1em;
    background: transparent; color: inherit; }
  .example:hover { border-color: var(--accent); }
  #warning { color: var(--warn); margin: 0 0 .8em; }
  #warning:empty { display: none; }
  #images { display: flex; flex-wrap: wrap; gap: 1em; }
  figure { margin: 0; text-align: center; font-size: .85em; color: var(--muted); }
  figure img { width: 160px; height: 160px; image-rendering: pixelated; display: block; border: 1px solid #8884; }
  #prime-preview { width: 48px; height: 48px; image-rendering: pixelated; display: none; border: 1px solid #8884; }
  .note { font-size: .8em; color: var(--muted); }
</style>
</head>
<body>
<h1>dalle-zero</h1>
<p id="model">loading the model summary&hellip;</p>
<form id="form">
  <textarea id="caption" placeholder="a caption" required></textarea>
  <div id="examples" hidden><span class="note">captions like the ones it learned from (click to use):</span></div>
  <div class="row">
    <label>images <input id="n" type="number" min="1" value="4"></label>
    <label>candidates <input id="candidates" type="number" min="1" placeholder="= images"></label>
    <label>seed <input id="seed" type="number" min="0" placeholder="random"></label>
    <label>temperature <input id="temperature" type="number" min="0" step="any" value="1"></label>
    <label>top-k <input id="top_k" type="number" min="1" placeholder="off"></label>
    <label>top-p <input id="top_p" type="number" min="0" max="1" step="any" placeholder="off"></label>
    <label>guidance <input id="guidance_scale" type="number" step="any" value="1"></label>
  </div>
  <div class="row">
    <label>prime image (image-to-image) <input id="prime_image" type="file" accept="image/*"></label>
    <img id="prime-preview" alt="prime image">
    <label>prime rows <input id="prime_rows" type="number" min="0" placeholder="half"></label>
    <button type="button" id="clear-prime">clear</button>
  </div>
  <div class="row"><button id="go" type="submit">Generate</button>
    <span class="note">Ctrl+Enter in the caption also generates</span></div>
</form>
<div id="status"></div>
<div id="warning"></div>
<div id="images"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let primeData = null;

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadInfo() {
  try {
    const r = await fetch("health");
    const info = await r.json();
    if (!r.ok) throw new Error(info.error || r.statusText);
    const lim = info.limits;
    $("model").textContent = `${info.model || "model"}: ${info.image_size} px images from a ` +
      `${info.image_grid}\\u00d7${info.image_grid} grid of ${info.image_vocab_size} codes; ` +
      `captions up to ${info.text_seq_len} tokens; ` + (info.reranker ? "CLIP reranker" : "no reranker");
    $("n").max = lim.max_images;
    if (Number($("n").value) > lim.max_images) $("n").value = lim.max_images;
    $("caption").maxLength = lim.max_caption_chars;
    $("candidates").max = lim.max_candidates;
    $("prime_rows").max = info.priming.prime_rows_max;
    $("prime_rows").placeholder = String(info.priming.prime_rows_default);
    if (!info.reranker) {
      $("candidates").disabled = true;
      $("candidates").placeholder = "needs CLIP";
    }
    showExamples(info.examples || []);
  } catch (e) {
    $("model").textContent = "could not read /health: " + e.message;
  }
}

function showExamples(examples) {
  if (!examples.length) return;
  $("caption").placeholder = "a caption, e.g. " + examples[0];
  for (const text of examples) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "example";
    b.textContent = text;
    b.addEventListener("click", () => { $("caption").value = text; $("caption").focus(); });
    $("examples").appendChild(b);
  }
  $("examples").hidden = false;
}

function showWarnings(warnings) {
  $("warning").replaceChildren(...(warnings || []).map((w) => {
    const line = document.createElement("div");
    line.textContent = "warning: " + w;
    return line;
  }));
}

function field(id) {
  const el = $(id);
  if (el.disabled || el.value.trim() === "") return undefined;
  return Number(el.value);
}

$("prime_image").addEventListener("change", () => {
  const file = $("prime_image").files[0];
  primeData = null;
  $("prime-preview").style.display = "none";
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    primeData = reader.result;
    $("prime-preview").src = primeData;
    $("prime-preview").style.display = "block";
  };
  reader.onerror = () => setStatus("could not read " + file.name, true);
  reader.readAsDataURL(file);
});

$("clear-prime").addEventListener("click", () => {
  $("prime_image").value = "";
  primeData = null;
  $("prime-preview").style.display = "none";
});

$("caption").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $("form").requestSubmit(); }
});

function showResult(res) {
  const box = $("images");
  box.replaceChildren();
  res.images.forEach((png, i) => {
    const fig = document.createElement("figure");
    const link = document.createElement("a");
    link.href = "data:image/png;base64," + png;
    link.download = `dalle_${res.seed}_${i}.png`;
    link.title = "download";
    const img = document.createElement("img");
    img.src = link.href;
    img.alt = res.caption;
    link.appendChild(img);
    const cap = document.createElement("figcaption");
    cap.textContent = res.scores ? `#${i + 1}  score ${res.scores[i].toFixed(3)}` : `#${i + 1}`;
    fig.append(link, cap);
    box.appendChild(fig);
  });
  showWarnings(res.warnings);
  setStatus(`${res.images.length} image(s), seed ${res.seed}, ${res.seconds.toFixed(2)} s` +
    (res.queued_seconds > 0.05 ? ` (+${res.queued_seconds.toFixed(2)} s waiting)` : ""), false);
  const again = document.createElement("button");
  again.type = "button";
  again.textContent = "reuse seed";
  again.style.marginLeft = "1em";
  again.addEventListener("click", () => { $("seed").value = res.seed; });
  $("status").appendChild(again);
}

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { caption: $("caption").value };
  for (const id of ["n", "candidates", "seed", "temperature", "top_k", "top_p", "guidance_scale"]) {
    const v = field(id);
    if (v !== undefined) body[id] = v;
  }
  if (primeData) {
    body.prime_image = primeData;
    const rows = field("prime_rows");
    if (rows !== undefined) body.prime_rows = rows;
  }
  $("go").disabled = true;
  showWarnings([]);
  const t0 = performance.now();
  setStatus("generating\\u2026", false);
  try {
    const r = await fetch("generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const text = await r.text();
    let res;
    try { res = JSON.parse(text); } catch { throw new Error(`HTTP ${r.status}: ${text.slice(0, 200)}`); }
    if (!r.ok) throw new Error(res.error || `HTTP ${r.status}`);
    showResult(res);
  } catch (err) {
    setStatus(`error after ${((performance.now() - t0) / 1000).toFixed(1)} s: ${err.message}`, true);
  } finally {
    $("go").disabled = false;
  }
});

loadInfo();
</script>
</body>
</html>
"""
