"""``taskscale replicate``: streaming standbys, their status, switchover, failover, rejoin."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from taskscale import console
from taskscale.cli.common import JsonFlag, KubeContext, ProjectDir, TargetName, open_stack
from taskscale.replication import plan
from taskscale.replication.model import ClusterStatus, ReplicationChange

app = typer.Typer(
    name="replicate",
    help="PostgreSQL streaming replication: add standbys (default action), status, "
    "switchover, failover, rejoin.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@app.callback()
def replicate(
    ctx: typer.Context,
    replicas: Annotated[
        int | None,
        typer.Option(
            "--replicas",
            "-r",
            help="Hot standbys to run; 0 removes them (default: keep the current count, or 1).",
            show_default=False,
        ),
    ] = None,
    sync: Annotated[
        bool | None,
        typer.Option(
            "--sync/--async",
            help="Synchronous (ANY 1) or asynchronous commit; default: keep the current mode.",
            show_default=False,
        ),
    ] = None,
    project: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
    json_output: JsonFlag = False,
) -> None:
    """Create N hot standbys of the primary, wait until they stream, point reads at them."""
    if ctx.invoked_subcommand is not None:
        return
    standbys = open_stack(project, target, context).standbys()
    with console.progress("replicating") as step:
        change = standbys.replicate(replicas, sync, on_step=step)
    _render_change(change, json_output)


@app.command("status")
def status(
    project: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
    json_output: JsonFlag = False,
    watch: Annotated[
        float | None,
        typer.Option("--watch", "-w", help="Refresh every N seconds until interrupted."),
    ] = None,
) -> None:
    """Every node: role, state, timeline, LSNs, lag in bytes and seconds, sync state, slot."""
    replication = open_stack(project, target, context).replication()
    while True:
        cluster = replication.status()
        if json_output:
            console.print_json(cluster.to_dict())
        else:
            render(cluster)
        if watch is None:
            return
        time.sleep(max(0.2, watch))


@app.command("switchover")
def switchover(
    to: Annotated[str, typer.Option("--to", help="The standby to promote.")],
    max_lag: Annotated[
        int,
        typer.Option("--max-lag", help="Refuse when the standby is more bytes behind than this."),
    ] = plan.DEFAULT_MAX_LAG_BYTES,
    project: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
    json_output: JsonFlag = False,
) -> None:
    """Planned role swap without data loss: the old primary becomes a standby."""
    promotion = open_stack(project, target, context).promotion("replicate switchover")
    with console.progress(f"switching over to {to}") as step:
        change = promotion.switchover(to, max_lag, on_step=step)
    _render_change(change, json_output)


@app.command("failover")
def failover(
    to: Annotated[
        str | None, typer.Option("--to", help="Standby to promote (default: most advanced).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Fail over even though the primary answers (fences it).")
    ] = False,
    project: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
    json_output: JsonFlag = False,
) -> None:
    """The primary is down: promote a standby and point the app and other standbys at it."""
    promotion = open_stack(project, target, context).promotion("replicate failover")
    with console.progress("failing over") as step:
        change = promotion.failover(to, force, on_step=step)
    _render_change(change, json_output)


@app.command("rejoin")
def rejoin(
    node: Annotated[str, typer.Argument(help="The former primary (or broken standby).")],
    project: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
    json_output: JsonFlag = False,
) -> None:
    """Bring a node back as a standby of the current primary (pg_rewind when it diverged)."""
    promotion = open_stack(project, target, context).promotion("replicate rejoin")
    with console.progress(f"rejoining {node}") as step:
        change = promotion.rejoin(node, on_step=step)
    _render_change(change, json_output)


def _render_change(change: ReplicationChange, json_output: bool) -> None:
    if json_output:
        console.print_json(change.to_dict())
        return
    render(change.status)
    what = ", ".join(change.changed) if change.changed else "nothing to change"
    console.success(f"{change.action}: {what} ({change.seconds:.1f}s)")


def _fmt_lag(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds * 1000:.0f} ms"


def render(cluster: ClusterStatus) -> None:
    console.table(
        f"PostgreSQL on {cluster.target} ({'sync' if cluster.sync else 'async'})",
        ["node", "role", "state", "tl", "host:port", "sent", "write", "flush", "replay",
         "lag bytes", "lag", "sync", "slot"],
        [
            [n.name, n.role, n.state, n.timeline, f"{n.host}:{n.port}", n.sent_lsn, n.write_lsn,
             n.flush_lsn, n.replay_lsn, n.lag_bytes, _fmt_lag(n.lag_seconds), n.sync_state,
             n.slot]
            for n in cluster.nodes
        ],
    )  # fmt: skip
    for note in cluster.notes:
        console.info(note)
