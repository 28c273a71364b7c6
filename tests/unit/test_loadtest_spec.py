"""Durations, replica lists and the load-test spec: rejected before any load (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskscale.errors import UsageError
from taskscale.loadtest.spec import LoadTestSpec, parse_duration, parse_replica_list


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("2m", 120),
        ("1m30s", 90),
        ("1h", 3600),
        ("45", 45),
        ("1.5s", 1.5),
        (" 10S ", 10),
        ("1500ms", 1.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "s", "10x", "-5s", "5 s", "1m-3s", "0s", "500ms", "25h", "abc"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="invalid duration"):
        parse_duration(text)


def test_parse_replica_list() -> None:
    assert parse_replica_list("1,2,3") == [1, 2, 3]
    assert parse_replica_list(" 4 , 2 ") == [4, 2]


@pytest.mark.parametrize("text", ["", "1,,2", "a,b", "0,1", "1,1", "-1,2", "1.5"])
def test_parse_replica_list_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="--sweep-replicas"):
        parse_replica_list(text)


def _build(**overrides: object) -> LoadTestSpec:
    values: dict[str, object] = {
        "users": 5,
        "spawn_rate": 5.0,
        "duration": "10s",
        "scenario": "mixed",
        "host": "http://127.0.0.1:1",
    }
    values.update(overrides)
    return LoadTestSpec.build(**values)  # type: ignore[arg-type]


def test_build_defaults_processes_to_cpu_count() -> None:
    import os

    spec = _build()
    assert spec.processes == (os.cpu_count() or 1)
    assert spec.duration_s == 10 and spec.host == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"users": 0}, "--users"),
        ({"spawn_rate": 0}, "--spawn-rate"),
        ({"rate": -1.0}, "--rate"),
        ({"processes": 0}, "--processes"),
        ({"host": "127.0.0.1:8080"}, "--host"),
        ({"scenario": "heavy"}, "--scenario"),
        ({"scenario": "/nonexistent/file.py"}, "does not exist"),
        ({"baseline": Path("/nonexistent/report.json")}, "--baseline"),
        ({"slos": ["p95<200ms", "p95>>1"]}, "p95>>1"),
    ],
)
def test_build_rejects(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        _build(**overrides)
