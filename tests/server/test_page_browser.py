"""The page of ``dalle serve`` in a real headless browser: Debian's chromium driven by Playwright,
against a real server on a tiny real model saved as a model folder, used as a person would use it.

Skipped, with the reason, where playwright or chromium is missing (``.ci/run`` installs chromium).
"""

from __future__ import annotations

import base64
import io
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from dalle_zero.pipelines.text_to_image import TextToImagePipeline
from dalle_zero.server import DalleServer, GenerationService
from tests.factories.pipelines import IMAGE_SIZE, tiny_pipeline
from tests.factories.server import LIMITS, running

pytestmark = pytest.mark.slow

MODEL_NAME = "tiny-model"
GRID = IMAGE_SIZE // 4
TOKEN = "page-test-token-0123456789"
SHOWN = 160  # px: the page shows images at least this wide (page_results.js SHOWN_PX)
NO_TEXT = "\x1b[31m\x07"  # a caption the browser accepts and the server refuses (nothing left to draw)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs playwright: pip install -e '.[dev]'"
    )
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("the browser test needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("page") / MODEL_NAME
    tiny_pipeline(clip=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def service(model_dir) -> GenerationService:
    return GenerationService(TextToImagePipeline.from_pretrained(model_dir), LIMITS, name=MODEL_NAME)


@pytest.fixture(scope="module")
def server(service) -> Iterator[DalleServer]:
    with running(service) as s:
        yield s


def open_page(browser, url: str, **context_options):
    """A fresh tab on ``url``; its script errors and Content-Security-Policy violations are kept in
    ``page.problems`` (every test checks there are none)."""
    context = browser.new_context(accept_downloads=True, **context_options)
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda e: page.problems.append(f"script error: {e}"))
    page.on("console", lambda m: "Content Security Policy" in m.text and page.problems.append(m.text))
    page.goto(url)
    return page


@pytest.fixture
def page(browser, server) -> Iterator:
    page = open_page(browser, server.url)
    wait_for_model(page)
    yield page
    assert page.problems == []
    page.context.close()


def wait_for_model(page) -> None:
    page.wait_for_function("() => document.getElementById('model').textContent.includes('px images')")


def submit(page, caption: str, **fields: str) -> str:
    """Fill the form, press Generate, wait for the answer; returns the status line."""
    page.fill("#caption", caption)
    for name, value in fields.items():
        page.fill(f"#{name}", value)
    page.click("#go")
    page.wait_for_function(
        "() => !document.getElementById('go').disabled && "
        "!document.getElementById('status').textContent.startsWith('generating')"
    )
    return page.inner_text("#status")


def raw_pngs(page) -> list[bytes]:
    hrefs = page.eval_on_selector_all("#images a.raw", "links => links.map((a) => a.href)")
    return [base64.b64decode(h.partition(",")[2]) for h in hrefs]


def opacity(page, selector: str) -> float:
    return float(page.eval_on_selector(selector, "el => getComputedStyle(el).opacity"))


# ---- the status line and earlier results ----


def test_every_submit_renews_the_status_even_one_the_browser_blocks(page):
    assert "no text to draw" in submit(page, NO_TEXT)  # the server's refusal
    page.fill("#caption", "a red square")
    page.fill("#n", "99")  # over max_images: the browser itself refuses to submit
    page.click("#go")
    status = page.inner_text("#status")
    assert status.startswith("not sent: images:") and "no text to draw" not in status
    assert page.get_attribute("#status", "class") == "error"
    page.fill("#n", "1")
    page.fill("#caption", "")
    page.click("#go")
    assert page.inner_text("#status").startswith("not sent: caption:")
    page.fill("#caption", "a red square")
    page.fill("#seed", str(2**63 - 1))  # a JS number would round it, to one the API refuses
    page.click("#go")
    assert page.inner_text("#status").startswith(f"not sent: seed: at most {2**53 - 1} (2^53 - 1) from this page")
    assert submit(page, "a red square", seed=str(2**53 - 1)).startswith(f"1 image(s), seed {2**53 - 1}, ")
    assert f"--seed {2**53 - 1} " in page.inner_text("#command")
    assert page.get_attribute("#status", "class") == ""


def test_older_results_are_dimmed_and_labelled_while_a_request_runs_and_after_it_fails(page):
    submit(page, "a blue circle", n="2")
    assert opacity(page, "#images") == 1 and page.inner_text("#results-note") == ""
    held = []
    page.route("**/generate", lambda route: held.append(route))  # holds the request until the test lets it through
    page.fill("#caption", "a green star")
    page.click("#go")
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(20)
    assert held, "the page sent no request"
    assert page.inner_text("#status").startswith("generating")
    assert opacity(page, "#images") == pytest.approx(0.4) and "stale" in page.get_attribute("#results", "class")
    assert page.inner_text("#results-note").startswith("older results")
    assert page.get_attribute("#results", "aria-busy") == "true"
    held[0].continue_()
    page.wait_for_function("() => !document.getElementById('results').classList.contains('stale')")
    assert opacity(page, "#images") == 1 and page.inner_text("#results-note") == ""
    assert "a green star" in page.get_attribute("#images img", "alt")
    page.unroute("**/generate")
    assert "no text to draw" in submit(page, NO_TEXT)
    assert opacity(page, "#images") == pytest.approx(0.4)
    assert "the last request failed" in page.inner_text("#results-note")
    assert "a green star" in page.get_attribute("#images img", "alt")  # the older images, still there


def test_a_stopped_server_is_reported_as_not_reachable(browser, service):
    with running(service) as server:
        page = open_page(browser, server.url)
        wait_for_model(page)
        submit(page, "a red heart", n="1")
    time.sleep(1.5)  # the server's kept-alive connection closes after its 1 s request timeout
    status = submit(page, "a red heart", n="1")
    assert status.startswith("error: server not reachable") and "Failed to fetch" not in status
    assert "is dalle serve still running?" in status
    assert "the last request failed" in page.inner_text("#results-note")
    assert page.problems == []
    page.context.close()


# ---- what the results show ----


def test_each_result_shows_its_settings_and_a_command_that_draws_the_same_images(page, model_dir, tmp_path):
    caption = "--seed 1 a red 'heart' \"$HOME\" $(touch pwned) `touch pwned2`; !x"
    submit(page, caption, n="2", seed="123", candidates="3", temperature="0.9", top_k="20")
    settings = page.inner_text("#settings-line")
    for needle in ("seed 123", "2 image(s)", "best of 3 candidates", "temperature 0.9", "top-k 20", "top-p off"):
        assert needle in settings
    command = page.inner_text("#command")
    words = shlex.split(command)
    assert words[:4] == ["dalle", "generate", "--model", MODEL_NAME] and words[-2:] == ["--", caption]
    for flag, value in (("-n", "2"), ("--seed", "123"), ("--candidates", "3"), ("--temperature", "0.9")):
        assert words[words.index(flag) + 1] == value
    # the command itself, through a real shell, beside the model folder
    cli = f"{shlex.quote(sys.executable)} -m dalle_zero.cli.main "
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    run = subprocess.run(
        ["bash", "-c", cli + command.removeprefix("dalle ")],
        cwd=model_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert not (model_dir.parent / "pwned").exists() and not (model_dir.parent / "pwned2").exists()
    drawn = sorted((model_dir.parent / "samples").glob("00_*_0?.png"))
    assert [png_pixels(p.read_bytes()) for p in drawn] == [png_pixels(b) for b in raw_pngs(page)]
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("#copy")
    page.wait_for_function("() => document.getElementById('copy-note').textContent !== ''")
    assert page.evaluate("() => navigator.clipboard.readText()") == command


def test_the_form_starts_from_the_models_recommended_settings_and_the_command_names_them(browser, tmp_path):
    from dalle_zero.pipelines.sampling_defaults import SamplingDefaults

    base = tiny_pipeline(clip=True)
    recommended = SamplingDefaults(guidance_scale=2.5, temperature=0.9, candidates=3)
    folder = tmp_path / MODEL_NAME
    TextToImagePipeline(base.tokenizer, base.dvae, base.transformer, base.clip, sampling=recommended).save_pretrained(
        folder
    )
    service = GenerationService(TextToImagePipeline.from_pretrained(folder), LIMITS, name=MODEL_NAME)
    with running(service, token=TOKEN) as server:  # the summary comes only once the token is given
        page = open_page(browser, server.url)
        page.wait_for_function("() => document.getElementById('status').textContent.includes('access token')")
        page.fill("#temperature", "0.7")  # typed before the summary came: kept
        page.fill("#token", TOKEN)
        page.click("#use-token")
        wait_for_model(page)
        assert page.input_value("#guidance_scale") == "2.5" and page.input_value("#temperature") == "0.7"
        # what the server will draw when the field is left empty: min(max(n, 3), max_candidates 6)
        assert page.get_attribute("#candidates", "placeholder") == "4 (= images)"  # n starts at 4
        page.fill("#n", "2")
        assert page.get_attribute("#candidates", "placeholder") == "3 (recommended)"
        submit(page, "a red star", n="1", seed="5")
        assert "best of 3 candidates" in page.inner_text("#settings-line")
        words = shlex.split(page.inner_text("#command"))
        for flag, value in (("--candidates", "3"), ("--guidance-scale", "2.5"), ("--temperature", "0.7")):
            assert words[words.index(flag) + 1] == value
        assert page.problems == []
        page.context.close()


def png_pixels(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as im:
        return im.convert("RGB").tobytes()


def png_file(size: int = IMAGE_SIZE) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_prime_rows_of_the_whole_grid_is_explained_before_sending_and_with_the_result(page):
    page.set_input_files(
        "#prime_image", files=[{"name": "my prime.png", "mimeType": "image/png", "buffer": png_file()}]
    )
    page.wait_for_selector("#prime-preview", state="visible")
    page.fill("#prime_rows", str(GRID))
    assert f"prime rows = {GRID}, the whole grid: nothing is left to draw" in page.inner_text("#prime-note")
    page.fill("#prime_rows", "2")
    assert page.inner_text("#prime-note") == ""
    page.fill("#prime_rows", str(GRID))
    submit(page, "a purple square", n="3", seed="5")
    assert "is the whole token grid: nothing was sampled" in page.inner_text("#warning")
    assert f"primed with my prime.png, {GRID} of {GRID} rows" in page.inner_text("#settings-line")
    assert f"--prime-image 'my prime.png' --prime-rows {GRID}" in page.inner_text("#command")
    assert len(set(raw_pngs(page))) == 1  # every image is the prime image as the dVAE sees it


def test_the_page_is_labelled_announces_its_status_and_has_an_icon(page, server):
    assert page.get_by_label("caption", exact=True).evaluate("el => el.id") == "caption"
    for region in ("#status", "#warning"):  # the server's warnings are read out too
        assert page.get_attribute(region, "aria-live") == "polite"
        assert page.get_attribute(region, "role") == "status"
    # rendered while empty: a live region that appears only with its text may not be read out
    assert page.eval_on_selector("#warning", "el => el.textContent === '' && el.checkVisibility()")
    icon = page.request.get(server.url + page.get_attribute("link[rel=icon]", "href"))
    assert icon.status == 200 and icon.headers["content-type"] == "image/x-icon"
    with Image.open(io.BytesIO(icon.body())) as im:
        assert im.format == "ICO" and {(16, 16), (32, 32)} <= set(im.info["sizes"])
    csp = page.request.get(server.url).headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp and "script-src 'sha256-" in csp
    submit(page, "a yellow star", n="4", seed="9")
    alts = page.eval_on_selector_all("#images img", "imgs => imgs.map((i) => i.alt)")
    assert len(set(alts)) == 4 and all(a.startswith("a yellow star (image ") and "seed 9" in a for a in alts)


# WCAG 2 contrast of every element's own text against the first opaque background behind it
CONTRAST = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((v) => { v /= 255;
    return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
    .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || c[3] === 1) return c.slice(0, 3);
    }
    return null;
  };
  const ratio = (fg, bg) => {
    const [hi, lo] = [lum(rgb(fg).slice(0, 3)), lum(bg)].sort((a, b) => b - a);
    return Math.round(100 * (hi + 0.05) / (lo + 0.05)) / 100;
  };
  const out = [];
  for (const el of document.body.querySelectorAll("*")) {
    if (!el.checkVisibility() || el.disabled) continue;
    const name = el.tagName + (el.id ? "#" + el.id : "");
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (own) out.push([name, el.textContent.trim().slice(0, 30), ratio(getComputedStyle(el).color, background(el))]);
    if (el.matches("input:not([type=file]), textarea")) {  // what is typed, or the placeholder
      out.push([name, "(value)", ratio(getComputedStyle(el).color, background(el))]);
      if (el.placeholder && !el.value) {
        out.push([name, el.placeholder, ratio(getComputedStyle(el, "::placeholder").color, background(el))]);
      }
    }
  }
  return out;
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_all_text_meets_wcag_aa_contrast(browser, server, scheme):
    page = open_page(browser, server.url, color_scheme=scheme)
    wait_for_model(page)
    measured = page.evaluate(CONTRAST)
    submit(page, NO_TEXT)  # the error colour
    measured += page.evaluate(CONTRAST)
    submit(page, "a ox yak", n="2")  # the warning colour, results, downloads and the command
    measured += page.evaluate(CONTRAST)
    tags = {m[0] for m in measured}
    assert {"DIV#status", "DIV", "LABEL", "BUTTON#go", "CODE#command", "A", "P#model", "INPUT#seed"} <= tags
    assert any(m[:2] == ["INPUT#seed", "random"] for m in measured)  # a placeholder
    low = [m for m in measured if m[2] < 4.5]
    assert low == [], f"text below 4.5:1 in the {scheme} scheme: {low}"
    assert page.problems == []
    page.context.close()


# holds the page's canvas.toBlob() calls (the enlarged PNGs) until the test releases them, or fails them
# as a browser does for a canvas it cannot encode (the callback gets null)
HOLD_BLOBS = """(() => {
  const real = HTMLCanvasElement.prototype.toBlob;
  const held = [];
  HTMLCanvasElement.prototype.toBlob = function (...args) { held.push([this, args]); };
  window.heldBlobs = () => held.length;
  window.releaseBlobs = (fail) => {
    for (const [canvas, [done, ...rest]] of held.splice(0)) fail ? done(null) : real.call(canvas, done, ...rest);
    return true;
  };
})()"""


def test_each_image_downloads_as_drawn_and_as_shown(page):
    page.add_init_script(HOLD_BLOBS)
    page.reload()
    wait_for_model(page)
    downloads = []
    page.on("download", lambda d: downloads.append(d))
    submit(page, "a green heart", n="2", seed="3")
    # not ready: no link to click (an early click on href="#" saved the page itself as a PNG)
    assert page.eval_on_selector_all("#images a.enlarged", "as => as.map((a) => a.hasAttribute('href'))") == [
        False,
        False,
    ]
    assert page.get_attribute("#images a.enlarged", "aria-disabled") == "true"
    page.click("#images a.enlarged")
    page.wait_for_function("() => heldBlobs() === 2")
    assert downloads == []
    page.evaluate("() => releaseBlobs(false)")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#images a.enlarged')].every((a) => a.href.startsWith('blob:'))"
    )
    assert page.get_attribute("#images a.enlarged", "aria-disabled") is None
    for link, size in (("a.raw", IMAGE_SIZE), ("a.enlarged", SHOWN)):
        with page.expect_download() as info:
            page.click(f"#images figure:nth-child(2) {link}")
        with Image.open(info.value.path()) as im:
            assert im.size == (size, size)
            pixels = im.convert("RGB")
        if link == "a.raw":
            raw = pixels
            assert info.value.suggested_filename == "dalle_3_2.png"
    assert info.value.suggested_filename == f"dalle_3_2_{SHOWN}px.png"
    assert pixels.tobytes() == raw.resize((SHOWN, SHOWN), Image.Resampling.NEAREST).tobytes()
    submit(page, "a green heart", n="1", seed="4")
    page.wait_for_function("() => heldBlobs() === 1")
    page.evaluate("() => releaseBlobs(true)")  # the browser could not encode it: no link, and why
    page.wait_for_selector("#images .enlarged-failed")
    assert page.query_selector("#images a.enlarged") is None and page.query_selector("#images a.raw")
    assert (
        page.inner_text("#images .enlarged-failed")
        == f"PNG {SHOWN} px not available: the browser could not encode the canvas"
    )


def test_the_command_names_no_null_or_undefined_whatever_the_server_echoes(page):
    def echo_less(route):
        body = route.fetch().json()
        del body["settings"]["guidance_top_p"]  # undefined
        body["settings"].update(temperature=None, candidates=None, guidance_scale=None)
        route.fulfill(json=body)

    page.route("**/generate", echo_less)
    submit(page, "a grey cat", n="1", seed="6")
    command, settings = page.inner_text("#command"), page.inner_text("#settings-line")
    for text in (command, settings):
        assert "null" not in text and "undefined" not in text
    words = shlex.split(command)
    assert words[words.index("--seed") + 1] == "6" and words[-2:] == ["--", "a grey cat"]
    assert not {"--temperature", "--guidance-scale", "--guidance-top-p", "--candidates"} & set(words)


# ---- a server with a token ----


def test_the_page_asks_for_the_token_of_a_protected_server_and_keeps_it_for_the_tab(browser, service):
    with running(service, token=TOKEN) as server:
        page = open_page(browser, server.url)
        page.wait_for_function("() => document.getElementById('status').textContent.includes('access token')")
        assert "this server needs an access token" in page.inner_text("#status")
        assert page.is_visible("#token")
        page.fill("#token", "not-the-token-0123456789")
        page.click("#use-token")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('refused')")
        page.fill("#token", TOKEN)
        page.click("#use-token")
        wait_for_model(page)
        assert submit(page, "a red circle", n="1").startswith("1 image(s)")
        assert page.evaluate("() => sessionStorage.getItem('dalle-zero-token')") == TOKEN
        page.reload()  # the same tab keeps it
        wait_for_model(page)
        assert submit(page, "a red circle", n="1").startswith("1 image(s)")
        page.context.close()

        page = open_page(browser, server.url + f"#token={TOKEN}")  # a link with the token in its fragment
        wait_for_model(page)
        assert page.evaluate("() => location.hash") == "" and TOKEN not in page.url
        assert submit(page, "a blue heart", n="1").startswith("1 image(s)")
        assert page.problems == []
        page.context.close()
