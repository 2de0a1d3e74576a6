"""Usage accounting: what each request used, per API key and project — route, model,
provider, images/videos made, pixels, seconds of model time per deployment, LLM tokens,
status — summed in memory and written to the record store in batches.

The hot path does no I/O: `UsageMiddleware` gives each request a `RequestUsage` (a context
variable), the services add what they made to it (`note_output`, `note_model_seconds`,
`note_tokens`), and at the response's end the request is added to this replica's
`UsageRecorder`: a dict of hourly sums keyed by (project, key, route, model, provider,
status, deployment) under a lock. A background thread writes the sums every `flush_s`
(default 2 s) in one transaction (`RecordStore.add_usage`, an upsert that adds), so the
number of database writes is one per replica per interval, whatever the request rate; a sum
that fails to write is kept and retried at the next flush. Replicas flush independently and
the upsert adds, so totals from several ingress replicas add up; the replica's teardown flushes
what is left.

Work that outlives its request (an async job started with a 202, a video) notes its images,
videos and model seconds when it ends: the request's sums were recorded already, so those are
recorded as their own entry (same key, project and route; 0 requests), and its model seconds
still count against the caller's model-seconds quotas.

What is counted where:
- every HTTP request but the public ones (health, docs, the studio's files), with its status;
  requests the API-key gate refuses (401, 403, 429 of the requests/minute limit or of a
  model-seconds quota) too, through `refused` (`auth.AuthMiddleware`'s one hook): under the
  key when it was identified (403 scope, 429), else under project ``(anonymous)`` with no key
  (401: no key or an unknown one; a bad signed asset URL). Requests answered before the gate
  saw them (413 too large, 400 bad Content-Length/Host, 503 at capacity: the request path's
  `middleware.RequestPath`, flag `errors.GATE_SEEN`) count under ``(anonymous)`` the same
  way. Their route is the route template
  the path matches (never the raw path: ids would make a row per request).
- images and pixels: each job's images (`note_output`), streamed (SSE) generations included:
  the stream's job runs inside the request, which is recorded when the stream ends.
- videos: each clip a video job produced (`note_videos`), when the job ends.
- model seconds per deployment: the job's work (generator, matting, faceswap, upscaler),
  the chat's LLM stage, the Vision model and the face detector of image analysis (``vision``,
  ``faceswap``), the Video deployment's render (``video``) and a video upscale (``upscaler``).
- work the gateway does on its own after a request (auto-tagging a job's images for the
  gallery): its own entry, route ``(auto-tag)``, same key and project, 0 requests, not
  charged to the caller's quota (`background`).

Model-seconds quotas (per key, per project; `auth.Gate`): checked when a request is admitted
(429 once the day's seconds are used up) and counted after the work, from these same notes,
rounded up to whole seconds. So a request admitted with one second left may run past the
quota: a caller can overrun its day by at most the requests it had in flight when the last
second was used (one, for a client that waits for each answer); the next one is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from graphs import auth
from graphs.errors import exchange_of, recorder_of
from graphs.route_index import route_path

logger = logging.getLogger("ray.serve")

# The deployment whose model time a job kind (or a chat step's intent) spends.
KIND_DEPLOYMENT = {
    "generations": "generator", "edits": "generator", "variations": "generator",
    "style-transfer": "generator", "remove-background": "matting", "face-swap": "faceswap",
    "upscale": "upscaler", "edit-ops": "ingress",
    "image_generation": "generator", "image_edit": "generator", "style_transfer": "generator",
    "background_removal": "matting", "face_swap": "faceswap",
}
SKIPPED_PATHS = auth.PUBLIC_PATHS  # health probes and docs: not usage
ANONYMOUS = "(anonymous)"  # the project of refused requests whose key is unknown


@dataclass(slots=True)
class RequestUsage:
    """What one request used (filled in while it runs)."""

    images: int = 0
    videos: int = 0
    pixels: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    model: str = ""
    provider: str = ""
    model_seconds: dict[str, float] = field(default_factory=dict)
    # set when the request's response ended: later notes (async jobs) are recorded apart
    recorded: tuple[UsageRecorder, dict[str, Any]] | None = None
    # set with `recorded` when the caller has model-seconds quotas: counts late model seconds
    count_seconds: Any = None  # async (seconds: float) -> None
    recorder: UsageRecorder | None = None  # the replica's (for `background` work)


_current: contextvars.ContextVar[RequestUsage | None] = contextvars.ContextVar(
    "photostudio_usage", default=None)


def current() -> RequestUsage | None:
    return _current.get()


_pending: set[asyncio.Task] = set()  # late quota counts in flight (kept from the GC)


def _late(usage: RequestUsage, **counts: Any) -> None:
    """A note after the request was recorded: record it as its own entry, and count its
    model seconds against the caller's quotas."""
    recorder, dims = usage.recorded
    recorder.add(dims | {"model": counts.pop("model", dims["model"]),
                         "provider": counts.pop("provider", dims["provider"])},
                 requests=0, **counts)
    seconds = sum((counts.get("seconds") or {}).values())
    if seconds and usage.count_seconds is not None:
        try:
            task = asyncio.get_running_loop().create_task(usage.count_seconds(seconds))
        except RuntimeError:  # no event loop (a worker thread): the record above stands
            return
        _pending.add(task)
        task.add_done_callback(_pending.discard)


