"""``replicate status`` on the kubernetes targets: each PostgreSQL pod asked through pod exec.

One query (``STATUS_SQL``) runs with ``psql`` inside every pod labelled
``app.kubernetes.io/name=postgres`` (over the local socket, as the container's own
``POSTGRES_USER``) and answers one JSON object: the node's recovery state, LSNs, timeline and,
on the primary, ``pg_stat_replication`` joined with the slots. No port-forward and no password
leaves the cluster. Standbys cloned with ``pg_basebackup -R`` all report the application name
``walreceiver``, so a standby's row on the primary is matched by the pod's IP instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskscale.errors import TargetError
from taskscale.replication import plan, sql
from taskscale.replication.model import ClusterStatus, NodeStatus
from taskscale.targets.capabilities import Replication
from taskscale.targets.kube.namespace import Namespace

EXEC_TIMEOUT = 15.0

STATUS_SQL = """
SELECT json_build_object(
  'in_recovery', pg_is_in_recovery(),
  'timeline', CASE WHEN pg_is_in_recovery()
                   THEN (SELECT received_tli FROM pg_stat_wal_receiver)
                   ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
              END,
  'current_lsn', CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text
                      ELSE pg_current_wal_lsn()::text END,
  'receive_lsn', pg_last_wal_receive_lsn()::text,
  'replay_lsn', pg_last_wal_replay_lsn()::text,
  'replay_delay_seconds', CASE WHEN pg_is_in_recovery()
      THEN EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8 END,
  'receiver_status', (SELECT status FROM pg_stat_wal_receiver),
  'synchronous_standby_names', current_setting('synchronous_standby_names'),
  'senders', COALESCE((
    SELECT json_agg(json_build_object(
      'application_name', r.application_name, 'client_addr', host(r.client_addr),
      'state', r.state, 'sent_lsn', r.sent_lsn::text, 'write_lsn', r.write_lsn::text,
      'flush_lsn', r.flush_lsn::text, 'replay_lsn', r.replay_lsn::text,
      'lag_bytes', CASE WHEN pg_is_in_recovery() THEN NULL
                        ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint END,
      'replay_lag_seconds', EXTRACT(EPOCH FROM r.replay_lag)::float8,
      'sync_state', r.sync_state, 'slot', s.slot_name::text) ORDER BY r.application_name)
      FROM pg_stat_replication r
      LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid), '[]'::json)
)
"""
# Over the container's local socket (trust in the postgres image) as its own POSTGRES_USER.
PSQL = 'exec psql -XAtq -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$1"'


def status_command() -> list[str]:
    return ["sh", "-c", PSQL, "psql", " ".join(STATUS_SQL.split())]


@dataclass(frozen=True)
class PodAnswer:
    """What one PostgreSQL pod said about itself (and, on a primary, its WAL senders)."""

    info: sql.NodeInfo
    senders: dict[str, sql.WalSender]  # by the standby's IP


def parse_answer(text: str) -> PodAnswer:
    """The JSON line ``STATUS_SQL`` prints; ValueError when it is not that."""
    data = json.loads(text.strip().splitlines()[-1] if text.strip() else "")
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    info = sql.NodeInfo(
        in_recovery=bool(data["in_recovery"]),
        timeline=_int(data.get("timeline")),
        current_lsn=data.get("current_lsn"),
        receive_lsn=data.get("receive_lsn"),
        replay_lsn=data.get("replay_lsn"),
        replay_delay_seconds=_float(data.get("replay_delay_seconds")),
        receiver_status=data.get("receiver_status"),
        synchronous_standby_names=str(data.get("synchronous_standby_names") or ""),
    )
    senders = {
        str(s.get("client_addr")): sql.WalSender(
            application_name=str(s.get("application_name")),
            state=str(s.get("state")),
            sent_lsn=s.get("sent_lsn"),
            write_lsn=s.get("write_lsn"),
            flush_lsn=s.get("flush_lsn"),
            replay_lsn=s.get("replay_lsn"),
            lag_bytes=_int(s.get("lag_bytes")),
            replay_lag_seconds=_float(s.get("replay_lag_seconds")),
            sync_state=str(s.get("sync_state")),
            slot=s.get("slot"),
        )
        for s in data.get("senders") or []
    }
    return PodAnswer(info, senders)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def primary_node(name: str, host: str, answer: PodAnswer | None) -> NodeStatus:
    return plan.primary_status(name, answer.info if answer else None, port=5432, host=host)


def standby_node(
    name: str,
    host: str,
    answer: PodAnswer | None,
    sender: sql.WalSender | None,
    primary: sql.NodeInfo | None,
) -> NodeStatus:
    """A standby's row: the primary's view of it when it streams, else its own."""
    return plan.standby_status(
        name, answer.info if answer else None, sender, primary, port=5432, host=host
    )


class PodReplication(Replication):
    """The kubernetes targets' replication: status only (promotion is manual there)."""

    def __init__(self, namespace: Callable[[], Namespace], target: str) -> None:
        """``namespace`` gives the client when it is needed: asking a target whether it has
        the capability never reads the kubeconfig or reaches the cluster."""
        self._namespace = namespace
        self.target = target

    @property
    def ns(self) -> Namespace:
        return self._namespace()

    def status(self) -> ClusterStatus:
        """Every PostgreSQL pod asked with psql through pod exec."""
        if not self.ns.exists():
            raise TargetError(
                f"the stack is not running: namespace {self.ns.name} does not exist in "
                f"context {self.ns.api.context}",
                hint=f"start it with `taskscale up --target {self.target}` first",
            )
        pods = self.ns.items("pods", labelSelector="app.kubernetes.io/name=postgres")
        pods.sort(key=lambda p: str(p["metadata"]["name"]))
        by_role: dict[str, list[dict[str, Any]]] = {"primary": [], "standby": []}
        for pod in pods:
            role = (pod["metadata"].get("labels") or {}).get("taskscale.dev/role")
            if role in by_role:
                by_role[role].append(pod)
        if not by_role["primary"]:
            raise TargetError(
                f"no PostgreSQL primary pod in namespace {self.ns.name}",
                hint=f"see `taskscale status --target {self.target}`",
            )
        notes: list[str] = []
        answers = {p["metadata"]["name"]: self._ask_postgres(p, notes) for p in pods}
        primary = by_role["primary"][0]
        primary_name = primary["metadata"]["name"]
        primary_answer = answers[primary_name]
        nodes = [primary_node(primary_name, pod_ip(primary), primary_answer)]
        senders = primary_answer.senders if primary_answer else {}
        for pod in by_role["standby"]:
            name = pod["metadata"]["name"]
            nodes.append(
                standby_node(
                    name,
                    pod_ip(pod),
                    answers[name],
                    senders.get(pod_ip(pod)),
                    primary_answer.info if primary_answer else None,
                )
            )
        if primary_answer is None:
            notes.append(
                f"primary {primary_name} does not answer; promotion is manual on this target "
                "(docs/kubernetes.md)"
            )
        return ClusterStatus(
            target=self.target,
            primary=primary_name,
            sync=bool(primary_answer and primary_answer.info.synchronous_standby_names),
            nodes=nodes,
            notes=notes,
        )

    def _ask_postgres(self, pod: dict[str, Any], notes: list[str]) -> PodAnswer | None:
        name = pod["metadata"]["name"]
        phase = (pod.get("status") or {}).get("phase")
        if phase != "Running":
            notes.append(f"pod {name} is {phase or 'not scheduled'}")
            return None
        try:
            return ask_postgres(self.ns, pod)
        except TargetError as exc:
            notes.append(f"{name}: {exc.message}")
            return None


def ask_postgres(ns: Namespace, pod: dict[str, Any], timeout: float = EXEC_TIMEOUT) -> PodAnswer:
    """The node's role, WAL positions and (on a primary) its WAL senders: psql through pod
    exec. TargetError (one line) when the exec fails, psql fails or its output is not ours."""
    result = ns.api.exec(
        ns.name,
        pod["metadata"]["name"],
        pod["spec"]["containers"][0]["name"],
        status_command(),
        timeout=timeout,
    )
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise TargetError(f"psql exited {result.returncode}: {said[0] if said else ''}")
    try:
        return parse_answer(result.stdout)
    except (ValueError, KeyError, TypeError) as exc:
        raise TargetError(f"unexpected psql output ({exc})") from exc


def pod_ip(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("podIP") or "")
