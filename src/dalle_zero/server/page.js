"use strict";
// The page of `dalle serve` (see page.py): the form and the talk with the server; the results are in
// page_results.js, joined after this file. Every submit gets a fresh status, also one the browser's
// own form checks block; earlier results stay visible, dimmed and labelled, until new ones arrive.
const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "dalle-zero-token";  // sessionStorage: this tab only, gone when it closes
let info = null;
let prime = null;  // {data, name} of the chosen prime image
const touched = new Set();  // ids of the fields the user typed in: /health never overwrites them
// the seed field's limit: the largest integer a JS number holds exactly (the API takes up to 2**63 - 1)
const MAX_SEED = 9007199254740991;

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// ---- the access token: from the URL fragment (#token=...) or the token field ----

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function takeTokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.has("token")) return;
  sessionStorage.setItem(TOKEN_KEY, params.get("token"));
  params.delete("token");
  const rest = params.toString();
  // out of the address bar and the history, where it would be seen and kept
  history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
}

function headers(extra) {
  const h = Object.assign({}, extra);
  if (token()) h.Authorization = "Bearer " + token();
  return h;
}

function askForToken(message) {
  $("access").hidden = false;
  setStatus(message, true);
  $("token").focus();
}

$("access").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = $("token").value.trim();
  if (!value) { askForToken("enter the access token first"); return; }
  sessionStorage.setItem(TOKEN_KEY, value);
  $("token").value = "";
  setStatus("token saved for this tab; reading the model summary\u2026", false);
  loadInfo();
});

$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  setStatus("token forgotten", false);
});

// ---- talking to the server ----

class Unreachable extends Error {}

