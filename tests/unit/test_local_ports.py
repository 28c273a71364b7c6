"""Port checks: free, taken (named with its holder), and ports our own services hold."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from taskscale.errors import PortInUse
from taskscale.targets.local import ports


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_free_and_taken(listening: int) -> None:
    assert not ports.port_free(listening)
    assert ports.port_listening(listening)
    free = _free_port()
    assert ports.port_free(free)
    assert not ports.port_listening(free)


def test_taken_port_is_named_with_its_purpose_and_holder(listening: int) -> None:
    with pytest.raises(PortInUse) as info:
        ports.check_ports_free({listening: "nginx", _free_port(): "redis"})
    message = info.value.message
    assert f"port {listening} (needed for nginx) is already in use" in message
    assert "python" in message.lower() or "pid" in message  # psutil can see our own process


def test_ports_of_our_running_services_are_fine(listening: int) -> None:
    ports.check_ports_free({listening: "nginx"}, ours=[listening])
