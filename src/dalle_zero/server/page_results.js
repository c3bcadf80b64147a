// The results on the page of `dalle serve`: images, downloads, settings and the command that draws
// them again. page.py joins it after page.js into the one inline script, so it shares page.js's names.

const SHOWN_PX = 160;  // images are shown at least this wide, upscaled by a whole factor
let blobUrls = [];  // of the enlarged downloads shown, revoked when replaced

// POSIX shell quoting, as Python's shlex.quote: safe words bare, anything else in single quotes
function shellQuote(s) {
  s = String(s);
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s)) return s;
  return "'" + s.replace(/'/g, "'\"'\"'") + "'";
}

const known = (v) => v !== null && v !== undefined;

// a flag and its value, or nothing when the server echoed none (null: off): never "null" or "undefined"
function option(flag, value) {
  return known(value) ? [flag, shellQuote(value)] : [];
}

function command(res, primeName) {
  const s = res.settings || {};
  const words = ["dalle", "generate", "--model", shellQuote(info && info.model ? info.model : "MODEL")];
  // every setting is named, so the command draws the same images whatever the folder recommends
  words.push(...option("-n", s.n), ...option("--seed", res.seed), ...option("--candidates", s.candidates),
    ...option("--temperature", s.temperature), ...option("--top-k", s.top_k), ...option("--top-p", s.top_p),
    ...option("--guidance-scale", s.guidance_scale), ...option("--guidance-top-p", s.guidance_top_p));
  if (s.primed) {
    words.push("--prime-image", shellQuote(primeName || "PRIME_IMAGE"), ...option("--prime-rows", s.prime_rows));
  }
  if (info && info.int8) words.push("--int8");
  if (info && info.device && info.device !== "cpu") words.push("--device", shellQuote(info.device));
  words.push("--", shellQuote(res.caption));  // "--": a caption may begin with "-"
  return words.join(" ");
}

function settingsText(res, primeName) {
  const s = res.settings || {};
  const off = (v) => (known(v) ? v : "off");
  const parts = [];
  if (known(res.seed)) parts.push(`seed ${res.seed}`);
  if (known(s.n)) parts.push(`${s.n} image(s)`);
  if (known(s.candidates)) parts.push(`best of ${s.candidates} candidates`);
  if (known(s.temperature)) parts.push(`temperature ${s.temperature}`);
  parts.push(`top-k ${off(s.top_k)}`, `top-p ${off(s.top_p)}`);
  if (known(s.guidance_scale)) {
    const within = s.guidance_scale !== 1 && known(s.guidance_top_p) ? ` (within top-p ${s.guidance_top_p})` : "";
    parts.push(`guidance ${s.guidance_scale}${within}`);
  }
  if (s.primed) {
    parts.push(`primed with ${primeName || "an image"}` +
      (known(s.prime_rows) ? `, ${s.prime_rows} of ${info.image_grid} rows` : ""));
  }
  return parts.join(" \u00b7 ");
}

function showSettings(res, primeName) {
  const line = document.createElement("p");
  line.id = "settings-line";
  line.textContent = "settings: " + settingsText(res, primeName);
  const cmd = document.createElement("div");
  cmd.className = "command";
  const code = document.createElement("code");
  code.id = "command";
  code.textContent = command(res, primeName);
  const copy = document.createElement("button");
  copy.type = "button";
  copy.id = "copy";
  copy.textContent = "copy";
  const note = document.createElement("span");
  note.className = "note";
  note.id = "copy-note";
  note.setAttribute("aria-live", "polite");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(code.textContent);
      note.textContent = "copied";
    } catch {
      getSelection().selectAllChildren(code);
      note.textContent = "selected: press Ctrl+C to copy";
    }
  });
  const where = document.createElement("p");
  where.className = "note";
  where.textContent = "the same images from the command line (--model is the served folder; give its path)";
  cmd.append(code, copy, note);
  $("settings").replaceChildren(line, where, cmd);
}

function download(href, name, text) {
  const a = document.createElement("a");
  if (href !== null) a.href = href;
  a.download = name;
  a.textContent = text;
  return a;
}

async function enlarged(img, scale) {
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth * scale;
  canvas.height = img.naturalHeight * scale;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;  // nearest neighbour, as shown
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  if (!blob) throw new Error("the browser could not encode the canvas");
  const url = URL.createObjectURL(blob);
  blobUrls.push(url);
  return url;
}

function showResult(res, primeName) {
  blobUrls.forEach((u) => URL.revokeObjectURL(u));
  blobUrls = [];
  const [w, h] = res.image_size;
  const scale = Math.max(1, Math.ceil(SHOWN_PX / w));
  const figures = res.images.map((png, i) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = "data:image/png;base64," + png;
    img.alt = `${res.caption} (image ${i + 1} of ${res.images.length}, seed ${res.seed})`;
    img.style.width = `${w * scale}px`;
    img.style.height = `${h * scale}px`;
    const cap = document.createElement("figcaption");
    const label = document.createElement("div");
    label.textContent = `#${i + 1}` + (res.scores ? `  score ${res.scores[i].toFixed(3)}` : "");
    const stem = `dalle_${res.seed}_${i + 1}`;
    const raw = download(img.src, `${stem}.png`, `PNG ${w} px`);
    raw.className = "raw";
    cap.append(label, raw);
    if (scale > 1) {
      // no href until the PNG is ready: an <a> without one is not a link, so an early click saves nothing
      const big = download(null, `${stem}_${w * scale}px.png`, `PNG ${w * scale} px`);
      big.className = "enlarged";
      big.setAttribute("aria-disabled", "true");
      enlarged(img, scale).then((url) => {
        big.href = url;
        big.removeAttribute("aria-disabled");
      }).catch((e) => {
        const note = document.createElement("span");
        note.className = "note enlarged-failed";
        note.textContent = `PNG ${w * scale} px not available: ${e.message || e}`;
        big.replaceWith(note);
      });
      cap.append(big);
    }
    fig.append(img, cap);
    return fig;
  });
  $("images").replaceChildren(...figures);
  $("results").classList.remove("stale");
  $("results-note").textContent = "";
  showSettings(res, primeName);
  showWarnings(res.warnings);
  setStatus(`${res.images.length} image(s), seed ${res.seed}, ${res.seconds.toFixed(2)} s` +
    (res.queued_seconds > 0.05 ? ` (+${res.queued_seconds.toFixed(2)} s waiting)` : ""), false);
  const again = document.createElement("button");
  again.type = "button";
  again.textContent = "reuse seed";
  again.id = "reuse-seed";
  again.addEventListener("click", () => { $("seed").value = res.seed; checkSeed(); });
  $("status").append(" ", again);
}

// both files read: start
takeTokenFromFragment();
loadInfo();
