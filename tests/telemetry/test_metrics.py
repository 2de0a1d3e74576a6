"""The metrics API (telemetry/metrics.py) and the Grafana dashboard that queries it.

Recording inside a Serve replica and Ray's Prometheus export are tested with the ingress's
middleware in tests/graphs/test_observability.py.
"""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from telemetry import metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "monitoring" / "grafana-dashboard.json"


# --- metrics API ----------------------------------------------------------------------------


def test_metric_api_is_a_noop_without_ray():
    """In a fresh interpreter (the test session may have Ray up): nothing is recorded, and
    neither Ray nor the web stack (Starlette, FastAPI) is even imported: model replicas use
    this package."""
    code = textwrap.dedent("""
        import sys
        from telemetry import logs
        from telemetry import metrics as m
        results = [m.record_request("/v1/x", 200, 0.1, method="POST"),
                   m.set_in_flight(3), m.observe_stage("model", 0.5, kind="generation"),
                   m.record_batch("Generator", 4), m.set_queue_depth("Generator", 2),
                   m.record_images("generation", 3), m.record_chore("sweep", ok=True)]
        with m.stage_timer("decode"):
            pass
        with m.QueueDepth("Matting").waiting():
            pass
        logs.install_log_redaction()
        assert results == [False] * 7, results
        assert not m.metrics_enabled() and logs.current_request_id() is None
        assert "ray" not in sys.modules, "the metric API imported ray"
        web = sorted(n for n in sys.modules if n.split(".")[0] in ("starlette", "fastapi"))
        assert not web, f"telemetry imported the web stack: {web}"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("call,match", [
    (lambda: metrics.observe_stage("upload", 1.0), "stage must be one of"),
    (lambda: metrics.observe_stage("model", -1), "non-negative"),
    (lambda: metrics.record_request("/x", 700, 0.1), "status"),
    (lambda: metrics.record_request("", 200, 0.1), "route"),
    (lambda: metrics.record_batch("Generator", 0), "batch size"),
    (lambda: metrics.set_queue_depth("Generator", -1), "queue depth"),
    (lambda: metrics.record_images("generation", -2), "image count"),
    (lambda: metrics.set_in_flight(-1), "in-flight count"),
    (lambda: metrics.record_chore("", ok=True), "chore"),
])
def test_metric_api_checks_its_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_exported_names_follow_rays_prometheus_naming():
    names = metrics.exported_metric_names()
    assert "ray_photostudio_http_requests_total" in names
    assert {"ray_photostudio_http_request_duration_seconds_bucket",
            "ray_photostudio_http_request_duration_seconds_sum",
            "ray_photostudio_http_request_duration_seconds_count"} <= names
    assert "ray_photostudio_queue_depth" in names
    for spec in metrics.METRICS.values():  # tags Serve reserves would fail in a replica
        assert not {"deployment", "replica", "application"} & set(spec.tag_keys)


# --- dashboard ------------------------------------------------------------------------------


def test_dashboard_panels_query_only_metrics_we_export():
    dashboard = json.loads(DASHBOARD.read_text())
    for key in ("title", "uid", "panels", "schemaVersion", "templating", "time"):
        assert key in dashboard, key
    known = metrics.exported_metric_names()
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
            series = set(re.findall(r"\bray_[A-Za-z0-9_:]+", expr))
            assert series and series <= known, (panel["title"], series - known)
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
            for var in re.findall(r"\$(?:\{)?([A-Za-z_]\w*)", expr):
                assert var in variables | {"__rate_interval", "__interval", "__range"}, var
    used = {m for e in exprs for m in re.findall(r"\bray_[A-Za-z0-9_:]+", e)}
    for spec in metrics.METRICS.values():  # every metric has at least one panel
        assert used & set(spec.exported_names()), spec.name


def test_request_counts_are_summed_and_reach_ray_within_the_flush_interval(monkeypatch):
    """The request counter is handed to Ray as sums and the latency histogram's values one
    by one, at most every REQUEST_COUNT_FLUSH_S, and the last ones go out when requests stop
    — also when the flush pending before was scheduled on an event loop that has closed."""
    import asyncio
    import time

    recorded: list[tuple[str, float, dict]] = []
    monkeypatch.setattr(metrics, "metrics_enabled", lambda: True)
    monkeypatch.setattr(metrics._registry, "record",
                        lambda spec, value, tags: recorded.append((spec.name, value, tags))
                        or True)
    monkeypatch.setattr(metrics._registry, "observer", lambda spec, key, tags: (
        lambda value: recorded.append((spec.name, value, tags)) or True))
    monkeypatch.setattr(metrics, "REQUEST_COUNT_FLUSH_S", 0.5)
    monkeypatch.setattr(metrics, "_counts_flushed_at", time.monotonic())
    monkeypatch.setattr(metrics, "_pending_counts", {})
    monkeypatch.setattr(metrics, "_counts_flush_scheduled", False)
    monkeypatch.setattr(metrics, "_counts_flush_loop", None)

    async def abandoned():  # schedules a flush, then its loop closes before it runs
        metrics._counts_flushed_at = time.monotonic()
        metrics.record_request("/v1/styles", 200, 0.01)

    asyncio.run(abandoned())
    assert [r for r in recorded if r[0] == metrics.REQUESTS.name] == []
    assert metrics._counts_flush_scheduled

    async def scenario():
        metrics._counts_flushed_at = time.monotonic()
        for _ in range(2):
            assert metrics.record_request("/v1/styles", 200, 0.01) is True
        metrics.record_request("/v1/styles", 429, 0.01)
        counts = [r for r in recorded if r[0] == metrics.REQUESTS.name]
        assert counts == []  # summed, not yet handed over
        assert [r for r in recorded if r[0] == metrics.REQUEST_SECONDS.name] == []
        deadline = time.monotonic() + 5
        while not counts and time.monotonic() < deadline:  # the scheduled flush
            await asyncio.sleep(0.01)
            counts = [r for r in recorded if r[0] == metrics.REQUESTS.name]
        return counts

    counts = asyncio.run(scenario())
    assert sorted((value, tags["status"]) for _, value, tags in counts) == [(1, "429"),
                                                                            (3, "200")]
    latencies = [(value, tags) for name, value, tags in recorded
                 if name == metrics.REQUEST_SECONDS.name]
    assert latencies == [(0.01, {"route": "/v1/styles", "method": "GET"})] * 4
    assert metrics.flush_request_counts() == 0  # nothing left


def test_kept_latencies_are_bounded(monkeypatch):
    """A label set's kept latency values go to Ray as soon as MAX_PENDING_LATENCIES are
    waiting (a flush that never comes must not grow them without end)."""
    import time

    observed: list[float] = []
    monkeypatch.setattr(metrics, "metrics_enabled", lambda: True)
    monkeypatch.setattr(metrics._registry, "record", lambda spec, value, tags: True)
    monkeypatch.setattr(metrics._registry, "observer", lambda spec, key, tags: (
        lambda value: observed.append(value) or True))
    monkeypatch.setattr(metrics, "MAX_PENDING_LATENCIES", 5)
    monkeypatch.setattr(metrics, "REQUEST_COUNT_FLUSH_S", 3600.0)
    monkeypatch.setattr(metrics, "_counts_flushed_at", time.monotonic())
    monkeypatch.setattr(metrics, "_pending_counts", {})
    monkeypatch.setattr(metrics, "_counts_flush_scheduled", True)  # a flush "pending"
    monkeypatch.setattr(metrics, "_counts_flush_loop", None)
    for i in range(4):
        metrics.record_request("/v1/styles", 200, i / 10)
    assert observed == []
    metrics.record_request("/v1/styles", 200, 0.4)
    assert observed == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert metrics._pending_counts == {}


def test_the_latency_observer_hands_ray_what_serves_observe_does(monkeypatch):
    """`_Registry.observer` (the request latency's per-label shortcut) records each value
    with the very tags Serve's ``Histogram.observe`` would: the real Serve metric object,
    its native record call captured; a metric without those internals goes through the
    public `record`."""
    captured: list[tuple[float, dict]] = []

    class Capture:
        def record(self, value, tags):
            captured.append((value, dict(tags)))

    monkeypatch.setattr(metrics, "metrics_enabled", lambda: True)
    registry = metrics._Registry()
    metric = registry.get(metrics.REQUEST_SECONDS)  # ray.serve.metrics.Histogram
    metric._metric = Capture()
    labels = {"route": "/v1/styles", "method": "GET"}
    metric.observe(0.25, dict(labels))  # Serve's own path
    observe = registry.observer(metrics.REQUEST_SECONDS, ("/v1/styles", "GET", 200), labels)
    assert observe(0.25) is True and observe(0.5) is True
    assert captured[1] == captured[0] and captured[2] == (0.5, captured[0][1])
    assert registry.observer(metrics.REQUEST_SECONDS, ("/v1/styles", "GET", 200),
                             labels) is observe  # made once per key
    registry.reset()
    assert registry._observers == {}

    plain: list[tuple] = []
    registry = metrics._Registry()
    registry._metrics[metrics.REQUEST_SECONDS.name] = type("Other", (), {
        "observe": lambda self, value, tags: plain.append((value, tags))})()
    assert registry.observer(metrics.REQUEST_SECONDS, "k", labels)(0.1) is True
    assert plain == [(0.1, labels)]


def test_a_replica_asks_ray_whether_it_is_connected_once(monkeypatch):
    """`metrics_enabled` keeps a true answer inside a Serve replica (connected for life) and
    asks Ray every time elsewhere (a driver may shut Ray down)."""
    import types

    asked: list[bool] = []
    connected = [True]
    fake_ray = types.SimpleNamespace(is_initialized=lambda: asked.append(True) or connected[0])
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.setattr(metrics, "_connected_for_good", False)
    monkeypatch.setattr(metrics, "in_serve_replica", lambda: False)  # a driver
    assert metrics.metrics_enabled() and metrics.metrics_enabled()
    assert len(asked) == 2
    connected[0] = False  # ray.shutdown()
    assert not metrics.metrics_enabled()
    connected[0] = True
    monkeypatch.setattr(metrics, "in_serve_replica", lambda: True)  # a replica
    asked.clear()
    assert all(metrics.metrics_enabled() for _ in range(5))
    assert len(asked) == 1
