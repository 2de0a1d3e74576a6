"""Hardening middleware for the ingress: ONE pure-ASGI layer, `RequestPath` (no
``BaseHTTPMiddleware``, which buffers and breaks streaming), answering with the project's error
envelope. `install(app, HardeningConfig)` puts it on the app. Outermost first, what it does:

- security headers: ``X-Content-Type-Options: nosniff`` and ``Cache-Control: no-store``
  (unless the route set its own) on every response (`_response_headers`);
- request id: takes ``X-Request-ID`` (or makes one), keeps it in a contextvar for logs and
  answers with it (`_request_id`);
- metrics (`observability.MetricsMiddleware`'s counters) and CORS (Starlette's
  CORSMiddleware from an allow-list, `cors_middleware`: closed by default);
- the envelope guard: an exception that escapes the app (a dead replica's RayActorError, a
  bug) is answered with the envelope (`errors.to_api_error`), never re-raised to Serve.
  `keep_envelope_handlers`: a downstream deployment's full queue (BackPressureError) stays
  our 503 envelope; Serve would otherwise register its plain-text handler over ours;
- admission (`AdmissionControl`): 503 + ``Retry-After`` (the envelope) for requests over
  this replica's in-flight limit (by default half the deployment's ``max_ongoing_requests``),
  so Serve's own queue-full answer (a plain-text 503 from the proxy) is not reached under
  overload;
- cancel on disconnect: the client disconnects → the handler and its deployment calls are
  cancelled (synchronous requests too, not only streams);
- timeout: 504 when no response has started within the deadline; the handler is
  cancelled, and so are the deployment calls it made through a `CancellableHandle`;
- body size: 413 before reading a body whose ``Content-Length`` is over the limit
  (`_content_length_refusal`), and 413 as soon as a streamed (chunked) body grows past it;
- JSON depth: 400 for JSON bodies nested deeper than 64 (`common.safe_json`), before
  Python's recursive parser sees them;
- public origin (`PublicOrigin`): the scheme and Host of URLs in responses and redirects
  come from ``PHOTOSTUDIO_PUBLIC_BASE_URL``, trusted proxies, or an allow-list; never from
  any client;
- conditional requests: HEAD on every GET route; ``If-None-Match`` → 304 by ``ETag``
  (`_not_modified`).

A Serve ingress freezes its FastAPI app when the class is decorated, so call `install` at
module level, before ``@serve.ingress(app)``.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import itertools
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.safe_json import MAX_JSON_DEPTH, JsonTooDeep, json_depth_exceeds
from graphs.errors import (
    DOWNSTREAM_FULL,
    EXCHANGE,
    GATE_SEEN,
    ApiError,
    Exchange,
    is_backpressure,
    recorder_of,
    respond,
)
from graphs.observability import MetricsMiddleware, request_outcome
from graphs.serve_proxy import CALLBACK as SERVE_PROXY_CALLBACK
from graphs.serve_proxy import valid_request_id
from graphs.settings import Settings
from telemetry.logs import request_id_var
from telemetry.metrics import in_serve_replica

logger = logging.getLogger("ray.serve")

MiB = 1024 * 1024
REQUEST_ID_HEADER = "X-Request-ID"


class _Paths:
    """A set of request paths, each exact or a prefix ending in ``*``."""

    def __init__(self, paths: Sequence[str]):
        self.exact = {p for p in paths if not p.endswith("*")}
        self.prefixes = tuple(p[:-1] for p in paths if p.endswith("*"))

    def __contains__(self, path: str) -> bool:
        return path in self.exact or bool(self.prefixes and path.startswith(self.prefixes))


def _format_bytes(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


# ---------------------------------------------------------------------------------------------
# Request id
# ---------------------------------------------------------------------------------------------


_warned_unsanitized = False


def _request_id(given: str | None, echo: bool) -> str:
    """The request's id, for `telemetry.logs.request_id_var` (logs) and the response.

    The client's ``X-Request-ID`` (`given`) when it is 1-128 characters of
    ``[A-Za-z0-9._:@/+=-]`` (`serve_proxy.valid_request_id`), else a new uuid4 (an id lands
    in every log line: no control characters or megabyte headers). `echo` (whether the
    response gets the header) is false inside a Serve replica, where Serve's HTTP server
    (proxy or direct ingress) already adds ``X-Request-ID`` to every response and a second
    one would make the header a list.

    Serve's server echoes and logs the client's header as it is, before this middleware
    runs: `graphs.serve_proxy` (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``) drops invalid
    ids there. An invalid id seen here inside a replica means that is not set: logged once."""
    global _warned_unsanitized
    if valid_request_id(given):
        return given
    if given is not None and not echo and not _warned_unsanitized:
        _warned_unsanitized = True
        logger.warning("a client's X-Request-ID is not 1-128 characters of "
                       "[A-Za-z0-9._:@/+=-] and Serve's HTTP server echoes it as sent: set "
                       "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=%s in the environment "
                       "Ray starts in (graphs/serve_proxy.py)", SERVE_PROXY_CALLBACK)
    return uuid.uuid4().hex


class RequestHeaders(Headers):
    """Starlette's read-only request ``Headers`` with its lookups (``get``, ``[]``, ``in``)
    from an index made in one pass: `RequestPath` reads ten or so headers per request, each a
    scan of the list with Starlette's own. The first value of a repeated header wins, as
    there; `getlist`, `items` and the rest read the list as Starlette does. The index is
    keyed by the raw (ASGI: lower-case) names, as Starlette compares them; `repeated` says
    whether any name comes more than once."""

    def __init__(self, scope: Scope):
        raw = scope["headers"]
        if type(raw) is not list:  # as Starlette's: the scope's headers may be any iterable
            raw = scope["headers"] = list(raw)
        self._list = raw
        self._index: dict[bytes, bytes] = dict(reversed(raw))
        self.repeated = len(self._index) != len(raw)

    def get(self, key: str, default: Any = None) -> Any:
        value = self._index.get(_header_name(key))
        return default if value is None else value.decode("latin-1")

    def __getitem__(self, key: str) -> str:
        value = self._index.get(_header_name(key))
        if value is None:
            raise KeyError(key)
        return value.decode("latin-1")

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and _header_name(key) in self._index


_header_names: dict[str, bytes] = {}  # a lookup's name -> the raw name (the code's few)


def _header_name(key: str) -> bytes:
    name = _header_names.get(key)
    if name is None:
        name = key.lower().encode("latin-1")
        if len(_header_names) < 256:
            _header_names[key] = name
    return name


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


def _content_length_refusal(declared: str | None, max_bytes: int) -> ApiError | None:
    """The answer to a request whose ``Content-Length`` is not a non-negative integer (400)
    or is over `max_bytes` (413), given before anything is read (the handler never runs);
    None to go on. A chunked or lying body is cut off by `RequestPath` as soon as the bytes
    received pass the limit."""
    if declared is None:
        return None
    try:
        length = int(declared)
        if length < 0:
            raise ValueError
    except ValueError:
        return ApiError(400, f"Content-Length must be a non-negative integer, got "
                        f"{declared[:40]!r}", code="invalid_content_length",
                        headers={"Connection": "close"})
    if length > max_bytes:
        return RequestTooLarge(max_bytes, received=length)
    return None


# ---------------------------------------------------------------------------------------------
# Timeout, with cancellation of downstream deployment calls
# ---------------------------------------------------------------------------------------------

# The deployment calls made by the request being handled (set by `RequestPath`).
_downstream: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "photostudio_downstream_calls", default=None)


def track_downstream(response: Any) -> Any:
    """Register a DeploymentResponse (or response generator) made while handling the current
    request, so the request's timeout or its client's disconnect (`RequestPath`) can cancel
    it. Returns `response`. Outside a request (no RequestPath around) it only returns it."""
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
    that times out (or whose client leaves) in `RequestPath` also cancels the model work it
    started. Cancelling the ingress's own coroutine alone would not: an awaited
    `DeploymentResponse` keeps running in its replica unless `.cancel()` is called.

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


# ---------------------------------------------------------------------------------------------
# JSON nesting depth
# ---------------------------------------------------------------------------------------------


class JsonTooDeepError(ApiError, StarletteHTTPException):
    """400 ``json_too_deep`` raised from ``receive()`` when a JSON body nests deeper than the
    limit, checked as the handler finishes reading it (`safe_json.json_depth_exceeds`, no
    recursion), before anything parses it: Python's json recursion would otherwise raise
    ``RecursionError`` inside FastAPI's body parsing (or the handler's). Bodies are checked
    only when a handler reads them, so requests refused earlier (401, 413) cost nothing.
    Multipart fields that hold JSON are parsed with `safe_json.loads`. Also a Starlette
    HTTPException, so FastAPI's body parsing re-raises it (as `RequestTooLarge`)."""

    def __init__(self, max_depth: int):
        ApiError.__init__(self, 400, str(JsonTooDeep(max_depth, "the JSON request body")),
                          code="json_too_deep")
        self.status_code = 400
        self.detail = self.message


