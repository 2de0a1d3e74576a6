"""Metrics of the gateway: the ingress and the model deployments record here.

Metrics are custom Serve metrics (`ray.serve.metrics`): inside a replica Serve adds the
``deployment``, ``replica`` and ``application`` tags, and Ray's metrics agent exports them to
Prometheus with a ``ray_`` prefix: a counter ``photostudio_http_requests`` is scraped as
``ray_photostudio_http_requests_total``, a histogram as ``ray_<name>_bucket`` / ``_sum`` /
``_count``, a gauge as ``ray_<name>`` (`MetricSpec.exported_names`; checked against a live
Ray 2.60 agent). The recording API (`record_request`, `set_in_flight`, `observe_stage`,
`record_batch`, `set_queue_depth`, `record_images`, `record_chore`) is a no-op when Ray is not
initialized (unit tests, CLI tools) and does not even import Ray then; it never fails a
request: a recording error is logged once and dropped.

The bottom floor of the tree: no web framework here (`graphs.observability` holds the ASGI
middleware that records `record_request` per route template).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger("ray.serve")

PROMETHEUS_PREFIX = "ray_"  # what Ray's metrics agent puts before every custom metric

LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                     60.0, 120.0, 300.0]
BATCH_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]

# Stages of one image request, in order: decode uploads, run the model, encode the output
# image (PNG/JPEG/WebP, base64), store it (asset store + record).
STAGES = ("decode", "model", "encode", "store")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["counter", "histogram", "gauge"]
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    def exported_names(self) -> tuple[str, ...]:
        """The Prometheus series names Ray's agent exports for this metric."""
        base = PROMETHEUS_PREFIX + self.name
        if self.kind == "counter":
            return (f"{base}_total",)
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
        return (base,)


REQUESTS = MetricSpec(
    "photostudio_http_requests", "counter",
    "HTTP requests answered by the ingress, by route template, method and status code.",
    ("route", "method", "status"))
REQUEST_SECONDS = MetricSpec(
    "photostudio_http_request_duration_seconds", "histogram",
    "Time from a request's arrival at the ingress to its last response byte, by route "
    "template and method.", ("route", "method"), tuple(LATENCY_BUCKETS_S))
IN_FLIGHT = MetricSpec(
    "photostudio_http_requests_in_flight", "gauge",
    "Requests the ingress replica is handling right now.", ())
STAGE_SECONDS = MetricSpec(
    "photostudio_stage_duration_seconds", "histogram",
    "Time per stage of an image request (decode, model, encode, store), by job kind.",
    ("stage", "kind"), tuple(LATENCY_BUCKETS_S))
BATCH_SIZE = MetricSpec(
    "photostudio_batch_size", "histogram",
    "Items (images or requests) per model batch, by deployment.", ("model_deployment",),
    tuple(BATCH_BUCKETS))
QUEUE_DEPTH = MetricSpec(
    "photostudio_queue_depth", "gauge",
    "Requests waiting in a deployment replica for the model, by deployment.",
    ("model_deployment",))
IMAGES = MetricSpec(
    "photostudio_images_generated", "counter",
    "Images returned to clients, by job kind (generation, edit, upscale, ...).", ("kind",))

CHORES = MetricSpec(
    "photostudio_chores", "counter",
    "Runs of the ingress's periodic upkeep (stale-job sweep, session expiry), by chore and "
    "outcome (ok, failed), and the records each changed (outcome 'records').",
    ("chore", "outcome"))

METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    REQUESTS, REQUEST_SECONDS, IN_FLIGHT, STAGE_SECONDS, BATCH_SIZE, QUEUE_DEPTH, IMAGES,
    CHORES)}


def exported_metric_names() -> set[str]:
    """Every Prometheus series name the gateway's custom metrics produce."""
    return {name for spec in METRICS.values() for name in spec.exported_names()}


_in_replica = False  # once inside a Serve replica, always (a process is one replica)
_connected_for_good = False  # a Serve replica: connected to Ray for the process's life


