"""The drill's writers: Locust users loaded next to the scenario in ``taskscale drill`` only
(``locust -f SCENARIO,locust_plugin.py,drill_writer.py``); never imported by taskscale.

Each writer runs one cycle per ``1 / $TASKSCALE_DRILL_WRITER_RATE`` seconds, one request of
every operation type: create a task, read one of its own tasks, update one (both writes carry
an Idempotency-Key, which lets nginx retry them on another replica), list a page. So every
operation type is exercised several times a second, whatever the scenario's mix, and the
recovery of each can be timed (the plugin counts them in 100 ms buckets). Requests time out
after ``$TASKSCALE_DRILL_TIMEOUT`` seconds (a frozen service shows as failures, not as
requests that never end). Names are the scenario's with `` (drill)``.

Every write the server acknowledged goes into ``ledger.LEDGER`` with a digest of what the
server said it stored (the response is built from the write's ``RETURNING``); taskscale reads
each task back from the primary after the drill (RPO). A write without a definite answer (a
5xx, a broken connection) may have committed: its content is recorded as possible, not as
acknowledged.
"""

from __future__ import annotations

import os
import random
import secrets
import time
import uuid
from typing import Any

from locust import FastHttpUser, constant_pacing, task

from taskscale.loadgen.channel import (
    DRILL_SUFFIX,
    DRILL_TIMEOUT_ENV,
    DRILL_WRITER_RATE_ENV,
    DRILL_WRITERS_ENV,
    SETUP_SUFFIX,
)
from taskscale.loadgen.ledger import LEDGER, digest

STATUSES = ("pending", "in_progress", "done")
SETUP = " " + SETUP_SUFFIX
# Reads pick a task acknowledged at least this long ago (a fresh task may still be on its way
# to a standby: that is replication lag, which telemetry shows, not an outage).
READ_AGE_S = 1.0
KEEP_RECENT = 200
LOGIN_RETRY_S = 0.5  # a failed registration, login or token question is asked again after it
PROBE_FOR_S = 30.0


def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


