"""Middleware for Ray Serve's own HTTP servers: the proxy, or each ingress replica's
direct-ingress server behind HAProxy. They run before Serve reads the request's headers, so
they can do what the application's middlewares (graphs/middleware.py) cannot.

Serve takes the client's ``X-Request-ID`` as the request id whatever it is (10 KB, markup,
control characters), logs it and echoes it in the response, before the application sees the
request. And it obeys two per-request hints meant for trusted callers:
``X-Request-Timeout-Seconds`` (``0`` turns Serve's request timeout off) and
``X-Request-Disconnect-Disabled: ?1`` (keep running after the client disconnects).

`SanitizeRequestHeaders` drops an ``X-Request-ID`` that is not 1-128 characters of
``[A-Za-z0-9._:@/+=-]`` (Serve then generates one, as for a request without) and drops the
two hints: a client must not turn off the gateway's timeouts or disconnect handling.

`EnvelopeServeErrors` gives the answers Serve's HTTP server makes itself the gateway's one
error envelope (``{"error": {"message", "type", "param", "code"}}``): when the replica that
was handling a request dies mid-request, Serve's proxy ends the request without an answer
and its HTTP server sends a plain-text ``500 Internal Server Error`` (a 500 is a bug; the
client should retry); its own 408/429/503/504 answers (no replica available, its queue full)
are plain text. They become the envelope: 503 ``replica_unavailable`` with ``Retry-After``
for the first, the same status with the text as the message for the others. Serve's own
``/-/`` routes (health, routes) are left alone.

Serve loads it from the environment of the processes Ray starts, so set it before
``ray start`` / ``ray.init`` (`ENV`; ``photostudio serve``, tests/conftest.py and
cluster.yaml do)::

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=graphs.serve_proxy:middlewares

This module imports nothing of the project: it runs in Serve's proxy process, where an
import error would stop every application from being served.
"""

from __future__ import annotations

import json
import re

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

CALLBACK = "graphs.serve_proxy:middlewares"
ENV = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": CALLBACK}

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# Serve's per-request hints (ray.serve._private.constants): never from a client.
SERVE_HINT_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})


def valid_request_id(value: str | bytes | None) -> bool:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return False
    return bool(value) and REQUEST_ID_RE.fullmatch(value) is not None


class SanitizeRequestHeaders:
    """Drops an invalid ``X-Request-ID`` (all but the first valid one, if several) and
    Serve's per-request hint headers before Serve reads them."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = scope.get("headers") or []
            kept = []
            have_id = False
            for name, value in headers:
                if name in SERVE_HINT_HEADERS:
                    continue
                if name == b"x-request-id":
                    if have_id or not valid_request_id(value):
                        continue
                    have_id = True
                kept.append((name, value))
            if len(kept) != len(headers):
                scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)


# the envelope's `type` per status (graphs/errors.py's table; not imported: see above)
ERROR_TYPES = {408: "timeout_error", 429: "rate_limit_error", 500: "server_error",
               503: "service_unavailable", 504: "timeout_error"}
REPLICA_GONE = ("the gateway replica handling this request stopped before answering (it "
                "died or was restarted); retry")
REPLICA_GONE_RETRY_AFTER_S = 5


def envelope_messages(status: int, message: str, code: str,
                      headers: list[tuple[bytes, bytes]] = ()) -> list[dict]:
    """The ASGI messages of an error answer in the gateway's envelope."""
    body = json.dumps({"error": {"message": message, "type": ERROR_TYPES.get(status,
                                 "server_error"), "param": None, "code": code}}).encode()
    return [{"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"),
                *headers]},
            {"type": "http.response.body", "body": body}]


def _json_answer(start: dict) -> bool:
    """Whether an ``http.response.start`` says its body is JSON (the app's envelope)."""
    for name, value in start.get("headers") or ():
        if name.lower() == b"content-type":
            return value.startswith(b"application/json")
    return False


class EnvelopeServeErrors:
    """Serve's own plain-text answers (see the module's docstring) in the error envelope."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith("/-/"):
            await self.app(scope, receive, send)
            return
        started = False
        held: dict | None = None  # a plain-text error's start, held until its body
        text: list[bytes] = []

        async def enveloping_send(message: dict) -> None:
            nonlocal started, held
            if message["type"] == "http.response.start" and not started:
                if message["status"] in ERROR_TYPES and not _json_answer(message):
                    held = message
                    return
                started = True
            elif held is not None and message["type"] == "http.response.body":
                text.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                status, held_headers = held["status"], held.get("headers") or []
                held = None
                started = True
                keep = [(k, v) for k, v in held_headers
                        if k.lower() in (b"retry-after", b"x-request-id")]
                message_text = b"".join(text).decode("utf-8", "replace").strip()[:500]
                for m in envelope_messages(status, message_text or "the gateway could not "
                                           "answer this request; retry",
                                           "serve_" + ERROR_TYPES[status], keep):
                    await send(m)
                return
            await send(message)

        try:
            await self.app(scope, receive, enveloping_send)
        except Exception:
            if started:
                raise
            # Serve's own server failed (its HTTP server would answer a bare 500)
            for m in envelope_messages(500, "the gateway's HTTP server failed on this "
                                       "request", "serve_server_error"):
                await send(m)
            raise
        if held is not None:  # a plain-text error start without its body
            await enveloping_send({"type": "http.response.body", "body": b""})
        elif not started:
            # Serve ended the request without an answer: the replica handling it is gone
            # (its server would send a bare 500 next)
            # Serve's RequestIdMiddleware put the request's id in the scope's headers
            ids = [(b"x-request-id", v) for k, v in scope.get("headers") or []
                   if k == b"x-request-id"][:1]
            for m in envelope_messages(503, REPLICA_GONE, "replica_unavailable", [
                    (b"retry-after", str(REPLICA_GONE_RETRY_AFTER_S).encode()), *ids]):
                await send(m)


def middlewares() -> list[Middleware]:
    """Serve's HTTP proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``). Serve
    wraps its app in list order, the last outermost: the sanitizer runs first (before Serve's
    RequestIdMiddleware reads the id), the envelope sees every answer of Serve's server."""
    return [Middleware(EnvelopeServeErrors), Middleware(SanitizeRequestHeaders)]


__all__ = ["CALLBACK", "ENV", "ERROR_TYPES", "EnvelopeServeErrors", "REQUEST_ID_RE",
           "SERVE_HINT_HEADERS", "SanitizeRequestHeaders", "envelope_messages", "middlewares",
           "valid_request_id"]
