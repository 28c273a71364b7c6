"""Is a loopback port free, and if not, who holds it?"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

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


def free_block(size: int, attempts: int = 50) -> int:
    """A base port followed by ``size - 1`` more, all free right now (checked, not reserved)."""
    for _ in range(attempts):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            base = int(sock.getsockname()[1])
        if base + size < 65000 and all(port_free(base + i) for i in range(size)):
            return base
    raise PortInUse(f"no block of {size} free loopback ports found in {attempts} tries")


def move_to_free_ports(config_path: Path, max_replicas: int = 16) -> dict[str, int]:
    """Rewrite ``[ports]`` of a taskscale.toml onto one block of currently free ports.

    For tests and benchmarks that run stacks next to each other. The layout matches what the
    config validator requires: the replicas' 2 x max_replicas ports (blue/green), then
    PostgreSQL, Redis and the standbys' range.
    """
    replicas = 2 * max_replicas
    base = free_block(replicas + 11)
    ports = {
        "api": base,
        "app_base": base + 1,
        "postgres": base + 1 + replicas,
        "redis": base + 2 + replicas,
        "postgres_standby_base": base + 3 + replicas,
    }
    text = config_path.read_text(encoding="utf-8")
    for key, value in ports.items():
        text, count = re.subn(rf"(?m)^{key} = \d+", f"{key} = {value}", text)
        if count != 1:
            raise ValueError(f"{config_path}: expected one `{key} = N` line, found {count}")
    config_path.write_text(text, encoding="utf-8")
    return ports
