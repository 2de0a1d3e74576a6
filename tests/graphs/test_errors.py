"""The one exception → status mapping (unit level; the HTTP tests cover it end to end)."""

from __future__ import annotations

from ray.serve.exceptions import BackPressureError

from graphs.errors import ApiError, to_api_error


def test_value_errors_become_400_naming_the_param():
    err = to_api_error(ValueError("width must be a multiple of 8 between 32 and 512, got 13"))
    assert (err.status, err.param, err.type) == (400, "size", "invalid_request_error")
    err = to_api_error(ValueError("steps must be between 1 and 50, got 0"))
    assert err.param == "steps"


def test_backpressure_becomes_503_with_retry_after():
    err = to_api_error(BackPressureError(num_queued_requests=10, max_queued_requests=10))
    assert err.status == 503 and err.headers["Retry-After"]
    body = err.response().body
    assert b'"error"' in body and b'"overloaded"' in body


def test_unknown_errors_are_500_without_leaking_details():
    err = to_api_error(RuntimeError("secret path /etc/x"))
    assert err.status == 500 and "secret" not in err.message


def test_api_errors_pass_through():
    original = ApiError(404, "no asset", param="asset_id")
    assert to_api_error(original) is original
