"""Shared fixtures: one local Ray cluster per test run, the production graph deployed once.

- `zoo_dir`: tiny models, built once and cached across runs (``$PHOTOSTUDIO_ZOO_DIR`` or
  ``~/.cache/photostudio/zoo``).
- `ray_cluster`: a local Ray with ONE logical GPU (GPU-fraction scheduling on a CPU machine).
- `redis_url`: the local Redis (started when its port is closed, as `.ci/run` does).
- `gateway`: `serve_config.yaml` (production graph) deployed as `serve deploy` would, with
  tiny-model overrides, reachable over real HTTP through the Serve proxy; auth is on (as in
  production): `gateway.api_key` / `gateway.headers` carry a key of project `default`.
  Every HTTP test shares it; a test that must break an app (kill a replica) or needs another
  configuration uses an app of its own (tests/graphs/conftest.py `local_gateway`).
- `served`: `photostudio serve` in a subprocess, once for the CLI and front-door tests.
- `wait_until` / `async_wait_until`: poll a condition with a deadline (never a fixed sleep).
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from graphs.cli import REPLICA_LOOP_ENV, free_port
from graphs.serve_proxy import ENV as SERVE_PROXY_ENV
from tests.browser import artifacts_dir, browser, page  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]

# No model hub here: make any accidental hub access fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# As `photostudio serve` and cluster.yaml: Serve's HTTP servers drop unsafe X-Request-IDs and
# Serve's per-request hint headers from clients (graphs/serve_proxy.py). Before Ray starts.
for _name, _value in SERVE_PROXY_ENV.items():
    os.environ.setdefault(_name, _value)
# As `photostudio serve` and cluster.yaml: one event loop per replica (user code and handle
# router on the replica's own loop), images inline in Ray calls (graphs/cli.py).
for _name, _value in REPLICA_LOOP_ENV.items():
    os.environ.setdefault(_name, _value)


def wait_until(predicate, *, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


async def async_wait_until(predicate, *, timeout: float, interval: float = 0.01,
                           what: str = "condition"):
    """`wait_until` inside an event loop: polls `predicate` (sync) without blocking the
    loop, so the tasks it waits on keep running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    from models import zoo

    path = Path(os.environ.get("PHOTOSTUDIO_ZOO_DIR") or zoo.default_zoo_dir())
    os.environ["PHOTOSTUDIO_ZOO_DIR"] = str(path)  # replicas inherit it
    return path


REDIS_PORT = 6379


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis (per-key rate limits are shared through it); started like .ci/run
    does when nothing listens on its port."""
    if not _port_open(REDIS_PORT):
        if shutil.which("redis-server") is None:
            pytest.fail("Redis is not running on 127.0.0.1:6379 and redis-server is not "
                        "installed: install redis-server or start a Redis there")
        workdir = tempfile.mkdtemp(prefix="psredis")
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1",
                        "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
                        "--dir", workdir, "--logfile", f"{workdir}/redis.log"], check=True)
        wait_until(lambda: _port_open(REDIS_PORT), timeout=20, what="Redis to listen")
    return f"redis://127.0.0.1:{REDIS_PORT}/0"


@pytest.fixture(scope="session")
def ray_cluster(zoo_dir):
    import ray
    from ray import serve

    temp_dir = tempfile.mkdtemp(prefix="psray", dir="/tmp")  # short: Ray's socket paths
    # Logical CPUs: the production graph (~10 with Video and Vision) and up to two more apps
    ray.init(num_cpus=32, num_gpus=1, include_dashboard=False, _temp_dir=temp_dir,
             logging_level="WARNING", log_to_driver=False)
    # Serve starts here, once, on a free port: any test's serve.run then shares this proxy.
    ray.http_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": ray.http_port})
    yield ray

    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass
class Gateway:
    base_url: str
    app_name: str
    config: dict
    data_dir: Path
    api_key: str = ""  # project `default`, every scope (admin included)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'photostudio.db'}"

    def create_key(self, **kwargs) -> str:
        """A new key in the gateway's record store (what `photostudio keys create` does)."""
        from storage.records import RecordStore

        records = RecordStore(self.database_url)
        try:
            kwargs.setdefault("project", "default")
            kwargs.setdefault("name", "test")
            if records.get_project(project_id=kwargs["project"]) is None:
                records.create_project(project_id=kwargs["project"])
            return records.create_api_key(**kwargs)[1]
        finally:
            records.close()

    def revoke_key(self, token: str) -> bool:
        """Revoke a key as `photostudio keys revoke` does: in the record store, announced on
        the gateway's Redis so every replica drops it from its key cache at once."""
        from storage.key_events import revoke_api_key
        from storage.records import RecordStore

        records = RecordStore(self.database_url)
        try:
            key_id = records.authenticate_api_key(token=token).id
            events = self.config["applications"][0]["args"].get("rate_limit_storage")
            return revoke_api_key(records, key_id=key_id, events_url=events)
        finally:
            records.close()

    def handle(self, deployment: str):
        from ray import serve

        return serve.get_deployment_handle(deployment, app_name=self.app_name)


