"""The one exception → status mapping (unit level; the HTTP tests cover it end to end)."""

from __future__ import annotations

import pickle

import pytest
from ray.serve.exceptions import BackPressureError

from common import safe_json
from common.errors import InputError
from common.safe_json import JsonTooDeep
from graphs.errors import ApiError, to_api_error


def test_input_errors_map_to_their_own_param_status_and_code():
    err = to_api_error(InputError("steps must be between 1 and 50, got 0", param="steps"))
    assert (err.status, err.param, err.code, err.type) == \
        (400, "steps", "invalid_value", "invalid_request_error")
    assert err.message == "steps must be between 1 and 50, got 0"
    err = to_api_error(InputError("project_id 'x' already exists", param="id", code="exists",
                                  status=409))
    assert (err.status, err.param, err.code, err.type) == (409, "id", "exists", "conflict_error")


def test_input_errors_from_the_checks_name_their_field():
    from models.diffusion import GenerationRequest, check_inputs
    from models.registry import SizeLimits

    limits = SizeLimits(min_side=32, max_side=512, default_width=64, default_height=64,
                        multiple=8, max_steps=50)
    for request, param in ((GenerationRequest(prompt="a cat", width=13), "width"),
                           (GenerationRequest(prompt="a cat", steps=0), "steps"),
                           (GenerationRequest(prompt=" "), "prompt")):
        try:
            check_inputs(request, limits)
        except ValueError as exc:  # an InputError is still a ValueError
            assert to_api_error(exc).param == param
        else:
            raise AssertionError(f"{request} passed")


def test_a_plain_value_error_is_a_400_naming_no_param():
    err = to_api_error(ValueError("something about the request is wrong"))
    assert (err.status, err.param, err.code) == (400, None, "invalid_value")


def test_a_value_error_is_not_parsed_for_a_param():
    """Regression: the param used to be guessed from the text (a leading word followed by a
    space or ':'), so any ValueError, a library's included, named a made-up field."""
    for text in ("width must be a multiple of 8 between 32 and 512, got 13",
                 "steps must be between 1 and 50, got 0", "ops[2].width: too big",
                 "Expecting value: line 1 column 1 (char 0)"):
        assert to_api_error(ValueError(text)).param is None


def test_too_deep_json_names_the_field_it_came_in():
    deep = "[" * 65 + "]" * 65
    with pytest.raises(JsonTooDeep) as info:
        safe_json.loads(deep, what="context", param="context")
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
    err = to_api_error(info.value)
    assert (err.status, err.param, err.code) == (400, "context", "json_too_deep")
    assert err.message.startswith("context is nested deeper than 64")
    with pytest.raises(JsonTooDeep) as info:  # a whole body: no field
        safe_json.loads(deep, what="the request body")
    assert to_api_error(info.value).param is None


def test_input_errors_keep_their_field_across_a_pickle():
    """Replicas raise them (check_inputs in a deployment): Ray pickles the exception."""
    for exc in (InputError("steps must be between 1 and 50", param="steps", code="x",
                           status=409), JsonTooDeep(64, "ops", param="ops")):
        back = pickle.loads(pickle.dumps(exc))
        assert (type(back), str(back), back.param, back.code, back.status) == \
            (type(exc), str(exc), exc.param, exc.code, exc.status)


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
