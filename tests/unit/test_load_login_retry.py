"""Load users survive a fault during their setup: when the API did not answer the token
question, the registration or the login (a replica or the database was down, as in a
primary-failover drill that begins while users are still setting up), they ask again, instead
of sending every later request without a token and failing it with 401 for the rest of the
run. Both the generated project's locustfile and the drill's writer are checked.

Both are Locust users: importing Locust monkey-patches the interpreter (gevent), so they run
in a child process, against a small HTTP server in that process that fails the first answers
of each setup step with 503."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from taskscale import proc

LOCUSTFILE = (
    Path(__file__).resolve().parents[2] / "templates" / "project" / "loadtest" / "locustfile.py"
)

CHILD = r"""
import importlib.util, itertools, json, os, sys, threading, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ["LOADTEST_POOL_SIZE"] = "3"
from locust.env import Environment

from taskscale.loadgen import drill_writer

FAILS = {}
accounts = set()
seen = []
ids = itertools.count(1)


class Api(BaseHTTPRequestHandler):
    def send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        step = f"{self.command} {self.path}"
        authed = self.headers.get("Authorization") == "Bearer good"
        seen.append([step, authed])
        if FAILS.get(step, 0) > 0:
            FAILS[step] -= 1
            return self.send(503, {"detail": "down"})
        if self.path == "/auth/register":
            email = json.loads(body)["email"]
            if email in accounts:
                return self.send(409, {"detail": "E-mail already registered"})
            accounts.add(email)
            return self.send(201, {"id": 1, "email": email})
        if self.path == "/auth/token":
            form = urllib.parse.parse_qs(body.decode())
            if form["username"][0] in accounts:
                token = {"access_token": "good", "token_type": "bearer", "expires_in": 900}
                return self.send(200, token)
            return self.send(401, {"detail": "Incorrect e-mail or password"})
        if not authed:
            return self.send(401, {"detail": "Not authenticated"})
        task = {"id": next(ids), "title": "t", "description": None, "status": "done"}
        if self.command == "POST":
            return self.send(201, task)
        return self.send(200, {"items": [task]} if self.path.startswith("/tasks/?") else task)

    do_GET = do_POST = do_PATCH = answer

    def log_message(self, *args):
        pass


def fail_setup():
    FAILS.update({"GET /tasks/?limit=1": 1, "POST /auth/register": 2, "POST /auth/token": 2})
    seen.clear()


server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
threading.Thread(target=server.serve_forever, daemon=True).start()
host = f"http://127.0.0.1:{server.server_port}"
out = {}

spec = importlib.util.spec_from_file_location("locustfile", sys.argv[1])
locustfile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(locustfile)
locustfile.LOGIN_RETRY_S = 0.0
locustfile.MixedUser.host = host
fail_setup()
users = [locustfile.MixedUser(Environment(user_classes=[locustfile.MixedUser])) for _ in range(2)]
for user in users:
    user.on_start()
for _ in range(3):
    for user in users:
        user.create()
        user.read_one()
        user.list_page()
        user.update()
out["locustfile"] = list(seen)
out["hot_set"] = len(locustfile.HOT.ids)

drill_writer.LOGIN_RETRY_S = 0.0
drill_writer.DrillWriter.host = host
fail_setup()
writer = drill_writer.DrillWriter(Environment(user_classes=[drill_writer.DrillWriter]))
writer.on_start()
for _ in range(10):
    writer.create()
out["writer"] = list(seen)
server.shutdown()
print(json.dumps(out))
"""


def _run() -> dict[str, object]:
    done = proc.run([sys.executable, "-c", CHILD, str(LOCUSTFILE)], timeout=60)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_users_that_could_not_register_or_log_in_try_again_and_get_a_token() -> None:
    out = _run()
    for who in ("locustfile", "writer"):
        seen = out[who]
        assert isinstance(seen, list)
        steps = [step for step, _ in seen]
        # The setup met every failure the server had (503 for the question, 2 x register, 2 x
        # token) and asked again each time.
        assert steps.count("GET /tasks/?limit=1") >= 2, (who, steps)
        assert steps.count("POST /auth/register") >= 3, (who, steps)
        assert steps.count("POST /auth/token") >= 3, (who, steps)
        # Once it had a token, every request carried it.
        first = next(i for i, (_, authed) in enumerate(seen) if authed)
        late = [
            (step, authed) for step, authed in seen[first:] if not step.startswith("POST /auth")
        ]
        assert late and all(authed for _, authed in late), (who, seen)
        # ... and it got there within the setup's retries: each of the 4 failed registrations
        # and logins cost each user at most one request sent without a token.
        users = 2 if who == "locustfile" else 1
        unauthed = [
            step
            for step, authed in seen[:first]
            if step.startswith(("GET /tasks/", "POST /tasks/", "PATCH"))
        ]
        assert len(unauthed) - steps.count("GET /tasks/?limit=1") <= 4 * users, (who, seen)
    assert out["hot_set"], "an empty hot set fills up from the tasks the run creates"
