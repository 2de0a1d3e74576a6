"""The production graph (`serve_config.yaml`, as `serve deploy` runs it) on a local Ray with
tiny models, for the overload and fault benches: the configured limits (max_ongoing_requests,
max_queued_requests, autoscaling, health checks) are the ones under test, only the weights
are tiny. Also an open-loop HTTP load driver (aiohttp) that classifies every outcome.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench._common import client_connector
from graphs.cli import free_port

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/0"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def rate_limit_storage() -> str:
    """Redis when one listens on 6379 (per-key limits shared by ingress replicas, as in
    production), else per-replica memory."""
    return REDIS_URL if _port_open(6379) else "memory://"


def production_config(data_dir: Path, *, deployments: dict[str, dict] | None = None,
                      app_args: dict[str, Any] | None = None) -> dict:
    """serve_config.yaml with the tiny models and a local data dir; `deployments` overrides
    fields per deployment name (e.g. ``{"Ingress": {"num_replicas": 2}}``), `app_args` the
    builder's args (e.g. ``{"job_stale_s": 20}``)."""
    config = copy.deepcopy(yaml.safe_load((REPO / "serve_config.yaml").read_text()))
    app = config["applications"][0]
    app["args"].update(_tiny_overrides(), data_dir=str(data_dir),
                       rate_limit_storage=rate_limit_storage())
    app["args"].update(app_args or {})
    if os.environ.get("PHOTOSTUDIO_ZOO_DIR"):
        app["args"]["zoo_dir"] = os.environ["PHOTOSTUDIO_ZOO_DIR"]
    for d in app["deployments"]:
        extra = (deployments or {}).get(d["name"])
        if extra:
            if "num_replicas" in extra:
                d.pop("autoscaling_config", None)
            d.update(extra)
    return config


def deployment_options(config: dict, name: str) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


@dataclass
class Gateway:
    base_url: str
    config: dict
    data_dir: Path
    app_name: str
    keys: dict[str, str] = field(default_factory=dict)  # name -> token

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'photostudio.db'}"

    def create_key(self, name: str, **kwargs: Any) -> str:
        from storage.records import RecordStore

        records = RecordStore(self.database_url)
        try:
            if records.get_project(project_id="default") is None:
                records.create_project(project_id="default")
            token = records.create_api_key(project="default", name=name, **kwargs)[1]
        finally:
            records.close()
        self.keys[name] = token
        return token

    def handle(self, deployment: str):
        from ray import serve

        return serve.get_deployment_handle(deployment, app_name=self.app_name)


@contextmanager
def production_gateway(*, deployments: dict[str, dict] | None = None,
                       app_args: dict[str, Any] | None = None, num_cpus: int = 24,
                       haproxy: bool = False, log: Callable[[str], None] = print):
    """Start a local Ray (its own temp dir and ports), deploy the production graph with tiny
    models, wait until /healthz answers; yield a `Gateway`. Logical CPUs/GPU as in the test
    suite (24 CPUs, 1 GPU): scheduling by the config's fractions, not this machine's cores.
    `haproxy`: HAProxy in front of the ingress replicas instead of Serve's Python proxy
    (`graphs.cli.request_path_env`)."""
    tmp = Path(tempfile.mkdtemp(prefix="psbench", dir="/tmp"))
    if haproxy:
        from graphs.cli import request_path_env

        os.environ.update(request_path_env(tmp, haproxy=True, free_ports=True))
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    data_dir = tmp / "data"
    data_dir.mkdir()
    config = production_config(data_dir, deployments=deployments, app_args=app_args)
    port = free_port()
    started = time.monotonic()
    for attempt in range(3):  # a busy machine: the raylet may miss Ray's fixed 30 s window
        try:
            ray.init(num_cpus=num_cpus, num_gpus=1, include_dashboard=False,
                     _temp_dir=str(tmp), logging_level="ERROR", log_to_driver=False)
            break
        except Exception as exc:  # Ray raises a bare Exception here  # noqa: BLE001
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(exc):
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            log(f"Ray did not start ({exc}); retrying")
    http = {k: v for k, v in config.get("http_options", {}).items() if k != "port"}
    http.update(host="127.0.0.1", port=port)
    serve.start(http_options=http, logging_config=config.get("logging_config"))
    config.pop("http_options", None)
    try:
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
        app_name = config["applications"][0]["name"]
        deadline = time.monotonic() + 600
        while True:
            status = serve.status().applications.get(app_name)
            if status and status.status == "RUNNING":
                break
            if status and status.status == "DEPLOY_FAILED":
                raise RuntimeError(f"deploy failed: {status.message}")
            if time.monotonic() > deadline:
                raise TimeoutError("the production graph did not start within 600 s")
            time.sleep(0.5)
        base_url = f"http://127.0.0.1:{port}"
        import httpx

        while True:
            try:
                if httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        log(f"gateway up in {time.monotonic() - started:.0f}s at {base_url} "
            f"({'HAProxy' if haproxy else 'Serve proxy'}; rate limits: "
            f"{config['applications'][0]['args']['rate_limit_storage']})")
        yield Gateway(base_url=base_url, config=config, data_dir=data_dir, app_name=app_name)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Requests and outcomes