def _json_content_type(scope: Scope, headers: Headers | None = None) -> bool:
    """A body FastAPI parses as JSON: application/json, application/*+json, or none given."""
    content_type = (headers or Headers(scope=scope)).get("content-type")
    if not content_type:
        return True
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/")
                                          and main.endswith("+json"))


# ---------------------------------------------------------------------------------------------
# The public origin (scheme and host) URLs in responses are built from
# ---------------------------------------------------------------------------------------------

_HOST_RE = re.compile(r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
                      r"|\[[0-9A-Fa-f:.]{2,45}\])(?::(?P<port>[0-9]{1,5}))?")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _valid_host(value: str | None) -> str | None:
    """The lower-cased host name of a ``host[:port]`` value, or None when it is not one."""
    if not value:
        return None
    match = _HOST_RE.fullmatch(value)
    return match.group("name").lower() if match else None


def _last(value: str | None) -> str | None:
    """The last entry of a comma-separated forwarded header: the one the nearest proxy
    (the trusted one) set."""
    if not value:
        return None
    return value.rsplit(",", 1)[-1].strip() or None


def default_host(host: str, port: int) -> str:
    """``host:port`` of the configured listen address (``localhost`` for 0.0.0.0 / ::)."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "localhost"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port in (80, 443) else f"{host}:{port}"


def _parse_base_url(public_base_url: str) -> tuple[str, str]:
    parts = urlsplit(public_base_url)
    if parts.scheme not in ("http", "https") or _valid_host(parts.netloc) is None \
            or parts.query or parts.fragment:
        raise ValueError(f"public_base_url must be http(s)://host[:port][/path], got "
                         f"{public_base_url!r}")
    return parts.scheme, parts.netloc


# Set by the ingress replica from its config (`set_public_base_url`): wins over the
# middleware's own setting (the builder arg `public_base_url` arrives after install()).
_public_origin_override: tuple[str, str] | None = None


def set_public_base_url(public_base_url: str | None) -> None:
    """The replica's public base URL (e.g. the builder arg), for every `PublicOrigin`."""
    global _public_origin_override
    _public_origin_override = _parse_base_url(public_base_url) if public_base_url else None


