"""The pure parts of the compose target's telemetry: where a container's CPU is accounted, how
that file is read, and how replicas' CPU adds up per service."""

from __future__ import annotations

from pathlib import Path

from taskscale.targets.compose.telemetry import cgroup_cpu_files, cpu_usage_seconds, service_cpu

ROOT = Path("/sys/fs/cgroup")


def test_cgroup_v2_path_comes_from_the_unified_line() -> None:
    text = "0::/system.slice/docker-abc123.scope\n"
    files = cgroup_cpu_files(text, ROOT)
    assert files[0] == ROOT / "system.slice/docker-abc123.scope/cpu.stat"
    assert ROOT / "unified/system.slice/docker-abc123.scope/cpu.stat" in files


def test_cgroup_v1_cpuacct_comes_first_in_a_hybrid_hierarchy() -> None:
    text = (
        "12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
        "0::/docker/abc\n"
    )
    files = cgroup_cpu_files(text, ROOT)
    assert files[0] == ROOT / "cpu,cpuacct/docker/abc/cpuacct.usage"
    assert files[1] == ROOT / "cpuacct/docker/abc/cpuacct.usage"
    assert ROOT / "docker/abc/cpu.stat" in files
    assert not any("pids" in str(f) or "systemd" in str(f) for f in files)


def test_cgroup_text_without_a_cpu_hierarchy_gives_nothing() -> None:
    assert cgroup_cpu_files("", ROOT) == []
    assert cgroup_cpu_files("garbage\n3:memory:/x\n", ROOT) == []


def test_usage_is_read_in_seconds_from_either_file() -> None:
    stat = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
    assert cpu_usage_seconds(Path("x/cpu.stat"), stat) == 2.5
    assert cpu_usage_seconds(Path("x/cpuacct.usage"), "1500000000\n") == 1.5
    assert cpu_usage_seconds(Path("x/cpu.stat"), "user_usec 1\n") is None
    assert cpu_usage_seconds(Path("x/cpuacct.usage"), "n/a") is None
    assert cpu_usage_seconds(Path("x/cpu.stat"), "usage_usec many\n") is None


def test_replicas_of_one_service_are_summed() -> None:
    per_container = {
        "p-app-1": ("app", 30.04),
        "p-app-2": ("app", 20.0),
        "p-postgres-1": ("postgres", 12.345),
    }
    assert service_cpu(per_container) == {"app": 50.0, "postgres": 12.3}
    assert service_cpu({}) == {}
