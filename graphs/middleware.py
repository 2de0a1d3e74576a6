"""Hardening middlewares for the ingress: pure ASGI (no ``BaseHTTPMiddleware``, which buffers
and breaks streaming), each answering with the project's error envelope.

- `RequestId`: takes ``X-Request-ID`` (or makes one), keeps it in a contextvar for logs and
  answers with it.
- `BodySizeLimit`: 413 before reading a body whose ``Content-Length`` is over the limit, and
  413 as soon as a streamed (chunked) body grows past it.
- `RequestTimeout`: 504 when no response has started within the deadline; the handler task
  is cancelled, and so are the deployment calls it made through a `CancellableHandle`.
- `cors_middleware`: Starlette's CORSMiddleware built from an allow-list, closed by default.
- `ErrorEnvelopeGuard`: an exception that escapes the app (a dead replica's RayActorError,
  a bug) is answered here with the envelope (`errors.to_api_error`), never re-raised to
  Serve. `keep_envelope_handlers`: a downstream deployment's full queue (BackPressureError)
  stays our 503 envelope; Serve would otherwise register its plain-text handler over ours.
- `AdmissionControl`: 503 + ``Retry-After`` (the envelope) for requests over this replica's
  in-flight limit (by default half the deployment's ``max_ongoing_requests``), so Serve's
  own queue-full answer (a plain-text 503 from the proxy) is not reached under overload.
- `install(app, HardeningConfig)`: all of them (and `observability.MetricsMiddleware`) in
  the right order. A Serve ingress freezes its FastAPI app when the class is decorated, so
  call it at module level, before ``@serve.ingress(app)``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphs.errors import DOWNSTREAM_FULL, ApiError, is_backpressure, respond
from graphs.observability import MetricsMiddleware, request_id_var

logger = logging.getLogger("ray.serve")

MiB = 1024 * 1024
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def _format_bytes(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


# ---------------------------------------------------------------------------------------------
# Request id
# ---------------------------------------------------------------------------------------------


def _inside_serve_replica() -> bool:
    if "ray.serve" not in sys.modules:
        return False
    try:
        from ray.serve.context import _get_internal_replica_context

        return _get_internal_replica_context() is not None
    except ImportError:
        return False


class RequestId:
    """Puts the request id in `observability.request_id_var` (for logs) and in the response.

    The id is the client's ``X-Request-ID`` when it is 1-128 characters of
    ``[A-Za-z0-9._:@/+=-]``, else a new uuid4 (an id lands in every log line: no control
    characters or megabyte headers). `echo`: ``"auto"`` sets the response header except
    inside a Serve replica, where Serve's HTTP server (proxy or direct ingress) already adds
    ``X-Request-ID`` to every response and a second one would make the header a list."""

    def __init__(self, app: ASGIApp, *, header: str = REQUEST_ID_HEADER,
                 echo: bool | str = "auto"):
        if echo not in (True, False, "auto"):
            raise ValueError(f"echo must be True, False or 'auto', got {echo!r}")
        self.app = app
        self.header = header
        self._echo = echo

    @property
    def echo(self) -> bool:
        return (not _inside_serve_replica()) if self._echo == "auto" else bool(self._echo)

    @staticmethod
    def valid(request_id: str | None) -> bool:
        return bool(request_id) and _REQUEST_ID_RE.fullmatch(request_id) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(self.header)
        request_id = given if self.valid(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        echo = self.echo

        async def send_with_id(message: Message) -> None:
            if echo and message["type"] == "http.response.start":
                MutableHeaders(scope=message)[self.header] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


# ---------------------------------------------------------------------------------------------
# Body size
# ---------------------------------------------------------------------------------------------


class RequestTooLarge(ApiError, StarletteHTTPException):
    """413 raised from ``receive()`` when a streamed body passes the limit. It is also a
    Starlette HTTPException so FastAPI's body parsing re-raises it instead of turning it
    into "There was an error parsing the body" (400); errors.to_api_error maps it as the
    ApiError it is."""

    def __init__(self, limit: int, *, received: int | None = None):
        got = (f"Content-Length is {received} bytes" if received is not None
               else "the body grew past that")
        ApiError.__init__(
            self, 413, f"request body too large: the limit is {_format_bytes(limit)} "
            f"({limit} bytes) and {got}; send smaller or fewer files",
            code="request_too_large", headers={"Connection": "close"})
        self.status_code = 413
        self.detail = self.message
        self.limit = limit


class BodySizeLimit:
    """Rejects request bodies larger than `max_bytes` with 413: by ``Content-Length``
    before anything is read (the handler never runs), or, for chunked or lying bodies,
    as soon as the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, *, max_bytes: int):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            try:
                length = int(declared)
                if length < 0:
                    raise ValueError
            except ValueError:
                await ApiError(400, f"Content-Length must be a non-negative integer, got "
                               f"{declared[:40]!r}", code="invalid_content_length",
                               headers={"Connection": "close"}).response()(scope, receive,
                                                                          send)
                return
            if length > self.max_bytes:
                await RequestTooLarge(self.max_bytes, received=length).response()(
                    scope, receive, send)
                return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            if received > self.max_bytes:
                raise RequestTooLarge(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except RequestTooLarge as exc:
            if started:
                raise
            await exc.response()(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# Timeout, with cancellation of downstream deployment calls
# ---------------------------------------------------------------------------------------------

# The deployment calls made by the request being handled (set by RequestTimeout).
_downstream: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "photostudio_downstream_calls", default=None)


def track_downstream(response: Any) -> Any:
    """Register a DeploymentResponse (or response generator) made while handling the current
    request, so `RequestTimeout` can cancel it. Returns `response`. Outside a request (no
    RequestTimeout around) it only returns it."""
    calls = _downstream.get()
    if calls is not None:
        calls.append(response)
    return response


def detached_context() -> contextvars.Context:
    """A copy of the current context in which deployment calls are not tied to the request
    being handled: for background work that outlives it (an async job started by a 202),
    ``asyncio.create_task(work, context=detached_context())``, so the request's timeout
    never cancels it."""
    context = contextvars.copy_context()
    context.run(_downstream.set, None)
    return context


def cancel_downstream(calls: Iterable[Any]) -> int:
    """Cancel deployment calls (best effort, as Serve's `.cancel()`); returns how many."""
    cancelled = 0
    for call in calls:
        cancel = getattr(call, "cancel", None)
        if cancel is None:
            continue
        try:
            cancel()
            cancelled += 1
        except Exception as exc:  # one failed cancel must not stop the others or the 504
            logger.warning("cancelling a downstream call failed: %s: %s",
                           type(exc).__name__, exc)
    return cancelled


class CancellableHandle:
    """A DeploymentHandle whose calls are registered with `track_downstream`, so a request
    that times out in `RequestTimeout` also cancels the model work it started. Cancelling
    the ingress's own coroutine alone would not: an awaited `DeploymentResponse` keeps
    running in its replica unless `.cancel()` is called.

    Wrap the handles once (``CancellableHandle(generator)``); method access, ``.options()``
    and ``.remote()`` behave as on the handle."""

    def __init__(self, handle: Any):
        self._handle = handle.unwrap() if isinstance(handle, CancellableHandle) else handle

    def unwrap(self) -> Any:
        return self._handle

    def options(self, *args: Any, **kwargs: Any) -> CancellableHandle:
        return CancellableHandle(self._handle.options(*args, **kwargs))

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return track_downstream(self._handle.remote(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._handle, name)
        # A method handle (`handle.generate`) is itself a handle: wrap it too.
        if hasattr(attr, "remote") and hasattr(attr, "options"):
            return CancellableHandle(attr)
        return attr

    def __repr__(self) -> str:
        return f"CancellableHandle({self._handle!r})"


class RequestTimeout:
    """Ends a request that has not started its response within `seconds` with 504 (the
    error envelope). The handler runs in its own task; at the deadline that task is
    cancelled, with every deployment call registered through `track_downstream`
    (`CancellableHandle`), and the 504 goes out after the handler has unwound (at most
    `cancel_grace_s`; a handler that ignores cancellation is left behind and cannot send).

    Once a response has started (streams, file downloads) the deadline no longer applies.
    Exempt entirely: paths in `exempt_paths` (exact, or a prefix ending in ``*``), and
    requests that ask for ``Accept: text/event-stream`` (Server-Sent Events)."""

    def __init__(self, app: ASGIApp, *, seconds: float, exempt_paths: Sequence[str] = (),
                 exempt_event_streams: bool = True, cancel_grace_s: float = 5.0):
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        if cancel_grace_s < 0:
            raise ValueError(f"cancel_grace_s must be >= 0, got {cancel_grace_s!r}")
        self.app = app
        self.seconds = float(seconds)
        self.exact = {p for p in exempt_paths if not p.endswith("*")}
        self.prefixes = tuple(p[:-1] for p in exempt_paths if p.endswith("*"))
        self.exempt_event_streams = exempt_event_streams
        self.cancel_grace_s = cancel_grace_s

    def exempt(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        if path in self.exact or (self.prefixes and path.startswith(self.prefixes)):
            return True
        if self.exempt_event_streams:
            accept = Headers(scope=scope).get("accept", "")
            return "text/event-stream" in accept.lower()
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        started = False
        timed_out = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out and not started:
                # The 504 owns the response now; the cancelled handler's late sends drop.
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        calls: list[Any] = []
        token = _downstream.set(calls)
        try:
            task = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        finally:
            _downstream.reset(token)  # the task copied the context (and shares the list)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.seconds)
            if not done and started:
                await task  # the response is under way: let it finish
                return
            if done:
                task.result()  # re-raise what the handler raised
                return
            timed_out = True
            task.cancel()
            cancelled = cancel_downstream(calls)
            await asyncio.wait({task}, timeout=self.cancel_grace_s)
            if task.done() and not task.cancelled() and task.exception() is not None:
                logger.info("handler raised while being cancelled for timeout: %r",
                            task.exception())
        except asyncio.CancelledError:  # our caller gave up (client gone): stop the handler
            task.cancel()
            cancel_downstream(calls)
            raise
        if started:  # the handler managed to start a response before the deadline check
            return
        logger.warning("request %s %s timed out after %.1f s; cancelled the handler and %d "
                       "downstream call(s)", scope.get("method"), scope.get("path"),
                       self.seconds, cancelled)
        await ApiError(504, f"the request did not complete within {self.seconds:g} s and "
                       "was cancelled; retry, or ask for less work (smaller size, fewer "
                       "images or steps)", code="timeout").response()(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# Exceptions that escape the app
# ---------------------------------------------------------------------------------------------


class ErrorEnvelopeGuard:
    """Answers an exception that escapes the app with the error envelope, and does not
    re-raise it.

    FastAPI's handlers cover the exception classes registered with them; anything else (a
    replica that died: RayActorError; a bug) would reach Starlette's ServerErrorMiddleware,
    which answers and then re-raises it into Serve's replica. Here it becomes
    `errors.to_api_error(exc)` (503 + Retry-After for a dead replica, 500 for a bug, logged)
    and goes no further. If the response had already started, the exception is re-raised
    (the status is out; the connection is cut)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            await respond(scope, exc)(scope, receive, send)


def _serve_unavailable_exceptions() -> tuple[type[BaseException], ...]:
    try:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
    except ImportError:
        return ()
    return (BackPressureError, DeploymentUnavailableError)


def keep_envelope_handlers(app: Any) -> None:
    """Answer Serve's BackPressureError (a downstream deployment's queue is full) and
    DeploymentUnavailableError with the envelope (`errors.to_api_error`: 503 +
    Retry-After), and keep it that way inside a Serve replica.

    Serve registers its own handlers for exactly these two classes on an ingress's FastAPI
    app when the replica starts (after our code ran), answering plain text ("Request dropped
    due to backpressure ...") without Retry-After; Starlette picks the handler of the exact
    class, so a generic handler of ours never sees them. The app's `add_exception_handler` is
    therefore wrapped: later registrations for these two classes are ignored."""
    classes = _serve_unavailable_exceptions()
    if not classes or getattr(app, "_photostudio_envelope_handlers", False):
        return

    async def envelope(request: Any, exc: Exception) -> Any:
        return respond(request.scope, exc)

    for cls in classes:
        app.add_exception_handler(cls, envelope)
    original = app.add_exception_handler

    def add_exception_handler(exc_class_or_status_code: Any, handler: Any) -> None:
        if exc_class_or_status_code in classes:
            logger.debug("keeping the envelope handler for %s", exc_class_or_status_code)
            return
        original(exc_class_or_status_code, handler)

    app.add_exception_handler = add_exception_handler
    app._photostudio_envelope_handlers = True


# ---------------------------------------------------------------------------------------------
# Admission control (load shedding before Serve's own queue is full)
# ---------------------------------------------------------------------------------------------


def _serve_max_ongoing_requests() -> int | None:
    """This Serve replica's ``max_ongoing_requests`` (None outside a replica)."""
    if "ray.serve" not in sys.modules:
        return None
    try:
        from ray.serve.context import _get_internal_replica_context

        context = _get_internal_replica_context()
        return int(context._deployment_config.max_ongoing_requests) if context else None
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


def admission_limit(max_ongoing: int) -> int:
    """Requests admitted at once by a replica with this ``max_ongoing_requests``: half. The
    other half are slots for requests being shed at that moment (a burst arrives all at
    once, faster than they are answered) and for exempt probes."""
    return max(1, max_ongoing // 2)


class AdmissionControl:
    """Sheds load with 503 + ``Retry-After`` in the envelope once `max_in_flight` requests
    are in this replica (a response still streaming counts until it ends).

    Why: when every ingress replica has ``max_ongoing_requests`` requests, Serve's proxy
    queues the next ones and, past ``max_queued_requests``, answers a plain-text 503 that is
    not our envelope. Admitting fewer (`admission_limit`: half) keeps a replica below
    Serve's limit, so the excess reaches this middleware and gets the envelope at once
    instead of waiting in the proxy's queue. Sizing: a burst of B requests arriving at once
    at one replica is answered with the envelope while B <= ``max_ongoing_requests`` +
    ``max_queued_requests``; beyond that Serve answers first.

    `max_in_flight`: None (default) derives it from the Serve replica's
    ``max_ongoing_requests`` (read per request, so a redeploy that changes it applies; no
    limit outside Serve); 0 turns shedding off. `exempt_paths` (exact, or prefix ending in
    ``*``) are never shed and not counted: health probes must answer under overload.

    Route holds: once a request on a route in `hold_paths` (POST, exact or prefix ending in
    ``*``) ends because its model deployment's queue was full (Serve's BackPressureError,
    answered 503 ``overloaded``), new requests on that route are shed here for `hold_s`
    before their body is read. Without it each of them would be read, decoded, checked
    against the key's quotas and recorded before the same BackPressureError, which under 10x
    overload costs the replica more CPU than the requests it can serve (bench/overload.py).
    The deployment's own queue keeps it busy meanwhile; routes that do not always need a
    model (chat) are not held by default."""

    def __init__(self, app: ASGIApp, *, max_in_flight: int | None = None,
                 retry_after_s: int = 1, exempt_paths: Sequence[str] = (),
                 hold_paths: Sequence[str] = (), hold_s: float = 0.5):
        if max_in_flight is not None and (isinstance(max_in_flight, bool)
                                          or max_in_flight < 0):
            raise ValueError(f"max_in_flight must be >= 0 or None, got {max_in_flight!r}")
        if retry_after_s < 1:
            raise ValueError(f"retry_after_s must be >= 1, got {retry_after_s!r}")
        self.app = app
        self._max_in_flight = max_in_flight
        self.retry_after_s = int(retry_after_s)
        self.exact = {p for p in exempt_paths if not p.endswith("*")}
        self.prefixes = tuple(p[:-1] for p in exempt_paths if p.endswith("*"))
        self.in_flight = 0
        self.rejected = 0
        if hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {hold_s!r}")
        self.hold_s = float(hold_s)
        self.hold_exact = {p for p in hold_paths if not p.endswith("*")}
        self.hold_prefixes = tuple(p[:-1] for p in hold_paths if p.endswith("*"))
        self.held_until: dict[str, float] = {}  # path -> monotonic time its hold ends

    @property
    def limit(self) -> int | None:
        """Requests admitted at once; None: no limit."""
        if self._max_in_flight is not None:
            return self._max_in_flight or None
        ongoing = _serve_max_ongoing_requests()
        if ongoing is None:
            return None
        return admission_limit(ongoing)

    def exempt(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        return path in self.exact or bool(self.prefixes and path.startswith(self.prefixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        limit = self.limit
        if limit is not None and self.in_flight >= limit:
            await self._shed(scope, receive, send, f"the gateway is at capacity ({limit} "
                             "requests in progress on this replica)")
            return
        path = scope.get("path", "")
        holdable = self.hold_s > 0 and scope.get("method") == "POST" and self.holds(path)
        if holdable and self.held_until:
            until = self.held_until.get(path)
            if until is not None and time.monotonic() < until:
                await self._shed(scope, receive, send, f"the model deployment behind {path} "
                                 "is at capacity (its queue is full)")
                return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            if holdable and is_backpressure(exc):
                scope.setdefault("state", {})[DOWNSTREAM_FULL] = True
            raise
        finally:
            self.in_flight -= 1
            if holdable and scope.get("state", {}).get(DOWNSTREAM_FULL):
                self.held_until[path] = time.monotonic() + self.hold_s

    def holds(self, path: str) -> bool:
        return path in self.hold_exact or bool(self.hold_prefixes
                                               and path.startswith(self.hold_prefixes))

    async def _shed(self, scope: Scope, receive: Receive, send: Send, why: str) -> None:
        self.rejected += 1
        await ApiError(503, f"{why}; retry after {self.retry_after_s} s", code="overloaded",
                       headers={"Retry-After": str(self.retry_after_s)}
                       ).response()(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# CORS
# ---------------------------------------------------------------------------------------------

_ORIGIN_RE = re.compile(r"https?://[^/\s*]+")
CORS_METHODS = ("GET", "POST", "OPTIONS")
CORS_HEADERS = ("Authorization", "Content-Type", "X-Request-ID", "OpenAI-Organization",
                "OpenAI-Project")
CORS_EXPOSE = ("X-Request-ID", "Retry-After")


def cors_middleware(allow_origins: Sequence[str] = (), *, allow_origin_regex: str | None = None,
                    allow_credentials: bool = False, max_age: int = 600) -> Middleware:
    """Starlette's CORSMiddleware from an allow-list. Empty (the default) is closed: no
    ``Access-Control-Allow-Origin`` is ever sent and preflights get 400. Origins are
    ``scheme://host[:port]`` exactly as browsers send them, or ``*`` (not with
    credentials)."""
    origins = list(allow_origins)
    for origin in origins:
        if origin != "*" and not _ORIGIN_RE.fullmatch(origin):
            raise ValueError(f"cors origin {origin!r} must be 'scheme://host[:port]' (no path "
                             "or trailing slash) or '*'")
    if "*" in origins and allow_credentials:
        raise ValueError("cors: allow_credentials cannot be used with origin '*'; list the "
                         "origins")
    if allow_origin_regex is not None:
        re.compile(allow_origin_regex)  # fail at start, not on the first request
    return Middleware(CORSMiddleware, allow_origins=origins,
                      allow_origin_regex=allow_origin_regex,
                      allow_methods=list(CORS_METHODS), allow_headers=list(CORS_HEADERS),
                      expose_headers=list(CORS_EXPOSE), allow_credentials=allow_credentials,
                      max_age=max_age)


# ---------------------------------------------------------------------------------------------
# Settings and installation
# ---------------------------------------------------------------------------------------------


class HardeningConfig(BaseModel):
    """What `install` needs. `from_settings` reads the same names from `graphs.settings`
    (``PHOTOSTUDIO_MAX_REQUEST_BYTES``, ...) where they exist, else these defaults."""

    model_config = ConfigDict(extra="forbid")

    max_request_bytes: int = Field(64 * MiB, ge=1, description="whole request body → 413")
    request_timeout_s: float = Field(
        120.0, gt=0, description="until the response starts → 504; keep it below the Serve "
        "proxy's request_timeout_s so the client gets the envelope")
    timeout_exempt_paths: list[str] = Field(default_factory=list)
    cors_allow_origins: list[str] = Field(default_factory=list, description="empty: closed")
    cors_allow_origin_regex: str | None = None
    cors_allow_credentials: bool = False
    metrics: bool = True
    max_in_flight: int | None = Field(
        None, ge=0, description="requests admitted at once per ingress replica, more → 503 + "
        "Retry-After; None: half the replica's max_ongoing_requests; 0: off")
    admission_retry_after_s: int = Field(1, ge=1, description="Retry-After of those 503s")
    admission_exempt_paths: list[str] = Field(
        default_factory=lambda: ["/healthz", "/readyz", "/metrics"],
        description="never shed (health probes)")
    admission_hold_paths: list[str] = Field(
        default_factory=lambda: ["/v1/images/*"],
        description="POST routes shed for admission_hold_s after their model deployment's "
        "queue was full (AdmissionControl)")
    admission_hold_s: float = Field(0.5, ge=0, description="0: no route holds")

    @field_validator("cors_allow_origins", "timeout_exempt_paths", "admission_exempt_paths",
                     "admission_hold_paths", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):  # "a, b" from an environment variable
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @classmethod
    def from_settings(cls, settings: Any = None) -> HardeningConfig:
        if settings is None:
            from graphs.settings import Settings

            settings = Settings()
        values = {name: getattr(settings, name) for name in cls.model_fields
                  if getattr(settings, name, None) is not None}
        return cls(**values)


def install(app: Any, config: HardeningConfig | None = None) -> None:
    """Add the middlewares to a Starlette/FastAPI app. Outermost first: RequestId (every
    answer carries the id) → Metrics (every status counted, 413/503/504 included) → CORS
    (error answers carry CORS headers too) → ErrorEnvelopeGuard (escaping exceptions become
    the envelope) → AdmissionControl (sheds before any work) → RequestTimeout (covers
    reading the body) → BodySizeLimit → the app."""
    config = config or HardeningConfig()
    # add_middleware puts each new one outermost: add innermost first.
    app.add_middleware(BodySizeLimit, max_bytes=config.max_request_bytes)
    app.add_middleware(RequestTimeout, seconds=config.request_timeout_s,
                       exempt_paths=list(config.timeout_exempt_paths))
    app.add_middleware(AdmissionControl, max_in_flight=config.max_in_flight,
                       retry_after_s=config.admission_retry_after_s,
                       exempt_paths=list(config.admission_exempt_paths),
                       hold_paths=list(config.admission_hold_paths),
                       hold_s=config.admission_hold_s)
    app.add_middleware(ErrorEnvelopeGuard)
    if hasattr(app, "add_exception_handler"):
        keep_envelope_handlers(app)
    cors = cors_middleware(config.cors_allow_origins,
                           allow_origin_regex=config.cors_allow_origin_regex,
                           allow_credentials=config.cors_allow_credentials)
    app.add_middleware(cors.cls, *cors.args, **cors.kwargs)
    if config.metrics:
        app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestId)


__all__ = [
    "AdmissionControl", "BodySizeLimit", "CancellableHandle", "ErrorEnvelopeGuard",
    "HardeningConfig", "RequestId",
    "RequestTimeout", "RequestTooLarge", "cancel_downstream", "cors_middleware",
    "admission_limit", "detached_context", "install", "keep_envelope_handlers",
    "track_downstream",
]
