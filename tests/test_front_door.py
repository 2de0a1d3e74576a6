"""The front door of `photostudio serve`: HAProxy's client timeouts (slow-header sockets are
closed, idle keep-alives end) and what listens where (Ray and HAProxy's stats/metrics on
loopback, the admin socket for this user only). graphs/haproxy_guard.py, graphs/cli.py."""

from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from graphs import cli
from graphs.haproxy_guard import MARK, UnknownConfig, harden, real_haproxy, write_launcher
from tests.conftest import free_port


def serve_haproxy_config(folder: Path, **http) -> Path:
    """HAProxy's config as Ray Serve 2.60 writes it (its own template and renderer), for an
    app with one replica."""
    from ray.serve._private.haproxy import (
        BackendConfig,
        HAProxyApi,
        HAProxyConfig,
        ServerConfig,
    )
    from ray.serve.config import HTTPOptions

    folder.mkdir(parents=True, exist_ok=True)
    cfg = HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=free_port(), **http),
        socket_path=str(folder / "admin.sock"), server_state_base=str(folder),
        server_state_file=str(folder / "server-state"),
        metrics_socket_path=str(folder / "metrics.sock"),
        stats_port=free_port(), metrics_port=free_port())
    backend = BackendConfig(name="http-app", path_prefix="/", app_name="app",
                            servers=[ServerConfig(name="r1", host="127.0.0.1", port=30000)])
    api = HAProxyApi(cfg, backend_configs={"http-app": backend},
                     config_file_path=str(folder / "haproxy.cfg"))
    api._generate_config_file_internal()
    return Path(api.config_file_path)


def section(config: str, header: str) -> list[str]:
    lines = config.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    end = next((i for i in range(start + 1, len(lines))
                if lines[i] and not lines[i][0].isspace() and not lines[i].startswith("#")),
               len(lines))
    return [line.strip() for line in lines[start + 1:end]]


