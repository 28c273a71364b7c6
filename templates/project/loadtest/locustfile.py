"""Load test scenarios for the Task API.

Pick the scenario with the environment variable ``TASKSCALE_SCENARIO``: ``read-heavy`` (default),
``write-heavy`` or ``mixed``. Each is one user class (ReadHeavyUser, WriteHeavyUser, MixedUser)
with its own task weights; only the selected one is active:

    TASKSCALE_SCENARIO=mixed locust -f loadtest/locustfile.py --headless -u 100 -r 20 -t 60s \
        --host http://127.0.0.1:8080

Realistic hot set: at test start one user creates a pool of tasks (``LOADTEST_POOL_SIZE``,
default 500) shared by all users of the process; reads then pick ids with a Zipf-like skew
(``LOADTEST_ZIPF_S``, default 1.1), so a few tasks are very hot and most are cold, like real
traffic. Requests are grouped by route (``GET /tasks/{id}``), not per id.

Authentication: the first user of the process asks ``GET /tasks/``; an API that answers 401
needs bearer tokens, so that user registers one account for the process (tasks belong to their
owner: every user of the process must read the same hot set), and every user logs in to it once
in ``on_start`` and again shortly before its token expires. A failed registration or login
(a replica or the database was down) is tried again every ``LOGIN_RETRY_S``, registering first
while the account does not exist, and an unclear answer to the question is asked again for up
to ``PROBE_FOR_S``: a fault during setup costs a few requests, not a user without a token for
the rest of the run. Registration, logins and the hot
set's creation are named ``... (setup)``: ``taskscale loadtest`` reports them on their own lines
and leaves them out of the totals and the SLO gates (``--include-setup`` counts them).
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
import secrets
import threading
import time
import uuid
from typing import Any

from locust import FastHttpUser, between, events, task
from locust.env import Environment

SCENARIO = os.environ.get("TASKSCALE_SCENARIO", "read-heavy")
POOL_SIZE = int(os.environ.get("LOADTEST_POOL_SIZE", "500"))
ZIPF_S = float(os.environ.get("LOADTEST_ZIPF_S", "1.1"))
STATUSES = ("pending", "in_progress", "done")
SETUP = " (setup)"  # the suffix taskscale's reports keep out of the totals
LOGIN_RETRY_S = 0.5  # a failed registration or login is tried again after this long
PROBE_FOR_S = 30.0  # how long the first user asks whether the API needs a token


class HotSet:
    """Task ids shared by all users in this process, sampled with a Zipf-like distribution, and
    the account that owns them when the API wants a bearer token."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.account: dict[str, str] | None = None  # {"username", "password"} or None: no auth
        self.registered = False  # the API confirmed the account (201, or 409 for a retry)
        self._cumulative: list[float] = []
        self._lock = threading.Lock()
        self._claimed = False
        self.ready = threading.Event()

    def claim(self) -> bool:
        """True for exactly one caller per test run: the user that builds the set."""
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def reset(self) -> None:
        """Forget the set and its builder, so the next test run builds a fresh one."""
        with self._lock:
            self.ids = []
            self._cumulative = []
            self._claimed = False
            self.account = None
            self.registered = False
            self.ready.clear()

    def fill(self, ids: list[int]) -> None:
        with self._lock:
            self.ids = ids
            weights = [1.0 / (rank**ZIPF_S) for rank in range(1, len(ids) + 1)]
            self._cumulative = list(itertools.accumulate(weights))
            self.ready.set()

    def add(self, task_id: int) -> None:
        """A task created during the run joins the set (which is how an empty set fills up
        when the API failed every setup write)."""
        with self._lock:
            if len(self.ids) < POOL_SIZE * 2:
                self.ids.append(task_id)
                previous = self._cumulative[-1] if self._cumulative else 0.0
                self._cumulative.append(previous + 1.0 / (len(self.ids) ** ZIPF_S))

    def pick(self) -> int | None:
        if not self.ids:
            return None
        point = random.random() * self._cumulative[-1]
        return self.ids[min(bisect.bisect_left(self._cumulative, point), len(self.ids) - 1)]


HOT = HotSet()


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _reset(environment: Environment, **_kwargs: Any) -> None:
    HOT.reset()


def _body(i: int) -> dict[str, str]:
    return {"title": f"load task {i}", "description": "created by locust", "status": random.choice(STATUSES)}


