"""Metrics, structured logs and secret redaction for the gateway.

Metrics are custom Serve metrics (`ray.serve.metrics`): inside a replica Serve adds the
``deployment``, ``replica`` and ``application`` tags, and Ray's metrics agent exports them to
Prometheus with a ``ray_`` prefix: a counter ``photostudio_http_requests`` is scraped as
``ray_photostudio_http_requests_total``, a histogram as ``ray_<name>_bucket`` / ``_sum`` /
``_count``, a gauge as ``ray_<name>`` (`MetricSpec.exported_names`; checked against a live
Ray 2.60 agent). The recording API (`record_request`, `observe_stage`, `record_batch`,
`set_queue_depth`, `record_images`) is a no-op when Ray is not initialized (unit tests, CLI
tools), and never fails a request: a recording error is logged once and dropped.

Logs: `RedactingFilter` removes secrets (Authorization headers, API keys, passwords in URLs,
AWS keys) and image payloads (base64 blobs, bytes, arrays) from every record; `JsonFormatter`
writes one JSON object per line with the request id. Inside Serve, `logging_config:
{encoding: JSON}` formats and `install_log_redaction()` adds the filter to Serve's logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("ray.serve")

# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

PROMETHEUS_PREFIX = "ray_"  # what Ray's metrics agent puts before every custom metric

LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                     60.0, 120.0, 300.0]
BATCH_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]

# Stages of one image request, in order: decode uploads, run the model, encode the output
# image (PNG/JPEG/WebP, base64), store it (asset store + record).
STAGES = ("decode", "model", "encode", "store")
# Status recorded for a request the client abandoned (or that was cancelled) before a
# response started: nginx's convention.
CLIENT_CLOSED = 499
UNMATCHED_ROUTE = "unmatched"


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

METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    REQUESTS, REQUEST_SECONDS, IN_FLIGHT, STAGE_SECONDS, BATCH_SIZE, QUEUE_DEPTH, IMAGES)}


def exported_metric_names() -> set[str]:
    """Every Prometheus series name the gateway's custom metrics produce."""
    return {name for spec in METRICS.values() for name in spec.exported_names()}


def metrics_enabled() -> bool:
    """True in a process connected to Ray (a replica, or a driver after `ray.init`)."""
    ray = sys.modules.get("ray")  # not imported → certainly not initialized: don't import it
    return ray is not None and ray.is_initialized()


class _Registry:
    """The Serve metric objects of this process, created on first use (so that a replica's
    metrics get its deployment tags, and a process without Ray never builds any)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, Any] = {}
        self._warned = False

    def get(self, spec: MetricSpec) -> Any:
        metric = self._metrics.get(spec.name)
        if metric is not None:
            return metric
        with self._lock:
            if spec.name not in self._metrics:
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

    def reset(self) -> None:
        with self._lock:
            self._metrics.clear()
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


def record_request(route: str, status: int, seconds: float, *, method: str = "GET") -> bool:
    """Count one answered request and observe its latency. `route` is the route template
    (``/v1/assets/{asset_id}``), never the raw path: label values must stay few."""
    _check_label(route, "route")
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"status must be an HTTP status code 100-599, got {status!r}")
    seconds = _check_seconds(seconds, "request latency")
    method = _check_label(method, "method").upper()
    counted = _registry.record(REQUESTS, 1, {"route": route, "method": method,
                                             "status": str(status)})
    _registry.record(REQUEST_SECONDS, seconds, {"route": route, "method": method})
    return counted


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


# ---------------------------------------------------------------------------------------------
# Request id (set by graphs.middleware.RequestId; read by the log formatter and filter)
# ---------------------------------------------------------------------------------------------

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "photostudio_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled: ours (RequestId middleware), else Serve's own
    request context (which Serve carries into downstream deployments), else None."""
    request_id = request_id_var.get()
    if request_id:
        return request_id
    if "ray.serve" in sys.modules:
        try:
            from ray.serve.context import _get_serve_request_context

            return _get_serve_request_context().request_id or None
        except (ImportError, AttributeError):  # private API moved: no id rather than a crash
            return None
    return None


