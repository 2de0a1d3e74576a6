"""HTTP metrics for the ingress: the ASGI middleware that times every request and records it
under its route template (``/v1/assets/{asset_id}``, never the raw path) and status.

The metrics themselves (specs, registry, recording API) live in `telemetry.metrics`, and the
log redaction in `telemetry.logs`: the model deployments use those without the web stack.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphs.route_index import route_path
from telemetry.metrics import record_request, set_in_flight

# Status recorded for a request the client abandoned (or that was cancelled) before a
# response started: nginx's convention.
CLIENT_CLOSED = 499
UNMATCHED_ROUTE = "unmatched"
# The in-flight gauge is reported at most this often (the last value always, when the count
# settles): a Ray metric record per request start and end cost ~4 % of the ingress's CPU on a
# no-model route, and Prometheus scrapes every few seconds anyway.
IN_FLIGHT_REPORT_S = 0.25


def route_template(scope: Scope) -> str:
    """The matched route's path template, or ``unmatched``: Starlette's router puts the
    matched route in ``scope["route"]``; for responses sent before routing (the API-key gate's
    401/429, 413, 503, CORS preflight) the route the router would pick
    (`route_index.route_path`, inside Serve's included router too)."""
    try:
        return route_path(scope) or UNMATCHED_ROUTE
    except (KeyError, TypeError, AttributeError):
        return UNMATCHED_ROUTE


def request_outcome(status: int | None, exc: BaseException | None = None) -> int:
    """The status a request is recorded with: its response's `status`; else, when it ended
    with `exc`, 499 if cancelled (the client went away), else 500 (the server answers 500)."""
    if status is not None:
        return status
    return CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else 500


class MetricsMiddleware:
    """Times each HTTP request and records `record_request(route template, status)`, plus
    the number in flight (reported at most every `report_every_s`, the settled count last).
    Pure ASGI (streaming responses pass through untouched). A request that raises before
    responding counts as 500, one cancelled (client gone) as 499."""

    def __init__(self, app: ASGIApp, *, report_every_s: float = IN_FLIGHT_REPORT_S):
        self.app = app
        self.in_flight = 0
        self.report_every_s = report_every_s
        self._reported_at = float("-inf")
        self._report_pending = False

    def _report_in_flight(self) -> None:
        """`set_in_flight` now if the last report is older than `report_every_s`, else once
        when that time is up (with the count then): never more often, never stale."""
        now = time.monotonic()
        if now - self._reported_at >= self.report_every_s:
            self._reported_at = now
            set_in_flight(self.in_flight)
        elif not self._report_pending:
            self._report_pending = True
            asyncio.get_running_loop().call_later(
                self.report_every_s - (now - self._reported_at), self._report_later)

    def _report_later(self) -> None:
        self._report_pending = False
        self._reported_at = time.monotonic()
        set_in_flight(self.in_flight)

    def request_started(self) -> None:
        self.in_flight += 1
        self._report_in_flight()

    def request_ended(self, scope: Scope, status: int, seconds: float) -> None:
        self.in_flight -= 1
        self._report_in_flight()
        record_request(route_template(scope), status, seconds,
                       method=scope.get("method", "GET"))

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

        self.request_started()
        outcome = 500
        try:
            await self.app(scope, receive, send_with_status)
            outcome = request_outcome(status)
        except BaseException as exc:
            outcome = request_outcome(status, exc)
            raise
        finally:
            self.request_ended(scope, outcome, time.perf_counter() - started)


__all__ = ["CLIENT_CLOSED", "UNMATCHED_ROUTE", "MetricsMiddleware", "request_outcome",
           "route_template"]


# -- reading them back (GET /v1/metrics) -------------------------------------------------------
METRICS_CACHE_S = 2.0
_snapshot: tuple[float, dict] | None = None


def _metrics_pages_urls() -> list[str]:
    """Each live Ray node's metrics-agent page (every node exports its own replicas')."""
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]


async def http_metrics(application: str) -> dict:
    """The ingress's request counters and latency histograms per route, summed over the
    cluster (`telemetry.summary`), at most every METRICS_CACHE_S per replica. Pages that do
    not answer are counted in `nodes_unreachable`, not an error."""
    global _snapshot
    import httpx

    from telemetry.summary import summarize

    now = time.time()
    if _snapshot is not None and now - _snapshot[0] < METRICS_CACHE_S \
            and _snapshot[1]["application"] == application:
        return _snapshot[1]
    urls = await asyncio.to_thread(_metrics_pages_urls)
    pages: list[str] = []
    async with httpx.AsyncClient(timeout=5) as client:
        answers = await asyncio.gather(*(client.get(u) for u in urls), return_exceptions=True)
    for answer in answers:
        if isinstance(answer, httpx.Response) and answer.status_code == 200:
            pages.append(answer.text)
    snapshot = {"object": "metrics", "application": application, "time": now,
                "nodes": len(urls), "nodes_unreachable": len(urls) - len(pages),
                "routes": summarize(pages, application)}
    _snapshot = (now, snapshot)
    return snapshot