def production_config(*, data_dir: Path, zoo_dir: Path, redis_url: str | None = None) -> dict:
    """serve_config.yaml with tiny-model overrides (and the test Redis)."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config = copy.deepcopy(config)
    config.pop("http_options", None)  # the test cluster's proxy listens on a free port
    app = config["applications"][0]
    from graphs.app import tiny_overrides

    app["args"].update(**tiny_overrides(), data_dir=str(data_dir), zoo_dir=str(zoo_dir))
    if redis_url:
        app["args"]["rate_limit_storage"] = redis_url
    return config


@pytest.fixture(scope="session")
def gateway(ray_cluster, zoo_dir, redis_url, tmp_path_factory) -> Gateway:
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    port = ray_cluster.http_port
    client = _get_global_client()
    data_dir = tmp_path_factory.mktemp("gateway-data")
    config = production_config(data_dir=data_dir, zoo_dir=zoo_dir, redis_url=redis_url)
    client.deploy_apps(ServeDeploySchema.model_validate(config)
                       if hasattr(ServeDeploySchema, "model_validate")
                       else ServeDeploySchema.parse_obj(config))
    app_name = config["applications"][0]["name"]

    def running():
        status = serve.status().applications.get(app_name)
        if status and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"deploy failed: {status.message}")
        return status is not None and status.status == "RUNNING"

    # 600 s: eight deployments start at once; on a loaded 2-core machine that took 320 s
    wait_until(running, timeout=600, interval=0.5, what="the production graph to be RUNNING")
    base_url = f"http://127.0.0.1:{port}"
    import httpx

    def routed():
        try:
            return httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(routed, timeout=60, what="the proxy to route /healthz")
    gateway = Gateway(base_url=base_url, app_name=app_name, config=config, data_dir=data_dir)
    # the suite's own key: every scope, and limits no test run reaches (tests of the limits
    # make keys of their own)
    gateway.api_key = gateway.create_key(scopes=["generate", "tools", "chat", "admin"],
                                         requests_per_minute=1_000_000,
                                         images_per_day=1_000_000)
    return gateway


@pytest.fixture
def http(gateway):
    import httpx

    with httpx.Client(base_url=gateway.base_url, timeout=120, headers=gateway.headers) as client:
        yield client


@dataclass
class Served:
    """`photostudio serve` running in a subprocess: its process, port and output so far."""

    proc: subprocess.Popen
    port: int
    lines: list[str]
    # what it was given with --set (tests/test_cli.py checks that it took effect)
    builder_args: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="session")
def served(tmp_path_factory, zoo_dir) -> Served:
    """`photostudio serve --profile tiny` as a newcomer starts it: auth on (a fresh data dir:
    the first start makes a key and prints it), HAProxy in front, its own Ray, the shipped
    settings (not this machine's RAY_SERVE_* / PHOTOSTUDIO_HAPROXY_* overrides). Started
    once for the CLI and the front-door tests (a start and a stop take ~1.5 min on 2 cores),
    with one builder arg through ``--set`` (`Served.builder_args`; checked in test_cli).
    The teardown checks the last part of the CLI's promise: Ctrl-C stops it cleanly (exit
    0, "Stopped."); a failure there is reported as an error of the last test that used it."""
    import httpx

    port = free_port()
    env = {**os.environ, "PHOTOSTUDIO_ZOO_DIR": str(zoo_dir)}
    for name in list(env):
        if name.startswith(("RAY_SERVE_", "PHOTOSTUDIO_HAPROXY_")) or name in (
                "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
            env.pop(name)
    builder_args = {"max_image_pixels": 256 * 256}  # 64x64 generations still fit
    proc = subprocess.Popen(
        [sys.executable, "-m", "graphs.cli", "serve", "--profile", "tiny", "--port", str(port),
         "--data-dir", str(tmp_path_factory.mktemp("served") / "d"), "--no-dashboard",
         *[f"--set={name}={value}" for name, value in builder_args.items()]],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    served = Served(proc=proc, port=port, lines=lines, builder_args=builder_args)
    stopped_in = None
    try:
        def up():
            try:
                return httpx.get(f"{served.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                assert proc.poll() is None, served.output
                return False

        wait_until(up, timeout=240, interval=1, what="photostudio serve to answer")
        # the ready banner follows once every deployment is healthy
        wait_until(lambda: "Photo Studio Gateway is ready" in served.output, timeout=240,
                   interval=0.5, what="photostudio serve's ready banner")
        yield served
        proc.send_signal(signal.SIGINT)
        began = time.monotonic()
        try:
            proc.wait(timeout=120)
            stopped_in = time.monotonic() - began
        except subprocess.TimeoutExpired:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    reader.join(timeout=10)
    assert stopped_in is not None, "photostudio serve still ran 120 s after Ctrl-C:\n" + \
        served.output[-3000:]
    assert proc.returncode == 0 and "Stopped." in served.output, served.output[-3000:]
    # Ctrl-C ends it within 10 s (was ~35 s: Serve's controller shutdown timing out)
    assert stopped_in <= 10, f"stopped {stopped_in:.1f} s after Ctrl-C"
    assert "Controller failed to shut down" not in served.output
