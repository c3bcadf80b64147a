"""The HTTP server of ``dalle serve``: the standard library's ``ThreadingHTTPServer`` in front of a
:class:`~dalle_zero.server.api.GenerationService`.

:func:`make_server` binds the address and checks the server's settings. The server holds what every
request is checked against (the allowed host names, the optional bearer token, the request
timeout) and caps the connections served at once: at most ``max_connections``, one more gets 503
straight away. What a request gets, endpoint by endpoint, is :mod:`~dalle_zero.server.handler`.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import socketserver
import threading
import time
from collections.abc import Iterable
from http.server import ThreadingHTTPServer
from typing import Any

from dalle_zero.server.api import GenerationService
from dalle_zero.server.guards import HostNames, check_token, refuse_connection
from dalle_zero.server.handler import RequestHandler

logger = logging.getLogger(__name__)

__all__ = ["DalleServer", "RequestHandler", "make_server"]


class DalleServer(ThreadingHTTPServer):
    """A threaded HTTP server holding the :class:`GenerationService` its handlers use, the
    connection cap, the allowed host names and the optional bearer token."""

    daemon_threads = True  # Ctrl-C does not wait for a request in progress...
    # ...but server_close() waits this long for connection threads that are ending. A daemon thread
    # still running at interpreter exit may drop the last reference to the model's tensors, and torch
    # then aborts the process ("terminate called without an active exception", exit code -6): the
    # thread cannot take the GIL back during finalization (pytorch/pytorch#38228).
    close_grace_seconds = 5.0

    def __init__(
        self,
        address: tuple[str, int],
        service: GenerationService,
        *,
        timeout: float = 30.0,
        max_connections: int = 32,
        allowed_hosts: Iterable[str] = (),
        token: str | None = None,
    ) -> None:
        self.service = service
        self.request_timeout = timeout
        self.max_connections = max_connections
        self.token = token
        self.host_names = HostNames(address[0], allowed_hosts)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._holding: dict[Any, bool] = {}  # the connections that hold a slot
        self._connection_threads: set[threading.Thread] = set()  # those serving a connection now
        self._closing = threading.Event()
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        # to the log, not printed to stderr as socketserver does
        logger.exception("the connection from %s failed", client_address[0])

    # ---- the connection cap ----

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse_connection(request, client_address)
            return
        self._holding[request] = True
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            # Ctrl-C can land while the thread starts, after it has begun (or even finished): the slot
            # is freed once, whichever gets here first, and the KeyboardInterrupt goes on to stop the
            # server instead of turning into a "released too many times" error that kept it serving
            self._free_slot(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        me = threading.current_thread()
        self._connection_threads.add(me)
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._free_slot(request)
            self._connection_threads.discard(me)

    @property
    def closing(self) -> bool:
        """Whether :meth:`server_close` was called: requests still waiting or sampling then get 503."""
        return self._closing.is_set()

    def server_close(self) -> None:
        """End the requests waiting or sampling (503 within a token step), close the listening socket,
        then wait up to ``close_grace_seconds`` for the connection threads still running (one still
        writing to a slow client may outlast it: it then runs on as a daemon)."""
        self._closing.set()
        super().server_close()
        deadline = time.monotonic() + self.close_grace_seconds
        for thread in list(self._connection_threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def _free_slot(self, request: Any) -> None:
        if self._holding.pop(request, None):  # one atomic pop: only one caller frees a connection's slot
            self._slots.release()

    def _refuse_connection(self, request: socket.socket, client_address: Any) -> None:
        logger.info("%s refused: %d connections open", client_address[0], self.max_connections)
        message = f"too many connections (at most {self.max_connections}); retry shortly"
        body = json.dumps({"error": message, "status": 503}).encode()
        refuse_connection(request, "503 Service Unavailable", body, retry_after=1)


def make_server(
    service: GenerationService,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    timeout: float = 30.0,
    max_connections: int = 32,
    allowed_hosts: Iterable[str] = (),
    token: str | None = None,
) -> DalleServer:
    """Bind a :class:`DalleServer` to ``host:port`` (port 0: any free port; see ``server.url``).

    ``timeout``: seconds for a request's headers and body to arrive; ``max_connections``: connections
    served at once; ``allowed_hosts``: host names besides the bound address and ``localhost`` that
    the ``Host`` header may carry; ``token``: a bearer token every request but the page must carry.
    Raises ValueError with one line if an argument is wrong or the address cannot be used.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
        raise ValueError(f"max_connections must be an integer >= 1, got {max_connections!r}")
    if token is not None:
        check_token(token)
    cls = _DalleServer6 if ":" in host else DalleServer
    try:
        return cls(
            (host, port),
            service,
            timeout=timeout,
            max_connections=max_connections,
            allowed_hosts=allowed_hosts,
            token=token,
        )
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


class _DalleServer6(DalleServer):
    address_family = socket.AF_INET6
