"""`photostudio` command line: run the gateway locally, build the tiny model zoo.

    photostudio serve [--profile tiny|local|production] [--host H] [--port N] [--gpus N]
    photostudio zoo build [--zoo-dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console

from storage import cli as storage_cli

console = Console(stderr=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now, chosen below the kernel's ephemeral range (and above
    Ray's worker ports, 10002-19999). Port 0's answer comes from the ephemeral range, where
    the many outgoing connections of a starting Ray cluster can take it before the listener
    binds it (HAProxy then fails: "Address already in use")."""
    import random
    import socket

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = list(range(20000, max(20001, min(low, 65536))))
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # the low range is full: take what the kernel gives
        sock.bind((host, 0))
        return sock.getsockname()[1]


# Connections one node's HAProxy holds at once (Ray's RAY_SERVE_HAPROXY_MAXCONN, default
# 4096); the next ones wait in the kernel's accept queue until one ends. Serve's HAProxy
# template sets no per-server limit, so this is what bounds the requests an ingress replica
# has open: enough for what it admits (half its max_ongoing_requests, 100) plus a burst
# being shed and idle keep-alives (those end after keep_alive_timeout_s). At 4096, 10x
# overload on 2 cores put 2,276 connections on one ingress replica: its event loop fell
# behind, HAProxy's health check marked it DOWN, and traffic went to Serve's fallback proxy
# (plain-text 503s and 500s; BENCHMARKS.md, "Overload and faults"). Raise it with more
# ingress replicas per node.
HAPROXY_MAXCONN = 256


def request_path_env(state_dir: str | Path, *, haproxy: bool = True,
                     throughput_optimized: bool = False,
                     free_ports: bool = False) -> dict[str, str]:
    """Environment for Ray Serve's HTTP request path (BENCHMARKS.md, "Gateway overhead").

    Set it before `ray.init`: Ray's workers inherit it. `haproxy`: HAProxy in front of the
    ingress replicas (direct ingress) instead of Serve's Python proxy, whose one process is
    the request-rate ceiling of a small machine; its config, admin socket and state files go
    under `state_dir` (Serve's default, /tmp/haproxy-serve, is shared by every Serve on the
    machine), and it holds at most `HAPROXY_MAXCONN` connections. `throughput_optimized`:
    Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED (user code on the replica's event loop, gRPC
    between replicas, buffered request logs): any blocking call in an async method then
    stalls the replica's HTTP server. `free_ports`: HAProxy's stats and
    metrics ports on free ports (several gateways on one machine) instead of 8404 / 9101."""
    env: dict[str, str] = {}
    if haproxy:
        state = Path(state_dir) / "haproxy"
        if len(str(state)) > 28:
            # Serve puts the node id (56 characters) under this folder and HAProxy refuses an
            # admin socket path over 97 characters: a short folder keyed by `state_dir`.
            import hashlib
            import tempfile

            digest = hashlib.sha1(str(Path(state_dir).resolve()).encode()).hexdigest()[:10]
            state = Path(tempfile.gettempdir()) / f"psh-{digest}"
        state.mkdir(parents=True, exist_ok=True)
        env.update({
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            # an operator's own value wins over ours
            "RAY_SERVE_HAPROXY_MAXCONN": os.environ.get("RAY_SERVE_HAPROXY_MAXCONN",
                                                        str(HAPROXY_MAXCONN)),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
        })
        if free_ports:
            for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
                env[name] = str(free_port())
    if throughput_optimized:
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    return env


