"""The HTTP server of ``dalle serve``: the standard library's ``ThreadingHTTPServer`` in front of a
:class:`~dalle_zero.server.api.GenerationService`.

Endpoints (every answer but the page is JSON; errors are ``{"error": "...", "status": N}``):

- ``GET /``: the web page (:mod:`dalle_zero.server.page`), self-contained;
- ``GET /health`` (also ``/info``): the model summary and the server's limits;
- ``POST /generate``: a JSON body as described in :func:`~dalle_zero.server.api.parse_generate_request`.

A bad request gets 400, an over-large body 413 (checked from ``Content-Length`` before reading it),
a body without ``Content-Length`` 411, a body that stops arriving 408, an unknown path 404, a wrong
method 405 (with ``Allow``), a failure of the server itself 500 with a one-line message (the
traceback goes to the log). Each connection has a socket timeout, so a stalled client never holds a
thread forever; error answers close the connection.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from dalle_zero import __version__
from dalle_zero.server.api import ApiError, GenerationService, first_line
from dalle_zero.server.page import PAGE

logger = logging.getLogger(__name__)

DRAIN_LIMIT = 64 * 2**20  # an unwanted body up to this size is read and dropped, so the client sees the answer
ENDPOINTS = "GET /, GET /health, POST /generate"


class DalleServer(ThreadingHTTPServer):
    """A threaded HTTP server holding the :class:`GenerationService` its handlers use."""

    daemon_threads = True  # Ctrl-C does not wait for a request in progress

    def __init__(self, address: tuple[str, int], service: GenerationService, *, timeout: float = 60.0) -> None:
        self.service = service
        self.request_timeout = timeout
        super().__init__(address, RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall for seconds on reverse DNS
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"


class _DalleServer6(DalleServer):
    address_family = socket.AF_INET6


def make_server(
    service: GenerationService, host: str = "127.0.0.1", port: int = 8000, *, timeout: float = 60.0
) -> DalleServer:
    """Bind a :class:`DalleServer` to ``host:port`` (port 0: any free port; see ``server.url``).

    Raises ValueError with one line if the address cannot be used (port taken, unknown host, ...).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
    cls = _DalleServer6 if ":" in host else DalleServer
    try:
        return cls((host, port), service, timeout=timeout)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


class RequestHandler(BaseHTTPRequestHandler):
    """Routes requests to the page, the model summary and generation; see the module docstring."""

    server: DalleServer
    server_version = f"dalle-zero/{__version__}"
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # socket timeout for every read and write
        super().setup()

    # ---- routing ----

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def _routes(self) -> dict[str, dict[str, Callable[[], None]]]:
        page = {"GET": self._page}
        health = {"GET": self._health}
        return {
            "/": page,
            "/index.html": page,
            "/health": health,
            "/info": health,
            "/generate": {"POST": self._generate},
        }

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        methods = self._routes().get(path)
        self._body_read = False
        if method != "POST" or path != "/generate":
            self._drain()  # a body this server does not use must not be read as the next request
        try:
            if methods is None:
                raise ApiError(f"no such path: {path} (the endpoints are {ENDPOINTS})", HTTPStatus.NOT_FOUND)
            allowed = sorted({*methods, *(("HEAD",) if "GET" in methods else ())})
            if method not in allowed:
                self._allow = ", ".join(allowed)
                raise ApiError(f"{method} is not allowed on {path}; use {self._allow}", HTTPStatus.METHOD_NOT_ALLOWED)
            methods["GET" if method == "HEAD" else method]()
        except ApiError as e:
            self._drain()
            self._send_error_json(e.status, str(e))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away or stopped reading; nobody to answer
        except Exception as e:
            logger.exception("%s %s failed", method, path)
            message = first_line(e, empty="")
            self._send_error_json(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}: {message}")

    # ---- endpoints ----

    def _page(self) -> None:
        self._send(
            HTTPStatus.OK,
            PAGE.encode("utf-8"),
            "text/html; charset=utf-8",
            {
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
            },
        )

    def _health(self) -> None:
        self._send_json(HTTPStatus.OK, self.server.service.info())

    def _generate(self) -> None:
        body = self._read_body()
        try:
            payload = json.loads(body, parse_constant=_refuse_constant)
        except RecursionError:
            raise ApiError("the body is not valid JSON (nested too deeply)") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            detail = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else e
            raise ApiError(f"the body is not valid JSON ({detail})") from None
        except ValueError as e:
            raise ApiError(str(e)) from None
        result = self.server.service.generate(payload)
        logger.info(
            "generated %d image(s) for %r in %.2f s (seed %d)",
            len(result["images"]),
            result["caption"][:60],
            result["seconds"],
            result["seed"],
        )
        self._send_json(HTTPStatus.OK, result)

    # ---- bodies ----

    def _content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        try:
            length = int(value)
        except ValueError:
            length = -1
        if length < 0:
            raise ApiError(f"Content-Length must be a non-negative integer, got {value!r}")
        return length

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(
                "send the body with a Content-Length (chunked bodies are not read)", HTTPStatus.LENGTH_REQUIRED
            )
        length = self._content_length()
        if length is None:
            raise ApiError("a POST needs a Content-Length header", HTTPStatus.LENGTH_REQUIRED)
        limit = self.server.service.limits.max_body_bytes
        if length > limit:
            raise ApiError(
                f"the body has {length} bytes; at most {limit} are accepted", HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            )
        chunks, received = [], 0
        try:
            while received < length:
                chunk = self.rfile.read1(min(length - received, 2**16))
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
        except TimeoutError:
            pass
        self._body_read = True
        body = b"".join(chunks)
        if len(body) < length:
            raise ApiError(
                f"the body stopped after {len(body)} of {length} bytes (timeout {self.server.request_timeout:g} s)",
                HTTPStatus.REQUEST_TIMEOUT,
            )
        return body

    def _drain(self) -> None:
        """Read and drop an unread request body (up to DRAIN_LIMIT) so that the error answer is seen:
        closing a socket with unread input resets the connection, and the client may lose the answer."""
        if getattr(self, "_body_read", False):
            return
        self._body_read = True
        try:
            length = self._content_length()
        except ApiError:
            return
        if not length or length > DRAIN_LIMIT:
            return
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, 2**16))
                if not chunk:
                    return
                length -= len(chunk)
        except OSError:
            return

    # ---- answers ----

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode("utf-8"), "application/json", headers)

    def _send_error_json(self, status: int, message: str) -> None:
        allow = getattr(self, "_allow", None)
        headers = {"Allow": allow} if status == HTTPStatus.METHOD_NOT_ALLOWED and allow else None
        try:
            self._send_json(status, {"error": message, "status": int(status)}, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors of BaseHTTPRequestHandler (bad request line, 501, 414, ...) as JSON too."""
        self._send_error_json(code, message or HTTPStatus(code).phrase)

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"the body is not valid JSON ({name} is not a JSON number)")