# ---------------------------------------------------------------------------------------------
# ASGI middleware: time every request, record route template + status
# ---------------------------------------------------------------------------------------------


def route_template(scope: Scope) -> str:
    """The matched route's path template, or ``unmatched``. Starlette's router puts the
    matched route in ``scope["route"]``; for responses sent before routing (413, CORS
    preflight) the app's routes are matched here."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    app = scope.get("app")
    routes = getattr(getattr(app, "router", None), "routes", None) or ()
    try:
        from starlette.routing import Match

        partial = None
        for candidate in routes:
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                return getattr(candidate, "path", UNMATCHED_ROUTE)
            if match == Match.PARTIAL and partial is None:
                partial = getattr(candidate, "path", None)
        return partial or UNMATCHED_ROUTE
    except (ImportError, KeyError, TypeError, AttributeError):
        return UNMATCHED_ROUTE


class MetricsMiddleware:
    """Times each HTTP request and records `record_request(route template, status)`, plus
    the number in flight. Pure ASGI (streaming responses pass through untouched). A request
    that raises before responding counts as 500, one cancelled (client gone) as 499."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.in_flight += 1
        _registry.record(IN_FLIGHT, self.in_flight, {})
        outcome = 500
        try:
            await self.app(scope, receive, send_with_status)
            outcome = status if status is not None else 500
        except BaseException as exc:
            # cancelled: the client went away; an exception: the server answers 500
            cancelled = isinstance(exc, asyncio.CancelledError)
            outcome = status if status is not None else (CLIENT_CLOSED if cancelled else 500)
            raise
        finally:
            self.in_flight -= 1
            _registry.record(IN_FLIGHT, self.in_flight, {})
            record_request(route_template(scope), outcome, time.perf_counter() - started,
                           method=scope.get("method", "GET"))


# ---------------------------------------------------------------------------------------------
# Logs: redaction and JSON
# ---------------------------------------------------------------------------------------------

REDACTED = "[REDACTED]"
MAX_MESSAGE_CHARS = 4000  # longer messages are cut (with a note of how much)
MAX_FIELD_CHARS = 1000  # per string in `extra` fields, args and containers
MIN_BLOB_CHARS = 200  # a base64-looking run this long is an image (or key) payload

# Header / field names whose values are secrets wherever they appear (dict keys, key=value).
SECRET_KEYS = (
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
    "api_key", "apikey", "access_token", "refresh_token", "id_token", "token", "secret",
    "client_secret", "password", "passwd", "pwd", "aws_secret_access_key",
    "aws_session_token", "secret_access_key", "session_token", "database_url", "dsn",
    "private_key",
)
_SECRET_KEY_SET = frozenset(k.replace("-", "_") for k in SECRET_KEYS)

_KEY_ALTERNATION = "|".join(sorted({re.escape(k).replace("_", "[-_]").replace(r"\-", "[-_]")
                                    for k in SECRET_KEYS}, key=len, reverse=True))