class PublicOrigin:
    """Fixes the scheme and ``Host`` that everything downstream builds URLs from (asset URLs
    in responses via ``request.base_url``, Starlette's trailing-slash redirects), so a
    client's ``Host`` or ``X-Forwarded-*`` headers never choose the host of a URL the gateway
    returns (or stores in a job's result, shown to others).

    - `public_base_url` set (``PHOTOSTUDIO_PUBLIC_BASE_URL``, or `set_public_base_url`;
      production must set it): its scheme and host, always.
    - Else, from a peer in `trusted_proxies` (IPs or CIDRs; ``*`` = any; default none):
      ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` (the last entry: the trusted proxy's).
    - Else the request's ``Host`` if its name is in `allowed_hosts` (exact, ``*.suffix``,
      or ``*``), which always holds localhost, 127.0.0.1 and [::1] (local use: any port);
      any other host becomes `fallback_host` (the configured listen address), logged once.
      The scheme is the connection's; an ``X-Forwarded-Proto`` from an untrusted peer makes
      it ``http`` (uvicorn may already have applied the header; the original is unknown).

    Note: Serve's uvicorn applies ``X-Forwarded-For`` / ``-Proto`` from 127.0.0.1 peers (its
    ``FORWARDED_ALLOW_IPS`` default), and behind Serve's HAProxy every peer is 127.0.0.1,
    so the client address seen here can be a client's claim: prefer `public_base_url` to
    `trusted_proxies` there."""

    _warned = False

    def __init__(self, *, public_base_url: str | None = None,
                 trusted_proxies: Sequence[str] = (), allowed_hosts: Sequence[str] = (),
                 fallback_host: str = "localhost:8000"):
        self.fixed = _parse_base_url(public_base_url) if public_base_url else None
        self.trust_all = "*" in trusted_proxies
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies
                        if p != "*"]
        names = {h.lower() for h in (*LOOPBACK_HOSTS, *allowed_hosts)}
        self.any_host = "*" in names
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))
        self.names = {n for n in names if not n.startswith("*")}
        if _valid_host(fallback_host) is None:
            raise ValueError(f"fallback_host must be host[:port], got {fallback_host!r}")
        self.fallback_host = fallback_host
        self._hosts: dict[str, bool] = {}  # Host value -> allowed (`allowed_host`)

    def trusted_peer(self, scope: Scope) -> bool:
        if self.trust_all:
            return True
        client = scope.get("client")
        if not self.trusted or not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    def allowed(self, name: str) -> bool:
        return self.any_host or name in self.names or (
            bool(self.suffixes) and name.endswith(self.suffixes))

    def allowed_host(self, host: str) -> bool:
        """Whether a ``Host`` value is a valid ``host[:port]`` of an allowed name; the answer
        remembered per value (bounded: a client picks the values)."""
        known = self._hosts.get(host)
        if known is None:
            name = _valid_host(host)
            known = name is not None and self.allowed(name)
            if len(self._hosts) >= 1024:
                self._hosts.clear()
            self._hosts[host] = known
        return known

    def origin(self, scope: Scope, headers: Headers | None = None) -> tuple[str, str]:
        """(scheme, host[:port]) for this request."""
        if _public_origin_override is not None:
            return _public_origin_override
        if self.fixed is not None:
            return self.fixed
        headers = headers or Headers(scope=scope)
        host = headers.get("host")
        forwarded_proto = headers.get("x-forwarded-proto")
        if self.trusted_peer(scope):
            proto = (_last(forwarded_proto) or "").lower()
            scheme = proto if proto in ("http", "https") else scope.get("scheme", "http")
            forwarded_host = _last(headers.get("x-forwarded-host"))
            if _valid_host(forwarded_host) is not None:
                return scheme, forwarded_host
            if _valid_host(host) is not None:
                return scheme, host
            return scheme, self.fallback_host
        scheme = "http" if forwarded_proto is not None else scope.get("scheme", "http")
        if scheme not in ("http", "https"):
            scheme = "http"
        if host is not None and self.allowed_host(host):
            return scheme, host
        if host is not None and not PublicOrigin._warned:
            PublicOrigin._warned = True
            logger.warning("Host %.80r is not an allowed host: URLs in responses use %s "
                           "instead. Set PHOTOSTUDIO_PUBLIC_BASE_URL (production must) or add "
                           "the name to PHOTOSTUDIO_ALLOWED_HOSTS", host, self.fallback_host)
        return scheme, self.fallback_host

    def apply(self, scope: Scope, headers: Headers | None = None) -> None:
        """Set the request's scheme and ``Host`` to `origin`'s, in place: scope["state"]
        (flags set inside, read outside) stays shared."""
        scheme, host = self.origin(scope, headers)
        scope["scheme"] = scheme
        raw = host.encode("latin-1")
        if isinstance(headers, RequestHeaders) and not headers.repeated \
                and headers._index.get(b"host") == raw:
            return  # the request's one Host (allowed, or the public one): as it is
        hosts = [v for k, v in scope.get("headers", []) if k == b"host"]
        if hosts == [raw]:
            return
        scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k != b"host"]
        scope["headers"].append((b"host", raw))


# ---------------------------------------------------------------------------------------------
# HEAD, conditional GET, and the headers every response carries
# ---------------------------------------------------------------------------------------------

