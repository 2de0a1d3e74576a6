"""Shared bench helpers: a local Ray + the tiny-profile gateway, and a load driver."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from graphs.cli import free_port  # noqa: E402  (re-exported for the bench scripts)

# Ray Serve request-path settings a bench gateway can run with (graphs.cli.request_path_env).
SETTINGS = {
    # what `photostudio serve` did before issue #8: Serve's Python proxy, access log on
    "default": {"haproxy": False, "throughput_optimized": False, "access_log": True},
    # HAProxy (direct ingress), access log off: `photostudio serve`'s default since issue #8
    "haproxy": {"haproxy": True, "throughput_optimized": False, "access_log": False},
    # + RAY_SERVE_THROUGHPUT_OPTIMIZED (user code on the replica's loop, gRPC handles)
    "tuned": {"haproxy": True, "throughput_optimized": True, "access_log": False},
}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def machine() -> str:
    return f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()}), " \
           f"{time.strftime('%Y-%m-%d')}"


def client_connector():
    """The benches' aiohttp connector: no connection limit, and idle keep-alive connections
    dropped after 2 s. The servers close theirs after 5 s (uvicorn's default, which the
    plain FastAPI app and rembg's server use) or Serve's `keep_alive_timeout_s`; a client
    that keeps one longer can send a POST on a connection the server is closing at that
    moment and get `ServerDisconnectedError` (aiohttp retries only idempotent requests)."""
    import aiohttp

    return aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0)


WORKER_NICENESS = int(os.environ.get("RAY_worker_niceness", "15"))


def match_worker_priority() -> int:
    """Lower this (load-generating) process to the CPU priority of Ray's workers, which Ray
    starts at niceness 15 (RAY_worker_niceness) so its own daemons stay responsive. A client
    left at 0 on the same few cores takes the CPU first and starves the replicas it measures;
    a real client runs elsewhere. Call it after the gateway started (Ray's daemons, forked
    from this process, keep 0). Returns the niceness now."""
    return os.nice(max(0, WORKER_NICENESS - os.nice(0)))


@contextmanager
def gateway(port: int | None = None, *, serve_env: dict[str, str] | None = None,
            access_log: bool = False, **app_args):
    """Start a local Ray, deploy the tiny profile; yield the base URL.

    `port`: the HTTP port (default: a free one). `serve_env`: environment for Ray Serve's
    request path (e.g. `graphs.cli.request_path_env()`), set before Ray starts so every
    worker inherits it. `access_log`: Serve's per-request access log (off: logs quiet)."""
    tmp = tempfile.mkdtemp(prefix="psbench", dir="/tmp")
    os.environ.update(serve_env or {})
    import ray
    from ray import serve

    from graphs.app import AppArgs, build_app

    port = port or free_port()
    ray.init(num_cpus=8, include_dashboard=False, _temp_dir=tmp, logging_level="ERROR",
             log_to_driver=False)
    quiet = {"log_level": "INFO" if access_log else "WARNING",
             "enable_access_log": access_log}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
    if "auth_enabled" in AppArgs.model_fields:  # API keys: off unless a bench asks for them
        app_args.setdefault("auth_enabled", False)
    args = AppArgs(profile="tiny", data_dir=f"{tmp}/data", **app_args)
    serve.run(build_app(args), name="bench", route_prefix="/", logging_config=quiet)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        # Serve's graceful shutdown waits up to 30 s for HTTP draining; a bench has nothing
        # to drain, and ray.shutdown() then stops every process anyway.
        from ray.serve.context import _get_global_client

        _get_global_client().shutdown(timeout_s=5)
        ray.shutdown()


def drive(call: Callable[[int], object], *, requests: int, concurrency: int
          ) -> tuple[float, list[float]]:
    """Run `call(i)` for i in range(requests) with `concurrency` threads; return
    (requests/s, per-request latencies)."""
    latencies: list[float] = []

    def timed(i: int):
        t = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(timed, range(requests)))
    return requests / (time.perf_counter() - started), latencies


def summary(latencies: list[float]) -> str:
    return (f"p50 {statistics.median(latencies) * 1e3:.1f} ms, "
            f"p99 {pct(latencies, 99) * 1e3:.1f} ms")


def replica_pids() -> dict[str, list[int]]:
    """Processes of the local Ray this driver started, by role: each Serve deployment's
    replicas (by deployment name), ``ProxyActor``, ``ServeController`` and ``haproxy``."""
    import psutil

    found: dict[str, list[int]] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline()) or proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        role = None
        if "ServeReplica:" in title:
            role = title.split("ServeReplica:", 1)[1].split()[0].split(":")[-1]
        elif "ray::ProxyActor" in title or "ray::ServeController" in title:
            role = title.split("ray::", 1)[1].split()[0]
        elif "haproxy" in proc.name().lower():
            role = "haproxy"
        if role:
            found.setdefault(role, []).append(proc.pid)
    return found


# --- gateways in child processes (several side by side, measured interleaved) ---------------

class Child:
    """A bench server in a subprocess. `Child.gateway(...)`: the tiny-profile gateway on its
    own local Ray (ready when it prints its URL); otherwise any command serving `url`
    (ready when GET {url}/healthz answers 200). `stop()` closes its stdin: a gateway then
    shuts Ray down."""

    def __init__(self, name: str, cmd: list[str], *, url: str | None = None, nice: int = 0):
        """`nice`: the child's niceness (a plain server compared with our replicas runs at
        WORKER_NICENESS, as they do)."""
        self.name = name
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     preexec_fn=(lambda: os.nice(nice)) if nice else None)
        self.url = url
        self.pids: dict[str, list[int]] = {}

    @classmethod
    def gateway(cls, name: str, settings: str = "tuned", **app_args) -> Child:
        """`settings`: a key of SETTINGS; `app_args`: graphs.app.AppArgs overrides."""
        if settings not in SETTINGS:
            raise ValueError(f"settings must be one of {list(SETTINGS)}, got {settings!r}")
        return cls(name, [sys.executable, "-m", "bench._common", "serve", settings,
                          json.dumps(app_args)])

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        if self.url is None:  # a gateway prints its URL and pids when it is ready
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name}: the gateway did not start")
            info = json.loads(line)
            self.url, self.pids = info["url"], info["pids"]
            return
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError(f"{self.name}: not ready in {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(timeout=30)


def _serve_child(settings: str, app_args: dict) -> None:
    """(In the child.) Start Ray + the tiny gateway; print one JSON line (url, pids), then
    serve until stdin closes."""
    from graphs.cli import request_path_env

    opts = SETTINGS[settings]
    state = tempfile.mkdtemp(prefix="psgw", dir="/tmp")
    env = request_path_env(state, haproxy=opts["haproxy"],
                           throughput_optimized=opts["throughput_optimized"], free_ports=True)
    if not opts["haproxy"]:
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
    with gateway(serve_env=env, access_log=opts["access_log"], **app_args) as base:
        import httpx

        deadline = time.monotonic() + 120
        while True:  # HAProxy picks up the ingress replica a moment after serve.run returns
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base}/healthz never answered")
            time.sleep(0.5)
        print(json.dumps({"url": base, "pids": replica_pids()}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        _serve_child(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    else:
        sys.exit("usage: python -m bench._common serve SETTINGS [APP_ARGS_JSON]")
