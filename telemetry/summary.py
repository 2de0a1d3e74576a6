"""The ingress's HTTP metrics read back from Prometheus text (what Ray's metrics agent on each
node exports), summed per route: requests by status and the latency histogram. Cumulative
counters, as Prometheus has them: a client takes two snapshots and divides the differences
(requests/s, mean latency) — the studio's monitoring charts do.

Parsing only (`prometheus_client`'s text parser, a Ray dependency); fetching the pages is the
caller's (graphs.ingress, GET /v1/metrics)."""

from __future__ import annotations

import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from telemetry.metrics import PROMETHEUS_PREFIX, REQUEST_SECONDS, REQUESTS

REQUESTS_TOTAL = f"{PROMETHEUS_PREFIX}{REQUESTS.name}_total"
LATENCY = PROMETHEUS_PREFIX + REQUEST_SECONDS.name


def _le(value: str) -> str:
    return "+Inf" if math.isinf(float(value)) else f"{float(value):g}"


def summarize(pages: list[str], application: str) -> list[dict[str, Any]]:
    """Per (route, method) of `application`'s ingress, summed over every replica and node in
    `pages`: requests, requests per status, latency sum/count and cumulative buckets."""
    routes: dict[tuple[str, str], dict[str, Any]] = {}

    def entry(labels: dict[str, str]) -> dict[str, Any]:
        key = (labels.get("route", "?"), labels.get("method", "?"))
        if key not in routes:
            routes[key] = {"route": key[0], "method": key[1], "requests": 0, "statuses": {},
                           "latency_sum_s": 0.0, "latency_count": 0, "latency_buckets": {}}
        return routes[key]

    for page in pages:
        for family in text_string_to_metric_families(page):
            if not family.name.startswith(PROMETHEUS_PREFIX + "photostudio_http_"):
                continue
            for sample in family.samples:
                labels = sample.labels
                if labels.get("application") != application:
                    continue
                if sample.name == REQUESTS_TOTAL:
                    e = entry(labels)
                    n = int(sample.value)
                    e["requests"] += n
                    status = labels.get("status", "?")
                    e["statuses"][status] = e["statuses"].get(status, 0) + n
                elif sample.name == f"{LATENCY}_sum":
                    entry(labels)["latency_sum_s"] += sample.value
                elif sample.name == f"{LATENCY}_count":
                    entry(labels)["latency_count"] += int(sample.value)
                elif sample.name == f"{LATENCY}_bucket":
                    buckets = entry(labels)["latency_buckets"]
                    le = _le(labels.get("le", "+Inf"))
                    buckets[le] = buckets.get(le, 0) + int(sample.value)
    for e in routes.values():
        e["latency_sum_s"] = round(e["latency_sum_s"], 6)
        e["latency_buckets"] = dict(sorted(e["latency_buckets"].items(),
                                           key=lambda kv: float(kv[0])))
    return sorted(routes.values(), key=lambda e: (-e["requests"], e["route"], e["method"]))
