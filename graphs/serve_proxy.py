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

Serve loads it from the environment of the processes Ray starts, so set it before
``ray start`` / ``ray.init`` (`ENV`; ``photostudio serve``, tests/conftest.py and
cluster.yaml do)::

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=graphs.serve_proxy:middlewares

This module imports nothing of the project: it runs in Serve's proxy process, where an
import error would stop every application from being served.
"""

from __future__ import annotations

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


def middlewares() -> list[Middleware]:
    """Serve's HTTP proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    return [Middleware(SanitizeRequestHeaders)]


__all__ = ["CALLBACK", "ENV", "REQUEST_ID_RE", "SERVE_HINT_HEADERS", "SanitizeRequestHeaders",
           "middlewares", "valid_request_id"]
