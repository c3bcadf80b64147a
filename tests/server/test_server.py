"""Specification of the HTTP server: a real server on an ephemeral port, a tiny real model, real requests."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import logging
import re
import socket
import threading
from collections.abc import Iterator

import pytest
import torch
from PIL import Image

from dalle_zero.pipelines.text_to_image import TextToImagePipeline, to_pil
from dalle_zero.server import DalleServer, GenerationService
from dalle_zero.server.api import png_base64
from tests.factories.pipelines import IMAGE_SIZE, tiny_pipeline, tiny_tokenizer
from tests.factories.server import LIMITS, call, generate, running


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def pipeline(tokenizer) -> TextToImagePipeline:
    return tiny_pipeline(clip=True, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def server(pipeline) -> Iterator[DalleServer]:
    with running(GenerationService(pipeline, LIMITS, name="tiny")) as s:
        yield s


@pytest.fixture(scope="module")
def server_without_reranker(tokenizer) -> Iterator[DalleServer]:
    with running(GenerationService(tiny_pipeline(tokenizer=tokenizer), LIMITS)) as s:
        yield s


def png_size(data: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        assert im.format == "PNG"
        return im.size


def png_of(image: Image.Image) -> str:
    return base64.b64encode(_png_bytes(image)).decode()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---- the page and the model summary ----


def test_the_page_is_self_contained_html_that_calls_the_api(server):
    status, response, page = call(server, "GET", "/")
    assert status == 200 and response.getheader("Content-Type") == "text/html; charset=utf-8"
    text = page.decode("utf-8")
    assert text.startswith("<!doctype html>") and "fetch(" in text
    for needle in ('call("health"', 'call("generate"', "caption", "candidates", "seed", "temperature"):
        assert needle in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # no external assets
    assert re.findall(r"<link[^>]*>", text) == ['<link rel="icon" href="favicon.ico" type="image/x-icon">']
    assert "<script src" not in text and "@import" not in text and "/*SCRIPT*/" not in text


def test_the_policy_allows_exactly_the_pages_script_and_style(server):
    _, response, page = call(server, "GET", "/")
    policy = dict(d.strip().split(" ", 1) for d in response.getheader("Content-Security-Policy").split(";"))
    assert policy["default-src"] == "'none'" and "unsafe" not in response.getheader("Content-Security-Policy")
    text = page.decode("utf-8")
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"


def test_the_icon_is_served_without_the_page_needing_a_token(server):
    status, response, icon = call(server, "GET", "/favicon.ico")
    assert status == 200 and response.getheader("Content-Type") == "image/x-icon"
    with Image.open(io.BytesIO(icon)) as im:
        assert im.format == "ICO" and {(16, 16), (32, 32)} <= set(im.info["sizes"])


def test_head_of_the_page_sends_headers_only(server):
    status, response, content = call(server, "HEAD", "/")
    assert status == 200 and content == b"" and int(response.getheader("Content-Length")) > 1000


def test_health_summarises_the_model_and_the_limits(server):
    status, _, info = call(server, "GET", "/health")
    assert status == 200
    assert info["status"] == "ok" and info["model"] == "tiny"
    assert (info["image_size"], info["image_grid"], info["image_vocab_size"]) == (IMAGE_SIZE, 4, 32)
    assert info["text_seq_len"] == 8 and info["text_vocab_size"] > 0
    assert info["reranker"] is True and info["device"] == "cpu"
    assert info["transformer"]["attn_pattern"] == ["row", "column", "conv"]
    assert info["priming"] == {"prime_rows_max": 4, "prime_rows_default": 2}
    assert info["ranges"] == {"temperature": [0.05, 10.0], "guidance_scale": [0.0, 50.0]} and info["int8"] is False
    assert info["limits"]["max_images"] == 4 and info["limits"]["max_candidates"] == 6
    assert call(server, "GET", "/info?verbose=1")[2] == info


def test_health_says_when_there_is_no_reranker(server_without_reranker):
    info = call(server_without_reranker, "GET", "/health")[2]
    assert info["reranker"] is False and info["limits"]["max_candidates"] == info["limits"]["max_images"]


# ---- generation ----


def test_generate_returns_n_pngs_of_the_model_size_best_first(server):
    result = generate(server, caption="a red star", n=2, candidates=3, seed=5, top_k=20)
    assert result["caption"] == "a red star" and result["seed"] == 5
    assert len(result["images"]) == 2 and all(png_size(im) == (IMAGE_SIZE, IMAGE_SIZE) for im in result["images"])
    assert result["image_size"] == [IMAGE_SIZE, IMAGE_SIZE]
    scores = result["scores"]
    assert len(scores) == 2 and scores[0] >= scores[1]
    assert result["settings"] == {
        "n": 2,
        "candidates": 3,
        "temperature": 1.0,
        "top_k": 20,
        "top_p": None,
        "guidance_scale": 1.0,
        "guidance_top_p": 0.95,
        "primed": False,
        "prime_rows": None,
    }
    assert result["seconds"] >= 0 and result["queued_seconds"] >= 0 and result["warnings"] == []


def test_null_fields_mean_the_defaults(server):
    body = dict(n=None, candidates=None, temperature=None, top_k=None, top_p=None, guidance_scale=None)
    result = generate(server, caption="a red star", seed=2, **body)
    assert result["images"] == generate(server, caption="a red star", seed=2)["images"]
    assert result["settings"]["n"] == 4 and result["settings"]["temperature"] == 1.0


def test_the_same_seed_gives_the_same_png_bytes_as_the_pipeline(server, pipeline):
    body = dict(caption="a blue heart", n=2, seed=11, temperature=0.9, top_p=0.95, guidance_scale=2.0)
    first, second = generate(server, **body), generate(server, **body)
    assert first["images"] == second["images"] and first["scores"] == second["scores"]
    out = pipeline("a blue heart", n=2, seed=11, temperature=0.9, top_p=0.95, guidance_scale=2.0)
    assert first["images"] == [png_base64(im) for im in to_pil(out.images[0])]
    assert generate(server, **{**body, "seed": 12})["images"] != first["images"]


def test_a_seedless_request_reports_the_seed_that_reproduces_it(server):
    first = generate(server, caption="a green circle", n=1)
    assert isinstance(first["seed"], int)
    again = generate(server, caption="a green circle", n=1, seed=first["seed"])
    assert again["images"] == first["images"]


def test_without_a_reranker_there_are_no_scores(server_without_reranker):
    result = generate(server_without_reranker, caption="a red star", n=2, seed=0)
    assert result["scores"] is None and len(result["images"]) == 2


def test_an_over_long_caption_is_truncated_with_a_warning(server):
    result = generate(server, caption=" ".join(["a red star"] * 6), n=1, seed=0)
    assert len(result["warnings"]) == 1 and "only the first 8" in result["warnings"][0]


def test_priming_with_a_png_matches_the_pipeline_and_accepts_a_data_url(server, pipeline):
    prime = to_pil(torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0)))[0]
    result = generate(server, caption="a red star", n=2, seed=3, prime_image=png_of(prime), prime_rows=1)
    assert result["settings"]["primed"] is True and result["settings"]["prime_rows"] == 1
    out = pipeline("a red star", n=2, candidates=None, seed=3, prime_image=prime, prime_rows=1)
    assert result["images"] == [png_base64(im) for im in to_pil(out.images[0])]
    data_url = "data:image/png;base64," + png_of(prime)
    from_url = generate(server, caption="a red star", n=2, seed=3, prime_image=data_url, prime_rows=1)
    assert from_url["images"] == result["images"]
    default_rows = generate(server, caption="a red star", n=1, seed=3, prime_image=png_of(prime))
    assert default_rows["settings"]["prime_rows"] == 2  # half the grid


def test_prime_rows_of_the_whole_grid_or_none_come_with_a_warning(server):
    prime = png_of(Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (200, 40, 40)))
    whole = generate(server, caption="a red star", n=3, seed=1, prime_image=prime, prime_rows=4)
    assert len(set(whole["images"])) == 1  # nothing sampled: the prime image, encoded and decoded
    assert whole["warnings"] == [
        "prime_rows = 4 is the whole token grid: nothing was sampled, so every image is the prime image as the "
        "dVAE encodes and decodes it, whatever the caption and seed (use fewer rows to let the model draw the rest)"
    ]
    none = generate(server, caption="a red star", n=1, seed=1, prime_image=prime, prime_rows=0)
    assert none["warnings"] == ["prime_rows = 0: the prime image was not used"]
    assert generate(server, caption="a red star", n=1, seed=1, prime_image=prime, prime_rows=2)["warnings"] == []


def test_a_transparent_prime_image_is_seen_on_white_like_the_training_images(server):
    transparent = Image.new("RGBA", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0, 0))
    white = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    body = dict(caption="a red star", n=1, seed=4, prime_rows=4)
    a = generate(server, **body, prime_image=png_of(transparent))
    b = generate(server, **body, prime_image=png_of(white))
    assert a["images"] == b["images"]


def test_concurrent_requests_both_succeed_and_match_sequential_ones(server):
    bodies = [dict(caption="a purple square", n=2, candidates=4, seed=s) for s in (21, 22)]
    results: dict[int, dict] = {}

    def worker(i: int) -> None:
        results[i] = call(server, "POST", "/generate", bodies[i])[2]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 1]
    for i, body in enumerate(bodies):
        assert results[i]["seed"] == body["seed"]
        assert results[i]["images"] == generate(server, **body)["images"]


def test_one_connection_serves_several_requests(server):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        assert call(server, "GET", "/health", connection=conn)[0] == 200
        assert call(server, "POST", "/generate", {"caption": "a red star", "n": 1}, connection=conn)[0] == 200
        assert call(server, "GET", "/health", connection=conn)[0] == 200
    finally:
        conn.close()


# ---- refused requests: a status and a one-line message naming the problem ----


def png_b64_of_garbage() -> str:
    return base64.b64encode(b"\x89PNG\r\n\x1a\n not really a png").decode()


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "caption must be a string"),
        ({"caption": ""}, "caption is empty"),
        ({"caption": "   "}, "caption is empty"),
        ({"caption": 5}, "caption must be a string"),
        ({"caption": "a" * 201}, "201 characters; at most 200"),
        ({"caption": "a cat", "n": 0}, "n must be in [1, 4]"),
        ({"caption": "a cat", "n": 5}, "n must be in [1, 4], got 5"),
        ({"caption": "a cat", "n": "2"}, "n must be an integer"),
        ({"caption": "a cat", "n": 2.0}, "n must be an integer"),
        ({"caption": "a cat", "n": True}, "n must be an integer"),
        ({"caption": "a cat", "n": 3, "candidates": 2}, "candidates must be in [3, 6]"),
        ({"caption": "a cat", "n": 1, "candidates": 7}, "candidates must be in [1, 6], got 7"),
        ({"caption": "a cat", "seed": -1}, "seed must be in [0, "),
        ({"caption": "a cat", "seed": "abc"}, "seed must be an integer"),
        ({"caption": "a cat", "temperature": 0}, "temperature must be a number in [0.05, 10], got 0"),
        ({"caption": "a cat", "temperature": "hot"}, "temperature must be a number in [0.05, 10]"),
        ({"caption": "a cat", "top_k": 0}, "top_k must be in [1, 32], got 0"),
        ({"caption": "a cat", "top_p": 1.5}, "top_p must be a number in (0, 1], got 1.5"),
        ({"caption": "a cat", "guidance_scale": [1]}, "guidance_scale must be a number in [0, 50]"),
        ({"caption": "a cat", "prime_rows": 1}, "prime_rows needs a prime_image"),
        ({"caption": "a cat", "prime_image": "not base64!"}, "prime_image is not valid base64"),
        ({"caption": "a cat", "prime_image": png_b64_of_garbage()}, "prime_image is not a readable"),
        ({"caption": "a cat", "prime_image": 7}, "prime_image must be a base64 string"),
        ({"caption": "a cat", "prime_image": "data:image/png,abc"}, "must be base64-encoded"),
        ({"caption": "a cat", "temp": 0.5}, "unknown field 'temp'"),
        (["a cat"], "the body must be a JSON object"),
    ],
)
def test_bad_requests_get_400_and_a_message(server, body, message):
    status, response, error = call(server, "POST", "/generate", body)
    assert status == 400 and error["status"] == 400
    assert message in error["error"] and "\n" not in error["error"]
    assert response.getheader("Connection") == "close"


def test_candidates_beyond_n_need_a_reranker(server_without_reranker):
    status, _, error = call(server_without_reranker, "POST", "/generate", {"caption": "a cat", "n": 1, "candidates": 2})
    assert status == 400 and "needs a CLIP reranker" in error["error"]


def test_a_prime_image_too_large_in_pixels_is_refused_before_decoding(server):
    huge = Image.new("RGB", (5000, 4000))  # compresses to a few kB, would be 60 MB decoded
    body = {"caption": "a cat", "prime_image": png_of(huge)}
    status, _, error = call(server, "POST", "/generate", body)
    assert status == 400 and "5000x4000 pixels" in error["error"]


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{not json", "the body is not valid JSON"),
        (b"", "the body is not valid JSON"),
        (b'{"caption": "a cat", "temperature": NaN}', "NaN is not a JSON number"),
        (b"\xff\xfe\x00garbage", "the body is not valid JSON"),
        (b"[" * 100_000, "the body is not valid JSON"),
    ],
)
def test_a_body_that_is_not_json_gets_400(server, raw, message):
    status, _, error = call(server, "POST", "/generate", raw=raw)
    assert status == 400 and message in error["error"]


def test_an_oversize_body_gets_413_without_being_parsed(server):
    status, _, error = call(server, "POST", "/generate", raw=b" " * 150_000)
    assert status == 413 and "150000 bytes; at most 100000" in error["error"]


@pytest.mark.parametrize(
    "method, path, status, allow",
    [
        ("GET", "/nope", 404, None),
        ("POST", "/nope", 404, None),
        ("GET", "/generate", 405, "POST"),
        ("POST", "/health", 405, "GET, HEAD"),
        ("DELETE", "/", 405, "GET, HEAD"),
        ("PUT", "/generate", 405, "POST"),
    ],
)
def test_unknown_paths_get_404_and_wrong_methods_405(server, method, path, status, allow):
    got, response, error = call(server, method, path, {"caption": "a cat"} if method != "GET" else None)
    assert got == status and error["status"] == status and path.split("?")[0] in error["error"]
    assert response.getheader("Allow") == allow


def raw_exchange(server: DalleServer, request: bytes) -> bytes:
    """Send bytes on a plain socket and read the whole answer (the server closes after an error)."""
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_post_without_content_length_gets_411(server):
    answer = raw_exchange(server, b"POST /generate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411") and b"Content-Length" in answer


def test_a_body_that_stops_arriving_gets_408_instead_of_a_hanging_connection(server):
    head = b"POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
    answer = raw_exchange(server, head + b'\r\n{"caption"')
    assert answer.startswith(b"HTTP/1.1 408") and b"stopped after 10 of 100 bytes" in answer
    assert b"must arrive within 1 s" in answer


def test_a_malformed_request_line_gets_a_json_400(server):
    answer = raw_exchange(server, b"GET / two spaces HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b'{"error": "Bad request syntax' in answer


def test_an_internal_failure_is_a_500_with_a_request_id_and_the_details_only_in_the_log(tokenizer, caplog):
    broken = tiny_pipeline(tokenizer=tokenizer)
    broken.dvae.decoder = None  # a model that cannot decode: sampling works, decoding fails
    with running(GenerationService(broken, LIMITS)) as s, caplog.at_level(logging.ERROR, "dalle_zero.server"):
        status, _, error = call(s, "POST", "/generate", {"caption": "a red star", "n": 1})
        assert status == 500 and set(error) == {"error", "status", "request_id"}
        request_id = error["request_id"]
        assert error["error"] == f"internal error (request id {request_id})"  # no exception text, no paths
        assert call(s, "GET", "/health")[0] == 200
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None and "NoneType" in caplog.text