def test_harden_adds_what_serve_has_no_knob_for(tmp_path):
    path = serve_haproxy_config(tmp_path)
    original = path.read_text()
    # what Serve 2.60 writes: no header timeout, stats/metrics on every interface, mode 666
    assert not any(line.startswith("timeout http-request") for line in section(original,
                                                                                "defaults"))
    assert "mode 666 level admin" in original
    config = harden(original, http_request_s=7, stats_host="127.0.0.1")
    assert "timeout http-request 7s" in section(config, "defaults")
    assert [line for line in section(config, "frontend prometheus")
            if line.startswith("bind")] == [
        f"bind 127.0.0.1:{line.split(':')[-1]}" for line in section(original,
                                                                     "frontend prometheus")
        if line.startswith("bind")]
    assert [line for line in section(config, "listen stats") if line.startswith("bind")][0] \
        .startswith("bind 127.0.0.1:")
    assert "mode 600 level admin" in config and "mode 666" not in config
    # the request frontend is left as Serve wrote it
    assert section(config, "frontend http_frontend") == section(original,
                                                                "frontend http_frontend")
    assert harden(config) == config  # a second start of the same file changes nothing
    # and HAProxy itself accepts the result
    path.write_text(config)
    check = subprocess.run([real_haproxy(), "-c", "-f", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_harden_keeps_a_header_timeout_serve_sets(tmp_path):
    original = serve_haproxy_config(tmp_path).read_text()
    ours = original.replace("defaults\n", "defaults\n    timeout http-request 3s\n", 1)
    config = harden(ours, http_request_s=10)
    assert [line for line in section(config, "defaults")
            if line.startswith("timeout http-request")] == ["timeout http-request 3s"]


def test_harden_refuses_a_config_it_does_not_know(tmp_path):
    original = serve_haproxy_config(tmp_path).read_text()
    with pytest.raises(UnknownConfig, match="listen"):
        harden(original.replace("listen stats", "listen other"))
    with pytest.raises(UnknownConfig, match="stats socket"):
        harden("\n".join(line for line in original.splitlines()
                         if "stats socket" not in line))


def test_launcher_hardens_the_config_then_runs_haproxy(tmp_path):
    path = serve_haproxy_config(tmp_path / "cfg")
    launcher = write_launcher(tmp_path / "haproxy-guard")
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o700
    env = {**os.environ, "PHOTOSTUDIO_HAPROXY_TIMEOUT_HTTP_REQUEST_S": "4"}
    # what Serve runs: "<binary> -db -f <config> ..." (-c: check the config and exit)
    out = subprocess.run([str(launcher), "-c", "-f", str(path)], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Configuration file is valid" in out.stdout + out.stderr  # HAProxy answered
    config = path.read_text()
    assert config.startswith(MARK) and "timeout http-request 4s" in section(config, "defaults")

    # a config it cannot harden stops the start (HAProxy never runs with it)
    path.write_text(config.replace(MARK, "#").replace("listen stats", "listen other"))
    out = subprocess.run([str(launcher), "-c", "-f", str(path)], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 1 and "haproxy_guard: cannot add its settings" in out.stderr


def test_cluster_yaml_starts_ray_with_the_same_front_door():
    import shlex

    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "cluster.yaml").read_text())
    [launcher_setup] = [c for c in config["setup_commands"] if "haproxy_guard" in c]
    launcher = shlex.split(launcher_setup)[-1]
    assert shlex.split(launcher_setup)[:4] == ["python3", "-m", "graphs.haproxy_guard",
                                               "--write-launcher"]
    assert "/home/ubuntu/.ray/auth_token" in config["file_mounts"]  # token auth needs it
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        [start] = [c for c in config[key] if "ray start" in c]
        words = shlex.split(start)
        env = dict(w.split("=", 1) for w in words[:words.index("ray")])
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == launcher
        assert env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == str(cli.HAPROXY_TIMEOUT_CLIENT_S)
        assert env["RAY_SERVE_HAPROXY_MAXCONN"] == str(cli.HAPROXY_MAXCONN)
        assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"  # the ingress records its own
        assert not any(w.startswith("--dashboard-host=") and w != "--dashboard-host=127.0.0.1"
                       for w in words)
    serve_config = yaml.safe_load((Path(__file__).parents[1] / "serve_config.yaml").read_text())
    assert serve_config["http_options"]["keep_alive_timeout_s"] == cli.KEEP_ALIVE_TIMEOUT_S


# ---------------------------------------------------------------------------------------
# `photostudio serve` itself (its own Ray, HAProxy on, as shipped): tests/conftest.py `served`
# ---------------------------------------------------------------------------------------

def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length (the connection stays open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


@pytest.mark.slow
def test_slow_header_sockets_are_closed_while_others_are_served(served):
    port = served.port  # tests/conftest.py: `photostudio serve`, auth on
    header_timeout = cli.HAPROXY_TIMEOUT_HTTP_REQUEST_S
    partial = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    started = time.monotonic()  # before the first socket: HAProxy's clocks start later
    silent = []
    for _ in range(20):  # each sends part of its headers, then nothing
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(partial)
        silent.append(sock)
    trickle = socket.create_connection(("127.0.0.1", port), timeout=5)
    trickle.sendall(partial)  # then one more header byte a second: never idle for long
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert _read_response(idle).startswith(b"HTTP/1.1 200")  # then kept alive, idle

    # while they hang, others are served
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200

    sockets = [*silent, trickle, idle]
    received = {sock: b"" for sock in sockets}
    closed_after: dict[socket.socket, float] = {}
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + max(header_timeout, cli.KEEP_ALIVE_TIMEOUT_S) + 5
    next_byte = time.monotonic() + 1
    try:
        while len(closed_after) < len(sockets) and time.monotonic() < deadline:
            trickling = not received[trickle] and trickle not in closed_after
            wake = min(next_byte, deadline) if trickling else deadline
            for key, _ in selector.select(timeout=max(0.0, wake - time.monotonic())):
                try:
                    chunk = key.fileobj.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                received[key.fileobj] += chunk
                if not chunk:
                    closed_after[key.fileobj] = time.monotonic() - started
                    selector.unregister(key.fileobj)
            if trickling and time.monotonic() >= next_byte:
                try:
                    trickle.send(b"a")
                except OSError:
                    pass  # closed: the read side reports it
                next_byte += 1
    finally:
        selector.close()
        for sock in sockets:
            sock.close()

    still_open = [sock for sock in sockets if sock not in closed_after]
    assert not still_open, (f"{len(still_open)} of {len(sockets)} sockets still open "
                            f"{time.monotonic() - started:.0f} s after they were opened")
    for sock in [*silent, trickle]:
        # closed by the header timeout (408), not at once and not by `timeout client`
        assert header_timeout - 1 <= closed_after[sock] <= header_timeout + 5, closed_after
        assert received[sock].startswith(b"HTTP/1.1 408"), received[sock][:80]
    assert closed_after[idle] <= cli.KEEP_ALIVE_TIMEOUT_S + 5
    # and the gateway answers as before
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200


def _loopback(host: str) -> bool:
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


@pytest.mark.slow
def test_ray_and_haproxy_listen_on_loopback_only(served):
    import psutil

    proc = served.proc
    root = psutil.Process(proc.pid)
    exposed: list[tuple[str, str, int]] = []
    listeners = 0
    haproxy_config = None
    for child in [root, *root.children(recursive=True)]:
        try:
            title = " ".join(child.cmdline())
            conns = child.net_connections("tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if child.name() == "haproxy":
            haproxy_config = Path(child.cmdline()[child.cmdline().index("-f") + 1])
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                listeners += 1
                if not _loopback(conn.laddr.ip):
                    exposed.append((title[:60], conn.laddr.ip, conn.laddr.port))
    assert listeners >= 10  # GCS, raylet, workers, agents, HAProxy: the tree was seen
    # Serve 2.60 binds each replica's inter-deployment gRPC server to [::]:0, with no
    # setting (README, Production deploy: firewall): the only exception, one per replica
    known = [e for e in exposed if "ServeReplica" in e[0] and e[1] == "::"]
    assert exposed == known, exposed
    assert len({e[0] for e in known}) == len(known)

    # HAProxy: the timeouts, the admin socket for this user only
    assert haproxy_config is not None, "no HAProxy in the process tree"
    config = haproxy_config.read_text()
    defaults = section(config, "defaults")
    for line in (f"timeout http-request {cli.HAPROXY_TIMEOUT_HTTP_REQUEST_S}s",
                 f"timeout client {cli.HAPROXY_TIMEOUT_CLIENT_S}s",
                 f"timeout http-keep-alive {cli.KEEP_ALIVE_TIMEOUT_S}s"):
        assert line in defaults, defaults
    assert f"maxconn {cli.HAPROXY_MAXCONN}" in section(config, "global")
    # no per-request metric datagram for Serve's HAProxyManager to parse: the ingress
    # records its own (cli.request_path_env)
    assert "log-format-sd" not in config and "metrics.sock" not in config
    admin = haproxy_config.parent / "admin.sock"
    assert stat.S_ISSOCK(admin.stat().st_mode)
    assert stat.S_IMODE(admin.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(haproxy_config.parent.parent.stat().st_mode) == 0o700
