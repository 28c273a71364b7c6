"""PostgreSQL of the compose stack, read through ``psql`` inside the primary's container.

No database port is published on this target, so taskscale asks the primary itself (Docker exec,
local socket) and turns ``pg_stat_replication`` into the same ``ClusterStatus`` the local target
reports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskscale.errors import TargetError
from taskscale.replication.model import ClusterStatus, NodeStatus

EXEC_TIMEOUT_S = 30

SENDERS_SQL = """
SELECT r.application_name, r.state, r.sent_lsn, r.write_lsn, r.flush_lsn, r.replay_lsn,
       COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint, 0),
       COALESCE(EXTRACT(EPOCH FROM r.replay_lag), 0), r.sync_state,
       COALESCE((SELECT s.slot_name FROM pg_replication_slots s WHERE s.active_pid = r.pid), '')
FROM pg_stat_replication r ORDER BY r.application_name
"""

TIMELINE_SQL = "SELECT timeline_id FROM pg_control_checkpoint()"

# Slots of standbys that are gone (their container was removed): they would hold WAL forever.
DROP_STALE_SLOTS_SQL = """
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
WHERE NOT active AND slot_type = 'physical' AND slot_name LIKE 'standby\\_%'
"""


def set_sync_sql(sync: bool) -> str:
    """Commits wait for any one standby (``ANY 1 (*)``), or for none; applied with a reload."""
    if sync:
        change = "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (*)'"
    else:
        change = "ALTER SYSTEM RESET synchronous_standby_names"
    return f"{change}; SELECT pg_reload_conf()"


def query(container: Any, sql: str, *, user: str, database: str) -> list[list[str]]:
    """Rows of ``sql`` run by psql in ``container`` (tab-separated, unaligned)."""
    argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", database, "-AtF", "\t"]
    for statement in (s for s in sql.split(";") if s.strip()):
        argv += ["-c", statement.strip()]
    try:
        result = container.exec_run(argv, user="postgres", demux=True)
    except Exception as exc:
        raise TargetError(f"cannot run psql in {container.name}: {exc}") from exc
    stdout, stderr = result.output if isinstance(result.output, tuple) else (result.output, b"")
    if result.exit_code != 0:
        message = (stderr or stdout or b"").decode(errors="replace").strip()
        raise TargetError(f"psql in {container.name} failed: {message.splitlines()[-1:]}")
    text = (stdout or b"").decode(errors="replace")
    return [line.split("\t") for line in text.splitlines() if line]


def cluster_status(
    target: str,
    primary_name: str,
    standbys: list[Any],
    run: Callable[[str], list[list[str]]],
    *,
    sync: bool,
) -> ClusterStatus:
    timeline_rows = run(TIMELINE_SQL)
    timeline = int(timeline_rows[0][0]) if timeline_rows else None
    senders = {row[0]: row for row in run(SENDERS_SQL)}
    nodes = [
        NodeStatus(
            name=primary_name,
            role="primary",
            state="running",
            port=5432,
            host="postgres",
            timeline=timeline,
        )
    ]
    notes: list[str] = []
    for container in standbys:
        # Each standby reports its container hostname as application_name (cluster_name).
        hostname = str(container.attrs.get("Config", {}).get("Hostname", ""))
        row = senders.pop(hostname, None)
        if row is None:
            nodes.append(
                NodeStatus(
                    name=container.name,
                    role="standby",
                    state="down",
                    port=5432,
                    host="postgres-standby",
                )
            )
            continue
        nodes.append(
            NodeStatus(
                name=container.name,
                role="standby",
                state=row[1],
                port=5432,
                host="postgres-standby",
                timeline=timeline,
                sent_lsn=row[2] or None,
                write_lsn=row[3] or None,
                flush_lsn=row[4] or None,
                replay_lsn=row[5] or None,
                lag_bytes=int(row[6]),
                # pg_stat_replication keeps the last lag while idle: nothing waits to replay.
                lag_seconds=0.0 if int(row[6]) == 0 else float(row[7]),
                sync_state=row[8] or None,
                slot=row[9] or None,
            )
        )
    notes += [f"unknown WAL receiver {name!r} streams from the primary" for name in senders]
    return ClusterStatus(target=target, primary=primary_name, sync=sync, nodes=nodes, notes=notes)
