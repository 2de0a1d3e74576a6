"""`photostudio` command line: run the gateway locally, build the tiny model zoo.

    photostudio serve [--profile tiny|local|production] [--host H] [--port N] [--gpus N]
                      [--ray-host H]
    photostudio zoo build [--zoo-dir DIR]
    photostudio providers add|list|remove|test NAME   (graphs/provider_cli.py)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, get_args

from rich.console import Console

from graphs import provider_cli
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
# HAProxy's client-side timeouts (Serve's defaults: no `timeout http-request`, `timeout
# client` 3600 s, keep-alive 90 s: 256 silent sockets would hold every `maxconn` slot).
# Request headers (each request's, kept-alive ones' too) must arrive whole within this long,
# else 408 and close (slowloris); set by graphs/haproxy_guard.py, Serve has no knob for it.
HAPROXY_TIMEOUT_HTTP_REQUEST_S = 10
# A client silent this long while sending its body or reading the answer is dropped (a slow
# model answer or a quiet SSE stream is not: HAProxy waits on the server then, not the client).
HAPROXY_TIMEOUT_CLIENT_S = 60
# An idle kept-alive connection is closed after this long (serve.start's http_options, as
# serve_config.yaml's; also the replicas' uvicorn keep-alive).
KEEP_ALIVE_TIMEOUT_S = 10
# Where Ray's own servers listen with `photostudio serve` (GCS, raylet, workers, agents,
# dashboard) unless --ray-host says otherwise; HAProxy's stats page and Prometheus exporter
# listen here always (graphs/haproxy_guard.py).
LOCAL_HOST = "127.0.0.1"


def local_ray_options(ray_host: str = LOCAL_HOST) -> tuple[dict[str, str], dict]:
    """(environment, `ray.init` keyword arguments) for a local Ray whose servers listen on
    `ray_host`. Ray turns a loopback node address into the machine's routable one (it
    assumes a cluster) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray's switch for a
    single-machine Ray: with it and node address 127.0.0.1, GCS, raylet, workers and agents
    listen on loopback only. The dashboard stays on 127.0.0.1 either way."""
    import ipaddress

    try:
        loopback = ipaddress.ip_address(ray_host).is_loopback
    except ValueError:
        loopback = ray_host == "localhost"
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"} if loopback else {}
    return env, {"_node_ip_address": ray_host, "dashboard_host": LOCAL_HOST}


def http_options(host: str, port: int) -> dict:
    """`serve.start`'s http_options for `photostudio serve` (serve_config.yaml's in
    production)."""
    return {"host": host, "port": port, "keep_alive_timeout_s": KEEP_ALIVE_TIMEOUT_S}


# Ray call arguments and results up to this size travel inline (`request_path_env`)
INLINE_OBJECT_BYTES = 4 * 1024 * 1024


# Serve's replica settings every `photostudio serve` (and cluster.yaml) sets; an operator's
# own value of each wins. User code on the replica's own event loop: Serve's default runs it
# (the ingress app, the deployments' methods) on a second loop in a thread of its own, so
# every request crossed threads (a hand-off and a GIL switch each way); on one loop the
# Ingress replica spends ~20 % less CPU per no-model request on 2 cores (BENCHMARKS.md,
# "Gateway overhead"). What it asks of the code: nothing blocks an async method (the record
# store, model inference and image coding run in threads here), or the replica's HTTP server
# and health checks wait with it. (Serve's RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0 is not
# set: a handle then needs a running loop, and synchronous callers such as the CLI's and the
# tests' `.remote().result()` have none.)
REPLICA_LOOP_ENV = {
    "RAY_max_direct_call_object_size": str(INLINE_OBJECT_BYTES),
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
}


def request_path_env(state_dir: str | Path, *, haproxy: bool = True,
                     throughput_optimized: bool = False,
                     free_ports: bool = False) -> dict[str, str]:
    """Environment for Ray Serve's HTTP request path (BENCHMARKS.md, "Gateway overhead").

    Set it before `ray.init`: Ray's workers inherit it. `haproxy`: HAProxy in front of the
    ingress replicas (direct ingress) instead of Serve's Python proxy, whose one process is
    the request-rate ceiling of a small machine; its config, admin socket and state files go
    under `state_dir` (Serve's default, /tmp/haproxy-serve, is shared by every Serve on the
    machine), and it holds at most `HAPROXY_MAXCONN` connections, with the client timeouts
    above; Serve starts it through graphs/haproxy_guard.py (request-header timeout, stats and
    metrics on 127.0.0.1, admin socket for this user only). Serve's per-request HTTP
    metrics from HAProxy (a log datagram per request, parsed by the HAProxyManager actor)
    are off: the ingress records its own per route and status. An operator's own value of
    any of these variables wins over ours. `throughput_optimized`:
    Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED (user code on the replica's event loop, gRPC
    between replicas, buffered request logs): any blocking call in an async method then
    stalls the replica's HTTP server. `free_ports`: HAProxy's stats and
    metrics ports on free ports (several gateways on one machine) instead of 8404 / 9101.

    Always: ``RAY_max_direct_call_object_size`` = `INLINE_OBJECT_BYTES` (Ray's default is
    100 KiB): an image a request hands to a model replica and the image it gets back (a
    640x480 RGBA cutout is 1.2 MB) travel inside the call instead of through the object
    store, which cost the raylet ~3 ms of CPU per image on 2 cores (BENCHMARKS.md,
    "Background removal"); larger objects (videos, big upscales) still go through the
    store. And (`REPLICA_LOOP_ENV`) each replica runs its user code on its own event loop
    (Serve's default: a second loop, in a thread of its own)."""
    env: dict[str, str] = {
        name: os.environ.get(name, value) for name, value in REPLICA_LOOP_ENV.items()}
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
        state.chmod(0o700)  # HAProxy's admin socket and config: this user only
        from graphs.haproxy_guard import write_launcher

        ours = {
            "RAY_SERVE_HAPROXY_MAXCONN": str(HAPROXY_MAXCONN),
            "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(HAPROXY_TIMEOUT_CLIENT_S),
            "PHOTOSTUDIO_HAPROXY_TIMEOUT_HTTP_REQUEST_S": str(HAPROXY_TIMEOUT_HTTP_REQUEST_S),
            "PHOTOSTUDIO_HAPROXY_STATS_HOST": LOCAL_HOST,
            "RAY_SERVE_HAPROXY_BINARY_PATH": str(write_launcher(state / "haproxy-guard")),
            # Serve's own per-request HTTP metrics in HAProxy mode: a syslog datagram per
            # request that the HAProxyManager actor parses in Python (~0.1 ms of CPU per
            # request on 2 cores). The ingress records the same per route and status itself
            # (photostudio_http_requests_total, _request_duration_seconds: the dashboard's)
            "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        }
        env.update({
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            # an operator's own value wins over ours
            **{name: os.environ.get(name, value) for name, value in ours.items()},
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
            # (Serve's default, /tmp/haproxy-serve/metrics.sock, is shared by every Serve on
            # the machine: with the metrics turned back on, each gateway keeps its own)
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(state / "metrics.sock"),
        })
        if free_ports:
            for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
                env[name] = str(free_port())
    if throughput_optimized:
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    return env


# Modules the deployments import when they start, and the extra that installs them: checked
# before Ray starts, so a plain `pip install -e .` says what to install instead of failing
# inside a replica ("Failed to update the deployments ['Matting']" + ModuleNotFoundError).
NEEDED_MODULES: dict[str, tuple[str, ...]] = {
    "tools": ("rembg", "onnxruntime", "cv2", "spandrel", "insightface"),
}


def missing_extras(find_spec=None) -> dict[str, list[str]]:
    """{extra: [missing modules]} for the modules the gateway's deployments need."""
    import importlib.util

    find_spec = find_spec or importlib.util.find_spec
    missing: dict[str, list[str]] = {}
    for extra, modules in NEEDED_MODULES.items():
        for module in modules:
            try:
                found = find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.setdefault(extra, []).append(module)
    return missing


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def banner(*, url: str, dashboard: str | None, token: str | None, logs: Path,
           verbose: bool) -> str:
    """The one block `photostudio serve` prints when the gateway is ready."""
    lines = ["", "Photo Studio Gateway is ready",
             f"  Studio         {url}/studio/",
             f"  API docs       {url}/docs",
             f"  Ray dashboard  {dashboard or 'off (--no-dashboard)'}"]
    if token:
        lines.append(f"  API key        {token}")
        lines.append("                 (created now: project default, every scope; shown only "
                     "once; more with `photostudio keys create`)")
    lines.append(f"  Logs           {logs}" + ("  (also streamed here: --verbose)" if verbose
                                               else "  (--verbose streams them here)"))
    lines += ["Press Ctrl-C to stop.", ""]
    return "\n".join(lines)


def _prebuild_zoo(profile: str) -> None:
    """Build the tiny models before the deployments ask for them, one line each."""
    if profile != "tiny":
        return
    from models import zoo

    for name in zoo.tiny_names():
        if not zoo.is_built(name):
            console.print(f"  building tiny model {name}…")
            zoo.ensure(name)


def _wait_deployed(serve, app_name: str, stop: threading.Event, timeout_s: float = 600) -> bool:
    """Print each deployment's state as it changes until the application runs; False if it
    failed to deploy (the reason printed) or Ctrl-C came first."""
    import time

    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while not stop.wait(0.5):
        app = serve.status().applications.get(app_name)
        if app is None:
            continue
        for name, dep in sorted(app.deployments.items()):
            state = str(getattr(dep.status, "value", dep.status))
            if seen.get(name) != state:
                seen[name] = state
                done = sum(1 for s in seen.values() if s == "HEALTHY")
                console.print(f"  [{done}/{len(app.deployments)}] {name}: {state.lower()}")
        status = str(getattr(app.status, "value", app.status))
        if status == "RUNNING":
            return True
        if status == "DEPLOY_FAILED" or time.monotonic() > deadline:
            console.print(f"[red bold]Deploying failed:[/] {app.message or status}")
            return False
    return False


class UsageError(ValueError):
    """A command line that cannot be run as given: the message says what to change."""


def builder_args(sets: list[str] | None = None, config: str | None = None) -> dict[str, Any]:
    """The builder args (`graphs.app.AppArgs` fields) that `photostudio serve` takes from
    `--config FILE` and `--set NAME=VALUE` (these win): FILE is YAML, either the args
    themselves or a Serve config (serve_config.yaml: the ``args`` of its application whose
    ``import_path`` is ``graphs.app:build_app``); each VALUE is read as YAML (``true``, ``4``,
    ``0.5``, ``[a, b]``, ``{k: v}``; anything else is a string). Names are checked later,
    against AppArgs (`app_args`)."""
    import yaml

    args: dict[str, Any] = {}
    if config:
        path = Path(config).expanduser()
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise UsageError(f"--config {config}: cannot read it ({exc.strerror or exc})") from exc
        except yaml.YAMLError as exc:
            raise UsageError(f"--config {config}: not YAML ({exc})") from exc
        if isinstance(data, dict) and "applications" in data:  # a Serve config file
            ours = [a for a in data.get("applications") or []
                    if isinstance(a, dict) and a.get("import_path") == "graphs.app:build_app"]
            if not ours:
                raise UsageError(f"--config {config}: a Serve config without an application "
                                 "whose import_path is graphs.app:build_app")
            data = ours[0].get("args") or {}
        if not isinstance(data, dict):
            raise UsageError(f"--config {config}: expected a mapping of builder args "
                             f"(name: value), got {type(data).__name__}")
        args.update(data)
    for item in sets or []:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise UsageError(f"--set takes NAME=VALUE (e.g. --set auto_tag=true), got {item!r}")
        try:
            args[name] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            args[name] = value  # not YAML: the text as it is
    return args


def app_args(extra: dict[str, Any], **flags: Any) -> Any:
    """`graphs.app.AppArgs` of `builder_args`' `extra` with the flags' values over them (a
    flag left unset, None, keeps `extra`'s). UsageError naming each bad arg, with the close
    names of an unknown one."""
    import difflib

    from pydantic import ValidationError

    from graphs.app import AppArgs

    merged = {**extra, **{k: v for k, v in flags.items() if v is not None}}
    try:
        return AppArgs(**merged)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]) or "args"
            if error["type"] == "extra_forbidden":
                close = difflib.get_close_matches(name, list(AppArgs.model_fields), n=3)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                problems.append(f"unknown builder arg {name!r}{hint}")
            else:
                problems.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
        raise UsageError("builder args: " + "; ".join(problems) + ". The names and types are "
                         "AppArgs' fields (graphs/app.py; README, \"Configuration\")") from exc


