"""MetricsMiddleware (graphs/observability.py): route templates and statuses, in-process and
inside Ray with a model deployment using the telemetry API, and Ray's Prometheus export.

No `from __future__ import annotations`: the deployed FastAPI ingress at the end needs real
annotations on its route methods.
"""

import asyncio
import logging
import uuid

import httpx
import pytest
from fastapi import FastAPI

from graphs import errors, middleware, observability
from graphs.middleware import HardeningConfig
from telemetry import logs, metrics

OPENAI_KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"  # logged in a replica: redacted there


# --- MetricsMiddleware ----------------------------------------------------------------------


def _metrics_app() -> FastAPI:
    app = FastAPI()
    errors.install(app)
    middleware.install(app, HardeningConfig(max_request_bytes=100))

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        return {"id": item_id}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("bug")

    @app.post("/upload")
    async def upload() -> dict:
        return {}

    return app


def test_metrics_middleware_records_route_templates_and_statuses(monkeypatch):
    recorded: list[tuple] = []
    monkeypatch.setattr(observability, "record_request",
                        lambda route, status, seconds, *, method: recorded.append(
                            (route, status, method, seconds)))

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=_metrics_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [(await client.request(m, p, **kw)).status_code for m, p, kw in [
                ("GET", "/items/7", {}), ("GET", "/items/abc", {}), ("GET", "/nope/1", {}),
                ("GET", "/boom", {}), ("POST", "/upload", {"content": b"x" * 101})]]

    statuses = asyncio.run(run())
    assert statuses == [200, 400, 404, 500, 413]
    assert [(r[0], r[1], r[2]) for r in recorded] == [
        ("/items/{item_id}", 200, "GET"), ("/items/{item_id}", 400, "GET"),
        ("unmatched", 404, "GET"), ("/boom", 500, "GET"), ("/upload", 413, "POST")]
    assert all(r[3] >= 0 for r in recorded)


@pytest.mark.parametrize("method,path,template", [
    ("POST", "/v1/images/generations", "/v1/images/generations"),
    ("GET", "/v1/jobs/job_1", "/v1/jobs/{job_id}"),  # the template, never the id
    ("DELETE", "/v1/usage", "/v1/usage"),  # path known, method not (405): still its route
    ("GET", "/nope", "unmatched"),
])
def test_requests_answered_before_routing_are_counted_under_their_route(method, path,
                                                                        template):
    """The gate's 401/429, a 413 or a shed 503 are answered before the router runs: the
    metrics still name the route (inside the included router that Serve's class-based ingress
    makes), as usage accounting does."""
    from graphs import usage
    from graphs.ingress import app

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "app": app}
    assert observability.route_template(scope) == template
    assert usage.route_template(scope) == (template if template != "unmatched"
                                           else "(unmatched)")


def test_in_flight_gauge_is_reported_at_most_every_interval_and_settles(monkeypatch):
    """20 concurrent requests report the in-flight count a few times, not 40, and the last
    report (made once the interval is up) is the settled count, 0."""
    reported: list[int] = []
    monkeypatch.setattr(observability, "set_in_flight", reported.append)
    monkeypatch.setattr(observability, "record_request", lambda *a, **k: None)
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> dict:
        await asyncio.sleep(0.05)
        return {}

    wrapped = observability.MetricsMiddleware(app, report_every_s=0.1)

    async def run() -> None:
        transport = httpx.ASGITransport(app=wrapped)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            codes = await asyncio.gather(*(client.get("/slow") for _ in range(20)))
            assert {r.status_code for r in codes} == {200}
            await asyncio.sleep(0.25)  # the pending report after the interval

    asyncio.run(run())
    assert 2 <= len(reported) <= 4, reported
    assert reported[0] == 1 and reported[-1] == 0


# --- inside Ray -----------------------------------------------------------------------------


def metrics_serve_app():
    """An ingress with MetricsMiddleware and a model deployment using the recording API."""
    from ray import serve

    api = FastAPI()
    errors.install(api)
    middleware.install(api, HardeningConfig())

    @serve.deployment(name="MetricModel", ray_actor_options={"num_cpus": 0.1})
    class MetricModel:
        def __init__(self):
            self.depth = metrics.QueueDepth("MetricModel")
            logs.install_log_redaction()

        async def run(self, n: int) -> list[bool]:
            with self.depth.waiting():
                with metrics.stage_timer("model", kind="test"):
                    pass
                logging.getLogger("ray.serve").info("key %s", OPENAI_KEY)
                return [metrics.record_batch("MetricModel", n),
                        metrics.observe_stage("encode", 0.01, kind="test"),
                        metrics.record_images("test", n),
                        metrics.metrics_enabled()]

    @serve.deployment(name="MetricIngress", ray_actor_options={"num_cpus": 0.1})
    @serve.ingress(api)
    class MetricIngress:
        def __init__(self, model):
            self.model = model

        @api.get("/run/{n}")
        async def run(self, n: int) -> dict:
            return {"recorded": await self.model.run.remote(n)}

    return MetricIngress.bind(MetricModel.bind())


def _scrape(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


@pytest.fixture(scope="module")
def metrics_app(ray_cluster):
    """The app above, deployed once for this module's Ray tests, and its first answer."""
    from ray import serve

    name = f"obs-{uuid.uuid4().hex[:6]}"
    serve.run(metrics_serve_app(), name=name, route_prefix=f"/{name}")
    try:
        r = httpx.get(f"http://127.0.0.1:{ray_cluster.http_port}/{name}/run/3", timeout=60)
        yield name, r
    finally:
        serve.delete(name)


def test_metrics_are_recorded_inside_ray(metrics_app):
    _, r = metrics_app
    assert r.status_code == 200, r.text
    # every call recorded (True) inside the replica, none was a silent no-op
    assert r.json() == {"recorded": [True, True, True, True]}
    assert r.headers.get_list("x-request-id")  # RequestId ran (Serve's header, not doubled)
    assert len(r.headers.get_list("x-request-id")) == 1


@pytest.mark.slow
def test_metrics_are_exported_to_prometheus_with_the_dashboards_names(metrics_app, ray_cluster):
    """Ray's metrics agent exports the custom metrics under the names the dashboard uses
    (the export runs every few seconds: this waits up to 90 s)."""
    from tests.conftest import wait_until

    name, r = metrics_app
    assert r.status_code == 200, r.text
    port = ray_cluster._private.worker._global_node.metrics_export_port
    wanted = {
        "ray_photostudio_http_requests_total": 'route="/run/{n}"',
        "ray_photostudio_http_request_duration_seconds_bucket": 'method="GET"',
        "ray_photostudio_batch_size_bucket": 'model_deployment="MetricModel"',
        "ray_photostudio_images_generated_total": 'kind="test"',
        "ray_photostudio_stage_duration_seconds_count": 'stage="model"',
        "ray_photostudio_queue_depth": 'model_deployment="MetricModel"',
    }

    def exported():
        lines = [line for line in _scrape(port).splitlines()
                 if f'application="{name}"' in line]
        return all(any(line.startswith(metric) and label in line for line in lines)
                   for metric, label in wanted.items()) and lines

    lines = wait_until(exported, timeout=90, interval=1,
                       what="the custom metrics in Ray's Prometheus export")
    assert set(wanted) <= metrics.exported_metric_names()
    requests_line = next(line for line in lines
                         if line.startswith("ray_photostudio_http_requests_total"))
    assert 'status="200"' in requests_line and 'deployment="MetricIngress"' in requests_line
    assert float(requests_line.rsplit(" ", 1)[1]) >= 1