_PATTERNS: list[tuple[re.Pattern[str], Any]] = [
    # data URLs carrying images: keep the media type, drop the payload
    (re.compile(r"data:([\w/+.-]+);base64,[A-Za-z0-9+/=_-]+"),
     lambda m: f"data:{m.group(1)};base64,[{len(m.group(0))} chars]"),
    # Authorization schemes, wherever they appear
    (re.compile(r"(?i)\b(bearer|basic|digest|token)(\s+)[A-Za-z0-9._~+/=-]{6,}"),
     lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}"),
    # key=value, key: value, "key": "value" for secret keys (case-insensitive)
    (re.compile(r"(?i)([\"']?\b(?:" + _KEY_ALTERNATION + r")\b[\"']?\s*[:=]\s*)"
                r"(?![\"']?(?:(?:bearer|basic|digest|token)\s+)?\[REDACTED)"
                r"([\"']?)(?:(?:bearer|basic|digest|token)\s+)?[^\s\"',;&}\]]+"),
     lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}"),
    # credentials in URLs: scheme://user:password@host → scheme://user:[REDACTED]@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s:@'\"]*):([^/\s@'\"]+)@"),
     lambda m: f"{m.group(1)}{m.group(2)}:{REDACTED}@"),
    # AWS access key ids (AKIA..., ASIA... temporary)
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b"),
     lambda m: "[REDACTED_AWS_KEY_ID]"),
    # OpenAI / Stripe / GitHub / Slack style tokens
    (re.compile(r"\bpsk_[A-Za-z0-9_-]{8,}"), lambda m: REDACTED),  # our own API keys
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}\b|\bgh[pousr]_[A-Za-z0-9]{20,}\b"
                r"|\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
     lambda m: REDACTED),
    # long base64 / hex runs: image bytes or key material, never useful in a log
    (re.compile(r"[A-Za-z0-9+/_-]{" + str(MIN_BLOB_CHARS) + r",}={0,2}"),
     lambda m: f"[blob {len(m.group(0))} chars]"),
]


