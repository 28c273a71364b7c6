"""The drill's writer sends what makes its writes retryable (an Idempotency-Key on POST and
PATCH): without it nginx answers 502 when the replica a write reached dies, and a replica-kill
drill shows failures the generated app would have avoided.

The writer is a Locust user: importing Locust monkey-patches the interpreter (gevent), so it
runs in a child process, against a small recording HTTP server in that process."""

from __future__ import annotations

import json
import sys

from taskscale import proc

CHILD = r"""
import json, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from locust.env import Environment

from taskscale.loadgen.drill_writer import DrillWriter

seen = []


class Recorder(BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        seen.append([self.command, self.path, self.headers.get("Idempotency-Key")])
        task = {"id": 7, "title": "t", "description": None, "status": "done"}
        body = json.dumps(task if self.command != "GET" else {"items": []}).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = answer

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
threading.Thread(target=server.serve_forever, daemon=True).start()
DrillWriter.host = f"http://127.0.0.1:{server.server_port}"
user = DrillWriter(Environment(user_classes=[DrillWriter]))
user.on_start()
user.mine.append((0.0, 7, "t", None))  # acknowledged long enough ago to be updated
for _ in range(2):
    user.create()
    user.update()
server.shutdown()
print(json.dumps(seen))
"""


def test_the_drill_writer_keys_every_post_and_patch_with_a_fresh_idempotency_key() -> None:
    done = proc.run([sys.executable, "-c", CHILD], timeout=60)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    writes = [(method, key) for method, _, key in seen if method in ("POST", "PATCH")]
    assert [m for m, _ in writes] == ["POST", "PATCH", "POST", "PATCH"]
    keys = [key for _, key in writes]
    assert all(keys), writes
    assert len(set(keys)) == 4, "a new key per write: a reused key would replay the first one"
