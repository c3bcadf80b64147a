"""The web page of ``dalle serve`` (``GET /``): one self-contained HTML document, no external assets,
and its icon (``GET /favicon.ico``).

The document is put together from ``page.html``, ``page.css``, ``page.js`` (the form) and
``page_results.js`` (the results) beside this file, the two scripts joined into one. It
reads ``GET /health`` to show the model and set the form's limits (candidates only with a reranker),
sends the form to ``POST /generate`` with ``fetch()``, and shows:

- the images, upscaled by a whole factor with nearest neighbour (models may draw tiny images), each
  with its reranker score, an alt text naming caption, index and seed, and two downloads: the PNG
  as drawn and as shown (a link only once the browser has encoded it);
- the seed and settings used, and a ``dalle generate`` command (shell-quoted) that draws the same
  images;
- a status line (an ``aria-live`` region) that every submit renews, also one the browser's own
  form checks block, and that says "server not reachable" when no answer comes;
- earlier results dimmed and labelled as older while a request runs or after it failed;
- the response's warnings (a second live region), and a note before sending when ``prime rows``
  leaves nothing to draw.

The form starts from the model folder's recommended settings (``sampling`` of ``/health``) without
overwriting what the user typed, shows the candidate count the server will use for the images asked
for, and takes seeds up to 2**53 - 1, the largest integer a JavaScript number holds exactly.
The model's example captions (``examples`` of ``/health``) are buttons that fill the caption box.
For a server started with ``--token``, the page asks for the token (or takes it from the URL
fragment ``#token=...``), keeps it in ``sessionStorage`` (this tab only) and sends it as
``Authorization: Bearer``. The script and the style sheet are allowed by their sha256 in the
Content-Security-Policy (:func:`page_and_policy`), so no other inline code runs; handlers are
attached with ``addEventListener``, never as ``on...=`` attributes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
from importlib import resources

FAVICON_TYPE = "image/x-icon"
# a 4 x 4 grid of image codes, as the prior draws them; colours of the page's accent and its neighbours
_ICON_CODES = ("ABBA", "BCCB", "BCCB", "ADDA")
_ICON_COLOURS = {"A": (47, 95, 184), "B": (236, 236, 236), "C": (179, 38, 30), "D": (138, 83, 0)}


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


@functools.cache
def page_and_policy() -> tuple[bytes, str]:
    """The page (UTF-8) and the Content-Security-Policy that allows exactly its script and style."""
    style, script = _asset("page.css"), _asset("page.js") + "\n" + _asset("page_results.js")
    html = _asset("page.html").replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
    policy = (
        "default-src 'none'; "
        f"script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; "
        "img-src 'self' data: blob:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode("utf-8"), policy


@functools.cache
def favicon_ico() -> bytes:
    """A 16 and 32 px icon (ICO) drawn from :data:`_ICON_CODES`."""
    from PIL import Image  # only for the icon, drawn once a server starts: the page module stays light

    grid = Image.new("RGB", (4, 4))
    grid.putdata([_ICON_COLOURS[c] for row in _ICON_CODES for c in row])
    buffer = io.BytesIO()
    grid.resize((32, 32), Image.Resampling.NEAREST).save(buffer, format="ICO", sizes=[(16, 16), (32, 32)])
    return buffer.getvalue()
