"""How the server of ``dalle serve`` (:mod:`~dalle_zero.server.app`) answers one request: the
checks on its head, its body read within a deadline, the routes, and the answers, errors included.

Endpoints (every answer but the page is JSON; errors are ``{"error": "...", "status": N}``):

- ``GET /``: the web page (:mod:`dalle_zero.server.page`), self-contained, and ``GET /favicon.ico``;
- ``GET /health`` (also ``/info``): the model summary (with its example captions), the server's
  limits and its queue;
- ``POST /generate``: a JSON body as described in :func:`~dalle_zero.server.generate_request.parse_generate_request`.

Every request's head is checked before its body is read, in this order:

1. ``Host`` must name this server (403): ``localhost``, a loopback address, the bound address (any
   IP address when bound to all of them) or a name of ``allowed_hosts``. A DNS-rebinding page
   reaches the server under its own name, and is refused here.
2. ``Origin``, when present, must be the server's own (403): a page elsewhere cannot post to it.
3. With a ``token``, everything but the page and its icon needs ``Authorization: Bearer <token>`` (401).
4. An unknown path gets 404, a wrong method 405 (with ``Allow``).
5. A body must come with a ``Content-Length`` (411) of at most ``max_body_bytes`` (413); a
   ``POST`` must say ``Content-Type: application/json`` (415), which also makes a browser ask
   before sending it cross-site. ``Expect: 100-continue`` gets one of these answers instead of
   ``100 Continue`` when the request would be refused.

Headers and body must arrive within ``timeout`` seconds of when the server starts waiting for the
request (so an idle kept-alive connection also closes then): one deadline for the whole request,
not one per read, which a client sending a byte a second never trips; otherwise 408. A failure of
the server itself gets 500 with ``internal error`` and a request id; the traceback goes to the log
under that id. Error answers close the connection.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dalle_zero import __version__
from dalle_zero.server.api import ClientGone
from dalle_zero.server.generate_request import ApiError
from dalle_zero.server.guards import DeadlineReader, bearer_matches, linger, peer_closed, same_origin
from dalle_zero.server.page import FAVICON_TYPE, favicon_ico, page_and_policy

if TYPE_CHECKING:  # the server module imports this one to build its handlers
    from dalle_zero.server.app import DalleServer

logger = logging.getLogger(__name__)

ENDPOINTS = "GET /, GET /health, POST /generate"
# served without a token: the page and its icon hold nothing secret (the page asks for the token)
PUBLIC_PATHS = ("/", "/index.html", "/favicon.ico")
# After an error answer to a request whose body was not read, read and drop what still arrives for
# this long: closing a socket with unread input resets the connection, and the client may lose the
# answer. Bounded, so an oversize body is never read whole.
LINGER_SECONDS = 1.0
LINGER_BYTES = 2**20


class RequestHandler(BaseHTTPRequestHandler):
    """Routes requests to the page, the model summary and generation; see the module docstring."""

    server: DalleServer
    server_version = f"dalle-zero/{__version__}"
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # until the first read sets its own
        super().setup()
        self.rfile.close()  # replaced by a reader that enforces the request deadline
        self._reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader, io.DEFAULT_BUFFER_SIZE)

    def handle_one_request(self) -> None:
        timeout = self.server.request_timeout
        self._reader.start(timeout)
        self._answered = False
        self._body_pending = False
        self.command, self.requestline, self.request_version = None, "", self.protocol_version
        try:
            super().handle_one_request()  # closes the connection quietly on a timeout
        except ConnectionError:  # reset by the client before its request was read: nobody to answer
            self.close_connection = True
            return
        if self._reader.timed_out and self._reader.received and not self._answered:
            self._send_error_json(HTTPStatus.REQUEST_TIMEOUT, f"the request did not arrive within {timeout:g} s")

    def handle_expect_100(self) -> bool:
        # a request that will be refused gets its answer now, instead of an invitation to send the body
        try:
            self._check_head(self.command, urlsplit(self.path).path)
        except ApiError as e:
            self._send_error_json(e.status, str(e), e.headers)
            return False
        return super().handle_expect_100()

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
            "/favicon.ico": {"GET": self._favicon},
            "/health": health,
            "/info": health,
            "/generate": {"POST": self._generate},
        }

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        try:
            endpoint = self._check_head(method, path)
            if endpoint != self._generate:
                self._skip_body()  # a body this server does not use must not be read as the next request
            endpoint()
        except ApiError as e:
            self._send_error_json(e.status, str(e), e.headers)
        except ClientGone:
            logger.info("%s left: %s %s not sampled, or its sampling stopped", self.address_string(), method, path)
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away or stopped reading; nobody to answer
        except Exception:
            request_id = secrets.token_hex(6)
            logger.exception("request %s: %s %s failed", request_id, method, path)
            self._send_error_json(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error (request id {request_id})", request_id=request_id
            )

    def _check_head(self, method: str, path: str) -> Callable[[], None]:
        """Check a request's headers (see the module docstring) and return its endpoint."""
        host = self.headers.get("Host")
        if not host:
            raise ApiError("a request needs a Host header")
        if not self.server.host_names.allows(host):
            raise ApiError(
                f"Host {host!r} is not a name of this server (add it with --allowed-hosts)", HTTPStatus.FORBIDDEN
            )
        origin = self.headers.get("Origin")
        if origin is not None and not same_origin(origin, host):
            raise ApiError(f"requests from other sites are refused (Origin {origin!r})", HTTPStatus.FORBIDDEN)
        token = self.server.token
        authorization = self.headers.get("Authorization")
        if token is not None and path not in PUBLIC_PATHS and not bearer_matches(authorization, token):
            raise ApiError(
                "this server needs the header Authorization: Bearer <token>",
                HTTPStatus.UNAUTHORIZED,
                {"WWW-Authenticate": 'Bearer realm="dalle-zero"'},
            )
        methods = self._routes().get(path)
        if methods is None:
            raise ApiError(f"no such path: {path} (the endpoints are {ENDPOINTS})", HTTPStatus.NOT_FOUND)
        allowed = sorted({*methods, *(("HEAD",) if "GET" in methods else ())})
        if method not in allowed:
            allow = ", ".join(allowed)
            raise ApiError(
                f"{method} is not allowed on {path}; use {allow}", HTTPStatus.METHOD_NOT_ALLOWED, {"Allow": allow}
            )
        if "Transfer-Encoding" in self.headers:
            raise ApiError(
                "send the body with a Content-Length (chunked bodies are not read)", HTTPStatus.LENGTH_REQUIRED
            )
        length = self._content_length()
        limit = self.server.service.limits.max_body_bytes
        if length is not None and length > limit:
            raise ApiError(
                f"the body has {length} bytes; at most {limit} are accepted", HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            )
        if method == "POST":
            if length is None:
                raise ApiError("a POST needs a Content-Length header", HTTPStatus.LENGTH_REQUIRED)
            content_type = self.headers.get("Content-Type", "")
            if content_type.partition(";")[0].strip().lower() != "application/json":
                raise ApiError(
                    f"POST {path} takes Content-Type: application/json, got {content_type or 'none'!r}",
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                )
        return methods["GET" if method == "HEAD" else method]

    # ---- endpoints ----

    def _page(self) -> None:
        page, policy = page_and_policy()
        self._send(HTTPStatus.OK, page, "text/html; charset=utf-8", {"Content-Security-Policy": policy})

    def _favicon(self) -> None:
        self._send(HTTPStatus.OK, favicon_ico(), FAVICON_TYPE)

    def _health(self) -> None:
        info = self.server.service.info()
        info["limits"].update(max_connections=self.server.max_connections, request_timeout=self.server.request_timeout)
        self._send_json(HTTPStatus.OK, info)

    def _generate(self) -> None:
        body = self._read_body()
        try:
            payload = json.loads(body, parse_constant=_refuse_constant)
        except RecursionError:
            raise ApiError("the body is not valid JSON (nested too deeply)") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            detail = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else e
            raise ApiError(f"the body is not valid JSON ({detail})") from None
        except _ConstantError as e:
            raise ApiError(str(e)) from None
        except ValueError:  # Python's limit on digits in an integer
            raise ApiError("the body is not valid JSON (a number has too many digits)") from None
        server = self.server
        result = server.service.generate(payload, client_gone=self._client_gone, stopping=lambda: server.closing)
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
        self._body_pending = True  # until read; also when the value is wrong
        text = value.strip()
        try:
            length = int(text) if text.isascii() and text.isdigit() else -1
        except ValueError:  # more digits than Python converts
            length = -1
        if length < 0:
            raise ApiError(f"Content-Length must be a non-negative integer, got {value!r}")
        self._body_pending = length > 0
        return length

    def _read_body(self) -> bytes:
        """The body (its size checked by _check_head), within the request deadline; 408 if it is late."""
        length = self._content_length() or 0
        chunks, received = [], 0
        try:
            while received < length:
                chunk = self.rfile.read1(min(length - received, 2**16))
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
        except (TimeoutError, OSError):
            pass
        self._reader.stop()
        body = b"".join(chunks)
        if len(body) < length:
            raise ApiError(
                f"the body stopped after {len(body)} of {length} bytes "
                f"(a request must arrive within {self.server.request_timeout:g} s)",
                HTTPStatus.REQUEST_TIMEOUT,
            )
        self._body_pending = False
        return body

    def _skip_body(self) -> None:
        if self._content_length():
            self._read_body()
        self._reader.stop()

    def _client_gone(self) -> bool:
        return peer_closed(self.connection)

    # ---- answers ----

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self._answered = True
        self.connection.settimeout(self.server.request_timeout)  # writes: whatever the reads left
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

    def _send_error_json(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        try:
            self._send_json(status, {"error": message, "status": int(status), **extra}, headers)
        except OSError:
            self.close_connection = True
            return
        if self._body_pending or self._reader.timed_out:
            linger(self.connection, LINGER_SECONDS, LINGER_BYTES)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors of BaseHTTPRequestHandler (bad request line, 501, 414, ...) as JSON too."""
        self._send_error_json(code, message or HTTPStatus(code).phrase)

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)


class _ConstantError(ValueError):
    pass


def _refuse_constant(name: str) -> None:
    raise _ConstantError(f"the body is not valid JSON ({name} is not a JSON number)")