async function call(path, options) {
  let r;
  try {
    r = await fetch(path, options);
  } catch (e) {  // fetch rejects only when no answer came at all
    throw new Unreachable(`server not reachable: no answer from ${location.host}; is dalle serve still running?`);
  }
  const text = await r.text();
  let body;
  try { body = JSON.parse(text); } catch { body = { error: `HTTP ${r.status}: ${text.slice(0, 200)}` }; }
  if (r.status === 401) {
    const why = token() ? "the access token was refused; enter the right one" :
      "this server needs an access token; enter it above";
    throw Object.assign(new Error(why), { needsToken: true });
  }
  if (r.status === 503 && r.headers.get("Retry-After")) {
    throw new Error(`${body.error || "the server is busy"} (retry in ${r.headers.get("Retry-After")} s)`);
  }
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

async function loadInfo() {
  try {
    info = await call("health", { headers: headers() });
  } catch (e) {
    $("model").textContent = "could not read the model summary: " + e.message;
    if (e.needsToken) askForToken(e.message);
    else setStatus(e.message, true);
    return;
  }
  if (token()) $("access").hidden = false;  // to change or forget it
  const lim = info.limits;
  $("model").textContent = `${info.model || "model"}: ${info.image_size} px images from a ` +
    `${info.image_grid}\u00d7${info.image_grid} grid of ${info.image_vocab_size} codes; ` +
    `captions up to ${info.text_seq_len} tokens; ` + (info.reranker ? "CLIP reranker" : "no reranker");
  $("n").max = lim.max_images;
  if (Number($("n").value) > lim.max_images) $("n").value = lim.max_images;
  $("caption").maxLength = lim.max_caption_chars;
  $("candidates").max = lim.max_candidates;
  for (const [id, [low, high]] of Object.entries(info.ranges || {})) {
    if ($(id)) { $(id).min = low; $(id).max = high; }
  }
  $("top_k").max = info.image_vocab_size;
  $("prime_rows").max = info.priming.prime_rows_max;
  $("prime_rows").placeholder = String(info.priming.prime_rows_default);
  $("candidates").disabled = !info.reranker;
  if (!info.reranker) $("candidates").placeholder = "needs CLIP";
  // the model folder's recommended settings (sampling.json): what the server uses for a field left out;
  // loadInfo runs again once a token is given, by then the user may have typed their own
  const rec = info.sampling || {};
  for (const id of ["temperature", "guidance_scale"]) {
    if (rec[id] !== undefined && rec[id] !== null && !touched.has(id)) $(id).value = rec[id];
  }
  showCandidates();
  showExamples(info.examples || []);
  if ($("status").className === "error") setStatus("", false);
}

// The candidates the server draws when the field is left empty: the folder's recommendation, at least
// the images asked for, at most the server's limit (api.parse_generate_request).
function showCandidates() {
  if (!info || !info.reranker) return;
  const asked = field("n");
  const n = Number.isInteger(asked) && asked >= 1 ? asked : Math.min(4, info.limits.max_images);
  const rec = info.sampling && info.sampling.candidates;
  const used = Math.min(Math.max(n, rec || n), info.limits.max_candidates);
  const why = used === rec ? "recommended" : used === n ? "= images" : "the server's limit";
  $("candidates").placeholder = `${used} (${why})`;
}

$("n").addEventListener("input", showCandidates);

for (const id of ["temperature", "guidance_scale"]) $(id).addEventListener("input", () => touched.add(id));

// A browser number holds integers exactly only up to 2**53 - 1: a larger seed would be sent rounded.
function checkSeed() {
  $("seed").setCustomValidity("");
  if ($("seed").validity.rangeOverflow) {
    $("seed").setCustomValidity(`at most ${MAX_SEED} (2^53 - 1) from this page; ` +
      "larger seeds (up to 2^63 - 1) through the API or dalle generate");
  }
}

$("seed").addEventListener("input", checkSeed);

function showExamples(examples) {
  $("examples").querySelectorAll(".example").forEach((b) => b.remove());
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

// ---- priming ----

function primeNote() {
  const rows = field("prime_rows");
  const grid = info ? info.priming.prime_rows_max : null;
  let text = "";
  if (!prime && rows !== undefined) text = "prime rows are used only with a prime image";
  else if (prime && rows === grid) {
    text = `prime rows = ${grid}, the whole grid: nothing is left to draw, so every image will be the prime ` +
      "image as the dVAE encodes and decodes it, whatever the caption and seed. Use fewer rows to let the " +
      "model draw the rest.";
  } else if (prime && rows === 0) text = "prime rows = 0: the prime image is not used";
  $("prime-note").textContent = text;
}

$("prime_rows").addEventListener("input", primeNote);

$("prime_image").addEventListener("change", () => {
  const file = $("prime_image").files[0];
  prime = null;
  $("prime-preview").style.display = "none";
  primeNote();
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    prime = { data: reader.result, name: file.name };
    $("prime-preview").src = reader.result;
    $("prime-preview").style.display = "block";
    primeNote();
  };
  reader.onerror = () => setStatus("could not read " + file.name, true);
  reader.readAsDataURL(file);
});

$("clear-prime").addEventListener("click", () => {
  $("prime_image").value = "";
  prime = null;
  $("prime-preview").style.display = "none";
  primeNote();
});

// ---- the form ----

function field(id) {
  const el = $(id);
  if (el.disabled || el.value.trim() === "") return undefined;
  return Number(el.value);
}

function fieldName(el) {
  return el.labels && el.labels.length ? el.labels[0].firstChild.textContent.trim() : el.id;
}

// The browser refuses to submit a form that breaks its own rules (required, min, max): no submit
// event comes, only "invalid" on each bad field. Say so, so that no earlier status stays up.
$("form").addEventListener("invalid", () => {
  const bad = [...$("form").querySelectorAll(":invalid")].filter((el) => el.id);
  setStatus("not sent: " + bad.map((el) => `${fieldName(el)}: ${el.validationMessage}`).join("; "), true);
}, true);

$("caption").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $("form").requestSubmit(); }
});

function markStale(text) {
  if (!$("images").children.length) return;
  $("results").classList.add("stale");
  $("results-note").textContent = text;
}

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { caption: $("caption").value };
  for (const id of ["n", "candidates", "seed", "temperature", "top_k", "top_p", "guidance_scale"]) {
    const v = field(id);
    if (v !== undefined) body[id] = v;
  }
  const primeName = prime ? prime.name : null;
  if (prime) {
    body.prime_image = prime.data;
    const rows = field("prime_rows");
    if (rows !== undefined) body.prime_rows = rows;
  }
  $("go").disabled = true;
  showWarnings([]);
  markStale("older results (from the previous request), shown until the new ones arrive");
  $("results").setAttribute("aria-busy", "true");
  const t0 = performance.now();
  setStatus("generating\u2026", false);
  try {
    const res = await call("generate", {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
    });
    showResult(res, primeName);
  } catch (err) {
    markStale("older results (from an earlier request): the last request failed");
    const after = err instanceof Unreachable ? "" : ` after ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    if (err.needsToken) askForToken(err.message);
    else setStatus(`error${after}: ${err.message}`, true);
  } finally {
    $("go").disabled = false;
    $("results").removeAttribute("aria-busy");
  }
});
