# ruff: noqa: E501  (Prometheus text lines are as long as their labels)
"""GET /v1/metrics's reading of Prometheus text: the ingress's request counters and latency
histograms summed per route over replicas and nodes, one application only."""

from __future__ import annotations

from telemetry.summary import summarize

NODE_A = """\
# HELP ray_photostudio_http_requests_total HTTP requests answered by the ingress.
# TYPE ray_photostudio_http_requests_total counter
ray_photostudio_http_requests_total{application="app",deployment="Ingress",method="GET",replica="r1",route="/v1/jobs",status="200"} 3.0
ray_photostudio_http_requests_total{application="app",deployment="Ingress",method="GET",replica="r2",route="/v1/jobs",status="200"} 2.0
ray_photostudio_http_requests_total{application="app",deployment="Ingress",method="GET",replica="r2",route="/v1/jobs",status="404"} 1.0
ray_photostudio_http_requests_total{application="other",deployment="Ingress",method="GET",replica="r9",route="/v1/jobs",status="200"} 50.0
# HELP ray_photostudio_http_request_duration_seconds Time to the last byte.
# TYPE ray_photostudio_http_request_duration_seconds histogram
ray_photostudio_http_request_duration_seconds_bucket{application="app",le="0.1",method="GET",replica="r1",route="/v1/jobs"} 2.0
ray_photostudio_http_request_duration_seconds_bucket{application="app",le="+Inf",method="GET",replica="r1",route="/v1/jobs"} 3.0
ray_photostudio_http_request_duration_seconds_count{application="app",method="GET",replica="r1",route="/v1/jobs"} 3.0
ray_photostudio_http_request_duration_seconds_sum{application="app",method="GET",replica="r1",route="/v1/jobs"} 0.75
# TYPE ray_tasks gauge
ray_tasks{State="RUNNING"} 4.0
"""
NODE_B = """\
# TYPE ray_photostudio_http_requests_total counter
ray_photostudio_http_requests_total{application="app",deployment="Ingress",method="POST",replica="r3",route="/v1/images/generations",status="200"} 7.0
# TYPE ray_photostudio_http_request_duration_seconds histogram
ray_photostudio_http_request_duration_seconds_bucket{application="app",le="0.1",method="GET",replica="r3",route="/v1/jobs"} 1.0
ray_photostudio_http_request_duration_seconds_bucket{application="app",le="+Inf",method="GET",replica="r3",route="/v1/jobs"} 3.0
ray_photostudio_http_request_duration_seconds_count{application="app",method="GET",replica="r3",route="/v1/jobs"} 3.0
ray_photostudio_http_request_duration_seconds_sum{application="app",method="GET",replica="r3",route="/v1/jobs"} 1.25
"""


def test_routes_are_summed_over_replicas_and_nodes_for_one_application():
    routes = summarize([NODE_A, NODE_B], "app")
    assert [(r["route"], r["method"]) for r in routes] == [
        ("/v1/images/generations", "POST"), ("/v1/jobs", "GET")]  # busiest first
    jobs = routes[1]
    assert jobs["requests"] == 6 and jobs["statuses"] == {"200": 5, "404": 1}  # not "other"
    assert jobs["latency_count"] == 6 and jobs["latency_sum_s"] == 2.0
    assert jobs["latency_buckets"] == {"0.1": 3, "+Inf": 6}
    assert routes[0]["latency_count"] == 0 and routes[0]["requests"] == 7


def test_no_page_or_other_metrics_only_is_no_route():
    assert summarize([], "app") == []
    assert summarize(["# TYPE ray_tasks gauge\nray_tasks{State=\"RUNNING\"} 4.0\n"], "app") == []
