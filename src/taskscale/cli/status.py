"""``taskscale status [--json]``: every service of the stack with pid, port, health and uptime."""

from __future__ import annotations

from taskscale import console
from taskscale.cli.common import JsonFlag, KubeContext, ProjectDir, TargetName
from taskscale.stack import open_stack
from taskscale.targets.model import PodsDetail, ProcessDetail, ServiceStatus, StackStatus


def command(
    project: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
    json_output: JsonFlag = False,
) -> None:
    """Show every service of the stack: pid, port, health, uptime, and the endpoints."""
    status = open_stack(project, target, context).status()
    if json_output:
        console.print_json(status.to_dict())
        return
    render(status)


def _uptime(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def render(status: StackStatus) -> None:
    """The status table, the API URL, notes and the log tails of dead services."""
    if not status.services:
        console.info(f"{status.project} ({status.target}): not running")
        for note in status.notes:
            console.info(note)
        return
    title = f"{status.project} on {status.target}"
    details = [s.detail for s in status.services]
    if all(isinstance(d, PodsDetail) for d in details):
        # Kubernetes: a service is several pods; show ready/desired instead of a pid.
        columns = ["service", "kind", "pods", "port", "state", "healthy", "age"]
        rows = [[s.name, s.kind, _pods(s), s.port, *_health(s)] for s in status.services]
    elif any(isinstance(d, ProcessDetail) and d.slot for d in details):
        # Local: app replicas keep their names (app-1..N); the slot says which port set.
        columns = ["service", "kind", "pid", "slot", "port", "state", "healthy", "uptime"]
        rows = [[s.name, s.kind, s.pid, _slot(s), s.port, *_health(s)] for s in status.services]
    else:
        columns = ["service", "kind", "pid", "port", "state", "healthy", "uptime"]
        rows = [[s.name, s.kind, s.pid, s.port, *_health(s)] for s in status.services]
    if any(s.restarts is not None for s in status.services):
        # A restart policy runs (local): how often each service came back, and how it ended.
        columns = [*columns, "restarts"]
        rows = [[*row, _restarts(s)] for row, s in zip(rows, status.services, strict=True)]
    console.table(title, columns, rows)
    console.print_text(f"API: {status.endpoints.api}")
    for name, url in status.endpoints.extra.items():
        console.print_text(f"{name}: {url}")
    for note in status.notes:
        console.info(note)
    for service in status.services:
        if service.state in ("dead", "crash-loop"):
            how = "in a crash loop" if service.state == "crash-loop" else "dead"
            console.warn(f"{service.name} is {how}; last lines of its log:")
            console.print_text(service.log_tail or "(empty log)")


def _health(service: ServiceStatus) -> list[object]:
    return [service.state, service.healthy, _uptime(service.uptime_seconds)]


def _restarts(service: ServiceStatus) -> str | None:
    if service.restarts is None:
        return None
    if service.last_exit is None:
        return str(service.restarts)
    return f"{service.restarts} (last: {service.last_exit})"


def _pods(service: ServiceStatus) -> str | None:
    detail = service.detail
    return f"{detail.ready}/{detail.desired}" if isinstance(detail, PodsDetail) else None


def _slot(service: ServiceStatus) -> str | None:
    detail = service.detail
    return detail.slot if isinstance(detail, ProcessDetail) else None