def _serve(ns: argparse.Namespace) -> int:
    from graphs.settings import Profile, Settings

    settings = Settings()
    try:  # --config / --set: checked against AppArgs below, before Ray starts
        extra = builder_args(ns.set, ns.config)
    except UsageError as exc:
        console.print(str(exc), style="red", markup=False, highlight=False)
        return 2
    # the flags win; a flag not given takes --config/--set's value, then the settings'
    profile = ns.profile or extra.pop("profile", None) or settings.profile
    if profile not in get_args(Profile):
        console.print(f"profile must be one of {', '.join(get_args(Profile))}, got {profile!r}",
                      style="red", markup=False, highlight=False)
        return 2
    data_dir = Path(ns.data_dir or extra.pop("data_dir", None)
                    or settings.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    extra_auth = extra.pop("auth_enabled", None)
    auth_enabled = ns.auth if ns.auth is not None else (
        extra_auth if isinstance(extra_auth, bool) else settings.auth_enabled)
    if not auth_enabled and profile == "production":
        console.print("[red]the production profile requires API-key auth; --no-auth (or "
                      "PHOTOSTUDIO_AUTH_ENABLED=false) is only for the tiny and local profiles")
        return 2
    missing = missing_extras()
    if missing:
        for extra, modules in missing.items():
            console.print(f"Missing modules {', '.join(modules)}: the gateway's deployments "
                          f"need the '{extra}' extra. Install it with\n"
                          f"    pip install -e '.[{extra}]'   (or `make install`)",
                          markup=False, highlight=False, soft_wrap=True, style="red")
        return 2
    token = None
    if auth_enabled:
        token = _bootstrap_key(settings, data_dir)
    else:
        console.print("[yellow bold]API-key auth is OFF[/] (--no-auth): anyone who can reach "
                      "the port can use the gateway")
    ray_env, ray_kwargs = local_ray_options(ns.ray_host or LOCAL_HOST)
    if profile != "production" and (ray_env or ns.address):
        # Ray 2.60 turns token auth on by default; a local single-user gateway whose Ray
        # listens on loopback only doesn't need it (a local Ray on another address keeps it).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray's unix sockets live under its temp dir and must stay under 108 characters:
    # "<temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store" adds up to 64.
    ray_tmp = data_dir / "ray"
    if len(str(ray_tmp)) > 40:
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
        for name, value in ray_env.items():  # read when Ray is imported: set before
            os.environ.setdefault(name, value)
        # Serve's HTTP servers drop unsafe X-Request-IDs and Serve's per-request hint headers
        # from clients (graphs/serve_proxy.py); read by Ray's processes: set before it starts
        from graphs.serve_proxy import ENV as SERVE_PROXY_ENV

        for name, value in SERVE_PROXY_ENV.items():
            os.environ.setdefault(name, value)

    import ray
    from ray import serve

    from graphs.app import build_app

    try:  # before Ray starts: a bad arg costs nothing
        args = app_args(extra, profile=profile, data_dir=str(data_dir),
                        generator_model=ns.model,
                        use_gpu=(ns.gpus or 0) > 0 or None,
                        auth_enabled=auth_enabled)
    except UsageError as exc:
        console.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        return 2

    # Logical CPUs, not cores: the graph's six deployments ask for ~5.5 CPUs between them, and
    # on a small machine they share the cores (the models mostly wait on each other anyway).
    init_kwargs: dict = {"_temp_dir": str(ray_tmp), "include_dashboard": ns.dashboard,
                         "num_cpus": max(8, os.cpu_count() or 1), **ray_kwargs}
    if ns.gpus is not None:
        init_kwargs["num_gpus"] = ns.gpus  # logical GPUs: lets fractions schedule anywhere
    if ns.address:
        init_kwargs = {"address": ns.address}
    where = f"connecting to {ns.address}" if ns.address else "local"
    # Ctrl-C from here on (Ray's start included) stops at the next step, then shuts down
    stop = threading.Event()

    def _on_signal(signum, _frame):
        console.print(f"[bold]Received {signal.Signals(signum).name}, shutting down…")
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    _prebuild_zoo(profile)
    if stop.is_set():
        console.print("[bold]Stopped.")
        return 0
    console.print(f"Starting Ray ({where})…")
    if not ns.verbose:
        # Ray's and the replicas' logs stay in their files (under Ray's temp dir, below
        # the data dir); --verbose streams them here as well
        for name in ("ray", "ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        context = ray.init(**init_kwargs, logging_level=logging.WARNING,
                           log_to_driver=ns.verbose)
    except Exception as exc:  # noqa: BLE001 - reported in one line, with where to look
        console.print(f"Ray did not start: {exc}\n  Its logs: {ray_tmp}/session_latest/logs"
                      + ("" if ns.verbose else "  (--verbose shows more)"),
                      markup=False, highlight=False, soft_wrap=True, style="red")
        if token:
            console.print(f"The API key created for this data dir: {token}", markup=False,
                          highlight=False, soft_wrap=True)
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):  # ours again, should Ray have set its own
        signal.signal(signum, _on_signal)
    dashboard = getattr(context, "dashboard_url", None)
    if dashboard and not dashboard.startswith("http"):
        dashboard = f"http://{dashboard}"
    logs = Path(ray_tmp) / "session_latest" / "logs"
    if ns.address:
        logs = Path("the Ray cluster's session logs (ray logs)")
    ok = False
    try:
        if stop.is_set():  # Ctrl-C while Ray started
            raise _Stopped
        serve.start(http_options=http_options(ns.host or settings.host,
                                              ns.port or settings.port))
        console.print(f"Deploying the gateway (profile {profile})…")
        # Serve's _run with _blocking=False returns once the deployment is submitted (the
        # public serve.run waits for it silently): the loop below shows each deployment's
        # progress instead.
        serve._run(build_app(args), name=APP_NAME, route_prefix="/", _blocking=False)
        ok = _wait_deployed(serve, APP_NAME, stop)
        if ok:
            url = f"http://{_display_host(ns.host or settings.host)}:{ns.port or settings.port}"
            console.print(banner(url=url, dashboard=dashboard if ns.dashboard else None,
                                 token=token, logs=logs, verbose=ns.verbose),
                          markup=False, highlight=False, soft_wrap=True)
            while not stop.wait(0.5):
                pass
        elif token:  # not lost with a failed start: it is the only copy
            console.print(f"The API key created for this data dir: {token}", markup=False,
                          highlight=False)
    except _Stopped:
        pass
    finally:
        _shutdown(serve, ray, local=not ns.address)
        console.print("[bold]Stopped.")
    rc = 0 if ok or stop.is_set() else 1
    # Everything is stopped; the interpreter's own exit after a Ray driver (finalizing Ray's
    # core worker and ~1,400 modules) took a further ~7 s here (loaded 2-core VM: Ctrl-C to
    # exit 8.4 s, of which ray.shutdown 1.4 s). Leave at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