# Not sent with a 304 (RFC 9110 15.4.5: it describes the stored representation, no body).
_NOT_ON_304 = frozenset({b"content-length", b"content-type", b"content-encoding",
                         b"content-range", b"content-disposition", b"accept-ranges",
                         b"transfer-encoding"})


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith(("W/", "w/")) else tag


def etag_matches(if_none_match: str | None, etag: str | None) -> bool:
    """``If-None-Match`` against an ETag, by the weak comparison (RFC 9110 13.1.2)."""
    if not if_none_match or not etag:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(tag) == wanted for tag in if_none_match.split(","))


def _not_modified(message: Message, if_none_match: str | None) -> Message | None:
    """Conditional GET: the ``http.response.start`` of a 200 or 206 whose ``ETag`` matches
    `if_none_match` becomes ``304 Not Modified`` with that ETag (and Cache-Control, Vary,
    ...) and without the headers that describe a body; None when it stays as it is. Routes
    that can answer a 304 more cheaply (before fetching bytes) may do so; this makes every
    route with an ETag correct. (And ``HEAD`` on every ``GET`` route, FastAPI registering GET
    alone: `RequestPath` runs it as a GET and sends the same status and headers, no body.)"""
    if if_none_match is None or message["status"] not in (200, 206):
        return None
    etag = Headers(raw=list(message.get("headers", []))).get("etag")
    if not etag_matches(if_none_match, etag):
        return None
    return {**message, "status": 304, "headers": [
        (k, v) for k, v in message.get("headers", []) if k.lower() not in _NOT_ON_304]}


def _response_headers(message: Message, cache_control: bytes, request_id: str | None,
                      extra: list[tuple[bytes, bytes]] = ()) -> None:
    """The headers every response gets, in its ``http.response.start`` `message`:
    ``X-Content-Type-Options: nosniff`` and, unless the route set its own, `cache_control`
    (``no-store``: API answers carry a project's data, or a bearer asset URL's bytes, and
    must not be kept by shared caches or on disk; the asset route sets ``private, max-age``,
    bounded by the URL's expiry, for signed asset URLs); ``X-Request-ID`` when `request_id` is
    given (replacing any other); and the `extra` headers inner layers asked for
    (`Exchange.headers`), each unless the answer has it already."""
    raw = list(message.get("headers", ()))
    names = {name.lower() for name, _ in raw}
    if b"x-content-type-options" not in names:
        raw.append((b"x-content-type-options", b"nosniff"))
    if b"cache-control" not in names:
        raw.append((b"cache-control", cache_control))
    for name, value in extra:
        if name not in names:
            raw.append((name, value))
    if request_id is not None:
        raw = [(k, v) for k, v in raw if k.lower() != b"x-request-id"]
        raw.append((b"x-request-id", request_id.encode("latin-1")))
    message["headers"] = raw


# ---------------------------------------------------------------------------------------------
# Exceptions that escape the app
# ---------------------------------------------------------------------------------------------


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
    """`RequestPath`'s admission decision and its state (the in-flight count, the route
    holds): load is shed with 503 + ``Retry-After`` in the envelope once `max_in_flight`
    requests are in this replica (a response still streaming counts until it ends).

    Why: when every ingress replica has ``max_ongoing_requests`` requests, Serve's proxy
    queues the next ones and, past ``max_queued_requests``, answers a plain-text 503 that is
    not our envelope. Admitting fewer (`admission_limit`: half) keeps a replica below
    Serve's limit, so the excess reaches the middleware and gets the envelope at once
    instead of waiting in the proxy's queue. Sizing: a burst of B requests arriving at once
    at one replica is answered with the envelope while B <= ``max_ongoing_requests`` +
    ``max_queued_requests``; beyond that Serve answers first.

    `max_in_flight`: None (default) derives it from the Serve replica's
    ``max_ongoing_requests`` (read per request, so a redeploy that changes it applies; no
    limit outside Serve); 0 turns shedding off. `exempt_paths` (exact, or prefix ending in
    ``*``) are never shed and not counted: health probes must answer under overload.

    Route holds: once a request on a route in `hold_paths` (POST, exact or prefix ending in
    ``*``) ends because its model deployment's queue was full (Serve's BackPressureError,
    answered 503 ``overloaded``), new requests on that route are shed for `hold_s`
    before their body is read. Without it each of them would be read, decoded, checked
    against the key's quotas and recorded before the same BackPressureError, which under 10x
    overload costs the replica more CPU than the requests it can serve (bench/overload.py).
    The deployment's own queue keeps it busy meanwhile; routes that do not always need a
    model (chat) are not held by default."""

    LIMIT_READ_S = 1.0

    def __init__(self, *, max_in_flight: int | None = None,
                 retry_after_s: int = 1, exempt_paths: Sequence[str] = (),
                 hold_paths: Sequence[str] = (), hold_s: float = 0.5):
        if max_in_flight is not None and (isinstance(max_in_flight, bool)
                                          or max_in_flight < 0):
            raise ValueError(f"max_in_flight must be >= 0 or None, got {max_in_flight!r}")
        if retry_after_s < 1:
            raise ValueError(f"retry_after_s must be >= 1, got {retry_after_s!r}")
        self._max_in_flight = max_in_flight
        self.retry_after_s = int(retry_after_s)
        self.exempt_paths = _Paths(exempt_paths)
        self.in_flight = 0
        self.rejected = 0
        if hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {hold_s!r}")
        self.hold_s = float(hold_s)
        self.hold_paths = _Paths(hold_paths)
        self.held_until: dict[str, float] = {}  # path -> monotonic time its hold ends
        self._limit: int | None = None
        self._limit_read_until = float("-inf")

    @property
    def limit(self) -> int | None:
        """Requests admitted at once; None: no limit. From the replica's configuration, read
        again at most every `LIMIT_READ_S` (a redeploy that changes it applies)."""
        if self._max_in_flight is not None:
            return self._max_in_flight or None
        now = time.monotonic()
        if now < self._limit_read_until:
            return self._limit
        ongoing = _serve_max_ongoing_requests()
        self._limit = None if ongoing is None else admission_limit(ongoing)
        self._limit_read_until = now + self.LIMIT_READ_S
        return self._limit

    def exempt(self, scope: Scope) -> bool:
        return scope.get("path", "") in self.exempt_paths

    def holdable(self, scope: Scope) -> bool:
        """A request whose route a full model queue holds (a POST on `hold_paths`)."""
        return self.hold_s > 0 and scope["method"] == "POST" and scope["path"] in self.hold_paths

    def refusal(self, scope: Scope, holdable: bool) -> str | None:
        """Why this (not exempt) request is shed now; None: it is admitted."""
        limit = self.limit
        if limit is not None and self.in_flight >= limit:
            return f"the gateway is at capacity ({limit} requests in progress on this replica)"
        if holdable and self.held_until:
            path = scope["path"]
            until = self.held_until.get(path)
            if until is not None and time.monotonic() < until:
                return f"the model deployment behind {path} is at capacity (its queue is full)"
        return None

    def hold(self, path: str) -> None:
        """Hold `path` for `hold_s`: its model deployment's queue was full."""
        self.held_until[path] = time.monotonic() + self.hold_s

    async def shed(self, scope: Scope, receive: Receive, send: Send, why: str) -> None:
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
# All of the above in one layer: what `install` puts on the app
# ---------------------------------------------------------------------------------------------

