"""Pure replication planning: LSNs, names, settings, pg_hba, candidate choice."""

from __future__ import annotations

import pytest

from taskscale.errors import UsageError
from taskscale.replication import plan
from taskscale.replication.model import NodeStatus


def test_lsn_arithmetic() -> None:
    assert plan.lsn_to_int("0/0") == 0
    assert plan.lsn_to_int("0/3000060") == 0x3000060
    assert plan.lsn_to_int("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert plan.lsn_diff("1/0", "0/FFFFFFFF") == 1
    assert plan.lsn_diff("0/10", "0/20") == 0  # never negative
    assert plan.lsn_diff(None, "0/1") is None
    with pytest.raises(ValueError):
        plan.lsn_to_int("nonsense")


def test_names_and_slots() -> None:
    assert plan.standby_name(1) == "postgres-2"
    assert plan.slot_name("postgres-2") == "ts_postgres_2"
    assert plan.slot_name("Weird.Name") == "ts_weird_name"


@pytest.mark.parametrize("count", [-1, plan.MAX_STANDBYS + 1])
def test_standby_count_range(count: int) -> None:
    with pytest.raises(UsageError, match="between 0 and"):
        plan.check_standby_count(count)


def test_synchronous_standby_names() -> None:
    assert plan.synchronous_standby_names(["postgres-2", "postgres-3"], True) == (
        'ANY 1 ("postgres-2", "postgres-3")'
    )
    assert plan.synchronous_standby_names(["postgres-2"], False) == ""
    assert plan.synchronous_standby_names([], True) == ""


def test_hba_rewrite_limits_replication_to_the_role() -> None:
    initdb_default = (
        "# TYPE  DATABASE        USER            ADDRESS                 METHOD\n"
        "local   all             all                                     trust\n"
        "host    all             all             127.0.0.1/32            scram-sha-256\n"
        "local   replication     all                                     trust\n"
        "host    replication     all             127.0.0.1/32            scram-sha-256\n"
        "host    replication     all             ::1/128                 scram-sha-256\n"
    )
    out = plan.rewrite_hba(initdb_default, "replicator")
    replication = [line for line in out.splitlines() if " replication " in f" {line} "]
    assert all("replicator" in line and "scram-sha-256" in line for line in replication)
    assert len(replication) == 2
    assert "host    all             all             127.0.0.1/32" in out
    assert plan.rewrite_hba(out, "replicator") == out  # idempotent


def test_conninfo_quotes_values() -> None:
    info = plan.primary_conninfo(port=5432, user="r", password="p'w\\x", application_name="n")
    assert "password='p\\'w\\\\x'" in info
    assert "application_name='n'" in info


def _node(name: str, replay: str | None, flush: str | None, state: str = "streaming") -> NodeStatus:
    return NodeStatus(
        name=name, role="standby", state=state, port=1, replay_lsn=replay, flush_lsn=flush
    )


def test_most_advanced_prefers_received_then_replayed() -> None:
    a = _node("a", "0/100", "0/100")
    b = _node("b", "0/200", "0/200")
    c = _node("c", "0/200", "0/300")
    e = _node("e", "0/250", "0/250")
    down = _node("d", "0/900", "0/900", state="down")
    assert plan.most_advanced([a, b, c, e, down]) == c
    assert plan.most_advanced([a, b, e]) == e
    assert plan.most_advanced([down]) is None
