"""Start several uvicorn replicas from one interpreter that already imported the heavy libraries.

On a 2-core machine, starting 3 replicas costs 3 x ~1.5 s of CPU, almost all of it importing
FastAPI, SQLAlchemy, psycopg, redis and friends. A launcher process imports those third-party
libraries once, then forks one child per replica (copy-on-write: the imports are shared) and
exits. Each child starts a new session, points stdout/stderr at its own log, takes its own
environment (INSTANCE_ID ...) and runs ``uvicorn app.main:app`` itself, so the app module (which
reads its settings at import) is imported per child, with the child's settings. Only
third-party modules are preloaded, never the project's code. The children are ordinary uvicorn
processes afterwards: recorded, health-checked and stopped like any other replica.

``up`` starts the launcher early (``start_launcher``): the module names are its arguments, so
it imports while PostgreSQL and Redis start, and it waits on stdin for the children's specs
(``Launcher.fork``), sent once the database is ready. Given no specs (stdin closed empty, e.g.
because taskscale failed or died), it exits without forking.

The launcher runs in the app's interpreter (which may be a venv without taskscale), so it is a
self-contained script passed with ``-c``; its input (environments hold secrets) comes on stdin.
"""

from __future__ import annotations

import ast
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from taskscale import proc

# What uvicorn itself imports to serve; the app's own third-party imports are added by scanning
# its package (app_imports). Modules that fail to import are skipped by the launcher.
UVICORN_MODULES = (
    "uvicorn.main",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.lifespan.on",
)
# Imported lazily by the frameworks while the app is built, so no scan of the app finds them:
# FastAPI imports pydantic.v1 on its first route (to tell v1 models apart), ~20 ms per replica.
FRAMEWORK_LAZY_MODULES = ("pydantic.v1",)


def app_imports(package_dir: Path) -> list[str]:
    """The module-level absolute imports of the app package's source, except its own modules.

    Read with ``ast`` (nothing is executed): the third-party and stdlib modules the app imports
    at start, which the launcher imports once before forking. ``import x.y`` gives ``x.y``;
    ``from x import y`` gives ``x:y``: the launcher imports ``x`` and then, exactly as the
    from-import would, the submodule ``x.y`` only when ``x`` has no attribute ``y`` (so
    ``from sqlalchemy.dialects import postgresql`` preloads the dialect, and a function ``y``
    is never shadowed by a same-named submodule). Imports inside functions (e.g. the Kafka
    client, only loaded with broker=kafka) are left alone.
    """
    own = package_dir.name
    found: dict[str, None] = {}
    for path in sorted(package_dir.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}:{alias.name}" for alias in node.names if alias.name != "*"]
            else:
                continue
            for name in names:
                top = name.split(".", 1)[0].split(":", 1)[0]
                if top not in (own, "__future__"):
                    found[name] = None
    return list(found)


# gc: disabled while importing (the collector would scan the growing heap again and again,
# ~10% of the import time), frozen before forking (the children's collections then skip the
# preloaded objects: faster, and no copy-on-write of their pages), enabled in each child. This
# is the sequence the gc module's documentation recommends for fork without exec.
_LAUNCHER = r"""
import gc
gc.disable()
import importlib, json, os, sys
serve = sys.argv[1:2] == ["--serve"]
for name in sys.argv[2 if serve else 1:]:
    module, _, attr = name.partition(":")
    try:
        loaded = importlib.import_module(module)
        if attr and not hasattr(loaded, attr):
            importlib.import_module(module + "." + attr)
    except Exception:
        pass

def become(child):
    code = 1
    try:
        gc.enable()
        os.setsid()
        log = os.open(child["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.environ.clear()
        os.environ.update(child["env"])
        sys.argv = child["argv"]
        from uvicorn.main import main
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)

def orphan(child):
    # Serve mode: the replica must not stay our child (we would have to reap it); an
    # intermediate child forks it and exits, so it is adopted by the nearest subreaper (the
    # supervisor that runs us), which learns how it ends.
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(r)
        pid = os.fork()
        if pid == 0:
            os.close(w)
            become(child)
        os.write(w, str(pid).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 64)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(middle, 0)
    return int(data)

if serve:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    gc.freeze()
    for line in sys.stdin:
        pids = [orphan(child) for child in json.loads(line)["children"]]
        sys.stdout.write(json.dumps(pids) + "\n")
        sys.stdout.flush()
    os._exit(0)
data = sys.stdin.read()
if not data.strip():
    os._exit(0)  # nothing to start (the up failed or needed no launcher after all)
spec = json.loads(data)
gc.freeze()
pids = []
for child in spec["children"]:
    pid = os.fork()
    if pid == 0:
        become(child)
    pids.append(pid)
sys.stdout.write(json.dumps(pids))
sys.stdout.flush()
os._exit(0)
"""


