"""Is a loopback port free, and if not, who holds it? (Every target that binds host ports.)"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Mapping

import psutil

from taskscale.errors import PortInUse

HOST = "127.0.0.1"


def port_free(port: int, host: str = HOST) -> bool:
    """True when a server could bind ``host:port`` now.

    SO_REUSEADDR is set like every server we start sets it, so sockets in TIME_WAIT left by a
    stopped service do not count as taken; a listening socket (also on 0.0.0.0) does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_listening(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def port_holder(port: int) -> str | None:
    """Who holds ``port``: ``name (pid N)`` of its listener, or of a connection whose local end
    is that port (ports in the ephemeral range can be taken by outgoing connections)."""
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return None
    matching = [c for c in connections if c.laddr and c.laddr.port == port]
    matching.sort(key=lambda c: c.status != psutil.CONN_LISTEN)
    for conn in matching:
        what = "" if conn.status == psutil.CONN_LISTEN else "a connection of "
        if conn.pid is None:
            return f"{what}another process".strip() if what else None
        try:
            name = psutil.Process(conn.pid).name()
        except psutil.Error:
            name = "a process"
        return f"{what}{name} (pid {conn.pid})"
    return None


def check_ports_free(needed: Mapping[int, str], ours: Iterable[int] = ()) -> None:
    """Raise ``PortInUse`` for the first port in ``needed`` (port -> what needs it) that is taken.

    Ports in ``ours`` are held by services this stack recorded and still runs: they are fine.
    """
    skip = set(ours)
    for port, purpose in sorted(needed.items()):
        if port in skip or port_free(port):
            continue
        holder = port_holder(port)
        by = f" by {holder}" if holder else ""
        raise PortInUse(
            f"port {port} (needed for {purpose}) is already in use{by}",
            hint="stop that process, or change [ports] in taskscale.toml",
        )
