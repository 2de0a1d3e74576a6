"""The one error envelope, and the one function that maps exceptions to status codes.

Every error leaves the gateway as ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import InputError
from models.faceswap import NoFaceError
from providers.router import RoutingError
from storage.assets import AssetStoreError

logger = logging.getLogger("ray.serve")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = ErrorEnvelope(error=ErrorBody(message=self.message, type=self.type,
                                             param=self.param, code=self.code))
        return JSONResponse(body.model_dump(), status_code=self.status, headers=self.headers)


# Ray's exception types are imported where they are used, not at the top: `photostudio`
# imports this module before it sets the environment Ray reads when it is first imported.
def _unwrap(exc: BaseException) -> BaseException:
    """Ray wraps errors raised in a replica; the cause is what we map."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None:
        exc = exc.cause
    return exc


# A flag in the request's ``scope["state"]``: the request ended because a model deployment's
# queue was full (Serve's BackPressureError). middleware.AdmissionControl then holds the route.
DOWNSTREAM_FULL = "photostudio.downstream_full"
# scope["state"] flag: the API-key gate (auth.AuthMiddleware) saw this request and accounted for
# it; a request answered 4xx/5xx without it was refused before the gate (413, 503 admission…)
GATE_SEEN = "photostudio.gate_seen"
# scope["state"] key: the request's `Exchange` (set by middleware.RequestPath)
EXCHANGE = "photostudio.exchange"


