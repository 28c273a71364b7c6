"""The drill's fault schedule: syntax, files, named drills, resolution and the bad input that
must be refused before any load (exit 2, one line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskscale.drill.schedule import (
    NAMED_DRILLS,
    FaultSpec,
    failover_mode,
    gather,
    load_schedule,
    parse_fault,
    plan,
    resolve_service,
)
from taskscale.errors import UsageError
from taskscale.targets.capabilities import FaultTarget

STACK = [
    FaultTarget("app-1", "app"),
    FaultTarget("app-2", "app"),
    FaultTarget("nginx", "lb"),
    FaultTarget("worker", "worker"),
    FaultTarget("redis", "redis"),
    FaultTarget("postgres", "postgres", "primary"),
    FaultTarget("postgres-2", "postgres", "standby"),
]
NO_STANDBY = [t for t in STACK if t.role != "standby"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kill:app-2@10s", FaultSpec("kill", "app-2", 10.0)),
        ("kill:postgres@6", FaultSpec("kill", "postgres", 6.0)),
        ("stop:redis@15s+5s", FaultSpec("stop", "redis", 15.0, 5.0)),
        ("stop:postgres-2@1m+1500ms", FaultSpec("stop", "postgres-2", 60.0, 1.5)),
        ("stop:redis@2s", FaultSpec("stop", "redis", 2.0, None)),
        (" kill:worker@5s ", FaultSpec("kill", "worker", 5.0)),
    ],
)
def test_parse_a_fault(text: str, expected: FaultSpec) -> None:
    assert parse_fault(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kill app-2 10s", "use KIND:SERVICE@T[+DURATION]"),
        ("kill:app-2", "use KIND:SERVICE@T[+DURATION]"),
        ("explode:app-2@10s", "unknown kind 'explode' (choose kill or stop)"),
        ("kill:app-2@soon", "time 'soon' is not a time"),
        ("stop:redis@1s+forever", "duration 'forever' is not a time"),
        ("kill:app-2@10s+5s", "only a stop lasts"),
        ("stop:redis@1s+0s", "the duration must be above 0"),
    ],
)
def test_a_malformed_fault_is_one_line_naming_it(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_fault(text)
    assert message in caught.value.message and repr(text) in caught.value.message
    assert "\n" not in caught.value.message


def test_faults_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "faults.toml"
    path.write_text(
        '[[fault]]\nkind = "kill"\nservice = "app-2"\nat = "10s"\n\n'
        '[[fault]]\nkind = "stop"\nservice = "redis"\nat = "15s"\nduration = "5s"\n'
    )
    assert load_schedule(path) == [
        FaultSpec("kill", "app-2", 10.0),
        FaultSpec("stop", "redis", 15.0, 5.0),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no [[fault]] table"),
        ("faults = 1\n", "unknown key 'faults'"),
        ('[[fault]]\nkind = "kill"\nat = "1s"\n', "missing 'service'"),
        ('[[fault]]\nkind = "kill"\nservice = "x"\nat = "1s"\nwhen = 2\n', "unknown key 'when'"),
        ("[[fault]\n", "invalid --faults"),
        ('[[fault]]\nkind = "boom"\nservice = "x"\nat = "1s"\n', "unknown kind 'boom'"),
    ],
)
def test_a_bad_schedule_file_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "faults.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        load_schedule(path)
    assert message in caught.value.message


def test_a_missing_schedule_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read --faults"):
        load_schedule(tmp_path / "nope.toml")


def test_named_drills_scale_with_the_duration() -> None:
    assert set(NAMED_DRILLS) == {
        "replica-crash",
        "primary-failover",
        "cache-outage",
        "broker-outage",
        "standby-hang",
    }
    assert gather("replica-crash", [], None, 30.0) == [FaultSpec("kill", "app-1", 10.0)]
    assert gather("cache-outage", [], None, 30.0) == [FaultSpec("stop", "cache", 10.0, 10.0)]
    assert gather("primary-failover", ["kill:worker@2s"], None, 20.0) == [
        FaultSpec("kill", "primary", 6.6),
        FaultSpec("kill", "worker", 2.0),
    ]


@pytest.mark.parametrize(
    ("drill", "faults", "message"),
    [
        (None, [], "a drill needs faults"),
        ("chaos-monkey", [], "unknown drill 'chaos-monkey'"),
        (None, ["kill:app-1@30s"], "within the load's 30s"),
        (None, ["stop:redis@20s+11s"], "within the load's 30s"),
    ],
)
def test_gather_refuses(drill: str | None, faults: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gather(drill, faults, None, 30.0)


def test_roles_resolve_to_the_running_services() -> None:
    assert resolve_service("primary", STACK).name == "postgres"
    assert resolve_service("standby", STACK).name == "postgres-2"
    assert resolve_service("cache", STACK).name == "redis"
    assert resolve_service("broker", STACK).name == "redis"
    assert resolve_service("broker", [*STACK, FaultTarget("kafka", "kafka")]).name == "kafka"
    with pytest.raises(
        UsageError, match="unknown service 'app-9' for a fault: choose one of app-1"
    ):
        resolve_service("app-9", STACK)
    with pytest.raises(UsageError, match="no streaming standby"):
        resolve_service("standby", NO_STANDBY)


def test_plan_orders_faults_and_refuses_overlaps_on_one_service() -> None:
    planned = plan(
        [FaultSpec("stop", "redis", 15.0, 5.0), FaultSpec("kill", "primary", 6.0)], STACK, 30.0
    )
    assert [p.label for p in planned] == ["kill:postgres@6s", "stop:redis@15s+5s"]
    assert planned[1].end_s == 20.0
    # Without +DURATION a stop lasts to the end of the load.
    assert plan([FaultSpec("stop", "redis", 15.0)], STACK, 30.0)[0].end_s == 30.0
    # Different services may overlap; one service may have faults one after the other.
    plan([FaultSpec("stop", "redis", 1.0, 5.0), FaultSpec("kill", "app-1", 2.0)], STACK, 30.0)
    plan([FaultSpec("stop", "redis", 1.0, 5.0), FaultSpec("kill", "redis", 7.0)], STACK, 30.0)
    with pytest.raises(UsageError, match="overlap on redis"):
        plan([FaultSpec("stop", "redis", 1.0, 5.0), FaultSpec("kill", "cache", 3.0)], STACK, 30.0)
    with pytest.raises(UsageError, match="overlap on postgres"):
        plan([FaultSpec("kill", "postgres", 3.0), FaultSpec("kill", "primary", 3.0)], STACK, 30.0)


def test_failover_defaults_and_refusals() -> None:
    kill_primary = plan([FaultSpec("kill", "primary", 5.0)], STACK, 30.0)
    kill_app = plan([FaultSpec("kill", "app-1", 5.0)], STACK, 30.0)
    stop_primary = plan([FaultSpec("stop", "primary", 5.0, 2.0)], STACK, 30.0)
    assert failover_mode(None, kill_primary, standbys=1, can_promote=True) == "auto"
    assert failover_mode(None, kill_primary, standbys=1, can_promote=False) == "none"
    assert failover_mode(None, kill_primary, standbys=0, can_promote=True) == "none"
    assert failover_mode(None, kill_app, standbys=1, can_promote=True) == "none"
    assert failover_mode("manual", kill_primary, standbys=1, can_promote=True) == "manual"
    assert failover_mode("auto", kill_app, standbys=0, can_promote=True) == "auto"
    with pytest.raises(UsageError, match="needs a standby to promote"):
        failover_mode("auto", kill_primary, standbys=0, can_promote=True)
    with pytest.raises(UsageError, match="follows a killed primary"):
        failover_mode("auto", stop_primary, standbys=1, can_promote=True)
    with pytest.raises(UsageError, match="invalid --failover 'sometimes'"):
        failover_mode("sometimes", kill_app, standbys=1, can_promote=True)