class DrillWriter(FastHttpUser):
    # Exactly this many writers, whatever --users says (they are part of it).
    fixed_count = max(int(_float_env(DRILL_WRITERS_ENV, 1)), 1)
    wait_time = constant_pacing(1.0 / max(_float_env(DRILL_WRITER_RATE_ENV, 10.0), 0.1))
    network_timeout = _float_env(DRILL_TIMEOUT_ENV, 5.0)
    connection_timeout = _float_env(DRILL_TIMEOUT_ENV, 5.0)
    # The plugin leaves a drill writer's pace alone under --rate.
    taskscale_drill_writer = True

    def on_start(self) -> None:
        self.auth: dict[str, str] = {}
        self.account: dict[str, str] | None = None
        self.registered = False
        self.refresh_at = 0.0  # when to (try to) log in next, once there is an account
        # (acknowledged at, id, title, description) of this writer's tasks, newest last.
        self.mine: list[tuple[float, int, str, str | None]] = []
        if self.needs_token():
            self.account = {
                "username": f"drill-{uuid.uuid4().hex[:12]}@example.com",
                "password": secrets.token_urlsafe(16),
            }
            self.log_in()

    def needs_token(self) -> bool:
        """Whether the API answers ``GET /tasks/`` with 401; an answer that says neither (the
        API is down) is asked again for up to PROBE_FOR_S."""
        give_up = time.monotonic() + PROBE_FOR_S
        while True:
            with self.client.get(
                "/tasks/?limit=1", name="GET /tasks/" + SETUP, catch_response=True
            ) as probe:
                if probe.status_code == 401:
                    probe.success()
                    return True
                if probe.status_code == 200 or time.monotonic() >= give_up:
                    return False
            time.sleep(LOGIN_RETRY_S)

    def register(self) -> bool:
        """Create the writer's account; True once the API confirmed it (409: an earlier try
        that looked failed got through)."""
        assert self.account is not None
        body = {"email": self.account["username"], "password": self.account["password"]}
        response = self.client.post("/auth/register", json=body, name="POST /auth/register" + SETUP)
        self.registered = response.status_code in (201, 409)
        return self.registered

    def log_in(self) -> None:
        """A token, renewed at 80 % of its lifetime. A failed registration or login (the fault
        may hit the setup) is tried again after LOGIN_RETRY_S instead of leaving the writer
        without a token for the rest of the drill; a 401 means the account is missing."""
        assert self.account is not None
        if not self.registered and not self.register():
            self.refresh_at = time.monotonic() + LOGIN_RETRY_S
            return
        response = self.client.post(
            "/auth/token", data=self.account, name="POST /auth/token" + SETUP
        )
        if response.status_code == 200:
            token = response.json()
            self.auth = {"Authorization": f"Bearer {token['access_token']}"}
            self.refresh_at = time.monotonic() + 0.8 * float(token["expires_in"])
            return
        if response.status_code == 401:
            self.registered = False
        self.refresh_at = time.monotonic() + LOGIN_RETRY_S

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        if self.account is not None and time.monotonic() >= self.refresh_at:
            self.log_in()
        return {**self.auth, **extra} if extra else self.auth

    @task
    def cycle(self) -> None:
        self.create()
        self.read()
        self.update()
        self.list_page()

    def create(self) -> None:
        title = f"drill {uuid.uuid4().hex[:16]}"
        description = f"written by taskscale drill at {time.time():.3f}"
        body = {"title": title, "description": description, "status": "pending"}
        headers = self.headers({"Idempotency-Key": uuid.uuid4().hex})
        with self.client.post(
            "/tasks/",
            json=body,
            headers=headers,
            name="POST /tasks/" + DRILL_SUFFIX,
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(f"HTTP {response.status_code}")
                return
            stored = _task(response)
            if stored is None:
                response.failure("no task in the answer")
                return
            LEDGER.acked(int(stored["id"]), _content(stored))
            self.mine.append(
                (
                    time.monotonic(),
                    int(stored["id"]),
                    str(stored["title"]),
                    stored.get("description"),
                )
            )
            del self.mine[:-KEEP_RECENT]

    def _pick(self) -> tuple[float, int, str, str | None] | None:
        ready = [item for item in self.mine if time.monotonic() - item[0] >= READ_AGE_S]
        return random.choice(ready) if ready else None

    def read(self) -> None:
        picked = self._pick()
        if picked is not None:
            self.client.get(
                f"/tasks/{picked[1]}", headers=self.headers(), name="GET /tasks/{id}" + DRILL_SUFFIX
            )

    def update(self) -> None:
        picked = self._pick()
        if picked is None:
            return
        _, task_id, title, description = picked
        status = random.choice(STATUSES)
        # The key makes the PATCH safe to retry: the generated nginx retries a keyed PATCH on
        # another replica when the one it reached died (as the generated locustfile does).
        with self.client.patch(
            f"/tasks/{task_id}",
            json={"status": status},
            headers=self.headers({"Idempotency-Key": uuid.uuid4().hex}),
            name="PATCH /tasks/{id}" + DRILL_SUFFIX,
            catch_response=True,
        ) as response:
            code = response.status_code or 0
            stored = _task(response) if code == 200 else None
            if stored is not None:
                LEDGER.acked(task_id, _content(stored))
                return
            response.failure(f"HTTP {code}" if code else "no answer")
            if code == 0 or code >= 500:
                # No definite answer: the update may have committed.
                LEDGER.uncertain(task_id, digest(title, description, status))

    def list_page(self) -> None:
        self.client.get(
            "/tasks/?limit=20", headers=self.headers(), name="GET /tasks/" + DRILL_SUFFIX
        )


def _task(response: Any) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:  # a body that is not JSON: a failed write
        return None
    return data if isinstance(data, dict) and "id" in data and "title" in data else None


def _content(stored: dict[str, Any]) -> str:
    return digest(str(stored["title"]), stored.get("description"), str(stored.get("status", "")))