APP_NAME = "photostudio"


class _Stopped(Exception):
    """Ctrl-C came before the gateway was deployed."""


def _shutdown(serve, ray, *, local: bool) -> None:
    """Stop within seconds. A local Ray is ours: ray.shutdown() ends its processes (Serve's
    own shutdown waits up to 30 s for its controller, then warns "Controller failed to shut
    down within 30.0s"). On a cluster we joined, only our application is deleted."""
    try:
        if not local:
            serve.delete(APP_NAME)
    finally:
        ray.shutdown()
        config = os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC")
        if config:
            _stop_leftover_haproxy(Path(config).parent)


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


def _bootstrap_key(settings, data_dir: Path) -> str | None:
    """First start with auth on and no key at all: make one (project `default`, every scope)
    and return it (the ready banner prints it once), so a newcomer can call the gateway at
    once."""
    from storage.records import RecordStore

    url = settings.database_url or f"sqlite:///{data_dir / 'photostudio.db'}"
    records = RecordStore(url)
    try:
        if records.list_api_keys():
            console.print("API keys: use one of yours (`photostudio keys list`; new ones with "
                          "`photostudio keys create`)")
            return None
        key, token = records.create_api_key(project="default", name="bootstrap (first start)",
                                            scopes=["generate", "tools", "chat", "admin"])
    finally:
        records.close()
    console.print(f"Created the first API key ({key.id}); it is shown when the gateway is "
                  "ready.", soft_wrap=True)
    return token