def note_output(kind: str, *, model: str, provider: str | None, images: int, pixels: int,
                seconds: float, timings: dict[str, float] | None = None) -> None:
    """A job's images, and its model time: a chat's per step (its ``step<i>_<intent>``
    timings), else the job's work on the kind's deployment."""
    usage = current()
    if usage is None:
        return
    per: dict[str, float] = {}
    steps = {k: v for k, v in (timings or {}).items() if k.startswith("step")}
    if kind == "chat" and steps:
        for name, value in steps.items():
            deployment = KIND_DEPLOYMENT.get(name.split("_", 1)[-1], "generator")
            per[deployment] = per.get(deployment, 0.0) + value
    else:
        per[KIND_DEPLOYMENT.get(kind, kind)] = seconds
    if usage.recorded is not None:
        _late(usage, model=model, provider=provider or "", images=images, pixels=pixels,
              seconds=per)
        return
    usage.images += images
    usage.pixels += pixels
    usage.model = usage.model or model
    usage.provider = usage.provider or (provider or "")
    for deployment, value in per.items():
        usage.model_seconds[deployment] = usage.model_seconds.get(deployment, 0.0) + value


def note_model_seconds(deployment: str, seconds: float, *, model: str | None = None) -> None:
    usage = current()
    if usage is None:
        return
    if usage.recorded is not None:
        _late(usage, seconds={deployment: seconds})
        return
    usage.model_seconds[deployment] = usage.model_seconds.get(deployment, 0.0) + seconds
    if model and not usage.model:
        usage.model = model


@contextlib.asynccontextmanager
async def background(route: str) -> AsyncIterator[None]:
    """Work the gateway does on its own after a request (e.g. auto-tagging its images): its
    usage is recorded apart, under the same key and project, as `route` (e.g.
    ``(auto-tag)``) with 0 requests, and not charged to the caller's model-seconds quota
    (the operator turned the work on, not the caller)."""
    parent = current()
    if parent is None or parent.recorder is None:
        yield
        return
    own = RequestUsage(recorder=parent.recorder)
    token = _current.set(own)
    try:
        yield
    finally:
        _current.reset(token)
        principal = auth.current()
        own.recorder.add({"project": principal.project, "key_id": principal.key_id or "",
                          "route": route, "model": own.model[:200], "provider": "",
                          "status": 200}, requests=0, images=own.images, videos=own.videos,
                         pixels=own.pixels, seconds=own.model_seconds)


def note_videos(n: int, *, model: str, seconds: dict[str, float]) -> None:
    """`n` videos a job produced, and its model time per deployment (``video``: the render;
    ``upscaler``: a video upscale)."""
    usage = current()
    if usage is None:
        return
    if usage.recorded is not None:
        _late(usage, model=model, videos=n, seconds=seconds)
        return
    usage.videos += n
    usage.model = usage.model or model
    for deployment, value in seconds.items():
        usage.model_seconds[deployment] = usage.model_seconds.get(deployment, 0.0) + value


def note_tokens(tokens_in: int, tokens_out: int) -> None:
    usage = current()
    if usage is not None and usage.recorded is None:
        usage.tokens_in += tokens_in
        usage.tokens_out += tokens_out


