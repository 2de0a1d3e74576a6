"""The runware provider against an httpx.MockTransport fixture speaking Runware's task API
(documented request and response shapes, errors array included)."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

from providers import ProviderError, ProviderRequest, build_provider
from tests.providers.servers import decode, pattern, png_bytes

KEY = "rw-key-0123456789abcdef"


def run(coro):
    return asyncio.run(coro)


class FakeRunware:
    """POST https://api.runware.ai/v1: a JSON array of tasks → {"data": [...]} per task."""

    def __init__(self):
        self.tasks: list[dict] = []
        self.answer = None  # callable(task) -> httpx.Response, overrides the default

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and str(request.url) == "https://api.runware.ai/v1"
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return httpx.Response(401, json={"data": [], "errors": [{
                "code": "invalidApiKey", "message": "Invalid API key. Get one at "
                "https://my.runware.ai", "taskUUID": None}]})
        tasks = json.loads(request.content)
        assert isinstance(tasks, list)
        self.tasks.extend(tasks)
        if self.answer is not None:
            return self.answer(tasks[0])
        data = []
        for task in tasks:
            assert task["taskType"] == "imageInference" and task["outputType"] == "base64Data"
            for i in range(task["numberResults"]):
                png = png_bytes(pattern(task.get("seed", 0) + i, task["width"] // 32,
                                        task["height"] // 32, task["positivePrompt"]))
                data.append({"taskType": "imageInference", "taskUUID": task["taskUUID"],
                             "imageUUID": f"img-{i}", "seed": task.get("seed", 0) + i,
                             "imageBase64Data": base64.b64encode(png).decode(), "cost": 0.001})
        # a result for somebody else's task must be ignored (matched by taskUUID)
        data.append({"taskType": "imageInference", "taskUUID": "someone-else",
                     "imageBase64Data": base64.b64encode(png_bytes()).decode()})
        return httpx.Response(200, json={"data": data})


@pytest.fixture
def fake():
    return FakeRunware()


async def _run(fake, request, **settings):
    provider = build_provider("runware", "rw", {"api_key": KEY, **settings},
                              transport=httpx.MockTransport(fake))
    try:
        return await provider.run(request)
    finally:
        await provider.close()


def test_text2img_task_shape_and_results_matched_by_task_uuid(fake):
    request = ProviderRequest(prompt="a red fox", negative_prompt="blurry", n=2, width=512,
                              height=768, seed=7, steps=20, guidance_scale=6.0)
    images = run(_run(fake, request))
    [task] = fake.tasks
    uuid = task.pop("taskUUID")
    assert len(uuid) == 36
    assert task == {"taskType": "imageInference", "positivePrompt": "a red fox",
                    "negativePrompt": "blurry", "model": "runware:101@1", "width": 512,
                    "height": 768, "numberResults": 2, "outputType": "base64Data",
                    "outputFormat": "PNG", "seed": 7, "steps": 20, "CFGScale": 6.0}
    # two of ours; the result for another taskUUID in the same answer is not taken
    assert [img.seed for img in images] == [7, 8]
    assert np.array_equal(images[1].array, pattern(8, 16, 24, "a red fox"))


def test_declared_format_must_match_the_bytes(fake):
    # JPG asked, PNG bytes sent: the type declared by outputFormat is checked against them
    with pytest.raises(ProviderError) as info:
        run(_run(fake, ProviderRequest(prompt="a red fox", output_format="jpeg")))
    assert fake.tasks[0]["outputFormat"] == "JPG"
    assert info.value.outcome == "bad_output" and "declared image/jpeg" in info.value.message


def test_inpaint_sends_seed_image_mask_and_strength(fake):
    image = np.full((64, 64, 3), 100, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20] = 255
    run(_run(fake, ProviderRequest(prompt="a hat", images=[image], mask=mask, strength=0.6,
                                   width=512, height=512)))
    [task] = fake.tasks
    assert task["strength"] == 0.6
    head, _, data = task["seedImage"].partition(",")
    assert head == "data:image/png;base64"
    assert np.array_equal(decode(base64.b64decode(data)), image)
    sent_mask = decode(base64.b64decode(task["maskImage"].partition(",")[2]))
    assert np.array_equal(sent_mask, mask)  # white = repaint, as Runware documents


@pytest.mark.parametrize("status,error,outcome,retryable", [
    (400, {"code": "invalidWidth", "message": "Invalid value for 'width' parameter.",
           "parameter": "width", "type": "integer", "min": 256, "max": 16383},
     "bad_request", False),
    (400, {"code": "invalidPositivePrompt", "message": "Prompt blocked by content moderation",
           "parameter": "positivePrompt"}, "bad_request", False),
    (400, {"code": "contentModerationFlagged", "message": "flagged"}, "content_policy", False),
    (402, {"code": "insufficientCredits", "message": "Not enough credits"}, "auth_error", True),
    (500, {"code": "unexpectedError", "message": "Internal error"}, "server_error", True),
    (429, {"code": "rateLimitExceeded", "message": "Too many requests"}, "rate_limited", True),
    (200, {"code": "timeoutProvider", "message": "The provider timed out"}, "timeout", True),
])
def test_errors_array_maps_to_outcomes(fake, status, error, outcome, retryable):
    fake.answer = lambda task: httpx.Response(
        status, json={"data": [], "errors": [{**error, "taskUUID": task["taskUUID"]}]},
        headers={"Retry-After": "4"} if status == 429 else {})
    with pytest.raises(ProviderError) as info:
        run(_run(fake, ProviderRequest(prompt="a fox")))
    err = info.value
    assert (err.outcome, err.retryable) == (outcome, retryable)
    assert err.code == error["code"]
    if outcome == "bad_request":
        assert err.param == error["parameter"]
    if status == 429:
        assert err.retry_after == 4.0


def test_invalid_key_is_auth_error(fake):
    provider = build_provider("runware", "rw", {"api_key": "wrong-key-123456"},
                              transport=httpx.MockTransport(fake))

    async def go():
        try:
            return await provider.run(ProviderRequest(prompt="x"))
        finally:
            await provider.close()

    with pytest.raises(ProviderError) as info:
        run(go())
    assert info.value.outcome == "auth_error" and "wrong-key-123456" not in str(info.value)


def test_an_answer_without_our_task_is_no_images(fake):
    fake.answer = lambda task: httpx.Response(200, json={"data": []})
    assert run(_run(fake, ProviderRequest(prompt="a fox"))) == []
