"""Specification of the server facing hostile clients and careless callers: the names and origins it
answers to, the bearer token, request deadlines, the connection cap, the bounded queue, abandoned
requests, prime-image formats, numeric ranges and refused bodies. Real servers, real sockets."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from PIL import Image

from dalle_zero.pipelines.text_to_image import TextToImagePipeline
from dalle_zero.server import DalleServer, GenerationService, make_server
from dalle_zero.server.api import CLIENT_POLL_SECONDS
from dalle_zero.server.guards import HostNames
from tests.factories.pipelines import tiny_pipeline, tiny_tokenizer
from tests.factories.server import (
    LIMITS,
    call,
    connect,
    generate,
    handler_threads,
    post_head,
    post_request,
    read_all,
    request_head,
    running,
    trickle,
)

BODY = {"caption": "a red star", "n": 1, "seed": 0}
TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def pipeline(tokenizer) -> TextToImagePipeline:
    return tiny_pipeline(tokenizer=tokenizer)


@pytest.fixture(scope="module")
def server(pipeline) -> Iterator[DalleServer]:
    with running(GenerationService(pipeline, LIMITS)) as s:  # request deadline: 1 s
        yield s


# ---- raw sockets ----


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.05)


def in_background(fn: Callable[..., Any], *args: Any) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn(*args)), daemon=True)
    thread.start()
    return thread, result


def queue(server: DalleServer) -> dict:
    return call(server, "GET", "/health")[2]["queue"]


# ---- cross-site requests and DNS rebinding ----


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_a_post_whose_body_is_not_declared_json_gets_415_and_is_not_sampled(server, content_type):
    queued = queue(server)["counts"]["queued"]
    data = json.dumps(BODY).encode()
    status, _, error = call(server, "POST", "/generate", raw=data, headers={"Content-Type": content_type})
    assert status == 415 and "takes Content-Type: application/json" in error["error"]
    assert queue(server)["counts"]["queued"] == queued


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_with_parameters_or_in_capitals_is_accepted(server, content_type):
    status, _, _ = call(server, "POST", "/generate", BODY, headers={"Content-Type": content_type})
    assert status == 200


@pytest.mark.parametrize(
    "host", ["rebind.evil.example", "rebind.evil.example:{port}", "localhost.evil.example:{port}", "x", "a:b:c"]
)
def test_a_host_that_does_not_name_this_server_gets_403(server, host):
    host = host.format(port=server.server_port)
    for method, path, body in (("GET", "/health", None), ("POST", "/generate", BODY), ("GET", "/", None)):
        status, _, error = call(server, method, path, body, headers={"Host": host})
        assert status == 403 and "not a name of this server" in error["error"] and "\n" not in error["error"]


@pytest.mark.parametrize(
    "host", ["localhost:{port}", "LOCALHOST:{port}", "127.0.0.1:{port}", "127.0.0.1", "[::1]:{port}"]
)
def test_localhost_and_the_bound_address_are_this_server(server, host):
    assert call(server, "GET", "/health", headers={"Host": host.format(port=server.server_port)})[0] == 200


def test_a_request_without_a_host_gets_400(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400") and b"needs a Host header" in answer


def test_allowed_hosts_add_names(pipeline):
    with running(GenerationService(pipeline, LIMITS), allowed_hosts=["demo.example"]) as s:
        assert call(s, "GET", "/health", headers={"Host": "demo.example:8080"})[0] == 200
        assert call(s, "GET", "/health", headers={"Host": "Demo.Example"})[0] == 200
        assert call(s, "GET", "/health", headers={"Host": "other.example"})[0] == 403


def test_host_names_follow_the_bound_address():
    everywhere = HostNames("0.0.0.0")
    assert everywhere.allows("192.168.1.5:8000") and everywhere.allows("[fe80::1]:8000")
    assert not everywhere.allows("rebind.evil.example:8000")
    one = HostNames("192.168.1.5", ["box.lan"])
    assert one.allows("192.168.1.5:8000") and one.allows("box.lan") and one.allows("127.0.0.1")
    assert not one.allows("10.0.0.7:8000") and not one.allows("evil.lan")


@pytest.mark.parametrize("name", ["http://demo.example", "demo.example:8000", "", "a/b", "user@demo.example"])
def test_an_allowed_host_must_be_a_bare_name(pipeline, name):
    with pytest.raises(ValueError, match="must be a host name or address without a scheme or port"):
        make_server(GenerationService(pipeline, LIMITS), "127.0.0.1", 0, allowed_hosts=[name])


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "http://127.0.0.1:{other}", "http://localhost:{port}", "file://"]
)
def test_a_request_from_another_origin_gets_403(server, origin):
    origin = origin.format(port=server.server_port, other=server.server_port + 1)
    headers = {"Origin": origin, "Content-Type": "text/plain"}  # what a cross-site form or fetch sends
    status, _, error = call(server, "POST", "/generate", BODY, headers=headers)
    assert status == 403 and "other sites" in error["error"]
    assert call(server, "GET", "/health", headers={"Origin": origin})[0] == 403


def test_a_request_from_the_servers_own_page_is_served(server):
    origin = f"http://127.0.0.1:{server.server_port}"
    assert call(server, "POST", "/generate", BODY, headers={"Origin": origin})[0] == 200


# ---- the bearer token ----


@pytest.fixture(scope="module")
def token_server(pipeline) -> Iterator[DalleServer]:
    with running(GenerationService(pipeline, LIMITS), token=TOKEN) as s:
        yield s


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token-wrong-token", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", "Bearer"]
)
def test_without_the_token_every_request_but_the_page_gets_401(token_server, authorization):
    for method, path, body in (("GET", "/health", None), ("POST", "/generate", BODY), ("GET", "/nope", None)):
        status, response, error = call(token_server, method, path, body, headers={"Authorization": authorization})
        assert status == 401 and "Authorization: Bearer" in error["error"]
        assert response.getheader("WWW-Authenticate").startswith("Bearer")
    assert queue_with_token(token_server)["counts"]["queued"] == 0


def queue_with_token(server: DalleServer) -> dict:
    return call(server, "GET", "/health", headers={"Authorization": f"Bearer {TOKEN}"})[2]["queue"]


def test_with_the_token_requests_are_served_and_the_page_and_its_icon_need_none(token_server):
    for scheme in ("Bearer", "bearer"):
        headers = {"Authorization": f"{scheme} {TOKEN}"}
        assert call(token_server, "GET", "/health", headers=headers)[0] == 200
        assert call(token_server, "POST", "/generate", BODY, headers=headers)[0] == 200
    assert call(token_server, "GET", "/")[0] == 200
    assert call(token_server, "GET", "/favicon.ico")[0] == 200


@pytest.mark.parametrize("token", ["short", "x" * 15, "has spaces in it, sixteen+", "ünïcödé-token-1234"])
def test_a_weak_or_unsendable_token_is_refused(pipeline, token):
    with pytest.raises(ValueError, match="the token must"):
        make_server(GenerationService(pipeline, LIMITS), "127.0.0.1", 0, token=token)


# ---- deadlines for slow clients ----


def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_request_deadline(server):
    stop = threading.Event()
    with connect(server) as sock:
        start = time.monotonic()
        trickle(sock, b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"x" * 200, 0.2, stop)
        answer = read_all(sock)
        elapsed = time.monotonic() - start
        stop.set()
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
    assert elapsed < 4  # each byte came well within a per-read timeout; the trickle would last 45 s


def test_a_body_sent_a_byte_at_a_time_is_cut_at_the_request_deadline(server):
    stop = threading.Event()
    body = json.dumps({**BODY, "caption": "a red star " * 20}).encode()
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(post_head(len(body)))
        trickle(sock, body, 0.2, stop)
        answer = read_all(sock)
        elapsed = time.monotonic() - start
        stop.set()
    assert answer.startswith(b"HTTP/1.1 408") and b"the body stopped after" in answer
    assert elapsed < 4


def test_an_idle_connection_is_closed_at_the_deadline_without_an_answer(server):
    with connect(server) as sock:
        start = time.monotonic()
        assert read_all(sock) == b""
        assert time.monotonic() - start < 4


# ---- bodies refused before they are read ----


def test_an_oversize_body_is_refused_as_soon_as_its_head_arrives(pipeline):
    with running(GenerationService(pipeline, LIMITS), timeout=10.0) as s, connect(s) as sock:
        start = time.monotonic()
        sock.sendall(post_head(50_000_000))  # the body never comes: the answer must not wait for it
        answer = read_all(sock)
        elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 413") and b"50000000 bytes; at most 100000" in answer
    assert elapsed < 4


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Content-Length": "50000000"}, 413),
        ({"Content-Type": "text/plain"}, 415),
        ({"Host": "rebind.evil.example"}, 403),
        ({"Origin": "http://evil.example"}, 403),
    ],
)
def test_expect_100_continue_gets_the_refusal_instead_of_an_invitation(server, headers, status):
    with connect(server) as sock:
        sock.sendall(post_head(40, Expect="100-continue", **headers))
        answer = read_all(sock)
    assert answer.startswith(f"HTTP/1.1 {status}".encode()) and b"100 Continue" not in answer


def test_expect_100_continue_invites_an_acceptable_body(server):
    body = json.dumps(BODY).encode()
    with connect(server) as sock:
        sock.sendall(post_head(len(body), Expect="100-continue", Connection="close"))
        sock.settimeout(15)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b'"seed": 0' in answer


# ---- numbers ----


HUGE = 10**400


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", HUGE, "temperature must be a number in [0.05, 10], got an integer of about 400 digits"),
        ("temperature", -HUGE, "temperature must be a number in [0.05, 10]"),
        ("temperature", 1e-40, "temperature must be a number in [0.05, 10], got 1e-40"),
        ("temperature", 11, "temperature must be a number in [0.05, 10], got 11"),
        ("top_p", HUGE, "top_p must be a number in (0, 1]"),
        ("top_p", 0, "top_p must be a number in (0, 1], got 0"),
        ("guidance_scale", HUGE, "guidance_scale must be a number in [0, 50]"),
        ("guidance_scale", 1e300, "guidance_scale must be a number in [0, 50], got 1e+300"),
        ("guidance_scale", -1, "guidance_scale must be a number in [0, 50], got -1"),
        ("guidance_top_p", 0, "guidance_top_p must be a number in (0, 1], got 0"),
        ("guidance_top_p", 1.5, "guidance_top_p must be a number in (0, 1], got 1.5"),
        ("top_k", HUGE, "top_k must be in [1, 32]"),
        ("top_k", 33, "top_k must be in [1, 32], got 33"),
        ("n", HUGE, "n must be in [1, 4]"),
        ("candidates", HUGE, "candidates must be in [1, 6]"),
        ("seed", HUGE, "seed must be in [0, 9223372036854775807]"),
        ("prime_rows", HUGE, "prime_rows must be in [0, 4]"),
    ],
    ids=lambda v: {HUGE: "10**400", -HUGE: "-10**400"}.get(v) if isinstance(v, int) else None,
)
def test_every_number_out_of_its_range_gets_400_naming_the_field(server, field, value, message):
    status, _, error = call(server, "POST", "/generate", {**BODY, field: value})
    assert status == 400 and message in error["error"] and "\n" not in error["error"]


@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"caption": "a cat", "temperature": 1e400}', "temperature must be a number in [0.05, 10], got inf"),
        (b'{"caption": "a cat", "guidance_scale": -1e999}', "guidance_scale must be a number in [0, 50], got -inf"),
        (b'{"caption": "a cat", "seed": ' + b"9" * 5000 + b"}", "a number has too many digits"),
    ],
    ids=["1e400", "-1e999", "5000 digits"],
)
def test_numbers_beyond_floats_and_ints_get_400(server, raw, message):
    status, _, error = call(server, "POST", "/generate", raw=raw)
    assert status == 400 and message in error["error"]


def test_the_limits_of_each_range_are_accepted(server):
    for settings in ({"temperature": 0.05, "guidance_scale": 50}, {"temperature": 10, "guidance_scale": 0}):
        assert call(server, "POST", "/generate", {**BODY, "top_k": 32, "top_p": 1, **settings})[0] == 200


# ---- prime images ----


def image_file(fmt: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_a_prime_image_in_a_browser_format_is_accepted(server, fmt):
    status, _, result = call(server, "POST", "/generate", {**BODY, "prime_image": image_file(fmt)})
    assert status == 200 and result["settings"]["primed"] is True


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM", "TGA", "PCX", "EPS"])
def test_a_prime_image_in_any_other_format_is_refused_undecoded(server, fmt):
    status, _, error = call(server, "POST", "/generate", {**BODY, "prime_image": image_file(fmt)})
    assert status == 400 and "prime_image is not a readable PNG, JPEG, WebP, GIF or BMP file" in error["error"]


# ---- the connection cap ----


def test_connections_beyond_the_cap_get_503_at_once(pipeline):
    with running(GenerationService(pipeline, LIMITS), timeout=10.0, max_connections=2) as s:
        held = [connect(s) for _ in range(2)]  # idle: each holds a slot until its deadline
        with connect(s) as sock:
            sock.sendall(request_head("GET", "/health", {"Host": "localhost"}))
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
        assert b"too many connections (at most 2)" in answer
        held.pop().close()
        wait_until(lambda: call(s, "GET", "/health")[0] == 200)
        held.pop().close()


def test_ctrl_c_while_a_connection_thread_starts_stops_the_server_and_frees_its_slot_once(pipeline, monkeypatch):
    # the signal handler raises KeyboardInterrupt in the serving thread wherever it is; here, just
    # after a connection's thread was started and had served it
    import socketserver

    start_thread = socketserver.ThreadingMixIn.process_request
    before = handler_threads()

    def interrupted(self, request, client_address):
        start_thread(self, request, client_address)
        wait_until(lambda: handler_threads() == before)  # the connection's thread is done, its slot freed
        raise KeyboardInterrupt

    server = make_server(GenerationService(pipeline, LIMITS), "127.0.0.1", 0, timeout=10.0, max_connections=2)
    stopped: list[BaseException] = []

    def serve() -> None:
        try:
            server.serve_forever()
        except BaseException as e:  # noqa: B036 (what stops the server is the point)
            stopped.append(e)

    monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request", interrupted)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert call(server, "GET", "/health")[0] == 200
        thread.join(10)
        assert not thread.is_alive() and [type(e) for e in stopped] == [KeyboardInterrupt]
        assert all(server._slots.acquire(blocking=False) for _ in range(2))  # both slots free...
        assert not server._slots.acquire(blocking=False)  # ...and no more than the cap
    finally:
        server.server_close()


def test_half_sent_requests_do_not_grow_threads_beyond_the_cap(pipeline):
    with running(GenerationService(pipeline, LIMITS), timeout=10.0, max_connections=4) as s:
        before = handler_threads()
        socks = [connect(s) for _ in range(30)]
        try:
            for sock in socks:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")  # never finished
            refused = [read_all(sock, timeout=10) for sock in socks[4:]]
            assert all(answer.startswith(b"HTTP/1.1 503") for answer in refused)
            assert handler_threads() - before <= 4
        finally:
            for sock in socks:
                sock.close()


# ---- the queue ----


class GatedPipeline(TextToImagePipeline):
    """The tiny pipeline, recording each caption it starts sampling and holding the sampler until
    ``gate`` is set: lets a test keep the model busy while other requests queue."""

    def __init__(self, tokenizer) -> None:
        p = tiny_pipeline(tokenizer=tokenizer)
        super().__init__(p.tokenizer, p.dvae, p.transformer)
        self.gate = threading.Event()
        self.sampled: list[str] = []

    def __call__(self, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        self.sampled.append(prompt)
        if not self.gate.wait(30):
            raise TimeoutError("the gate was never opened")
        return super().__call__(prompt, *args, **kwargs)


@contextlib.contextmanager
def gated_server(tokenizer, **limits: Any) -> Iterator[tuple[DalleServer, GatedPipeline]]:
    pipeline = GatedPipeline(tokenizer)
    service = GenerationService(pipeline, dataclasses.replace(LIMITS, **limits))
    with running(service, timeout=10.0) as s:
        try:
            yield s, pipeline
        finally:
            pipeline.gate.set()  # before the server stops, which waits for its handlers


def test_a_full_queue_answers_503_with_retry_after(tokenizer):
    with gated_server(tokenizer, max_queue=1) as (s, pipeline):
        first, first_result = in_background(call, s, "POST", "/generate", {**BODY, "caption": "a red star"})
        wait_until(lambda: pipeline.sampled == ["a red star"])
        second, second_result = in_background(call, s, "POST", "/generate", {**BODY, "caption": "a blue heart"})
        wait_until(lambda: queue(s)["waiting"] == 1)
        status, response, error = call(s, "POST", "/generate", {**BODY, "caption": "a green circle"})
        assert status == 503 and "the server is busy: 1 requests are waiting" in error["error"]
        assert int(response.getheader("Retry-After")) >= 1
        pipeline.gate.set()
        for thread in (first, second):
            thread.join(30)
        assert first_result["value"][0] == 200 and second_result["value"][0] == 200
        assert pipeline.sampled == ["a red star", "a blue heart"]
        assert queue(s)["counts"]["refused_busy"] == 1


def test_a_request_waiting_past_the_queue_timeout_gets_503(tokenizer):
    with gated_server(tokenizer, queue_timeout=0.5) as (s, pipeline):
        first, first_result = in_background(call, s, "POST", "/generate", BODY)
        wait_until(lambda: pipeline.sampled == ["a red star"])
        start = time.monotonic()
        status, response, error = call(s, "POST", "/generate", {**BODY, "caption": "a blue heart"})
        assert status == 503 and "waited 0.5 s for its turn" in error["error"] and response.getheader("Retry-After")
        assert 0.4 < time.monotonic() - start < 5
        pipeline.gate.set()
        first.join(30)
        assert first_result["value"][0] == 200 and pipeline.sampled == ["a red star"]


def test_a_request_whose_client_hung_up_is_never_sampled(tokenizer):
    with gated_server(tokenizer) as (s, pipeline):
        first, first_result = in_background(call, s, "POST", "/generate", BODY)
        wait_until(lambda: pipeline.sampled == ["a red star"])
        leavers = [connect(s) for _ in range(3)]
        for sock in leavers:
            sock.sendall(post_request({**BODY, "caption": "a blue heart"}))
        wait_until(lambda: queue(s)["waiting"] == 3)
        for sock in leavers:
            sock.close()
        wait_until(lambda: queue(s)["counts"]["abandoned"] == 3)
        pipeline.gate.set()
        first.join(30)
        assert first_result["value"][0] == 200
        assert pipeline.sampled == ["a red star"]
        counts = queue(s)["counts"]
        assert counts == {
            "queued": 4, "sampled": 1, "abandoned": 3, "timed_out": 0, "refused_busy": 0, "refused_stopping": 0,
            "cancelled": 0,
        }  # fmt: skip


class HeldPipeline(TextToImagePipeline):
    """The tiny pipeline, its first call held at its first token step until ``release`` is set: lets a
    test act while a request is being sampled. ``steps`` records the token steps sampled."""

    def __init__(self, tokenizer) -> None:
        p = tiny_pipeline(tokenizer=tokenizer)
        super().__init__(p.tokenizer, p.dvae, p.transformer)
        self.holding, self.release = threading.Event(), threading.Event()
        self.steps: list[int] = []

    def __call__(self, prompt: Any, *args: Any, progress: Any = False, **kwargs: Any) -> Any:
        def held(done: int, total: int) -> None:
            self.steps.append(done)
            if not self.holding.is_set():
                self.holding.set()
                assert self.release.wait(30), "never released"
            progress(done, total)

        return super().__call__(prompt, *args, progress=held, **kwargs)


def test_a_request_whose_client_hung_up_while_it_was_sampled_stops_sampling(tokenizer):
    pipeline = HeldPipeline(tokenizer)
    with running(GenerationService(pipeline, LIMITS), timeout=10.0) as s:
        sock = connect(s)
        sock.sendall(post_request({**BODY, "n": 4}))
        assert pipeline.holding.wait(30)
        sock.close()
        time.sleep(CLIENT_POLL_SECONDS * 1.5)  # past the time of the next check of the client
        pipeline.release.set()
        wait_until(lambda: queue(s)["counts"]["cancelled"] == 1)
        assert pipeline.steps == [1]  # of 16: stopped at its first check after the client left
        assert generate(s, caption="a blue heart")["images"]  # the model is free for the next request
        assert queue(s)["counts"] == {
            "queued": 2, "sampled": 2, "abandoned": 0, "timed_out": 0, "refused_busy": 0, "refused_stopping": 0,
            "cancelled": 1,
        }  # fmt: skip


def test_closing_the_server_stops_a_request_being_sampled_with_503(tokenizer):
    pipeline = HeldPipeline(tokenizer)
    service = GenerationService(pipeline, LIMITS)
    server = make_server(service, "127.0.0.1", 0, timeout=10.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    request, result = in_background(call, server, "POST", "/generate", {**BODY, "n": 4})
    assert pipeline.holding.wait(30)
    server.shutdown()
    releaser, _ = in_background(lambda: (wait_until(lambda: server.closing), pipeline.release.set()))
    t0 = time.monotonic()
    server.server_close()  # ends the request being sampled, then waits for its connection thread
    assert time.monotonic() - t0 < server.close_grace_seconds
    assert not server._connection_threads
    request.join(10)
    status, response, error = result["value"]
    assert status == 503 and error["error"] == "the server is stopping; retry shortly"
    assert response.getheader("Retry-After") == "1"
    assert pipeline.steps == [1] and service.counts["cancelled"] == 1  # of 16 steps
    with running(service) as again:  # the service itself is not stopped: another server can use it
        assert generate(again, caption="a blue heart")["images"]


def test_closing_the_server_waits_for_connection_threads_that_are_ending(pipeline, monkeypatch):
    # a daemon connection thread alive at interpreter exit can drop the last reference to the model,
    # and torch then aborts the process (exit -6): `dalle serve` closes the server before it returns
    from dalle_zero.server.handler import RequestHandler

    finish = RequestHandler.finish
    answered, release = threading.Event(), threading.Event()

    def slow_finish(self):
        finish(self)
        answered.set()
        release.wait(10)  # the thread is still ending after the answer went out

    monkeypatch.setattr(RequestHandler, "finish", slow_finish)
    before = handler_threads()
    server = make_server(GenerationService(pipeline, LIMITS), "127.0.0.1", 0, timeout=10.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert call(server, "GET", "/health")[0] == 200
    assert answered.wait(10)
    server.shutdown()
    assert handler_threads() == before + 1  # still ending
    threading.Timer(0.3, release.set).start()
    server.server_close()
    assert handler_threads() == before


def test_closing_the_server_does_not_wait_longer_than_its_grace_for_a_request_in_progress(pipeline):
    server = make_server(GenerationService(pipeline, LIMITS), "127.0.0.1", 0, timeout=30.0)
    server.close_grace_seconds = 0.3
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sock = connect(server)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")  # never finished: its thread waits
        wait_until(lambda: len(server._connection_threads) == 1)
        server.shutdown()
        t0 = time.monotonic()
        server.server_close()
        assert 0.25 <= time.monotonic() - t0 < 5.0
    finally:
        sock.close()