# ---------------------------------------------------------------------------------------------


def tiny_png(size: int = 64, seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


GENERATION = {"prompt": "a lighthouse at dusk", "size": "64x64", "steps": 4,
              "response_format": "url"}


def request_for(route: str, png: bytes) -> dict[str, Any]:
    """aiohttp request kwargs for one of the benched routes (`GENERATION` is the generation
    body; `png` the upload of the tool route)."""
    import aiohttp

    if route == "generation":
        return {"method": "POST", "path": "/v1/images/generations", "json": GENERATION}
    if route == "generation_async":  # 202 + a job; longer, so kills catch some running
        return {"method": "POST", "path": "/v1/images/generations?async=true",
                "json": {**GENERATION, "steps": 6}}
    if route == "tool":
        form = aiohttp.FormData()
        form.add_field("image", png, filename="in.png", content_type="image/png")
        form.add_field("response_format", "url")
        return {"method": "POST", "path": "/v1/images/remove-background", "data": form}
    raise ValueError(f"unknown route {route!r}")


@dataclass
class Outcome:
    route: str
    key: str
    status: int | None  # None: no HTTP answer (timeout, connection error)
    latency_s: float
    problem: str | None = None  # why this outcome is a failure (None: acceptable)
    started: float = 0.0
    body: dict | None = None


ACCEPTABLE = {200, 202, 429, 503}


def classify(status: int, headers: Any, body: bytes) -> tuple[str | None, dict | None]:
    """(problem or None, parsed JSON). 200/202/429/503 are acceptable; 429 and 503 must carry
    the error envelope and Retry-After."""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if status not in ACCEPTABLE:
        return f"HTTP {status}: {body[:200]!r}", parsed
    if status in (429, 503):
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
            return f"HTTP {status} without the error envelope: {body[:200]!r}", parsed
        if not headers.get("Retry-After", "").isdigit():
            return f"HTTP {status} without Retry-After", parsed
    return None, parsed


async def send(session, base_url: str, route: str, key_name: str, token: str, png: bytes,
               timeout_s: float) -> Outcome:
    import aiohttp

    req = request_for(route, png)
    started = time.perf_counter()
    kwargs = {k: v for k, v in req.items() if k in ("json", "data")}
    try:
        async with session.request(req["method"], base_url + req["path"],
                                   headers={"Authorization": f"Bearer {token}"},
                                   timeout=aiohttp.ClientTimeout(total=timeout_s),
                                   **kwargs) as resp:
            body = await resp.read()
            problem, parsed = classify(resp.status, resp.headers, body)
            return Outcome(route, key_name, resp.status, time.perf_counter() - started,
                           problem, started, parsed if resp.status in (200, 202) else None)
    except asyncio.TimeoutError:
        return Outcome(route, key_name, None, time.perf_counter() - started,
                       f"no answer within the {timeout_s:g}s timeout", started)
    except aiohttp.ClientError as exc:
        return Outcome(route, key_name, None, time.perf_counter() - started,
                       f"{type(exc).__name__}: {exc}", started)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def session_for(concurrency_hint: int = 0):
    import aiohttp

    return aiohttp.ClientSession(connector=client_connector())


async def closed_loop(base_url: str, *, routes: list[str], token: str, concurrency: int,
                      seconds: float, timeout_s: float, png: bytes) -> list[Outcome]:
    """`concurrency` clients, each sending its next request when the last one ends."""
    outcomes: list[Outcome] = []
    deadline = time.perf_counter() + seconds
    async with session_for() as session:
        async def client(i: int) -> None:
            n = i
            while time.perf_counter() < deadline:
                outcomes.append(await send(session, base_url, routes[n % len(routes)], "main",
                                           token, png, timeout_s))
                n += 1

        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return outcomes


async def open_loop(base_url: str, *, routes: dict[str, float],
                    keys: list[tuple[str, str, float]], seconds: float, timeout_s: float,
                    png: bytes, on_tick: Callable[[float], Any] | None = None,
                    seed: int = 0) -> list[Outcome]:
    """Poisson arrivals for `seconds`, `routes` {route: requests/s}, whatever the server
    answers (open loop: a slow server does not slow the arrivals). `keys`: (name, token,
    share). `on_tick(elapsed)` is awaited about once a second (probes, kills)."""
    rng = random.Random(seed)
    names = [k[0] for k in keys]
    tokens = {k[0]: k[1] for k in keys}
    weights = [k[2] for k in keys]
    route_names = list(routes)
    route_weights = [routes[r] for r in route_names]
    rate = sum(route_weights)
    tasks: list[asyncio.Task] = []
    async with session_for() as session:
        start = time.perf_counter()
        next_at = start
        next_tick = start + 1.0
        i = 0
        while True:
            now = time.perf_counter()
            if now - start >= seconds:
                break
            if on_tick is not None and now >= next_tick:
                next_tick += 1.0
                await on_tick(now - start)
            if now >= next_at:
                key = rng.choices(names, weights)[0]
                route = rng.choices(route_names, route_weights)[0]
                tasks.append(asyncio.create_task(send(
                    session, base_url, route, key, tokens[key], png, timeout_s)))
                i += 1
                next_at += rng.expovariate(rate)
                continue
            await asyncio.sleep(min(next_at, next_tick) - now)
        return list(await asyncio.gather(*tasks))


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    by_status = Counter("timeout/error" if o.status is None else str(o.status)
                        for o in outcomes)
    by_route = {route: Counter("timeout/error" if o.status is None else str(o.status)
                               for o in outcomes if o.route == route)
                for route in sorted({o.route for o in outcomes})}
    accepted = [o.latency_s for o in outcomes if o.status == 200]
    shed = [o.latency_s for o in outcomes if o.status in (429, 503)]
    problems = Counter(f"{o.route}: {o.problem}" for o in outcomes if o.problem)
    # where an accepted request's time went: the job in the ingress (model call, storing) vs
    # the rest (Serve's proxy, waiting for the ingress, reading/decoding/checking the input)
    timings = [((o.body or {}).get("metadata") or {}).get("timings") or {}
               for o in outcomes if o.status == 200]
    job = [t["total_s"] for t in timings if "total_s" in t]
    return {
        "requests": len(outcomes), "by_status": dict(sorted(by_status.items())),
        "by_route": {r: dict(sorted(c.items())) for r, c in by_route.items()},
        "accepted_p50_s": pct(accepted, 50), "accepted_p99_s": pct(accepted, 99),
        "accepted_max_s": max(accepted, default=float("nan")),
        "accepted_job_p50_s": pct(job, 50), "accepted_job_p99_s": pct(job, 99),
        "shed_p99_s": pct(shed, 99), "failures": sum(problems.values()),
        "problems": dict(problems.most_common(10)),
    }


# ---------------------------------------------------------------------------------------------
# HAProxy's own view (what it answered and why), read from its admin socket
# ---------------------------------------------------------------------------------------------

HAPROXY_FIELDS = ("status", "scur", "smax", "qcur", "econ", "eresp", "wretr", "wredis",
                  "chkdown", "downtime", "cli_abrt", "srv_abrt", "hrsp_2xx", "hrsp_4xx",
                  "hrsp_5xx", "eint")


def haproxy_stats() -> list[dict[str, str]]:
    """`show stat` of every HAProxy this process's gateway started (the admin sockets under
    RAY_SERVE_HAPROXY_SOCKET_PATH's folder, one per node), for the frontend and the app
    backends and servers: HAProxy's own 5xx (`hrsp_5xx` on the frontend beyond the
    backend's), connection / response errors (`econ`, `eresp`) and servers marked DOWN
    (`chkdown`). Serve's template rewrites HAProxy's 502/503/504 into a plain 500, so these
    counters tell those 500s apart from ours. Empty without HAProxy."""
    import csv

    path = os.environ.get("RAY_SERVE_HAPROXY_SOCKET_PATH")
    if not path:
        return []
    rows: list[dict[str, str]] = []
    for sock_path in Path(path).parent.glob(f"*/{Path(path).name}"):
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(sock_path))
                sock.sendall(b"show stat\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        except OSError as exc:
            rows.append({"pxname": str(sock_path), "svname": "-", "status": f"error: {exc}"})
            continue
        text = data.decode(errors="replace").lstrip("# ")
        for row in csv.DictReader(text.splitlines()):
            if row.get("pxname") in ("stats", "prometheus", "default_backend"):
                continue
            rows.append({"pxname": row.get("pxname", ""), "svname": row.get("svname", ""),
                         **{k: row.get(k, "") for k in HAPROXY_FIELDS}})
    return rows


def print_haproxy_stats(log: Callable[[str], None] = print) -> None:
    rows = haproxy_stats()
    if not rows:
        return
    log("HAProxy (show stat): " + " ".join(("pxname/svname",) + HAPROXY_FIELDS))
    for r in rows:
        log(f"  {r['pxname']}/{r['svname']}: "
            + " ".join(f"{k}={r.get(k, '')}" for k in HAPROXY_FIELDS if r.get(k, "") != ""))


def _tiny_overrides() -> dict:
    """Every deployment on its tiny model (graphs/app.py: tiny_overrides; imported when used:
    graphs.app imports Ray, which must not happen before this module set Ray's environment)."""
    from graphs.app import tiny_overrides

    return tiny_overrides()
