"""The gemini (generateContent, IMAGE modality, inline base64 parts) and imagen (:predict)
providers against httpx.MockTransport fixtures in the Gemini API's documented shapes,
errors included (an invalid key is a 400 INVALID_ARGUMENT with reason API_KEY_INVALID)."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

from providers import ProviderError, ProviderRequest, build_provider
from tests.providers.servers import decode, pattern, png_bytes

KEY = "AIza-test-key-0123456789"
BASE = "https://generativelanguage.googleapis.com/v1beta"


def run(coro):
    return asyncio.run(coro)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def google_error(status: int, message: str, code: str, reason: str | None = None):
    error = {"code": status, "message": message, "status": code}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": reason, "domain": "googleapis.com"}]
    return httpx.Response(status, json={"error": error})


class FakeGoogle:
    def __init__(self):
        self.bodies: list[tuple[str, dict]] = []
        self.answer = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("x-goog-api-key") != KEY:
            return google_error(400, "API key not valid. Please pass a valid API key.",
                                "INVALID_ARGUMENT", "API_KEY_INVALID")
        url = str(request.url)
        body = json.loads(request.content)
        self.bodies.append((url, body))
        if self.answer is not None:
            return self.answer(url, body)
        if url.endswith(":generateContent"):
            config = body["generationConfig"]
            seed = config.get("seed", 0)
            parts = body["contents"][0]["parts"]
            return httpx.Response(200, json={"candidates": [{"content": {"role": "model",
                "parts": [{"text": "Here is your image."},
                          {"inlineData": {"mimeType": "image/png",
                                          "data": b64(png_bytes(pattern(seed, 20, 10,
                                                                        parts[0]["text"])))}}]},
                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 5}, "modelVersion": "gemini-2.5"})
        if url.endswith(":predict"):
            n = body["parameters"]["sampleCount"]
            return httpx.Response(200, json={"predictions": [
                {"bytesBase64Encoded": b64(png_bytes(pattern(i, 12, 12))),
                 "mimeType": "image/png"} for i in range(n)]})
        return httpx.Response(404, json={"error": {"code": 404, "message": "not found",
                                                   "status": "NOT_FOUND"}})


@pytest.fixture
def fake():
    return FakeGoogle()


async def _run(kind, fake, request, **settings):
    provider = build_provider(kind, kind, {"api_key": KEY, **settings},
                              transport=httpx.MockTransport(fake))
    try:
        return await provider.run(request)
    finally:
        await provider.close()


def test_gemini_generate_content_with_image_modality(fake):
    request = ProviderRequest(prompt="a banana boat", n=2, width=1344, height=768, seed=3)
    images = run(_run("gemini", fake, request))
    assert len(fake.bodies) == 2  # one image per call
    urls = {url for url, _ in fake.bodies}
    assert urls == {f"{BASE}/models/gemini-2.5-flash-image:generateContent"}
    bodies = sorted((body for _, body in fake.bodies),
                    key=lambda b: b["generationConfig"]["seed"])
    assert bodies[0] == {"contents": [{"role": "user", "parts": [{"text": "a banana boat"}]}],
                         "generationConfig": {"responseModalities": ["TEXT", "IMAGE"],
                                              "imageConfig": {"aspectRatio": "16:9"},
                                              "seed": 3}}
    assert bodies[1]["generationConfig"]["seed"] == 4
    assert sorted(img.seed for img in images) == [3, 4]
    first = next(img for img in images if img.seed == 3)
    assert np.array_equal(first.array, pattern(3, 20, 10, "a banana boat"))


def test_gemini_edit_sends_input_images_inline(fake):
    source = np.full((8, 8, 3), 99, np.uint8)
    run(_run("gemini", fake, ProviderRequest(prompt="make it night", images=[source])))
    parts = fake.bodies[0][1]["contents"][0]["parts"]
    assert parts[0] == {"text": "make it night"}
    inline = parts[1]["inline_data"]
    assert inline["mime_type"] == "image/png"
    assert np.array_equal(decode(base64.b64decode(inline["data"])), source)


def test_gemini_text_only_answer_is_no_images_and_blocks_are_content_policy(fake):
    fake.answer = lambda url, body: httpx.Response(200, json={"candidates": [{"content": {
        "parts": [{"text": "I can't draw that, but here is a poem."}]},
        "finishReason": "STOP"}]})
    assert run(_run("gemini", fake, ProviderRequest(prompt="x"))) == []
    fake.answer = lambda url, body: httpx.Response(200, json={
        "promptFeedback": {"blockReason": "SAFETY"}})
    with pytest.raises(ProviderError) as info:
        run(_run("gemini", fake, ProviderRequest(prompt="x")))
    assert info.value.outcome == "content_policy" and not info.value.retryable
    fake.answer = lambda url, body: httpx.Response(200, json={"candidates": [{
        "finishReason": "IMAGE_SAFETY", "content": {"parts": []}}]})
    with pytest.raises(ProviderError) as info:
        run(_run("gemini", fake, ProviderRequest(prompt="x")))
    assert info.value.outcome == "content_policy"


@pytest.mark.parametrize("response,outcome", [
    (google_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT"), "bad_request"),
    (google_error(429, "Resource has been exhausted (e.g. check quota).",
                  "RESOURCE_EXHAUSTED"), "rate_limited"),
    (google_error(500, "An internal error has occurred.", "INTERNAL"), "server_error"),
    (google_error(503, "The model is overloaded.", "UNAVAILABLE"), "overloaded"),
    (google_error(404, "models/nope is not found", "NOT_FOUND"), "not_found"),
])
def test_google_error_shape(fake, response, outcome):
    fake.answer = lambda url, body: response
    for kind in ("gemini", "imagen"):
        with pytest.raises(ProviderError) as info:
            run(_run(kind, fake, ProviderRequest(prompt="x")))
        assert info.value.outcome == outcome
        assert info.value.code == response.json()["error"]["status"].lower()


def test_invalid_key_is_auth_error_not_the_clients_bad_request(fake):
    provider = build_provider("gemini", "g", {"api_key": "AIza-wrong-key-999"},
                              transport=httpx.MockTransport(fake))

    async def go():
        try:
            return await provider.run(ProviderRequest(prompt="x"))
        finally:
            await provider.close()

    with pytest.raises(ProviderError) as info:
        run(go())
    assert info.value.outcome == "auth_error" and info.value.retryable


def test_one_failed_call_of_a_fan_out_cancels_the_others(fake):
    cancelled = []

    async def answer(request: httpx.Request) -> httpx.Response:
        seed = json.loads(request.content)["generationConfig"]["seed"]
        if seed == 0:
            return google_error(500, "An internal error has occurred.", "INTERNAL")
        try:
            await asyncio.Event().wait()  # never answers
        finally:
            cancelled.append(seed)

    async def go():
        with pytest.raises(ProviderError) as info:
            await _run("gemini", answer, ProviderRequest(prompt="x", n=3, seed=0))
        # already stopped when the error surfaced (not only when the loop shuts down)
        return info.value, sorted(cancelled)

    error, stopped = run(go())
    assert error.outcome == "server_error" and stopped == [1, 2]


def test_imagen_predict(fake):
    images = run(_run("imagen", fake, ProviderRequest(prompt="a lighthouse", n=3, width=768,
                                                      height=1024),
                      person_generation="dont_allow"))
    [(url, body)] = fake.bodies
    assert url == f"{BASE}/models/imagen-4.0-generate-001:predict"
    assert body == {"instances": [{"prompt": "a lighthouse"}],
                    "parameters": {"sampleCount": 3, "aspectRatio": "3:4",
                                   "personGeneration": "dont_allow"}}
    assert [img.array.shape for img in images] == [(12, 12, 3)] * 3


def test_imagen_filtered_predictions(fake):
    fake.answer = lambda url, body: httpx.Response(200, json={"predictions": [
        {"raiFilteredReason": "Unable to show generated images. All images were filtered "
                              "out because they violated Vertex AI's usage guidelines."}]})
    with pytest.raises(ProviderError) as info:
        run(_run("imagen", fake, ProviderRequest(prompt="x")))
    assert info.value.outcome == "content_policy"
    # some filtered, some not: fewer images than asked (the router treats that as a failure)
    fake.answer = lambda url, body: httpx.Response(200, json={"predictions": [
        {"bytesBase64Encoded": b64(png_bytes()), "mimeType": "image/png"},
        {"raiFilteredReason": "filtered"}]})
    assert len(run(_run("imagen", fake, ProviderRequest(prompt="x", n=2)))) == 1


def test_capabilities_refuse_what_they_cannot_honour():
    imagen = build_provider("imagen", "i", {"api_key": KEY})
    assert imagen.capabilities.unmet(ProviderRequest(prompt="x", width=640, height=480)) == []
    assert imagen.capabilities.unmet(ProviderRequest(prompt="x", width=1000, height=300)) == [
        "size: aspect ratio of 1000x300 not in ['1:1', '3:4', '4:3', '9:16', '16:9']"]
    masked = ProviderRequest(prompt="x", images=[np.zeros((8, 8, 3), np.uint8)],
                             mask=np.zeros((8, 8), np.uint8))
    gemini = build_provider("gemini", "g", {"api_key": KEY})
    assert gemini.capabilities.unmet(masked) == ["mask: inpaint not supported"]
    assert "image: img2img not supported" in imagen.capabilities.unmet(
        ProviderRequest(prompt="x", images=[np.zeros((8, 8, 3), np.uint8)]))
