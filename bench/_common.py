"""Shared bench helpers: a local Ray + the tiny-profile gateway, and a load driver."""

from __future__ import annotations

import json
import os
import platform
import signal
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


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes `pids` have spent so far (gone ones: nothing)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def replica_pids(root: int | None = None) -> dict[str, list[int]]:
    """Processes of the local Ray this driver (or process `root`) started, by role: each
    Serve deployment's replicas (by deployment name), ``ProxyActor``, ``ServeController``,
    ``haproxy``, ``raylet`` and ``gcs_server``."""
    import psutil

    found: dict[str, list[int]] = {}
    for proc in psutil.Process(root).children(recursive=True):
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
        elif proc.name() in ("raylet", "gcs_server"):  # object transfers, scheduling
            role = proc.name()
        if role:
            found.setdefault(role, []).append(proc.pid)
    return found


# --- gateways in child processes (several side by side, measured interleaved) ---------------

class Child:
    """A bench server in a subprocess. `Child.gateway(...)`: the tiny-profile gateway on its
    own local Ray (ready when it prints its URL); otherwise any command serving `url`
    (ready when GET {url}/healthz answers 200). `stop()` closes its stdin: a gateway then
    shuts Ray down."""

    def __init__(self, name: str, cmd: list[str], *, url: str | None = None, nice: int = 0,
                 env: dict[str, str] | None = None, log: Path | None = None,
                 ready_path: str = "/healthz", interrupt: bool = False):
        """`nice`: the child's niceness (a plain server compared with our replicas runs at
        WORKER_NICENESS, as they do). `env`: added to this environment. `log`: the child's
        output goes there (a chatty server must not fill an unread pipe). `ready_path`: what
        must answer 200 before it counts as ready. `interrupt`: stop it with SIGINT (Ctrl-C,
        as a person stops `photostudio serve`) instead of closing its stdin."""
        self.name = name
        self.log = log
        out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=out,
                                     stderr=subprocess.STDOUT if log else None, text=True,
                                     env={**os.environ, **(env or {})},
                                     start_new_session=interrupt,
                                     preexec_fn=(lambda: os.nice(nice)) if nice else None)
        self.url = url
        self.ready_path = ready_path
        self.interrupt = interrupt
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
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    self.pids = replica_pids(self.proc.pid)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: not ready in {timeout}s"
                           + (f" (its log: {self.log})" if self.log else ""))

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.interrupt:
                    os.killpg(self.proc.pid, signal.SIGINT)
                else:
                    self.proc.stdin.close()
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                if self.interrupt:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                else:
                    self.proc.terminate()
                self.proc.wait(timeout=30)


def shipped_gateway(name: str = "ours", *, env: dict[str, str] | None = None,
                    key_requests_per_minute: int = 100_000_000) -> tuple[Child, str]:
    """The product as a person starts it: `photostudio serve --profile tiny` (API keys on,
    the default middleware and request path) in its own data dir, ready when /readyz says so,
    and a key made with `photostudio keys create` (a load test's own limit, as a user would
    ask for one). Returns (the child, the key's token); stop the child with `.stop()`."""
    data = Path(tempfile.mkdtemp(prefix="psship", dir="/tmp"))
    port = free_port()
    cli = [sys.executable, "-m", "graphs.cli"]
    child = Child(name, [*cli, "serve", "--profile", "tiny", "--port", str(port),
                         "--data-dir", str(data)],
                  url=f"http://127.0.0.1:{port}", env={**(env or {}),
                                                        "PHOTOSTUDIO_DATA_DIR": str(data)},
                  log=data / "serve.log", ready_path="/readyz", interrupt=True)
    child.wait_ready(timeout=600)
    made = subprocess.run([*cli, "keys", "create", "--project", "default", "--name", "bench",
                           "--requests-per-minute", str(key_requests_per_minute),
                           "--images-per-day", "100000000"], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PHOTOSTUDIO_DATA_DIR": str(data)})
    if made.returncode != 0:
        child.stop()
        raise RuntimeError(f"photostudio keys create failed: {made.stderr[-500:]}")
    return child, made.stdout.strip().splitlines()[-1]


def bare_serve_gateway(name: str = "bare Serve", *, env: dict[str, str] | None = None
                       ) -> Child:
    """The reference the issue names: a bare FastAPI app (the same GET /v1/styles and POST
    /v1/chat bodies as ours, no middleware, auth or records) deployed in Ray Serve with the
    request-path settings `photostudio serve` uses."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="psbare", dir="/tmp")) / "serve.log"
    child = Child(name, [sys.executable, "-m", "bench._common", "bare", str(port)],
                  url=f"http://127.0.0.1:{port}", env=env, log=log, interrupt=True)
    child.wait_ready(timeout=300)
    return child


def reference_app():
    """The bare routes both references serve: our styles list and the chat answer the rules
    give a `general` message (no embeddings, no session)."""
    from fastapi import Body, FastAPI

    from graphs.chat import HELP_TEXT
    from router.cascade import Cascade
    from router.styles import list_styles

    cascade = Cascade(classifier=None)
    app = FastAPI()

    @app.get("/v1/styles")
    async def styles() -> dict:
        return {"data": list_styles()}

    @app.post("/v1/chat")
    async def chat(body: dict = Body(...)) -> dict:
        plan = cascade.plan_fast(str(body["message"]))
        return {"message": HELP_TEXT, "type": "text",
                "data": {"plan": plan.model_dump(mode="json")}}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def _bare_child(port: int) -> None:
    """(In the child.) `photostudio serve`'s Ray and Serve settings (graphs/cli.py) around the
    bare reference app; serves until SIGINT."""
    import threading

    from graphs.cli import (
        LOCAL_HOST,
        http_options,
        local_ray_options,
        request_path_env,
    )
    from graphs.serve_proxy import ENV as SERVE_PROXY_ENV

    state = tempfile.mkdtemp(prefix="psbr", dir="/tmp")
    ray_env, ray_kwargs = local_ray_options(LOCAL_HOST)
    for name, value in {**request_path_env(state, free_ports=True), **ray_env,
                        **SERVE_PROXY_ENV}.items():
        os.environ.setdefault(name, value)
    import ray
    from ray import serve

    ray.init(_temp_dir=state, num_cpus=max(8, os.cpu_count() or 1), **ray_kwargs)
    serve.start(http_options=http_options(LOCAL_HOST, port))
    app = reference_app()

    # the same replica settings as our Ingress in the tiny profile (graphs/app.py)
    @serve.deployment(max_ongoing_requests=200)
    @serve.ingress(app)
    class Bare:
        pass

    serve.run(Bare.bind(), name="bare", route_prefix="/")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    from ray.serve.context import _get_global_client

    _get_global_client().shutdown(timeout_s=5)
    ray.shutdown()


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
    if len(sys.argv) == 3 and sys.argv[1] == "bare":
        _bare_child(int(sys.argv[2]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "serve":
        _serve_child(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    else:
        sys.exit("usage: python -m bench._common serve SETTINGS [APP_ARGS_JSON] | bare PORT")
