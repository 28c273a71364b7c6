"""Tiny HTTP/1.1 GETs for readiness probes and nginx's control socket (stdlib only).

The probes are plain HTTP on loopback or a unix socket, one request per connection, so
``http.client`` is all they need. httpx costs ~0.1 s to import, and ``up`` imports this module
before the replicas' launcher starts: every tenth of a second here delays the whole ``up``.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Response:
    status: int
    text: str


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def get(
    path: str, *, port: int | None = None, unix_socket: str | None = None, timeout: float
) -> Response:
    """GET ``path`` from 127.0.0.1:``port`` or over ``unix_socket``; OSError (which includes
    timeouts and refused connections) or http.client.HTTPException when there is no answer."""
    conn: http.client.HTTPConnection
    if unix_socket is not None:
        conn = _UnixConnection(unix_socket, timeout)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return Response(response.status, body.decode(errors="replace"))


def status(port: int, path: str, timeout: float) -> int | None:
    """The HTTP status of GET ``path`` on 127.0.0.1:``port``, or None when nothing answers."""
    try:
        return get(path, port=port, timeout=timeout).status
    except (OSError, http.client.HTTPException):
        return None
