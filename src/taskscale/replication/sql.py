"""What replication asks of a live PostgreSQL node (psycopg, autocommit connections)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from taskscale.replication.model import NodeInfo as NodeInfo
from taskscale.replication.model import WalSender as WalSender

Conn = psycopg.Connection[TupleRow]

# pg_stat_replication joined with each sender's slot: the columns of ``wal_sender``.
WAL_SENDERS_SQL = """
SELECT r.application_name, r.state,
       r.sent_lsn::text, r.write_lsn::text, r.flush_lsn::text, r.replay_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint,
       EXTRACT(EPOCH FROM r.replay_lag)::float8,
       r.sync_state, s.slot_name::text
  FROM pg_stat_replication r
  LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid
 ORDER BY r.application_name
"""


def wal_senders(conn: Conn) -> list[WalSender]:
    return [wal_sender(row) for row in conn.execute(WAL_SENDERS_SQL).fetchall()]


def wal_sender(r: Sequence[Any]) -> WalSender:
    """One ``WAL_SENDERS_SQL`` row (typed values, or psql's text with NULL as None)."""
    return WalSender(
        application_name=str(r[0]),
        state=str(r[1]),
        sent_lsn=r[2],
        write_lsn=r[3],
        flush_lsn=r[4],
        replay_lsn=r[5],
        lag_bytes=None if r[6] is None else int(r[6]),
        replay_lag_seconds=None if r[7] is None else float(r[7]),
        sync_state=str(r[8]),
        slot=r[9],
    )


def node_info(conn: Conn) -> NodeInfo:
    row = conn.execute(
        """
        SELECT pg_is_in_recovery(),
               CASE WHEN pg_is_in_recovery()
                    THEN (SELECT received_tli FROM pg_stat_wal_receiver)
                    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
               END,
               CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text
                    ELSE pg_current_wal_lsn()::text END,
               pg_last_wal_receive_lsn()::text,
               pg_last_wal_replay_lsn()::text,
               CASE WHEN pg_is_in_recovery()
                    THEN EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8
               END,
               (SELECT status FROM pg_stat_wal_receiver),
               current_setting('synchronous_standby_names')
        """
    ).fetchone()
    assert row is not None
    return NodeInfo(
        in_recovery=bool(row[0]),
        timeline=None if row[1] is None else int(row[1]),
        current_lsn=row[2],
        receive_lsn=row[3],
        replay_lsn=row[4],
        replay_delay_seconds=None if row[5] is None else float(row[5]),
        receiver_status=row[6],
        synchronous_standby_names=str(row[7] or ""),
    )


def ensure_slot(conn: Conn, slot: str) -> None:
    exists = conn.execute(
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    if not exists:
        conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))


def drop_slot(conn: Conn, slot: str) -> None:
    row = conn.execute(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    if row is None:
        return
    if row[0] is not None:
        conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
    conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE slot_name = %s AND NOT active",
        (slot,),
    )


def slots(conn: Conn) -> list[str]:
    rows = conn.execute(
        "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical'"
    ).fetchall()
    return [str(r[0]) for r in rows]


def set_system(conn: Conn, setting: str, value: str) -> None:
    """ALTER SYSTEM + reload (for settings that need no restart)."""
    conn.execute(
        sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(setting), sql.Literal(value))
    )
    conn.execute("SELECT pg_reload_conf()")


def reset_system(conn: Conn, setting: str) -> None:
    conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(setting)))
    conn.execute("SELECT pg_reload_conf()")


def promote(conn: Conn, wait_seconds: int = 30) -> bool:
    row = conn.execute("SELECT pg_promote(true, %s)", (wait_seconds,)).fetchone()
    return bool(row and row[0])


def checkpoint(conn: Conn) -> None:
    conn.execute("CHECKPOINT")


def current_lsn(conn: Conn) -> str:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def replayed_at_least(conn: Conn, lsn: str) -> bool:
    row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()
    return bool(row and row[0])
