"""Metrics API, MetricsMiddleware, log redaction and JSON logs (graphs/observability.py).

No `from __future__ import annotations`: the deployed FastAPI ingress at the end needs real
annotations on its route methods.
"""

import asyncio
import io
import json
import logging
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from graphs import errors, middleware, observability
from graphs.middleware import HardeningConfig

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "monitoring" / "grafana-dashboard.json"

SECRETS = {
    "bearer": "eyJhbGciOiJIUzI1NiJ9.payload.signature",
    "db_password": "pg-Secret-Pw-9",
    "aws_key_id": "AKIAIOSFODNN7EXAMPLE",
    "aws_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "openai": "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
    "api_key": "my-api-key-value-42",
}


# --- redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize("text,secret", [
    (f"Authorization: Bearer {SECRETS['bearer']}", SECRETS["bearer"]),
    (f"headers={{'authorization': 'Bearer {SECRETS['bearer']}'}}", SECRETS["bearer"]),
    (f"connecting to postgresql://app:{SECRETS['db_password']}@db.internal:5432/studio",
     SECRETS["db_password"]),
    (f"DATABASE_URL=postgresql+psycopg://app:{SECRETS['db_password']}@h/db",
     SECRETS["db_password"]),
    (f"aws_access_key_id={SECRETS['aws_key_id']}", SECRETS["aws_key_id"]),
    (f"creds {SECRETS['aws_key_id']} in text", SECRETS["aws_key_id"]),
    (f"AWS_SECRET_ACCESS_KEY={SECRETS['aws_secret']}", SECRETS["aws_secret"]),
    (f'{{"aws_secret_access_key": "{SECRETS["aws_secret"]}"}}', SECRETS["aws_secret"]),
    (f"openai key {SECRETS['openai']}", SECRETS["openai"]),
    (f"x-api-key: {SECRETS['api_key']}", SECRETS["api_key"]),
    (f"?api_key={SECRETS['api_key']}&n=1", SECRETS["api_key"]),
    (f'"password": "{SECRETS["db_password"]}"', SECRETS["db_password"]),
    ("gateway key psk_JPxO6CxKFASUyYAgJwBz8KVLg_PMw1n7F2sCAmmeZHQ printed",
     "psk_JPxO6CxKFASUyYAgJwBz8KVLg_PMw1n7F2sCAmmeZHQ"),
])
def test_secrets_are_redacted(text, secret):
    out = observability.redact_text(text)
    assert secret not in out
    assert "REDACTED" in out


def test_redaction_keeps_what_is_useful():
    text = "GET /v1/assets/img_123 200 in 0.25 s; tokens: input_tokens=5 db=postgresql://h/db"
    assert observability.redact_text(text) == text
    assert "app:[REDACTED]@db" in observability.redact_text("postgresql://app:pw@db/x")


def test_image_payloads_and_long_strings_are_cut():
    b64 = "iVBORw0KGgo" + "A" * 50_000
    out = observability.redact_text(f"image data:image/png;base64,{b64} end")
    assert "AAAA" not in out and "data:image/png;base64,[" in out and out.endswith("end")
    assert "AAAA" not in observability.redact_text(f'{{"b64_json": "{b64}"}}')
    long_text = "word " * 2000
    cut = observability.redact_text(long_text, limit=100)
    assert len(cut) < 150 and "more chars" in cut


def test_sanitize_redacts_by_key_and_summarizes_payloads():
    np = pytest.importorskip("numpy")
    value = {
        "headers": [(b"authorization", b"Bearer abc123456"), (b"content-type", b"image/png")],
        "Api-Key": "k-1",
        "nested": {"password": "p", "ok": 1},
        "image": b"\x89PNG" + bytes(5000),
        "array": np.zeros((4, 4, 3), dtype=np.uint8),
    }
    out = observability.sanitize(value)
    assert out["headers"] == [["authorization", "[REDACTED]"], ["content-type", "image/png"]]
    assert out["Api-Key"] == "[REDACTED]" and out["nested"] == {"password": "[REDACTED]",
                                                                 "ok": 1}
    assert out["image"] == "<5004 bytes>"
    assert out["array"] == "<array shape=(4, 4, 3) dtype=uint8>"


# --- JSON logs ------------------------------------------------------------------------------


@pytest.fixture
def json_log():
    stream = io.StringIO()
    name = f"photostudio.test.{uuid.uuid4().hex[:8]}"
    handler = observability.configure_logging("DEBUG", stream=stream, logger_name=name)
    log = logging.getLogger(name)
    log.propagate = False
    yield log, stream
    log.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_request_id_and_no_secrets(json_log):
    log, stream = json_log
    token = observability.request_id_var.set("req-abc")
    try:
        log.info("calling %s with %s", f"postgresql://u:{SECRETS['db_password']}@h/db",
                 f"Bearer {SECRETS['bearer']}",
                 extra={"headers": {"Authorization": f"Bearer {SECRETS['bearer']}"},
                        "upload": b"\x89PNG" * 1000, "b64_json": "QUJD" * 5000,
                        "prompt": "a cat", "api_key": SECRETS["api_key"]})
    finally:
        observability.request_id_var.reset(token)
    log.warning("outside a request")
    first, second = _lines(stream)
    assert first["request_id"] == "req-abc" and first["level"] == "INFO"
    assert first["logger"] == log.name and first["ts"].endswith("Z")
    assert first["message"].startswith("calling postgresql://u:[REDACTED]@h/db with Bearer ")
    assert first["headers"] == {"Authorization": "[REDACTED]"}
    assert first["upload"] == "<4000 bytes>" and first["prompt"] == "a cat"
    assert first["api_key"] == "[REDACTED]" and "QUJDQUJD" not in first["b64_json"]
    raw = stream.getvalue()
    for secret in SECRETS.values():
        assert secret not in raw
    assert "request_id" not in second