# A request without a body that is still running after this long gets a task reading
# ``receive()`` for the client's disconnect (`RequestPath`); one that ends sooner never does.
# 0.25 s, not less: under load (concurrency 32 on 2 cores) no-model requests wait 20-90 ms
# for the event loop, and at 0.05 s many of them started a watcher (a task and a queue) for
# nothing; a client that leaves a model call is still noticed within 0.25 s.
WATCH_DISCONNECT_AFTER_S = 0.25


class _Watchlist:
    """The requests on one event loop that may run long enough to be watched (`RequestPath`)
    and the callback each gets then: one timer for all of them, not one per request (a timer
    per request, set and cancelled: ~1.1 us against ~0.2 for an entry here, timeit;
    BENCHMARKS.md, issue #20). Requests fall due in the order they came (each `after_s`
    later), which is the dict's order; the timer fires at the first one's time, and at most
    every `after_s / 8` (a request is watched at most that much later than `after_s`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, after_s: float):
        self.loop = loop
        self.min_gap_s = after_s / 8
        self.entries: dict[int, tuple[float, Callable[[], None]]] = {}
        self._ids = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, due: float, callback: Callable[[], None]) -> int:
        """Call `callback` at loop time `due` (no sooner than the entries before it) unless
        `discard`ed first; returns the entry's key."""
        key = next(self._ids)
        self.entries[key] = (due, callback)
        if self._timer is None:
            self._timer = self.loop.call_at(due, self._sweep)
        return key

    def discard(self, key: int) -> None:
        self.entries.pop(key, None)

    def _sweep(self) -> None:
        self._timer = None
        now = self.loop.time()
        entries = self.entries
        while entries:
            key = next(iter(entries))
            due, callback = entries[key]
            if due > now:
                self._timer = self.loop.call_at(max(due, now + self.min_gap_s), self._sweep)
                return
            del entries[key]
            try:
                callback()
            except Exception:  # noqa: BLE001 - one request's callback must not stop the rest
                logger.exception("watching a long request failed")


def _count_early_refusal(scope: Scope, status: int) -> None:
    """Usage accounting of a request answered before the API-key gate saw it (413 too large,
    400 bad Content-Length or Host, 503 at capacity): under project ``(anonymous)``, as the
    key was never checked (`graphs.usage.UsageRecorder.refused`)."""
    recorder = recorder_of(scope)
    if recorder is not None:
        recorder.refused(scope, status, None)