@dataclass(frozen=True)
class ReplicaSpec:
    port: int
    log: Path
    env: dict[str, str]
    argv: list[str]  # uvicorn's own argv: ["uvicorn", "app.main:app", "--port", ...]


def uvicorn_args(full_argv: list[str]) -> list[str]:
    """``[python, -m, uvicorn, ...]`` -> ``[uvicorn, ...]`` (what uvicorn's main() parses)."""
    index = full_argv.index("uvicorn")
    return full_argv[index:]


class Launcher:
    """A launcher process that is importing (or has imported) the libraries; ``fork`` starts
    the replicas from it. Start it early: its imports then overlap whatever ``up`` does before
    the replicas are due (PostgreSQL, Redis, the migration check). Use it as a context
    manager: left unused, it is killed."""

    def __init__(self, started: proc.Started) -> None:
        self._started = started

    def fork(self, replicas: list[ReplicaSpec]) -> list[int]:
        """Start ``replicas`` (each child gets its own log, environment and argv); their pids."""
        for spec in replicas:
            spec.log.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "children": [{"log": os.fspath(s.log), "env": s.env, "argv": s.argv} for s in replicas],
        }
        result = self._started.finish(json.dumps(payload))
        pids = [int(pid) for pid in json.loads(result.stdout)]
        if len(pids) != len(replicas):
            raise ValueError(f"launcher started {len(pids)} of {len(replicas)} replicas")
        return pids

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._started.__exit__(*exc_info)


def preloaded_modules(cwd: Path) -> list[str]:
    return [*UVICORN_MODULES, *app_imports(cwd / "app"), *FRAMEWORK_LAZY_MODULES]


def start_launcher(python: str, cwd: Path, timeout: float) -> Launcher:
    """Start the launcher in ``cwd`` (the project root); it imports uvicorn's and the app's
    third-party modules at once, then waits for ``Launcher.fork``. ``timeout`` bounds its
    whole life, imports included."""
    argv = [python, "-c", _LAUNCHER, *preloaded_modules(cwd)]
    return Launcher(proc.start(argv, cwd=cwd, timeout=timeout))


class Zygote:
    """A launcher that stays: it imports the libraries once, then forks one replica whenever
    asked, for as long as ``lifetime`` (the supervisor process restarts crashed replicas from
    it: ready in 0.3-0.7 s instead of 2-3 s for a fresh interpreter on 2 cores).

    Each replica is forked through an intermediate process that exits at once, so it is not
    the zygote's child but is adopted by the supervisor (a subreaper), which reaps it and
    reports how it ended. The zygote exits when its stdin closes (the supervisor died)."""

    def __init__(self, python: str, cwd: Path, lifetime: float) -> None:
        argv = [python, "-c", _LAUNCHER, "--serve", *preloaded_modules(cwd)]
        self._started = proc.start(argv, cwd=cwd, timeout=lifetime)
        self.born = time.monotonic()
        self.lifetime = lifetime

    @property
    def pid(self) -> int:
        return self._started.pid

    def usable(self, margin: float) -> bool:
        """Running, with at least ``margin`` seconds of its lifetime left."""
        return self._started.running() and time.monotonic() - self.born < self.lifetime - margin

    def fork(self, replica: ReplicaSpec, timeout: float) -> int:
        """Start one replica; its pid. ``timeout`` covers the imports of a young zygote."""
        replica.log.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "children": [{"log": os.fspath(replica.log), "env": replica.env, "argv": replica.argv}]
        }
        answer = json.loads(self._started.exchange(json.dumps(payload), timeout))
        if not isinstance(answer, list) or len(answer) != 1:
            raise ValueError(f"the zygote answered {answer!r}")
        return int(answer[0])

    def close(self) -> None:
        self._started.cancel()


def fork_replicas(python: str, cwd: Path, replicas: list[ReplicaSpec], timeout: float) -> list[int]:
    """Start ``replicas`` from a new preloaded launcher; their pids, in order."""
    with start_launcher(python, cwd, timeout) as launcher:
        return launcher.fork(replicas)
