"""Blocks of free loopback ports for stacks that run side by side (tests, benchmarks).

The checks themselves are ``taskscale.targets.ports``; they are importable from here too,
where the local target's helpers always were.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from taskscale.errors import PortInUse
from taskscale.targets.ports import (
    HOST,
    check_ports_free,
    port_free,
    port_holder,
    port_listening,
)

__all__ = [
    "HOST",
    "check_ports_free",
    "free_block",
    "move_to_free_ports",
    "port_free",
    "port_holder",
    "port_listening",
]


# Blocks are drawn below the kernel's ephemeral range: a port there can be taken at any moment
# by an outgoing connection (a client's source port), between the check and the server's bind.
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_block(size: int, attempts: int = 50) -> int:
    """A base port followed by ``size - 1`` more, all free right now (checked, not reserved),
    outside the ephemeral port range."""
    highest = _ephemeral_start() - size
    if highest <= _LOWEST:
        raise PortInUse(f"no room for {size} ports below the ephemeral port range")
    for _ in range(attempts):
        base = random.randrange(_LOWEST, highest)
        if all(port_free(base + i) for i in range(size)):
            return base
    raise PortInUse(f"no block of {size} free loopback ports found in {attempts} tries")


def move_to_free_ports(config_path: Path, max_replicas: int = 16) -> dict[str, int]:
    """Rewrite ``[ports]`` of a taskscale.toml onto one block of currently free ports.

    For tests and benchmarks that run stacks next to each other. The layout matches what the
    config validator requires: the replicas' 2 x max_replicas ports (blue/green), then
    PostgreSQL, Redis, the standbys' range, the Kafka broker and ``metrics`` (the local
    worker's probes and /metrics; compose's Prometheus). A file from before the
    ``kafka`` port existed gets the line.
    """
    replicas = 2 * max_replicas
    base = free_block(replicas + 13)
    ports = {
        "api": base,
        "app_base": base + 1,
        "postgres": base + 1 + replicas,
        "redis": base + 2 + replicas,
        "postgres_standby_base": base + 3 + replicas,
        "kafka": base + 11 + replicas,
        "metrics": base + 12 + replicas,
    }
    text = config_path.read_text(encoding="utf-8")
    if not re.search(r"(?m)^kafka = \d+", text):
        text = re.sub(r"(?m)^\[ports\]$", "[ports]\nkafka = 0", text, count=1)
    for key, value in ports.items():
        text, count = re.subn(rf"(?m)^{key} = \d+", f"{key} = {value}", text)
        if count != 1:
            raise ValueError(f"{config_path}: expected one `{key} = N` line, found {count}")
    config_path.write_text(text, encoding="utf-8")
    return ports
