"""What a connection must pass before the server spends work on it: the names it may call the
server by (``Host``, ``Origin``), the bearer token, one deadline for a whole request, and the socket
checks around it (has the client hung up? close without resetting an answer).

Used by :mod:`dalle_zero.server.app` and :mod:`dalle_zero.server.handler`; nothing here knows about
models.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

MIN_TOKEN_CHARS = 16


class HostNames:
    """The host names a ``Host`` header may carry: ``localhost``, loopback addresses, the bound
    address (any IP address when bound to all of them) and the ``allowed`` names.

    A DNS-rebinding page reaches the server under the attacker's name, so that name is refused; an
    IP address cannot be rebound, so when the server listens on every address, every address is fine.
    """

    def __init__(self, bound: str, allowed: Iterable[str] = ()) -> None:
        bound = bound.lower()
        self.any_address = bound in ("", "0.0.0.0", "::")
        self.names = {"localhost", *(check_host_name(h) for h in allowed)}
        if not self.any_address:
            self.names.add(bound)

    def allows(self, host_header: str) -> bool:
        """Whether a ``Host`` header (``name``, ``name:port`` or ``[v6]:port``) names this server."""
        try:
            name = urlsplit(f"//{host_header}").hostname
        except ValueError:
            return False
        if not name:
            return False
        name = name.rstrip(".")
        if name in self.names:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self.any_address


def check_host_name(name: str) -> str:
    """A host name or address for ``allowed_hosts``, as ``Host`` carries it but without the port."""
    if not isinstance(name, str) or not name or "/" in name or "@" in name:
        raise ValueError(f"allowed host {name!r} must be a host name or address without a scheme or port")
    parts = urlsplit(f"//{name}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None or not parts.hostname:
        raise ValueError(f"allowed host {name!r} must be a host name or address without a scheme or port")
    return parts.hostname.rstrip(".")


def same_origin(origin: str, host_header: str) -> bool:
    """Whether an ``Origin`` header names the server a ``Host`` header names (default ports included)."""
    try:
        o, h = urlsplit(origin), urlsplit(f"//{host_header}")
        default = {"http": 80, "https": 443}.get(o.scheme)
        return default is not None and o.hostname == h.hostname and (o.port or default) == (h.port or default)
    except ValueError:  # a port that is not a number
        return False


def check_token(token: str) -> str:
    """A bearer token: at least MIN_TOKEN_CHARS visible ASCII characters (it travels in a header)."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"the token must have at least {MIN_TOKEN_CHARS} characters, e.g. from "
            "python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    if not all("!" <= c <= "~" for c in token):
        raise ValueError("the token must be visible ASCII characters, without spaces")
    return token


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (compared in constant time)."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class DeadlineReader(socket.SocketIO):
    """A socket's input under one deadline for a whole request, set by :meth:`start`: each read may
    wait only for what is left of it. A per-read timeout never fires for a client that sends one
    byte a second (slowloris). ``received`` counts the request's bytes so far."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock, "rb")
        self.deadline: float | None = None
        self.received = 0
        self.timed_out = False

    def start(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.received = 0
        self.timed_out = False

    def stop(self) -> None:
        self.deadline = None

    def readinto(self, buffer: Any) -> int | None:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.timed_out = True
                raise TimeoutError("the request deadline passed")
            self._sock.settimeout(remaining)
        try:
            n = super().readinto(buffer)
        except TimeoutError:
            self.timed_out = True
            raise
        self.received += n or 0
        return n


def peer_closed(sock: socket.socket) -> bool:
    """Whether the client has closed its side: the socket reads end-of-file (or fails) at once.

    A client that only half-closes after sending looks the same; browsers, curl and HTTP libraries
    do not do that.
    """
    try:
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        finally:
            sock.settimeout(timeout)
    except BlockingIOError:
        return False  # nothing to read: still connected
    except OSError:
        return True


def linger(sock: socket.socket, seconds: float, max_bytes: int) -> None:
    """Stop sending, then read and drop input until end-of-file, for at most ``seconds`` and
    ``max_bytes``: closing a socket with unread input resets the connection, and a client still
    sending its body may then lose the answer it was sent."""
    deadline = time.monotonic() + seconds
    try:
        sock.shutdown(socket.SHUT_WR)
        while max_bytes > 0 and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            chunk = sock.recv(min(max_bytes, 2**16))
            if not chunk:
                return
            max_bytes -= len(chunk)
    except OSError:
        return


def refuse_connection(sock: socket.socket, status_line: str, body: bytes, retry_after: int) -> None:
    """Answer a just-accepted connection and close it, without ever blocking the caller (the
    thread that accepts connections)."""
    head = (
        f"HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Retry-After: {retry_after}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        sock.setblocking(False)
        sock.send(head + body)  # a new connection's send buffer is empty: this does not block
        sock.shutdown(socket.SHUT_WR)
        for _ in range(16):  # what has arrived already (bounded), so that close() sends no reset
            if not sock.recv(2**16):
                break
    except OSError:
        pass
    finally:
        sock.close()