class Exchange:
    """One request's answer as the request path (`middleware.RequestPath`, the outermost
    layer) sends it, shared with the layers inside it through ``scope["state"][EXCHANGE]``, so
    they need no ``send`` wrapper of their own: `status` once the response has started (None
    before), and `headers` the inner layers ask to add to the response's start (each one
    unless the app's answer already has that header: e.g. the gate's X-RateLimit-* on every
    answer but a 429 of the images quota, which says which window it is about)."""

    __slots__ = ("headers", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []


def exchange_of(scope: Any) -> Exchange | None:
    """The request's `Exchange`; None where no `RequestPath` runs (an app without it)."""
    state = scope.get("state")
    return state.get(EXCHANGE) if state is not None else None


def recorder_of(scope: Any) -> Any:
    """The replica's usage recorder (`graphs.usage.UsageRecorder`, ``app.state.usage_recorder``,
    set by the ingress) for a request's ASGI `scope`; None when there is none. Here, beside
    `GATE_SEEN`, because the gate (auth), the request path (middleware) and usage all count
    refusals with it, and usage imports auth."""
    return getattr(getattr(scope.get("app"), "state", None), "usage_recorder", None)


def is_backpressure(exc: BaseException) -> bool:
    """Serve's BackPressureError (a deployment's queue is full), wrapped or not."""
    from ray.serve.exceptions import BackPressureError

    return isinstance(_unwrap(exc), BackPressureError)


def respond(scope: dict[str, Any], exc: BaseException) -> JSONResponse:
    """The envelope answer to `exc` (`to_api_error`); flags `DOWNSTREAM_FULL` in the scope
    when a deployment's queue was full."""
    if is_backpressure(exc):
        scope.setdefault("state", {})[DOWNSTREAM_FULL] = True
    return to_api_error(exc).response()


def _validation_error(exc: RequestValidationError) -> ApiError:
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
    param = ".".join(loc) or None
    kind = first.get("type", "invalid")
    if kind == "json_invalid":
        ctx = first.get("ctx", {}).get("error", "")
        return ApiError(400, f"request body is not valid JSON ({ctx}); send a JSON object",
                        code="invalid_json")
    if kind == "model_attributes_type" or (kind == "dict_type" and not loc):
        return ApiError(400, "request body must be a JSON object", code="invalid_body")
    if kind == "extra_forbidden":
        return ApiError(400, f"unknown parameter {param!r}; remove it (see /docs for the "
                        "accepted fields)", param=param, code="unknown_parameter")
    if kind == "missing":
        return ApiError(400, f"missing required parameter {param!r}", param=param,
                        code="missing_parameter")
    msg = first.get("msg", "invalid value")
    if "param" in first.get("ctx", {}):  # our schemas' own checks: they name their field
        return ApiError(400, msg, param=first["ctx"]["param"], code=kind)
    return ApiError(400, f"{param}: {msg}" if param else msg, param=param, code=kind)


def to_api_error(exc: BaseException) -> ApiError:
    """Map any exception to the status code and message the client sees."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    exc = _unwrap(exc)
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc)
    if isinstance(exc, StarletteHTTPException):
        return ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
    if isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError)):
        return ApiError(503, "a model replica died or became unreachable while working on "
                        "this request; retry (Serve is starting a new one)",
                        code="replica_died", headers={"Retry-After": "5"})
    if isinstance(exc, BackPressureError):
        return ApiError(503, "the gateway is at capacity; retry after the indicated delay",
                        code="overloaded", headers={"Retry-After": "1"})
    if isinstance(exc, DeploymentUnavailableError):
        return ApiError(503, "a model deployment is not available yet; retry shortly",
                        code="deployment_unavailable", headers={"Retry-After": "5"})
    if isinstance(exc, TimeoutError):
        return ApiError(504, "the request timed out", code="timeout")
    if isinstance(exc, AssetStoreError):
        logger.error("asset store failed: %s", exc)
        return ApiError(503, "the asset store is unavailable; retry shortly",
                        code="storage_unavailable", headers={"Retry-After": "5"})
    if isinstance(exc, RoutingError):  # the provider router: every attempt named
        headers = {"Retry-After": str(math.ceil(exc.retry_after))} \
            if exc.retry_after is not None else {}
        return ApiError(exc.status, exc.message, param=exc.param, code=exc.code,
                        headers=headers)
    if isinstance(exc, NoFaceError):
        return ApiError(422, str(exc), param=exc.which, code="no_face")
    if isinstance(exc, InputError):  # the field travels with the error (ImageInputError too)
        return ApiError(exc.status, str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, ValueError):  # a check that names no field: still the caller's input
        return ApiError(400, str(exc), code="invalid_value")
    logger.exception("unhandled error", exc_info=exc)
    return ApiError(500, "internal error; it has been logged", code="internal_error")


def install(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return respond(request.scope, exc)

    app.add_exception_handler(ApiError, handle)
    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(StarletteHTTPException, handle)
    app.add_exception_handler(Exception, handle)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": desc}
    for status, desc in {
        400: "invalid request (the message says what to fix)",
        401: "missing, invalid or revoked API key (Authorization: Bearer <key>)",
        403: "the API key lacks the scope this operation needs",
        404: "not found",
        413: "request body or an uploaded image too large (the message names the limit)",
        415: "an upload is not a PNG, JPEG or WebP image",
        # FastAPI would document its own 422 body here; validation errors are 400 instead
        422: "well-formed but unprocessable (e.g. no face found)",
        429: "the API key's requests/minute or images/day limit is reached; see Retry-After",
        503: "overloaded or starting; see Retry-After",
        504: "not completed within the gateway's request timeout; the work was cancelled",
    }.items()
}
_RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
ERROR_RESPONSES[503]["headers"] = {"Retry-After": _RETRY_AFTER}
ERROR_RESPONSES[429]["headers"] = {"Retry-After": _RETRY_AFTER, **{
    f"X-RateLimit-{name}": {"description": desc, "schema": {"type": "integer"}}
    for name, desc in (("Limit", "the window's limit"), ("Remaining", "left in the window"),
                       ("Reset", "seconds until the window resets"))}}
# Answers any route can give (auth, limits, body limit, timeout, overload): documented on
# every operation.
COMMON_RESPONSES = {status: ERROR_RESPONSES[status]
                    for status in (401, 403, 413, 429, 503, 504)}

__all__ = ["ApiError", "ErrorEnvelope", "install", "to_api_error", "respond",
           "is_backpressure", "DOWNSTREAM_FULL", "GATE_SEEN", "EXCHANGE", "Exchange",
           "exchange_of", "recorder_of", "ERROR_RESPONSES",
           "COMMON_RESPONSES"]