class TaskApiUser(FastHttpUser):
    abstract = True
    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        self.auth: dict[str, str] = {}
        self.refresh_at = 0.0  # when to (try to) log in next; with no account, never asked
        # The first user of the process in each test run builds the hot set; the others wait.
        if HOT.claim():
            ids: list[int] = []
            try:
                if self.needs_token():
                    HOT.account = {
                        "username": f"loadtest-{uuid.uuid4().hex[:12]}@example.com",
                        "password": secrets.token_urlsafe(16),
                    }
                    self.log_in()
                for i in range(POOL_SIZE):
                    response = self.client.post(
                        "/tasks/", json=_body(i), headers=self.headers(), name="POST /tasks/" + SETUP
                    )
                    if response.status_code == 201:
                        ids.append(response.json()["id"])
            finally:  # even a failed setup releases the waiting users
                random.shuffle(ids)  # hotness independent of creation order
                HOT.fill(ids)
        else:
            HOT.ready.wait(timeout=120)
            if HOT.account is not None:
                self.log_in()

    def needs_token(self) -> bool:
        """Whether the API wants a bearer token: ``GET /tasks/`` answers 401. An answer that
        says neither (the API is down) is asked again, for up to ``PROBE_FOR_S``."""
        give_up = time.monotonic() + PROBE_FOR_S
        while True:
            with self.client.get("/tasks/?limit=1", name="GET /tasks/" + SETUP, catch_response=True) as probe:
                if probe.status_code == 401:
                    probe.success()  # the answer this question expects from a jwt API
                    return True
                if probe.status_code == 200 or time.monotonic() >= give_up:
                    return False
            time.sleep(LOGIN_RETRY_S)

    def register(self) -> bool:
        """Create the process's account; True once the API confirmed it. Several users may try
        at once after a failure: one gets 201, the others 409, and all of them go on."""
        assert HOT.account is not None
        body = {"email": HOT.account["username"], "password": HOT.account["password"]}
        response = self.client.post("/auth/register", json=body, name="POST /auth/register" + SETUP)
        if response.status_code in (201, 409):
            HOT.registered = True
        return HOT.registered

    def log_in(self) -> None:
        """A bearer token for the process's account (OAuth2 password form), renewed at 80 % of
        its lifetime. On failure the user keeps the token it has (if any) and tries again after
        ``LOGIN_RETRY_S``; a 401 means the account is not there, so the next try registers it."""
        assert HOT.account is not None
        if not HOT.registered and not self.register():
            self.refresh_at = time.monotonic() + LOGIN_RETRY_S
            return
        response = self.client.post("/auth/token", data=HOT.account, name="POST /auth/token" + SETUP)
        if response.status_code == 200:
            token = response.json()
            self.auth = {"Authorization": f"Bearer {token['access_token']}"}
            self.refresh_at = time.monotonic() + 0.8 * float(token["expires_in"])
            return
        if response.status_code == 401:
            HOT.registered = False
        self.refresh_at = time.monotonic() + LOGIN_RETRY_S

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        if HOT.account is not None and time.monotonic() >= self.refresh_at:
            self.log_in()
        return {**self.auth, **extra} if extra else self.auth

    def read_one(self) -> None:
        task_id = HOT.pick()
        if task_id is not None:
            self.client.get(f"/tasks/{task_id}", headers=self.headers(), name="GET /tasks/{id}")

    def list_page(self) -> None:
        params = "?limit=20" if random.random() < 0.7 else f"?limit=20&status={random.choice(STATUSES)}"
        self.client.get(f"/tasks/{params}", headers=self.headers(), name="GET /tasks/")

    def create(self) -> None:
        headers = self.headers({"Idempotency-Key": uuid.uuid4().hex})
        response = self.client.post("/tasks/", json=_body(0), headers=headers, name="POST /tasks/")
        if response.status_code == 201:
            HOT.add(response.json()["id"])

    def update(self) -> None:
        task_id = HOT.pick()
        if task_id is not None:
            body = {"status": random.choice(STATUSES)}
            # The key makes the PATCH safe to retry: nginx retries it on another replica when
            # the one it reached died (deploy/nginx, README "Retries").
            headers = self.headers({"Idempotency-Key": uuid.uuid4().hex})
            self.client.patch(f"/tasks/{task_id}", json=body, headers=headers, name="PATCH /tasks/{id}")


class ReadHeavyUser(TaskApiUser):
    """95 % reads (mostly single tasks from the hot set), 5 % writes."""

    @task(80)
    def get_task(self) -> None:
        self.read_one()

    @task(15)
    def get_list(self) -> None:
        self.list_page()

    @task(3)
    def post_task(self) -> None:
        self.create()

    @task(2)
    def patch_task(self) -> None:
        self.update()


class WriteHeavyUser(TaskApiUser):
    """70 % writes (creates and updates), 30 % reads."""

    @task(45)
    def post_task(self) -> None:
        self.create()

    @task(25)
    def patch_task(self) -> None:
        self.update()

    @task(30)
    def get_task(self) -> None:
        self.read_one()


class MixedUser(TaskApiUser):
    """Even-ish mix: 60 % reads, 40 % writes."""

    @task(45)
    def get_task(self) -> None:
        self.read_one()

    @task(15)
    def get_list(self) -> None:
        self.list_page()

    @task(25)
    def post_task(self) -> None:
        self.create()

    @task(15)
    def patch_task(self) -> None:
        self.update()


_SCENARIOS: dict[str, type[TaskApiUser]] = {
    "read-heavy": ReadHeavyUser,
    "write-heavy": WriteHeavyUser,
    "mixed": MixedUser,
}
if SCENARIO not in _SCENARIOS:
    raise SystemExit(f"TASKSCALE_SCENARIO must be one of {', '.join(_SCENARIOS)}, not {SCENARIO!r}")

# Only the selected scenario is concrete (locust runs every non-abstract User class it finds).
for _scenario_name, _user_class in _SCENARIOS.items():
    _user_class.abstract = _scenario_name != SCENARIO
del _scenario_name, _user_class  # module-level names are scanned for User classes too