def redact_text(text: str, *, limit: int | None = MAX_FIELD_CHARS) -> str:
    """Remove secrets and payloads from a string, then cut it to `limit` characters."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... [{len(text) - limit} more chars]"
    return text


def _is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in _SECRET_KEY_SET


def sanitize(value: Any, *, limit: int = MAX_FIELD_CHARS, depth: int = 0) -> Any:
    """A log-safe copy of `value`: secrets redacted (also under secret keys of mappings and
    header lists), bytes and arrays summarized, long strings cut, containers bounded."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact_text(value, limit=limit)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):  # numpy / torch arrays
        return f"<array shape={tuple(shape)} dtype={value.dtype}>"
    if depth >= 4:
        return f"<{type(value).__name__}>"
    if isinstance(value, Mapping) or hasattr(value, "items") and callable(value.items):
        try:
            items = list(value.items())
        except Exception:  # an odd mapping-like object: summarize it instead of failing a log
            return f"<{type(value).__name__}>"
        out: dict[str, Any] = {}
        for i, (key, item) in enumerate(items):
            if i >= 50:
                out["..."] = f"{len(items) - 50} more"
                break
            key_text = key.decode("latin-1") if isinstance(key, bytes) else str(key)
            out[key_text] = REDACTED if _is_secret_key(key_text) else sanitize(
                item, limit=limit, depth=depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        seq = list(value)
        # ASGI-style header pairs: [(b"authorization", b"Bearer x"), ...]
        if all(isinstance(p, (list, tuple)) and len(p) == 2 for p in seq) and seq:
            pairs = []
            for key, item in seq[:50]:
                key_text = key.decode("latin-1") if isinstance(key, bytes) else str(key)
                if isinstance(item, bytes) and not _is_secret_key(key_text):
                    item = item.decode("latin-1")
                pairs.append([key_text, REDACTED if _is_secret_key(key_text)
                              else sanitize(item, limit=limit, depth=depth + 1)])
            return pairs
        out_list = [sanitize(item, limit=limit, depth=depth + 1) for item in seq[:50]]
        if len(seq) > 50:
            out_list.append(f"... {len(seq) - 50} more")
        return out_list
    return redact_text(_safe_repr(value), limit=limit)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a broken __repr__ must not break logging
        return f"<{type(value).__name__}>"


# Attributes every LogRecord has; anything else came from `extra=` or a logging filter.
_STANDARD_ATTRS = frozenset(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__) | {
    "message", "asctime", "taskName"}
# Attributes Ray/Serve filters add (ids and names, never secrets): left as they are.
_TRUSTED_ATTRS = frozenset({
    "request_id", "route", "application", "deployment", "replica", "component_name",
    "component_id", "component_type", "worker_id", "node_id", "job_id", "actor_id",
    "task_id", "task_name", "task_func_name", "actor_name", "timestamp_ns",
    "_ray_timestamp_ns", "serve_access_log", "skip_context_filter", "log_to_stderr"})


class RedactingFilter(logging.Filter):
    """Removes secrets and payloads from a record in place (message, args, `extra` fields,
    exception text). Add it to a logger or handler; it never drops a record."""

    def __init__(self, *, max_message_chars: int = MAX_MESSAGE_CHARS,
                 max_field_chars: int = MAX_FIELD_CHARS):
        super().__init__()
        self.max_message_chars = max_message_chars
        self.max_field_chars = max_field_chars

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_photostudio_redacted", False):
            return True  # already cleaned (logger filter + handler filter)
        try:
            if record.args:
                args = record.args
                if isinstance(args, Mapping):
                    record.args = sanitize(args, limit=self.max_field_chars)
                else:
                    record.args = tuple(
                        a if isinstance(a, (int, float)) else sanitize(
                            a, limit=self.max_field_chars) for a in args)
            message = record.getMessage()
        except Exception:  # a bad format string: log what there is rather than nothing
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = redact_text(message, limit=self.max_message_chars)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, limit=None)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, limit=None)
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD_ATTRS or key in _TRUSTED_ATTRS:
                continue
            record.__dict__[key] = REDACTED if _is_secret_key(key) else sanitize(
                value, limit=self.max_field_chars)
        record._photostudio_redacted = True
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``request_id``, any `extra` fields, and ``exc_text``. Values are sanitized again here,
    so a handler without `RedactingFilter` still writes no secrets."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage(), limit=MAX_MESSAGE_CHARS),
        }
        request_id = getattr(record, "request_id", None)
        if not request_id or request_id == "-":  # "-": RequestIdFilter found none
            request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key.startswith("_") or key in entry \
                    or key == "request_id":
                continue
            entry[key] = REDACTED if _is_secret_key(key) else sanitize(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_text"] = redact_text(record.exc_text, limit=None)
        if record.stack_info:
            entry["stack_info"] = redact_text(record.stack_info, limit=None)
        return json.dumps(entry, default=_safe_repr, ensure_ascii=False)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records (for text formats: ``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = current_request_id() or "-"
        return True


_redaction_filter = RedactingFilter()


def install_log_redaction(*logger_names: str) -> None:
    """Add the redaction filter to loggers (default: Serve's ``ray.serve``, which the
    project's code logs to) and to their current handlers. Idempotent. Call it in a
    deployment's ``__init__``: Serve sets up the replica's handlers before that."""
    for name in logger_names or ("ray.serve",):
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in target.filters):
            target.addFilter(_redaction_filter)
        for handler in target.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(_redaction_filter)


def configure_logging(level: str | int = "INFO", *, json_format: bool = True,
                      stream: Any = None, logger_name: str = "ray.serve") -> logging.Handler:
    """For processes outside Serve's logging (CLI, scripts): one stream handler on
    `logger_name` with redaction and JSON (or ``level [request_id] logger: message``)."""
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, "
                             f"got {level!r}")
        level = resolved
    handler = logging.StreamHandler(stream)
    handler.addFilter(_redaction_filter)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(
        "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
    target = logging.getLogger(logger_name)
    for old in [h for h in target.handlers if getattr(h, "_photostudio", False)]:
        target.removeHandler(old)
    handler._photostudio = True
    target.addHandler(handler)
    target.setLevel(level)
    return handler


__all__ = [
    "METRICS", "STAGES", "MetricSpec", "MetricsMiddleware", "QueueDepth", "JsonFormatter",
    "RedactingFilter", "RequestIdFilter", "configure_logging", "current_request_id",
    "exported_metric_names", "install_log_redaction", "metrics_enabled", "observe_stage",
    "record_batch", "record_images", "record_request", "redact_text", "request_id_var",
    "route_template", "sanitize", "set_queue_depth", "stage_timer",
]
