"""Port checks: free, taken (named with its holder), and ports our own services hold."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

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


def test_move_to_free_ports_gives_a_valid_free_layout(tmp_path: Path) -> None:
    from taskscale.config import load_config
    from taskscale.scaffold import NewProjectSpec, create_project
    from taskscale.targets.local.ports import move_to_free_ports, port_free

    project = create_project(NewProjectSpec(name="p", output_dir=tmp_path, git=False)).path
    moved = move_to_free_ports(project / "taskscale.toml")
    config = load_config(project / "taskscale.toml")  # passes the overlap validator
    assert config.ports.api == moved["api"] and config.ports.redis == moved["redis"]
    assert all(port_free(port) for port in moved.values())