class UsageRecorder:
    """One replica's sums, flushed to the record store in batches by its own thread."""

    COUNTERS = ("requests", "images", "videos", "pixels", "tokens_in", "tokens_out")

    def __init__(self, records: Any, *, flush_s: float = 2.0):
        self.records = records
        self.flush_s = flush_s
        self._sums: dict[tuple, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.flushes = 0  # transactions written (tests, stats)
        self._hour_key, self._hour_bucket = -1, datetime.fromtimestamp(0, tz=timezone.utc)

    def start(self) -> UsageRecorder:
        self._thread = threading.Thread(target=self._loop, name="usage-flush", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.flush()

    def add(self, dims: dict[str, Any], *, requests: int = 1, images: int = 0,
            videos: int = 0, pixels: int = 0, tokens_in: int = 0, tokens_out: int = 0,
            seconds: dict[str, float] | None = None) -> None:
        """Add one request's (or a late job's) usage: O(1), no I/O."""
        base = (self._hour(), dims["project"], dims["key_id"], dims["route"], dims["model"],
                dims["provider"], dims["status"])
        with self._lock:
            row = self._row(base + ("",))
            row["requests"] += requests
            if images or videos or pixels or tokens_in or tokens_out:
                row["images"] += images
                row["videos"] += videos
                row["pixels"] += pixels
                row["tokens_in"] += tokens_in
                row["tokens_out"] += tokens_out
            for deployment, value in (seconds or {}).items():
                if value:
                    self._row(base + (deployment,))["model_seconds"] += value

    def _row(self, key: tuple) -> dict[str, float]:
        row = self._sums.get(key)
        if row is None:
            row = self._sums[key] = dict.fromkeys((*self.COUNTERS, "model_seconds"), 0)
        return row

    def _hour(self) -> datetime:
        """The current hour's bucket (UTC), made once per hour."""
        hour = int(time.time() // 3600)
        if hour != self._hour_key:
            self._hour_key, self._hour_bucket = hour, datetime.fromtimestamp(
                hour * 3600, tz=timezone.utc)
        return self._hour_bucket

    def record(self, usage: RequestUsage, *, route: str, status: int) -> None:
        principal = auth.current()
        dims = {"project": principal.project, "key_id": principal.key_id or "",
                "route": route, "model": usage.model[:200], "provider": usage.provider,
                "status": status}
        self.add(dims, images=usage.images, videos=usage.videos, pixels=usage.pixels,
                 tokens_in=usage.tokens_in, tokens_out=usage.tokens_out,
                 seconds=usage.model_seconds)
        usage.recorded = (self, dims)

    def refused(self, scope: Scope, status: int, principal: Any | None) -> None:
        """A request the API-key gate refused before it reached the app (`AuthMiddleware`):
        counted under its key when known, else under project ``(anonymous)``."""
        if scope.get("path") in SKIPPED_PATHS:
            return
        dims = {"project": principal.project if principal is not None else ANONYMOUS,
                "key_id": (principal.key_id or "") if principal is not None else "",
                "route": f"{scope.get('method', '')} {route_template(scope)}",
                "model": "", "provider": "", "status": status}
        self.add(dims)

    def flush(self) -> int:
        """Write the sums so far in one transaction; returns how many rows. On failure they
        are merged back and retried at the next flush (nothing is lost while the replica
        lives)."""
        with self._lock:
            sums, self._sums = self._sums, {}
        if not sums:
            return 0
        rows = [{"bucket": k[0], "project": k[1], "key_id": k[2], "route": k[3],
                 "model": k[4], "provider": k[5], "status": k[6], "deployment": k[7],
                 **{c: int(v[c]) for c in self.COUNTERS},
                 "model_seconds": float(v["model_seconds"])} for k, v in sums.items()]
        try:
            self.records.add_usage(rows=rows)
        except Exception as exc:  # noqa: BLE001 - keep the sums, retry next time
            logger.error("could not write usage (%s: %s); retrying at the next flush",
                         type(exc).__name__, exc)
            with self._lock:
                for key, value in sums.items():
                    row = self._sums.setdefault(key, dict.fromkeys(value, 0))
                    for name, amount in value.items():
                        row[name] += amount
            return 0
        self.flushes += 1
        return len(rows)

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()


def route_template(scope: Scope) -> str:
    """The path template of the app's route that `scope`'s path matches ('(unmatched)' when
    none): what the router would pick, for requests refused before routing."""
    return route_path(scope) or "(unmatched)"


class UsageMiddleware:
    """ASGI: a `RequestUsage` per request, recorded (in memory) when its response ends.
    Installed inside `auth.AuthMiddleware`, so the caller is known; requests the gate refuses
    (401/403, rate limits) never reach it: the gate's middleware reports those to
    `UsageRecorder.refused`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        recorder = recorder_of(scope) if scope["type"] == "http" else None
        if recorder is None or scope["path"] in SKIPPED_PATHS:
            await self.app(scope, receive, send)
            return
        usage = RequestUsage(recorder=recorder)
        token = _current.set(usage)
        exchange = exchange_of(scope)  # the request path notes the status: no send wrapper
        status = 500
        app_send = send
        if exchange is None:  # an app without the request path
            async def app_send(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)
        try:
            await self.app(scope, receive, app_send)
        finally:
            _current.reset(token)
            if exchange is not None:
                status = exchange.status or 500
            route = getattr(scope.get("route"), "path", None) or "(unmatched)"
            recorder.record(usage, route=f"{scope['method']} {route}", status=status)
            principal = auth.current()
            if principal.model_seconds_windows():
                gate = getattr(scope["app"].state, "auth_gate", None)
                if gate is not None:
                    # work that outlives the request (async jobs, videos) counts when it ends
                    usage.count_seconds = lambda s: gate.add_model_seconds(principal, s)
                    seconds = sum(usage.model_seconds.values())
                    if seconds:
                        await gate.add_model_seconds(principal, seconds)