def test_exceptions_are_logged_redacted(json_log):
    log, stream = json_log
    try:
        raise ConnectionError(f"could not connect to postgresql://app:{SECRETS['db_password']}"
                              "@db:5432/x")
    except ConnectionError:
        log.exception("database down")
    [entry] = _lines(stream)
    assert "ConnectionError" in entry["exc_text"]
    assert SECRETS["db_password"] not in entry["exc_text"]


def test_redacting_filter_cleans_records_for_any_formatter():
    record = logging.LogRecord("ray.serve", logging.INFO, __file__, 1,
                               "key %s for %s", (SECRETS["openai"], "x" * 10_000), None)
    record.authorization = "Bearer abcdefghijk"
    assert observability.RedactingFilter().filter(record) is True
    text = record.getMessage()
    assert SECRETS["openai"] not in text and len(text) < 5_000
    assert record.authorization == "[REDACTED]"


def test_install_log_redaction_is_idempotent():
    name = f"photostudio.test.{uuid.uuid4().hex[:8]}"
    target = logging.getLogger(name)
    target.addHandler(logging.NullHandler())
    observability.install_log_redaction(name)
    observability.install_log_redaction(name)
    assert sum(isinstance(f, observability.RedactingFilter) for f in target.filters) == 1
    assert sum(isinstance(f, observability.RedactingFilter)
               for f in target.handlers[0].filters) == 1


# --- metrics API ----------------------------------------------------------------------------


def test_metric_api_is_a_noop_without_ray():
    """In a fresh interpreter (the test session may have Ray up): nothing is recorded and
    Ray is not even imported."""
    code = textwrap.dedent("""
        import sys
        from graphs import observability as o
        results = [o.record_request("/v1/x", 200, 0.1, method="POST"),
                   o.observe_stage("model", 0.5, kind="generation"),
                   o.record_batch("Generator", 4), o.set_queue_depth("Generator", 2),
                   o.record_images("generation", 3)]
        with o.stage_timer("decode"):
            pass
        with o.QueueDepth("Matting").waiting():
            pass
        assert results == [False] * 5, results
        assert not o.metrics_enabled()
        assert "ray" not in sys.modules, "the metric API imported ray"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("call,match", [
    (lambda: observability.observe_stage("upload", 1.0), "stage must be one of"),
    (lambda: observability.observe_stage("model", -1), "non-negative"),
    (lambda: observability.record_request("/x", 700, 0.1), "status"),
    (lambda: observability.record_request("", 200, 0.1), "route"),
    (lambda: observability.record_batch("Generator", 0), "batch size"),
    (lambda: observability.set_queue_depth("Generator", -1), "queue depth"),
    (lambda: observability.record_images("generation", -2), "image count"),
])
def test_metric_api_checks_its_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_exported_names_follow_rays_prometheus_naming():
    names = observability.exported_metric_names()
    assert "ray_photostudio_http_requests_total" in names
    assert {"ray_photostudio_http_request_duration_seconds_bucket",
            "ray_photostudio_http_request_duration_seconds_sum",
            "ray_photostudio_http_request_duration_seconds_count"} <= names
    assert "ray_photostudio_queue_depth" in names
    for spec in observability.METRICS.values():  # tags Serve reserves would fail in a replica
        assert not {"deployment", "replica", "application"} & set(spec.tag_keys)


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
            self.depth = observability.QueueDepth("MetricModel")
            observability.install_log_redaction()

        async def run(self, n: int) -> list[bool]:
            with self.depth.waiting():
                with observability.stage_timer("model", kind="test"):
                    pass
                logging.getLogger("ray.serve").info("key %s", SECRETS["openai"])
                return [observability.record_batch("MetricModel", n),
                        observability.observe_stage("encode", 0.01, kind="test"),
                        observability.record_images("test", n),
                        observability.metrics_enabled()]

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
    assert set(wanted) <= observability.exported_metric_names()
    requests_line = next(line for line in lines
                         if line.startswith("ray_photostudio_http_requests_total"))
    assert 'status="200"' in requests_line and 'deployment="MetricIngress"' in requests_line
    assert float(requests_line.rsplit(" ", 1)[1]) >= 1


# --- dashboard ------------------------------------------------------------------------------


def test_dashboard_panels_query_only_metrics_we_export():
    dashboard = json.loads(DASHBOARD.read_text())
    for key in ("title", "uid", "panels", "schemaVersion", "templating", "time"):
        assert key in dashboard, key
    known = observability.exported_metric_names()
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = []
    for panel in dashboard["panels"]:
        assert {"id", "type", "title", "gridPos"} <= set(panel), panel.get("title")
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            exprs.append(expr)
            metrics = set(re.findall(r"\bray_[A-Za-z0-9_:]+", expr))
            assert metrics and metrics <= known, (panel["title"], metrics - known)
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
            for var in re.findall(r"\$(?:\{)?([A-Za-z_]\w*)", expr):
                assert var in variables | {"__rate_interval", "__interval", "__range"}, var
    used = {m for e in exprs for m in re.findall(r"\bray_[A-Za-z0-9_:]+", e)}
    for spec in observability.METRICS.values():  # every metric has at least one panel
        assert used & set(spec.exported_names()), spec.name