class RequestPath:
    """The hardening middleware (the module's docstring lists what it does, `install` the
    order) as ONE pure-ASGI layer: one coroutine, one ``send`` wrapper and one ``receive``
    wrapper per request, the request headers parsed once, and no task of its own for a
    request that ends quickly. The layers inside it (the gate, usage) read the answer's
    status and add their response headers through the request's `errors.Exchange`
    (``scope["state"]``) instead of wrapping ``send`` themselves. `AdmissionControl` and
    `PublicOrigin` hold those parts' settings and state; `observability.MetricsMiddleware`
    the in-flight gauge.

    Timeout: a request that has not started its response within ``request_timeout_s`` ends
    with 504 (the envelope). The handler runs in the request's own task; at the deadline
    that task is cancelled, with every deployment call registered through
    `track_downstream` (`CancellableHandle`), then takes the cancellation back
    (`Task.uncancel`) and answers 504 once the handler has unwound (a handler that swallows
    the cancellation is waited for). Once a response has started (streams, file downloads)
    the deadline no longer applies. Exempt entirely: paths in ``timeout_exempt_paths``
    (exact, or a prefix ending in ``*``), and requests that ask for
    ``Accept: text/event-stream`` (Server-Sent Events).

    Disconnects: the handler and its deployment calls are cancelled as soon as the client
    disconnects, so synchronous requests stop like streamed ones (whose generators end when
    the stream is closed), and a job they run ends `cancelled` (graphs/jobs.py) instead of
    holding the model for nothing. A task reads ``receive()`` for ``http.disconnect`` once
    the request has run for `watch_after_s` and the handler has read its body (a no-model
    request that ends sooner costs no task at all; a disconnect is noticed at most
    `watch_after_s` later), and hands the handler every message it would have received.
    This does not depend on Serve noticing the disconnect itself (Serve does not when told
    so by ``X-Request-Disconnect-Disabled``, or behind a proxy that keeps the upstream
    connection). A disconnect after the response is complete changes nothing. The cancelled
    request ends with ``CancelledError`` (counted 499 by the metrics), as it does when Serve
    cancels it.

    Escaping exceptions: FastAPI's handlers cover the exception classes registered with
    them; anything else (a replica that died: RayActorError; a bug) would reach Starlette's
    ServerErrorMiddleware, which answers and then re-raises it into Serve's replica. Here it
    becomes `errors.to_api_error(exc)` (503 + Retry-After for a dead replica, 500 for a bug,
    logged) and goes no further. If the response had already started, the exception is
    re-raised (the status is out; the connection is cut)."""

    def __init__(self, app: ASGIApp, config: HardeningConfig | None = None, *,
                 watch_after_s: float = WATCH_DISCONNECT_AFTER_S):
        config = config or HardeningConfig()
        self.app = app
        self.config = config
        self.watch_after_s = watch_after_s
        self._watchlist: _Watchlist | None = None  # the last loop's (`_run`)
        self.metrics = MetricsMiddleware(None) if config.metrics else None
        cors = cors_middleware(config.cors_allow_origins,
                               allow_origin_regex=config.cors_allow_origin_regex,
                               allow_credentials=config.cors_allow_credentials)
        self.cors = cors.cls(None, *cors.args, **cors.kwargs)
        self.admission = AdmissionControl(
            max_in_flight=config.max_in_flight,
            retry_after_s=config.admission_retry_after_s,
            exempt_paths=list(config.admission_exempt_paths),
            hold_paths=list(config.admission_hold_paths), hold_s=config.admission_hold_s)
        self.timeout_s = float(config.request_timeout_s)
        self.timeout_exempt_paths = _Paths(config.timeout_exempt_paths)
        self.max_bytes = config.max_request_bytes
        self.max_json_depth = config.max_json_depth
        self.origin = PublicOrigin(public_base_url=config.public_base_url,
                                   trusted_proxies=list(config.trusted_proxies),
                                   allowed_hosts=list(config.allowed_hosts),
                                   fallback_host=config.fallback_host)
        self._cache_control = b"no-store"

    def timed(self, scope: Scope, headers: Headers) -> bool:
        """Whether the request's timeout applies (see the class's docstring)."""
        if scope["path"] in self.timeout_exempt_paths:
            return False
        return "text/event-stream" not in headers.get("accept", "").lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = RequestHeaders(scope)
        echo = not in_serve_replica()  # else Serve's HTTP server adds the header
        request_id = _request_id(headers.get("x-request-id"), echo)
        rid_token = request_id_var.set(request_id)
        echoed_id = request_id if echo else None
        origin = headers.get("origin")  # CORS
        cache_control = self._cache_control
        # the answer's status and the inner layers' headers (the gate's, usage's): no send
        # wrapper of theirs
        exchange = scope.setdefault("state", {})[EXCHANGE] = Exchange()
        extra = exchange.headers

        def stamp(message: Message) -> None:
            # the security headers, the request id, the inner layers' headers, the status
            exchange.status = int(message["status"])
            _response_headers(message, cache_control, echoed_id, extra)

        async def send_out(message: Message) -> None:
            # `stamp` and CORS on every answer the app's own path (`_run`) does not send
            if message["type"] == "http.response.start":
                stamp(message)
                if origin is not None:
                    await self.cors.send(message, send, request_headers=headers)
                    return
            await send(message)

        # the app's answers: `_run` stamps the start itself and sends straight out (one send
        # wrapper per request, not two), unless CORS has headers to add
        app_out, app_stamp = (send, stamp) if origin is None else (send_out, None)
        metrics = self.metrics
        started_at = time.perf_counter()
        if metrics is not None:
            metrics.request_started()
        outcome = 500
        admission = self.admission
        try:
            # the envelope guard: an exception before the response started is answered
            try:
                if origin is not None and scope["method"] == "OPTIONS" \
                        and "access-control-request-method" in headers:
                    await self.cors.preflight_response(request_headers=headers)(
                        scope, receive, send_out)
                elif admission.exempt(scope):
                    await self._run(scope, receive, send_out, headers, app_out, app_stamp)
                else:
                    await self._admitted(scope, receive, send_out, headers,
                                         app_out, app_stamp)
            except Exception as exc:
                if exchange.status is not None:  # the response has started
                    raise
                await respond(scope, exc)(scope, receive, send_out)
            outcome = request_outcome(exchange.status)
        except BaseException as exc:
            outcome = request_outcome(exchange.status, exc)
            raise
        finally:
            if metrics is not None:
                metrics.request_ended(scope, outcome, time.perf_counter() - started_at)
            if outcome >= 400 and not scope.get("state", {}).get(GATE_SEEN):
                _count_early_refusal(scope, outcome)
            request_id_var.reset(rid_token)

    async def _admitted(self, scope: Scope, receive: Receive, send: Send, headers: Headers,
                        app_out: Send, stamp: Callable[[Message], None] | None) -> None:
        """Admission around `_run`: shed (503) when the replica is full, count the request
        in flight, hold a route whose model deployment said its queue is full."""
        admission = self.admission
        holdable = admission.holdable(scope)
        why = admission.refusal(scope, holdable)
        if why is not None:
            await admission.shed(scope, receive, send, why)
            return
        admission.in_flight += 1
        try:
            await self._run(scope, receive, send, headers, app_out, stamp)
        except BaseException as exc:
            if holdable and is_backpressure(exc):
                scope.setdefault("state", {})[DOWNSTREAM_FULL] = True
            raise
        finally:
            admission.in_flight -= 1
            if holdable and scope.get("state", {}).get(DOWNSTREAM_FULL):
                admission.hold(scope["path"])

    async def _run(self, scope: Scope, receive: Receive, send: Send, headers: Headers,
                   app_out: Send | None = None,
                   stamp: Callable[[Message], None] | None = None) -> None:
        """Cancel on disconnect, the timeout, the body size and JSON depth limits, the
        public origin and conditional requests around the app, in this task. This layer's
        own answers (413, 504) go to `send`; the app's to `app_out` (default: `send`),
        their start given `stamp` first (None: `app_out` does that itself)."""
        out = send if app_out is None else app_out
        max_bytes = self.max_bytes
        declared = headers.get("content-length")
        refusal = _content_length_refusal(declared, max_bytes)
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        no_body = "transfer-encoding" not in headers and (declared is None or declared == "0")
        max_depth = self.max_json_depth \
            if not no_body and _json_content_type(scope, headers) else None

        self.origin.apply(scope, headers)

        # conditional requests
        method = scope["method"]
        head = method == "HEAD"
        if_none_match = headers.get("if-none-match") if method in ("GET", "HEAD") else None
        conditional = head or if_none_match is not None
        if head:
            scope.setdefault("state", {})  # shared by the copy: flags set inside reach out
            app_scope = {**scope, "method": "GET"}
        else:
            app_scope = scope

        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        calls = _downstream.get()
        if calls is None:
            calls = []
        started = complete = bodiless = False
        timed_out = disconnected_ = finished = False
        received = 0
        chunks: list[bytes] = []
        body_done = no_body
        reading = False  # the handler is in a receive() straight from the client
        queue: asyncio.Queue[Message] | None = None
        watcher: asyncio.Task | None = None
        watch_due = False

        def disconnected() -> None:
            nonlocal disconnected_
            if complete or disconnected_ or timed_out or finished:
                return
            disconnected_ = True
            task.cancel()
            n = cancel_downstream(calls)
            logger.info("client disconnected: cancelled %s %s and %d downstream call(s)",
                        method, scope.get("path"), n)

        async def watch() -> None:
            while True:
                message = await receive()
                queue.put_nowait(message)
                if message["type"] == "http.disconnect":
                    disconnected()
                    return

        def start_watching() -> None:
            nonlocal queue, watcher
            if watcher is None and not finished:
                queue = asyncio.Queue()
                watcher = loop.create_task(watch())

        def watch_now() -> None:  # the watchlist: the request runs long enough to be watched
            nonlocal watch_due, deadline
            watch_due = True
            if body_done and not reading:
                start_watching()
            if timed and deadline is None and not (started or finished):
                # the deadline's own timer, only for requests that run this long
                deadline = loop.call_at(begun + self.timeout_s, expire)

        def check(message: Message) -> Message:
            nonlocal received, body_done
            if message["type"] == "http.request":
                body = message.get("body", b"")
                received += len(body)
                if received > max_bytes:
                    raise RequestTooLarge(max_bytes)
                more = message.get("more_body", False)
                if max_depth is not None:
                    if body:
                        chunks.append(body)
                    if not more and chunks:
                        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                        chunks.clear()
                        if json_depth_exceeds(data, max_depth):
                            raise JsonTooDeepError(max_depth)
                if not more:
                    body_done = True
            return message

        async def app_receive() -> Message:
            nonlocal reading
            if received > max_bytes:
                raise RequestTooLarge(max_bytes)
            if watcher is None and body_done and watch_due:
                start_watching()
            if watcher is None:  # straight from the client
                reading = True
                try:
                    message = await receive()
                finally:
                    reading = False
                if message["type"] == "http.disconnect":
                    disconnected()
                message = check(message)
                if body_done and watch_due:
                    start_watching()
                return message
            message = await queue.get()
            if message["type"] == "http.disconnect":
                queue.put_nowait(message)  # every later receive() sees it too
            return check(message)

        async def app_send(message: Message) -> None:
            nonlocal started, complete, bodiless
            if timed_out and not started:
                return  # the 504 owns the response now; the cancelled handler's sends drop
            kind = message["type"]
            if kind == "http.response.start":
                if conditional:
                    not_modified = _not_modified(message, if_none_match)
                    if not_modified is not None:
                        message = not_modified
                    bodiless = head or not_modified is not None
                started = True
                if deadline is not None:
                    deadline.cancel()  # once the response has started, no deadline applies
                if stamp is not None:
                    stamp(message)
            elif bodiless and kind in ("http.response.body", "http.response.pathsend"):
                if kind == "http.response.pathsend" or not message.get("more_body", False):
                    complete = True
                    await out({"type": "http.response.body", "body": b"",
                                "more_body": False})
                return
            elif (kind == "http.response.body" and not message.get("more_body", False)) \
                    or kind == "http.response.pathsend":
                complete = True
            await out(message)

        def expire() -> None:
            nonlocal timed_out, cancelled_calls
            if started or finished or disconnected_:
                return
            timed_out = True
            task.cancel()
            cancelled_calls = cancel_downstream(calls)

        cancelled_calls = 0
        # No timer of its own: the loop's watchlist calls `watch_now` after `watch_after_s`,
        # which sets the deadline's (most requests end sooner, and cost no timer at all)
        timed = self.timed(scope, headers)
        begun = loop.time()
        deadline = loop.call_at(begun + self.timeout_s, expire) \
            if timed and self.timeout_s <= self.watch_after_s else None
        watchlist = self._watchlist
        if watchlist is None or watchlist.loop is not loop:
            watchlist = self._watchlist = _Watchlist(loop, self.watch_after_s)
        watch_key = watchlist.add(begun + self.watch_after_s, watch_now)
        token = _downstream.set(calls)
        failure: BaseException | None = None
        try:
            await self.app(app_scope, app_receive, app_send)
        except BaseException as exc:  # noqa: BLE001 - sorted out below
            failure = exc
        finally:
            finished = True
            _downstream.reset(token)
            watchlist.discard(watch_key)
            if deadline is not None:
                deadline.cancel()
            if watcher is not None and not watcher.done():
                watcher.cancel()
        if timed_out or disconnected_:  # we cancelled this task: take that back
            if not isinstance(failure, asyncio.CancelledError):
                try:  # the handler ended before the cancellation reached it
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    pass
            task.uncancel()
        if timed_out and not started:
            if failure is not None and not isinstance(failure, asyncio.CancelledError):
                logger.info("handler raised while being cancelled for timeout: %r", failure)
            logger.warning("request %s %s timed out after %.1f s; cancelled the handler and "
                           "%d downstream call(s)", method, scope.get("path"),
                           self.timeout_s, cancelled_calls)
            await ApiError(504, f"the request did not complete within "
                           f"{self.timeout_s:g} s and was cancelled; retry, or ask for "
                           "less work (smaller size, fewer images or steps)",
                           code="timeout").response()(scope, receive, send)
            return
        if failure is None:
            return
        try:
            if isinstance(failure, asyncio.CancelledError):
                if not disconnected_:  # Serve cancelled us (client gone, or its timeout)
                    cancel_downstream(calls)
                raise failure
            if isinstance(failure, RequestTooLarge) and not started:
                await failure.response()(scope, receive, send)
                return
            raise failure
        finally:
            failure = None  # no traceback cycle through this frame


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
    max_json_depth: int = Field(MAX_JSON_DEPTH, ge=1, description="JSON bodies nested deeper "
                                "→ 400 json_too_deep")
    public_base_url: str | None = Field(
        None, description="scheme://host[:port][/path] of URLs in responses (PublicOrigin); "
        "production must set it")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="peer IPs/CIDRs whose X-Forwarded-Proto/-Host are "
        "used ('*': any); empty: none")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names used as sent (besides localhost, "
        "127.0.0.1, [::1]); 'name', '*.suffix' or '*'")
    fallback_host: str = Field("localhost:8000", description="host[:port] of URLs when the "
                               "Host is not allowed (from PHOTOSTUDIO_HOST/PORT)")

    @field_validator("public_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value:
            _parse_base_url(value)  # raises ValueError with the rule
        return value or None

    @field_validator("cors_allow_origins", "timeout_exempt_paths", "admission_exempt_paths",
                     "admission_hold_paths", "trusted_proxies", "allowed_hosts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):  # "a, b" from an environment variable
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @classmethod
    def from_settings(cls, settings: Any = None) -> HardeningConfig:
        if settings is None:
            settings = Settings()
        values = {name: getattr(settings, name) for name in cls.model_fields
                  if getattr(settings, name, None) is not None}
        if "fallback_host" not in values and getattr(settings, "port", None) is not None:
            values["fallback_host"] = default_host(getattr(settings, "host", "localhost"),
                                                   settings.port)
        return cls(**values)


def install(app: Any, config: HardeningConfig | None = None) -> None:
    """Add the hardening middleware, `RequestPath`, to a Starlette/FastAPI app. What it does,
    outermost first: security headers (nosniff and no-store on every answer) → request id
    (every answer carries it) → metrics (every status counted, 413/503/504 included) → CORS
    (error answers carry CORS headers too) → the envelope guard (escaping exceptions become
    the envelope) → admission (sheds before any work) → cancel on disconnect → timeout
    (covers reading the body) → body size → JSON depth → public origin → conditional
    requests (HEAD, 304) → the app."""
    config = config or HardeningConfig()
    if hasattr(app, "add_exception_handler"):
        keep_envelope_handlers(app)
    # one layer for all of them (RequestPath); stacking one class per concern measured
    # 2.3-2.9x the time of a bare app per no-model request (BENCHMARKS.md, issue #20)
    app.add_middleware(RequestPath, config=config)


__all__ = [
    "AdmissionControl", "CancellableHandle", "HardeningConfig", "JsonTooDeepError",
    "PublicOrigin", "RequestHeaders", "RequestPath", "RequestTooLarge", "admission_limit",
    "cancel_downstream", "cors_middleware", "default_host", "detached_context", "etag_matches",
    "install", "keep_envelope_handlers", "set_public_base_url", "track_downstream",
]