def _serve(ns: argparse.Namespace) -> int:
    from graphs.settings import Settings

    settings = Settings()
    profile = ns.profile or settings.profile
    data_dir = Path(ns.data_dir or settings.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    auth_enabled = ns.auth if ns.auth is not None else settings.auth_enabled
    if not auth_enabled and profile == "production":
        console.print("[red]the production profile requires API-key auth; --no-auth (or "
                      "PHOTOSTUDIO_AUTH_ENABLED=false) is only for the tiny and local profiles")
        return 2
    if auth_enabled:
        _bootstrap_key(settings, data_dir)
    else:
        console.print("[yellow bold]API-key auth is OFF[/] (--no-auth): anyone who can reach "
                      "the port can use the gateway")
    if profile != "production":
        # Ray 2.60 turns token auth on by default; a local single-user gateway doesn't need it.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray's unix sockets live under its temp dir and must stay under ~107 characters.
    ray_tmp = data_dir / "ray"
    if len(str(ray_tmp)) > 48:
        ray_tmp = Path("/tmp") / f"photostudio-ray-{os.getuid()}"
        console.print(f"[yellow]data dir path is long; Ray temp files go to {ray_tmp}")
    if not ns.address:
        # HAProxy in front of the ingress instead of Serve's Python proxy: about twice the
        # requests/s on a small machine (BENCHMARKS.md). RAY_SERVE_ENABLE_HA_PROXY=0 in the
        # environment keeps the Python proxy. Set before Ray starts: its workers inherit it.
        haproxy = os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1") == "1"
        # free_ports: HAProxy's stats/metrics listeners on free ports, not the fixed
        # 8404/9101 that a second gateway (or a leftover HAProxy) on the machine already holds
        for name, value in request_path_env(ray_tmp, haproxy=haproxy, free_ports=True).items():
            os.environ.setdefault(name, value)

    import ray
    from ray import serve

    from graphs.app import AppArgs, build_app

    # Logical CPUs, not cores: the graph's six deployments ask for ~5.5 CPUs between them, and
    # on a small machine they share the cores (the models mostly wait on each other anyway).
    init_kwargs: dict = {"_temp_dir": str(ray_tmp), "include_dashboard": ns.dashboard,
                         "num_cpus": max(8, os.cpu_count() or 1)}
    if ns.gpus is not None:
        init_kwargs["num_gpus"] = ns.gpus  # logical GPUs: lets fractions schedule anywhere
    if ns.address:
        init_kwargs = {"address": ns.address}
    where = f"connecting to {ns.address}" if ns.address else "local"
    console.print(f"[bold]Starting Ray[/] ({where})")
    ray.init(**init_kwargs, logging_level=logging.WARNING)
    stop = threading.Event()

    def _on_signal(signum, _frame):
        console.print(f"[bold]Received {signal.Signals(signum).name}, shutting down…")
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        serve.start(http_options={"host": ns.host or settings.host,
                                  "port": ns.port or settings.port})
        args = AppArgs(profile=profile, data_dir=str(data_dir), generator_model=ns.model,
                       use_gpu=(ns.gpus or 0) > 0 or None, auth_enabled=auth_enabled)
        console.print(f"[bold]Deploying[/] profile={profile} (first start may build tiny models)")
        serve.run(build_app(args), name="photostudio", route_prefix="/", blocking=False)
        url = f"http://{ns.host or settings.host}:{ns.port or settings.port}"
        console.print(f"[green bold]Photo Studio Gateway is up:[/] {url}  (docs: {url}/docs)")
        console.print("Press Ctrl-C to stop.")
        while not stop.wait(1.0):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            config = os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC")
            if config:
                _stop_leftover_haproxy(Path(config).parent)
        console.print("[bold]Stopped.")
    return 0


def _stop_leftover_haproxy(state_dir: Path) -> None:
    """Ray can leave its HAProxy running after a failed start (seen: orphaned, holding its
    ports); stop the ones whose config lives under this gateway's state dir."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "haproxy" in (proc.info["name"] or "") and str(state_dir) in cmdline:
                proc.terminate()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def _bootstrap_key(settings, data_dir: Path) -> None:
    """First start with auth on and no key at all: make one (project `default`, every scope)
    and print it once, so a newcomer can call the gateway at once."""
    from storage.records import RecordStore

    url = settings.database_url or f"sqlite:///{data_dir / 'photostudio.db'}"
    records = RecordStore(url)
    try:
        if records.list_api_keys():
            console.print("API keys: use one of yours (`photostudio keys list`; new ones with "
                          "`photostudio keys create`)")
            return
        key, token = records.create_api_key(project="default", name="bootstrap (first start)",
                                            scopes=["generate", "tools", "chat", "admin"])
    finally:
        records.close()
    console.print(f"[green bold]Created the first API key[/] ({key.id}, project default, all "
                  "scopes). It is shown only now; send it as 'Authorization: Bearer <key>':")
    console.print(f"    {token}", markup=False, highlight=False)


def _zoo_build(ns: argparse.Namespace) -> int:
    from models import zoo

    names = ns.names or list(zoo.BUILDERS)
    for name in names:
        path = zoo.ensure(name, ns.zoo_dir)
        console.print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="photostudio", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start a local Ray cluster and deploy the gateway")
    p.add_argument("--profile", choices=["tiny", "local", "production"], default=None,
                   help="default: $PHOTOSTUDIO_PROFILE or tiny")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--gpus", type=float, default=None,
                   help="logical GPUs to declare to Ray (default: what Ray detects)")
    p.add_argument("--model", default=None, help="generator model name (see registry)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--address", default=None, help="connect to an existing Ray cluster")
    p.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True,
                   help="start the Ray dashboard (http://127.0.0.1:8265)")
    p.add_argument("--auth", action=argparse.BooleanOptionalAction, default=None,
                   help="API keys (default: on; --no-auth only for tiny/local profiles); with "
                        "auth on and no key yet, the first start creates one and prints it")
    p.set_defaults(func=_serve)

    z = sub.add_parser("zoo", help="tiny model zoo")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zb = zsub.add_parser("build", help="build tiny models (all by default)")
    zb.add_argument("names", nargs="*")
    zb.add_argument("--zoo-dir", default=None)
    zb.set_defaults(func=_zoo_build)

    storage_cli.add_subcommands(sub)  # db upgrade|check, storage cleanup

    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration step
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
