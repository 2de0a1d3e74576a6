"""A simulated multi-node Ray cluster on this one machine, for tests/cluster/ and
bench/cluster.py: a head node with no GPU and two worker nodes with one logical GPU each
(custom resources ``worker_a`` / ``worker_b`` tell them apart), each its own raylet started
with ``ray start --block`` (so the processes of a node are that command's descendants, and
only those are ever stopped: never ``ray stop``, which would end other people's clusters on
the same machine). Every port is a free one (never 6379/5432), the temp dir is our own.

The driver never joins the cluster (a pytest process may already be connected to the suite's
own Ray): everything goes through the head's dashboard HTTP API, as `serve deploy` and the
dashboard's Serve page do — ``PUT /api/serve/applications/`` to deploy,
``GET /api/serve/applications/`` for Serve's own status (each replica's ``node_id`` and
state), ``GET /nodes?view=summary`` for the nodes and their resources.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from graphs.cli import free_port
from graphs.serve_proxy import ENV as SERVE_PROXY_ENV

HOST = "127.0.0.1"
# Ray's CLI, patient with a slow GCS (bench/_ray_start.py)
RAY = [sys.executable, "-m", "bench._ray_start"]
WORKER_RESOURCES = ("worker_a", "worker_b")


def _wait(predicate: Callable[[], Any], *, timeout: float, what: str,
          interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class NodeStartError(RuntimeError):
    pass


@dataclass
class SimNode:
    name: str  # "head", "worker_a", "worker_b"
    proc: subprocess.Popen  # `ray start --block`
    resources: dict[str, float]
    http_port: int = 0  # its Serve proxy's
    node_id: str = ""

    def raylet(self) -> psutil.Process | None:
        for child in self._descendants():
            try:
                if child.name() == "raylet":
                    return child
            except psutil.NoSuchProcess:
                continue
        return None

    def _descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill_raylet(self) -> int:
        """SIGKILL this node's raylet (what a machine that vanishes looks like to the rest of
        the cluster: its heartbeats stop); returns its pid."""
        raylet = self.raylet()
        if raylet is None:
            raise RuntimeError(f"{self.name} has no raylet running")
        raylet.kill()
        return raylet.pid

    def stop(self) -> None:
        """End this node's processes: `ray start --block`'s descendants (raylet, workers,
        agents) and the command itself; nothing else."""
        procs = self._descendants()
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class SimCluster:
    temp_dir: Path
    gcs_port: int
    dashboard_port: int
    http_port: int
    env: dict[str, str]
    nodes: dict[str, SimNode] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    # -- starting and stopping -------------------------------------------------------------

    @classmethod
    def start(cls, *, head_cpus: int = 4, worker_cpus: int = 10,
              extra_env: dict[str, str] | None = None) -> SimCluster:
        # worker_cpus (logical): one surviving worker must hold every GPU deployment's
        # replica after the other is lost (Generator 2 + Video 2 + Matting, FaceSwap,
        # Upscaler, Vision 1 each = 8 CPUs in serve_config.yaml)
        temp_dir = Path(tempfile.mkdtemp(prefix="psrc", dir="/tmp"))  # short: socket paths
        env = {**os.environ, **SERVE_PROXY_ENV, **(extra_env or {}),
               "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
               # several nodes on one machine: Ray refuses a second node with this at 0
               # (graphs/cli.py's loopback switch), so each node takes the machine's address
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
        env.pop("RAY_ADDRESS", None)
        # the replicas import this tree (a worktree's, not only the installed package)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p)
        cluster = cls(temp_dir=temp_dir, gcs_port=free_port(), dashboard_port=free_port(),
                      http_port=free_port(), env=env)
        try:
            cluster._start_node("head", head=True, num_cpus=head_cpus, num_gpus=0,
                                resources={"head": 1})
            for name in WORKER_RESOURCES:
                cluster._start_node(name, head=False, num_cpus=worker_cpus, num_gpus=1,
                                    resources={name: 1})
        except BaseException:
            cluster.stop()
            raise
        atexit.register(cluster.stop)  # an interrupted run leaves no node behind
        return cluster

    def _start_node(self, name: str, *, head: bool, num_cpus: int, num_gpus: int,
                    resources: dict[str, float], attempts: int = 3) -> None:
        """Start one node; `ray start` gives a raylet 30 s (hard-coded in Ray) to register
        with the GCS, which a loaded 2-core machine can miss: then its processes are ended
        and it is started again (the head on fresh ports)."""
        for attempt in range(attempts):
            try:
                return self._start_node_once(name, head=head, num_cpus=num_cpus,
                                             num_gpus=num_gpus, resources=resources)
            except NodeStartError:
                if attempt + 1 == attempts:
                    raise
                self.nodes.pop(name).stop()
                if head:
                    self._sweep()
                    self.gcs_port, self.dashboard_port = free_port(), free_port()

    def _start_node_once(self, name: str, *, head: bool, num_cpus: int, num_gpus: int,
                         resources: dict[str, float]) -> None:
        ports = ["--node-ip-address", HOST, "--node-manager-port", str(free_port()),
                 "--object-manager-port", str(free_port()),
                 "--dashboard-agent-listen-port", str(free_port()),
                 "--dashboard-agent-grpc-port", str(free_port()),
                 "--runtime-env-agent-port", str(free_port()),
                 "--metrics-export-port", str(free_port()),
                 "--min-worker-port", "0", "--max-worker-port", "0"]
        if head:
            where = ["--head", "--port", str(self.gcs_port), "--temp-dir", str(self.temp_dir),
                     "--include-dashboard", "true", "--dashboard-host", HOST,
                     "--dashboard-port", str(self.dashboard_port),
                     "--ray-client-server-port", str(free_port())]
        else:
            where = ["--address", self.address]
        cmd = [*RAY, "start", "--block", *where, *ports, "--num-cpus", str(num_cpus),
               "--num-gpus", str(num_gpus), "--resources", json.dumps(resources),
               "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats"]
        env, http_port = self.env, self.http_port
        if not head:
            # each node's proxy on a port of its own (Serve's per-worker override; on real
            # machines every proxy takes http_options.port): clients here go to the head's,
            # so losing a worker cuts no client connection, only its replicas
            http_port = free_port()
            env = {**env, "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(http_port),
                   "RAY_SERVE_WORKER_PROXY_GRPC_PORT": str(free_port())}
        log = open(self.temp_dir / f"start-{name}.log", "w")  # noqa: SIM115 (kept by Popen)
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        node = SimNode(name=name, proc=proc, resources=dict(resources, GPU=num_gpus),
                       http_port=http_port)
        self.nodes[name] = node

        def alive():
            if proc.poll() is not None:
                raise NodeStartError(f"ray start of {name} exited {proc.returncode}: "
                                   + (self.temp_dir / f"start-{name}.log").read_text()[-3000:])
            if head and not self._dashboard_up():
                return None
            for info in self.alive_nodes():
                if info["resources_total"].get(name):
                    return info["node_id"]
            return None

        # slow on a loaded 2-core machine (GCS start-up alone took over a minute at load 90)
        node.node_id = _wait(alive, timeout=600, interval=1, what=f"node {name} alive")

    def stop(self) -> None:
        while self.nodes:
            self.nodes.popitem()[1].stop()
        self._sweep()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _sweep(self) -> None:
        """Kill what is left of this cluster's processes whose `ray start` already exited
        (a node that failed to start leaves its GCS/raylet orphaned): exactly the processes
        whose command line names this cluster's own temp dir (a fresh mkdtemp path) or its
        GCS address."""
        marks = (str(self.temp_dir), f"{HOST}:{self.gcs_port}")
        me = os.getpid()
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if p.info["pid"] != me and any(m in cmd for m in marks):
                    p.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue

    # -- the head's HTTP API ---------------------------------------------------------------

    def _dashboard_up(self) -> bool:
        try:
            return httpx.get(f"{self.dashboard}/api/version", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def nodes_view(self) -> list[dict]:
        r = httpx.get(f"{self.dashboard}/api/v0/nodes", params={"limit": 100, "detail": 1},
                      timeout=30)
        r.raise_for_status()
        return r.json()["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        try:
            return [n for n in self.nodes_view() if n["state"] == "ALIVE"]
        except (httpx.HTTPError, KeyError):
            return []

    def node_name(self, node_id: str) -> str:
        for name, node in self.nodes.items():
            if node.node_id == node_id:
                return name
        return f"unknown:{node_id[:8]}"

    def deploy(self, config: dict) -> None:
        """What `serve deploy` does: PUT the config to the head's Serve REST API."""
        try:
            r = httpx.put(f"{self.dashboard}/api/serve/applications/", json=config,
                          timeout=300)
        except httpx.ReadTimeout:  # a loaded head may apply it after all: the status tells
            return
        if r.status_code >= 300:
            raise RuntimeError(f"serve deploy answered {r.status_code}: {r.text[:2000]}")

    def serve_status(self) -> dict:
        """Serve's own status (`serve status`, the dashboard's Serve page): applications,
        deployments and each replica's node_id, actor_id and state."""
        for attempt in range(4):  # the dashboard can be slow to answer on a loaded machine
            try:
                r = httpx.get(f"{self.dashboard}/api/serve/applications/", timeout=60)
                r.raise_for_status()
                return r.json()
            except httpx.TransportError:
                if attempt == 3:
                    raise
                time.sleep(1)
        raise AssertionError("unreachable")

    def wait_running(self, app: str, *, timeout: float = 600) -> dict:
        def running():
            try:
                status = self.serve_status()
            except httpx.HTTPError:
                return None
            info = (status.get("applications") or {}).get(app)
            if info and info["status"] == "DEPLOY_FAILED":
                raise RuntimeError(f"deploy failed: {info.get('message')}")
            return status if info and info["status"] == "RUNNING" else None

        return _wait(running, timeout=timeout, interval=1, what=f"app {app} RUNNING")

    def replicas(self, app: str, status: dict | None = None) -> dict[str, list[dict]]:
        """Deployment name -> its replicas (state, node_id, actor_id) in Serve's status."""
        status = status or self.serve_status()
        deployments = status["applications"][app]["deployments"]
        return {name: d.get("replicas", []) for name, d in deployments.items()}

    def deployment_status(self, app: str, deployment: str) -> str:
        status = self.serve_status()
        return status["applications"][app]["deployments"][deployment]["status"]

    def controller_node_id(self, status: dict | None = None) -> str:
        status = status or self.serve_status()
        return status["controller_info"]["node_id"]

    def proxies(self, status: dict | None = None) -> dict[str, dict]:
        status = status or self.serve_status()
        return status.get("proxies") or {}

    def wait_routed(self, *, timeout: float = 120) -> None:
        def routed():
            try:
                return httpx.get(f"{self.base_url}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(routed, timeout=timeout, what="the proxy to route /healthz")

    def shutdown_serve(self) -> None:
        httpx.delete(f"{self.dashboard}/api/serve/applications/", timeout=120)


def stop_on_signal(cluster: SimCluster) -> None:
    """Stop the cluster's processes when this process is told to stop (bench runs)."""
    def handler(signum, _frame):
        cluster.stop()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# -- the production graph on it -------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
APP = "photostudio"


def cluster_config(*, http_port: int, data_dir: Path, zoo_dir: Path, database_url: str,
                   storage: dict[str, Any], rate_limit_storage: str,
                   deployments: dict[str, dict] | None = None,
                   app_args: dict[str, Any] | None = None) -> dict:
    """serve_config.yaml as shipped (production profile, GPU fractions, autoscaling, a proxy
    on every node) with the tiny models, shared storage (`database_url`, `storage`) and the
    simulated cluster's free HTTP port. `deployments` overrides fields per deployment name
    (e.g. a smaller ``max_replicas``: memory here is shared)."""
    import copy

    import yaml

    config = copy.deepcopy(yaml.safe_load((REPO / "serve_config.yaml").read_text()))
    config["http_options"] = {**config.get("http_options", {}), "host": HOST,
                              "port": http_port}
    app = config["applications"][0]
    app["args"].update(_tiny_overrides(), data_dir=str(data_dir), zoo_dir=str(zoo_dir),
                       database_url=database_url, storage=storage,
                       rate_limit_storage=rate_limit_storage, **(app_args or {}))
    by_name = {d["name"]: d for d in app["deployments"]}
    for name, fields in (deployments or {}).items():
        target = by_name[name]
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                target[key] = {**target[key], **value}
            else:
                target[key] = value
    return config


def gpu_deployments(config: dict) -> dict[str, float]:
    """Deployment name -> GPU fraction, for every deployment of the config's first
    application that asks for a GPU share (``ray_actor_options.num_gpus`` > 0)."""
    out = {}
    for d in config["applications"][0]["deployments"]:
        fraction = float((d.get("ray_actor_options") or {}).get("num_gpus") or 0)
        if fraction > 0:
            out[d["name"]] = fraction
    return out


def placement(cluster: SimCluster, status: dict, app: str = APP) -> dict[str, list[str]]:
    """Deployment name -> the node names (head / worker_a / worker_b) of its RUNNING
    replicas, from Serve's status."""
    return {name: sorted(cluster.node_name(r["node_id"]) for r in reps
                         if r.get("state") == "RUNNING")
            for name, reps in cluster.replicas(app, status).items()}


def gpu_load(cluster: SimCluster, status: dict, fractions: dict[str, float],
             app: str = APP) -> dict[str, float]:
    """Node name -> the GPU fractions of the RUNNING replicas on it, added up."""
    load: dict[str, float] = {}
    for name, nodes in placement(cluster, status, app).items():
        if not fractions.get(name):
            continue
        for node in nodes:
            load[node] = round(load.get(node, 0.0) + fractions.get(name, 0.0), 6)
    return load


def _tiny_overrides() -> dict:
    """Every deployment on its tiny model (graphs/app.py: tiny_overrides; imported when used:
    graphs.app imports Ray, which must not happen before this module set Ray's environment)."""
    from graphs.app import tiny_overrides

    return tiny_overrides()
