"""``taskscale status [--json]``: every service of the stack with pid, port, health and uptime."""

from __future__ import annotations

from taskscale import console
from taskscale.cli.common import JsonFlag, KubeContext, ProjectDir, TargetName, project_from
from taskscale.targets import get_target
from taskscale.targets.base import StackStatus


def command(
    project: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
    json_output: JsonFlag = False,
) -> None:
    """Show every service of the stack: pid, port, health, uptime, and the endpoints."""
    status = get_target(target, project_from(project), context=context).status()
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
    if any(s.desired is not None for s in status.services):
        # Kubernetes: a service is several pods; show ready/desired instead of a pid.
        console.table(
            f"{status.project} on {status.target}",
            ["service", "kind", "pods", "port", "state", "healthy", "age"],
            [
                [
                    s.name,
                    s.kind,
                    f"{s.ready}/{s.desired}",
                    s.port,
                    s.state,
                    s.healthy,
                    _uptime(s.uptime_seconds),
                ]
                for s in status.services
            ],
        )
    else:
        console.table(
            f"{status.project} on {status.target}",
            ["service", "kind", "pid", "port", "state", "healthy", "uptime"],
            [
                [s.name, s.kind, s.pid, s.port, s.state, s.healthy, _uptime(s.uptime_seconds)]
                for s in status.services
            ],
        )
    console.print_text(f"API: {status.endpoints.api}")
    for name, url in status.endpoints.extra.items():
        console.print_text(f"{name}: {url}")
    for note in status.notes:
        console.info(note)
    for service in status.services:
        if service.state == "dead":
            console.warn(f"{service.name} is dead; last lines of its log:")
            console.print_text(service.log_tail or "(empty log)")