def _gateway_settings():
    from graphs.settings import Settings

    return Settings()


def _zoo_build(ns: argparse.Namespace) -> int:
    from models import zoo

    names = ns.names or zoo.tiny_names()
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
    p.add_argument("--ray-host", default=None,
                   help="IP address of this machine that Ray's own servers (GCS, raylet, "
                        "workers, agents) listen on; default 127.0.0.1: this machine only. "
                        "Another address keeps Ray's token auth on (README, \"Ports that "
                        "must stay private\")")
    p.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True,
                   help="start the Ray dashboard (http://127.0.0.1:8265)")
    p.add_argument("--auth", action=argparse.BooleanOptionalAction, default=None,
                   help="API keys (default: on; --no-auth only for tiny/local profiles); with "
                        "auth on and no key yet, the first start creates one and prints it")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="builder args from a YAML file: the args themselves (name: value) or "
                        "a Serve config such as serve_config.yaml (its graphs.app:build_app "
                        "application's args)")
    p.add_argument("--set", action="append", default=None, metavar="NAME=VALUE",
                   help="one builder arg (graphs/app.py AppArgs; README, \"Configuration\"), "
                        "VALUE read as YAML, e.g. --set auto_tag=true --set max_batch_size=4; "
                        "repeatable; wins over --config; the flags above win over both")
    p.add_argument("--verbose", action="store_true",
                   help="stream Ray's and the replicas' logs here too (they always go to files "
                        "under the data dir's ray/ folder)")
    p.set_defaults(func=_serve)

    z = sub.add_parser("zoo", help="tiny model zoo")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zb = zsub.add_parser("build", help="build tiny models (all by default)")
    zb.add_argument("names", nargs="*")
    zb.add_argument("--zoo-dir", default=None)
    zb.set_defaults(func=_zoo_build)

    # db upgrade|check, storage cleanup, keys; the gateway's settings (keys revoke announces
    # on its Redis)
    storage_cli.add_subcommands(sub, settings_factory=_gateway_settings)
    provider_cli.add_subcommands(sub)  # providers add|list|remove|test

    ns = parser.parse_args(argv)
    quiet = ns.command == "serve" and not ns.verbose  # the serve banner stays readable
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration step
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