def in_serve_replica() -> bool:
    """Whether this process is a Serve replica (kept once true). Never imports Serve only to
    look: a process that has not imported it is not a replica."""
    global _in_replica
    if _in_replica:
        return True
    if "ray.serve" not in sys.modules:
        return False
    try:
        from ray.serve.context import _get_internal_replica_context

        _in_replica = _get_internal_replica_context() is not None
    except (ImportError, AttributeError):  # Serve reorganised: as outside a replica
        return False
    return _in_replica


def metrics_enabled() -> bool:
    """True in a process connected to Ray (a replica, or a driver after `ray.init`). In a
    Serve replica the answer is kept once true (a replica is connected until it exits;
    ``ray.is_initialized`` goes through Ray's client-mode hook, ~1 us on every request's
    path); a driver may `ray.shutdown`, so there Ray is asked every time."""
    global _connected_for_good
    if _connected_for_good:
        return True
    ray = sys.modules.get("ray")  # not imported → certainly not initialized: don't import it
    if ray is None or not ray.is_initialized():
        return False
    if in_serve_replica():
        _connected_for_good = True
    return True


class _Registry:
    """The Serve metric objects of this process, created on first use (so that a replica's
    metrics get its deployment tags, and a process without Ray never builds any)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, Any] = {}
        self._observers: dict[tuple[str, Any], Callable[[float], bool]] = {}
        self._warned = False

    def get(self, spec: MetricSpec) -> Any:
        metric = self._metrics.get(spec.name)
        if metric is not None:
            return metric
        with self._lock:
            if spec.name not in self._metrics:
                # here, not at the top: without Ray the API is a no-op and must not import it
                from ray.serve import metrics as serve_metrics

                if spec.kind == "counter":
                    metric = serve_metrics.Counter(spec.name, spec.description, spec.tag_keys)
                elif spec.kind == "histogram":
                    metric = serve_metrics.Histogram(spec.name, spec.description,
                                                     list(spec.boundaries), spec.tag_keys)
                else:
                    metric = serve_metrics.Gauge(spec.name, spec.description, spec.tag_keys)
                self._metrics[spec.name] = metric
            return self._metrics[spec.name]

    def record(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> bool:
        """Record one value; False when nothing was recorded (no Ray, or Ray failed)."""
        if not metrics_enabled():
            return False
        try:
            metric = self.get(spec)
            if spec.kind == "counter":
                metric.inc(value, tags)
            elif spec.kind == "histogram":
                metric.observe(value, tags)
            else:
                metric.set(value, tags)
        except Exception as exc:  # metrics must never fail the request that is measured
            if not self._warned:
                self._warned = True
                logger.warning("recording metric %s failed (%s: %s); further metric errors "
                               "in this process are not logged", spec.name,
                               type(exc).__name__, exc)
            return False
        return True

    def observer(self, spec: MetricSpec, key: Any, tags: dict[str, str]
                 ) -> Callable[[float], bool]:
        """A function that records one value of histogram `spec` with `tags` (remembered
        under `key`, e.g. a request's labels): returns what `record` does. Serve's
        ``Histogram.observe`` merges the replica's tags into the given ones and checks them
        on every call (~7 us of the ingress's CPU per request on the 2-core dev VM); here
        that is done once per `key`, and each value goes straight to the metric's own
        ``record`` with the merged tags. Where the metric lacks the internals this relies
        on (another Ray version), or a tag must come from the request (Serve's ``route``,
        when not given), each value goes through `record` as before."""
        observer = self._observers.get((spec.name, key))
        if observer is not None:
            return observer
        observer = self._make_observer(spec, tags)
        if len(self._observers) >= 4 * _MAX_REQUEST_LABELS:
            self._observers.clear()
        self._observers[(spec.name, key)] = observer
        return observer

    def _make_observer(self, spec: MetricSpec, tags: dict[str, str]
                       ) -> Callable[[float], bool]:
        def through_record(value: float) -> bool:
            return self.record(spec, value, dict(tags))  # a copy: Serve adds its tags to it

        if not metrics_enabled() or spec.kind != "histogram":
            return through_record
        try:
            metric = self.get(spec)
            inner = metric._metric
            if metric._discard_metric or inner is None or (
                    "route" in metric._tag_keys and "route" not in tags):
                return through_record
            final = metric._get_final_tags(dict(tags))
            metric._validate_tags(final)
        except Exception:  # noqa: BLE001 - not the internals this expects: the public path
            return through_record

        def observe(value: float) -> bool:
            try:
                inner.record(value, tags=final)
            except Exception:  # noqa: BLE001 - as `record`: logged once, never raised
                return through_record(value)
            return True

        return observe

    def reset(self) -> None:
        with self._lock:
            self._metrics.clear()
            self._observers.clear()
            self._warned = False


_registry = _Registry()


def _check_seconds(seconds: float, what: str) -> float:
    if not isinstance(seconds, (int, float)) or seconds != seconds or seconds < 0:
        raise ValueError(f"{what} must be a non-negative number of seconds, got {seconds!r}")
    return float(seconds)


def _check_label(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def set_in_flight(count: int) -> bool:
    """Report how many HTTP requests this ingress replica is handling right now."""
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"in-flight count must be an integer >= 0, got {count!r}")
    return _registry.record(IN_FLIGHT, count, {})


# (route, method, status) -> the two label sets of `record_request`, checked once: the
# labels are few by design (route templates), and building and checking them per request
# showed in the ingress's profile. Bounded anyway (a misuse must not grow it without end).
_request_labels: dict[tuple[str, str, int], tuple[dict[str, str], dict[str, str]]] = {}
_MAX_REQUEST_LABELS = 4096
# The request counter (summed) and the latency histogram's values are kept in the process
# and handed to Ray at most this often (always, when requests stop), as Serve does with its
# own request metrics: Ray's metric record, called once per request between the request's
# other work, was among the largest costs of a no-model request in the ingress replica's
# profile; handed over back to back a value costs ~2.7 us there (2-core dev VM; BENCHMARKS.md,
# issue #20). Prometheus scrapes every few seconds anyway.
REQUEST_COUNT_FLUSH_S = 0.5
# latency values kept per label set between flushes, at most (more: flushed at once)
MAX_PENDING_LATENCIES = 20_000
# key -> [labels, count, latency values (s)]
_pending_counts: dict[tuple[str, str, int], list] = {}
_counts_lock = threading.Lock()
_counts_flushed_at = float("-inf")
_counts_flush_scheduled = False
# the loop the pending flush is scheduled on: a loop closed before it ran (a test's
# asyncio.run, a replica's shutdown) must not leave the flag set and the counts stuck
_counts_flush_loop: asyncio.AbstractEventLoop | None = None


def flush_request_counts() -> int:
    """Hand the summed request counts and the latencies kept since the last flush to Ray
    now; returns how many label sets."""
    global _pending_counts, _counts_flushed_at, _counts_flush_scheduled
    with _counts_lock:
        pending, _pending_counts = _pending_counts, {}
        _counts_flushed_at = time.monotonic()
        _counts_flush_scheduled = False
    for key, (labels, count, latencies) in pending.items():
        _registry.record(REQUESTS, count, dict(labels[0]))
        observe = _registry.observer(REQUEST_SECONDS, key, labels[1])
        for seconds in latencies:
            observe(seconds)
    return len(pending)


def record_request(route: str, status: int, seconds: float, *, method: str = "GET") -> bool:
    """Count one answered request and observe its latency. `route` is the route template
    (``/v1/assets/{asset_id}``), never the raw path: label values must stay few. Both reach
    Ray within `REQUEST_COUNT_FLUSH_S` (the count summed); False outside Ray."""
    global _counts_flush_scheduled, _counts_flush_loop
    key = (route, method, status)
    labels = _request_labels.get(key)
    if labels is None:
        _check_label(route, "route")
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code 100-599, got {status!r}")
        upper = _check_label(method, "method").upper()
        labels = ({"route": route, "method": upper, "status": str(status)},
                  {"route": route, "method": upper})
        if len(_request_labels) >= _MAX_REQUEST_LABELS:
            _request_labels.clear()
        _request_labels[key] = labels
    seconds = _check_seconds(seconds, "request latency")
    if not metrics_enabled():
        return False
    with _counts_lock:
        entry = _pending_counts.get(key)
        if entry is None:
            _pending_counts[key] = [labels, 1, [seconds]]
            full = False
        else:
            entry[1] += 1
            latencies = entry[2]
            latencies.append(seconds)
            full = len(latencies) >= MAX_PENDING_LATENCIES
        due = 0.0 if full else REQUEST_COUNT_FLUSH_S - (time.monotonic() - _counts_flushed_at)
        stale = _counts_flush_loop is not None and _counts_flush_loop.is_closed()
        schedule = due > 0 and (not _counts_flush_scheduled or stale)
        if schedule:
            _counts_flush_scheduled = True
    if due <= 0:
        flush_request_counts()
    elif schedule:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: now
            flush_request_counts()
        else:
            _counts_flush_loop = loop
            loop.call_later(due, flush_request_counts)
    return True


def observe_stage(stage: str, seconds: float, *, kind: str = "other") -> bool:
    """Observe how long one stage took: ``decode``, ``model``, ``encode`` or ``store``."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    seconds = _check_seconds(seconds, "stage duration")
    return _registry.record(STAGE_SECONDS, seconds,
                            {"stage": stage, "kind": _check_label(kind, "kind")})


@contextlib.contextmanager
def stage_timer(stage: str, *, kind: str = "other") -> Iterator[None]:
    """``with stage_timer("decode"): ...`` observes the block's wall time (also when it
    raises). Works around ``await`` too: it measures wall time, not CPU time."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    started = time.perf_counter()
    try:
        yield
    finally:
        observe_stage(stage, time.perf_counter() - started, kind=kind)


def record_batch(deployment: str, size: int) -> bool:
    """Observe the size of one model batch (call it from the deployment that ran it)."""
    _check_label(deployment, "deployment")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"batch size must be an integer >= 1, got {size!r}")
    return _registry.record(BATCH_SIZE, size, {"model_deployment": deployment})


def set_queue_depth(deployment: str, depth: int) -> bool:
    """Report how many requests wait in this replica for the model."""
    _check_label(deployment, "deployment")
    if not isinstance(depth, int) or depth < 0:
        raise ValueError(f"queue depth must be an integer >= 0, got {depth!r}")
    return _registry.record(QUEUE_DEPTH, depth, {"model_deployment": deployment})


class QueueDepth:
    """Counts the requests inside ``with depth.waiting(): ...`` and reports the count as
    `set_queue_depth` on every change. One per deployment replica."""

    def __init__(self, deployment: str):
        self.deployment = _check_label(deployment, "deployment")
        self.depth = 0

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        self.depth += 1
        set_queue_depth(self.deployment, self.depth)
        try:
            yield
        finally:
            self.depth -= 1
            set_queue_depth(self.deployment, self.depth)


def record_images(kind: str, n: int) -> bool:
    """Count images returned to clients for a job kind (generation, edit, upscale, ...)."""
    _check_label(kind, "kind")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"image count must be an integer >= 0, got {n!r}")
    if n == 0:
        return False  # Prometheus counters only go up; nothing to add
    return _registry.record(IMAGES, n, {"kind": kind})


def record_chore(chore: str, *, ok: bool, changed: int = 0) -> bool:
    """Count one run of a periodic chore, and the records it changed."""
    _check_label(chore, "chore")
    recorded = _registry.record(CHORES, 1, {"chore": chore, "outcome": "ok" if ok else "failed"})
    if changed > 0:
        _registry.record(CHORES, changed, {"chore": chore, "outcome": "records"})
    return recorded


__all__ = [
    "BATCH_SIZE", "CHORES", "IMAGES", "IN_FLIGHT", "METRICS", "QUEUE_DEPTH", "REQUESTS",
    "REQUEST_SECONDS", "STAGES", "STAGE_SECONDS", "MetricSpec", "QueueDepth",
    "exported_metric_names", "metrics_enabled", "observe_stage", "record_batch",
    "flush_request_counts", "record_chore", "record_images", "record_request",
    "set_in_flight", "set_queue_depth", "stage_timer",
]
