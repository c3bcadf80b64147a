"""A real server on an ephemeral port, and clients for it: JSON requests over http.client and raw
sockets for what a well-behaved client would never send."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from dalle_zero.server import DalleServer, GenerationService, ServerLimits, make_server

LIMITS = ServerLimits(max_images=4, max_candidates=6, max_caption_chars=200, max_body_bytes=100_000)


@contextlib.contextmanager
def running(service: GenerationService, timeout: float = 1.0, **options: Any) -> Iterator[DalleServer]:
    server = make_server(service, "127.0.0.1", 0, timeout=timeout, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def call(
    server: DalleServer,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    connection: http.client.HTTPConnection | None = None,
    headers: dict[str, str | None] | None = None,
) -> tuple[int, http.client.HTTPResponse, Any]:
    """One request; returns (status, response, decoded JSON or the raw bytes of a non-JSON answer).

    ``headers`` add to or replace the defaults (a JSON Content-Type with a body); None removes one.
    """
    host, port = server.server_address[:2]
    conn = connection or http.client.HTTPConnection(host, port, timeout=30)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    sent = {"Content-Type": "application/json"} if data is not None else {}
    sent = {k: v for k, v in {**sent, **(headers or {})}.items() if v is not None}
    conn.request(method, path, body=data, headers=sent)
    response = conn.getresponse()
    content = response.read()
    if connection is None:
        conn.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, response, json.loads(content)
    return response.status, response, content


def generate(server: DalleServer, **body: Any) -> dict:
    status, _, result = call(server, "POST", "/generate", body)
    assert status == 200, result
    return result


# ---- raw sockets ----


def connect(server: DalleServer) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=30)


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def post_head(length: int, **headers: str) -> bytes:
    base = {"Host": "localhost", "Content-Type": "application/json", "Content-Length": str(length)}
    return request_head("POST", "/generate", {**base, **{k.replace("_", "-"): v for k, v in headers.items()}})


def post_request(body: dict) -> bytes:
    data = json.dumps(body).encode()
    return post_head(len(data)) + data


def read_all(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """Everything the server sends until it closes (or ``timeout`` passes, or it resets)."""
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def trickle(sock: socket.socket, data: bytes, interval: float, stop: threading.Event) -> threading.Thread:
    """Send ``data`` one byte every ``interval`` seconds in the background (slowloris)."""

    def run() -> None:
        for byte in data:
            if stop.is_set():
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return
            time.sleep(interval)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())
