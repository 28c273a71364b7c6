"""Pure replication planning: names, settings, pg_hba lines, LSN arithmetic, candidate choice.

Nothing here touches a process or a socket, so all of it is unit-tested directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from taskscale.errors import UsageError
from taskscale.replication.model import NodeInfo, NodeStatus, WalSender

_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_SLOT_RE = re.compile(r"[^a-z0-9_]")
MAX_STANDBYS = 5
# switchover refuses a standby further behind than this unless --max-lag says otherwise.
DEFAULT_MAX_LAG_BYTES = 16 * 1024 * 1024


def lsn_to_int(lsn: str) -> int:
    """'16/B374D848' -> the byte position it names."""
    match = _LSN_RE.match(lsn.strip())
    if not match:
        raise ValueError(f"not a PostgreSQL LSN: {lsn!r}")
    high, low = (int(part, 16) for part in match.groups())
    return (high << 32) | low


def lsn_diff(ahead: str | None, behind: str | None) -> int | None:
    if ahead is None or behind is None:
        return None
    return max(0, lsn_to_int(ahead) - lsn_to_int(behind))


def standby_name(index: int) -> str:
    """Standby ``index`` (1-based) is the service ``postgres-<index+1>``: the first primary is
    ``postgres``, so node names never collide whatever roles they hold later."""
    return f"postgres-{index + 1}"


def slot_name(node: str) -> str:
    """A physical replication slot name for ``node`` (slots allow [a-z0-9_] only)."""
    return "ts_" + _SLOT_RE.sub("_", node.lower())


def check_standby_count(count: int) -> int:
    if count < 0 or count > MAX_STANDBYS:
        raise UsageError(f"--replicas must be between 0 and {MAX_STANDBYS} standbys (got {count})")
    return count


def synchronous_standby_names(standbys: Sequence[str], sync: bool) -> str:
    """``ANY 1 (a, b)``: a commit waits until at least one standby has flushed it."""
    if not sync or not standbys:
        return ""
    quoted = ", ".join(f'"{name}"' for name in standbys)
    return f"ANY 1 ({quoted})"


def replication_hba_lines(replication_user: str) -> list[str]:
    """Replication connections only for the replication role, only from loopback, scram."""
    return [
        f"host replication {replication_user} 127.0.0.1/32 scram-sha-256",
        f"host replication {replication_user} ::1/128 scram-sha-256",
    ]


def rewrite_hba(text: str, replication_user: str) -> str:
    """``pg_hba.conf`` with every replication line replaced by ours (initdb's default lets
    *all* roles replicate from loopback)."""
    kept = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 1 and not fields[0].startswith("#") and fields[1] == "replication":
            continue
        kept.append(line)
    marker = "# Replication: managed by taskscale"
    kept = [line for line in kept if line != marker]
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join([*kept, "", marker, *replication_hba_lines(replication_user)]) + "\n"


def primary_conninfo(
    *, port: int, user: str, password: str, application_name: str, host: str = "127.0.0.1"
) -> str:
    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    parts = {
        "host": host,
        "port": str(port),
        "user": user,
        "password": password,
        "application_name": application_name,
        "sslmode": "disable",
        "connect_timeout": "2",
    }
    return " ".join(f"{k}={quote(v)}" for k, v in parts.items())


def most_advanced(standbys: Iterable[NodeStatus]) -> NodeStatus | None:
    """The standby that has received (flushed) the most WAL, then replayed the most.

    Received WAL decides: with synchronous commit an acknowledged write is flushed on at least
    one standby but maybe not yet replayed, and promotion replays everything received first.
    """
    candidates = [n for n in standbys if n.state != "down" and n.replay_lsn is not None]
    if not candidates:
        return None

    def key(node: NodeStatus) -> tuple[int, int, str]:
        replay = lsn_to_int(node.replay_lsn or "0/0")
        received = lsn_to_int(node.flush_lsn or node.replay_lsn or "0/0")
        return (received, replay, node.name)

    return max(candidates, key=key)


def primary_status(
    name: str, info: NodeInfo | None, *, port: int, host: str = "127.0.0.1"
) -> NodeStatus:
    """The primary's row: running with its WAL position, or down when it did not answer."""
    return NodeStatus(
        name=name,
        role="primary",
        state="running" if info is not None else "down",
        port=port,
        host=host,
        timeline=info.timeline if info else None,
        sent_lsn=info.current_lsn if info else None,
    )


def standby_status(
    name: str,
    info: NodeInfo | None,
    sender: WalSender | None,
    primary: NodeInfo | None,
    *,
    port: int,
    host: str = "127.0.0.1",
    slot: str | None = None,
) -> NodeStatus:
    """A standby's row: the primary's view of it while it streams (``sender``), else what it
    says itself (``info``), else down. ``slot`` names its slot when no sender reports one."""
    if sender is not None:
        # pg_stat_replication keeps the last replay lag while idle: nothing waits to replay.
        lag_seconds = 0.0 if sender.lag_bytes == 0 else sender.replay_lag_seconds
        return NodeStatus(
            name=name,
            role="standby",
            state=sender.state,
            port=port,
            host=host,
            timeline=known.timeline if (known := info or primary) else None,
            sent_lsn=sender.sent_lsn,
            write_lsn=sender.write_lsn,
            flush_lsn=sender.flush_lsn,
            replay_lsn=sender.replay_lsn,
            lag_bytes=sender.lag_bytes,
            lag_seconds=lag_seconds,
            sync_state=sender.sync_state,
            slot=sender.slot or slot,
        )
    if info is None:
        return NodeStatus(name=name, role="standby", state="down", port=port, host=host)
    return NodeStatus(
        name=name,
        role="standby",
        state=info.receiver_status or ("recovering" if info.in_recovery else "promoted"),
        port=port,
        host=host,
        timeline=info.timeline,
        flush_lsn=info.receive_lsn,
        replay_lsn=info.replay_lsn,
        lag_bytes=lsn_diff(primary.current_lsn, info.replay_lsn) if primary else None,
        lag_seconds=info.replay_delay_seconds,
        slot=slot,
    )
