"""The leonardo provider against an httpx.MockTransport fixture speaking Leonardo's REST v1:
create generation, poll until COMPLETE, download from the CDN (without our key), the init
image upload for img2img (presigned POST), and its error shape."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from providers import ProviderError, ProviderRequest, build_provider
from tests.providers.servers import decode, pattern, png_bytes

KEY = "leo-key-0123456789abcdef"
API = "https://cloud.leonardo.ai/api/rest/v1"
CDN = "https://cdn.leonardo.ai/users/u1/generations"
S3 = "https://image-flex-213441772509-prod-images.s3-accelerate.amazonaws.com/"


def run(coro):
    return asyncio.run(coro)


class FakeLeonardo:
    def __init__(self, pending_polls: int = 2):
        self.pending_polls = pending_polls
        self.bodies: list[dict] = []
        self.polls = 0
        self.uploads: list[dict] = []
        self.cdn_headers: list[httpx.Headers] = []
        self.fail_generation = False
        self.create_error: tuple[int, dict] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url.startswith(CDN):
            self.cdn_headers.append(request.headers)
            seed, i = (int(v) for v in url.rsplit("/", 1)[1].removesuffix(".jpg").split("_"))
            return httpx.Response(200, content=png_bytes(pattern(seed + i, 24, 16),
                                                         fmt="JPEG"),
                                  headers={"content-type": "image/jpeg"})
        if url == S3:
            assert "authorization" not in request.headers  # presigned: no key
            self.uploads.append({"content_type": request.headers["content-type"],
                                 "body": request.content})
            return httpx.Response(204)
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return httpx.Response(401, json={"error": "Invalid authentication credentials",
                                             "path": "$", "code": "invalid-jwt"})
        if request.method == "POST" and url == f"{API}/init-image":
            assert json.loads(request.content) == {"extension": "png"}
            fields = {"key": "abc/init.png", "policy": "p", "X-Amz-Signature": "sig"}
            return httpx.Response(200, json={"uploadInitImage": {
                "id": "init-1", "url": S3, "key": "abc/init.png", "fields": json.dumps(fields)}})
        if request.method == "POST" and url == f"{API}/generations":
            if self.create_error:
                return httpx.Response(self.create_error[0], json=self.create_error[1])
            self.bodies.append(json.loads(request.content))
            return httpx.Response(200, json={"sdGenerationJob": {"generationId": "gen-1",
                                                                 "apiCreditCost": 11}})
        if request.method == "GET" and url == f"{API}/generations/gen-1":
            self.polls += 1
            body = self.bodies[-1]
            if self.polls <= self.pending_polls:
                return httpx.Response(200, json={"generations_by_pk": {
                    "status": "PENDING", "generated_images": [], "id": "gen-1"}})
            if self.fail_generation:
                return httpx.Response(200, json={"generations_by_pk": {
                    "status": "FAILED", "generated_images": [], "id": "gen-1"}})
            seed = body.get("seed", 0)
            return httpx.Response(200, json={"generations_by_pk": {
                "status": "COMPLETE", "id": "gen-1", "seed": seed, "prompt": body["prompt"],
                "generated_images": [{"id": f"img-{i}", "nsfw": False, "likeCount": 0,
                                      "url": f"{CDN}/gen-1/{seed}_{i}.jpg"}
                                     for i in range(body["num_images"])]}})
        return httpx.Response(404, json={"error": "not found", "path": "$", "code": "not-found"})


async def _run(fake, request, **settings):
    provider = build_provider("leonardo", "leo",
                              {"api_key": KEY, "poll_interval_s": 0.01, **settings},
                              transport=httpx.MockTransport(fake))
    try:
        return await provider.run(request)
    finally:
        await provider.close()


def test_create_poll_download():
    fake = FakeLeonardo(pending_polls=2)
    progress = []
    request = ProviderRequest(prompt="an oil painting of a cat", negative_prompt="dog", n=2,
                              width=768, height=512, seed=11, steps=30, guidance_scale=7.0,
                              on_progress=lambda f, m: progress.append(m))
    images = run(_run(fake, request))
    assert fake.bodies == [{"prompt": "an oil painting of a cat",
                            "modelId": "6bef9f1b-29cb-40c7-b9df-32b51c1f67d3", "width": 768,
                            "height": 512, "num_images": 2, "negative_prompt": "dog",
                            "seed": 11, "guidance_scale": 7, "num_inference_steps": 30}]
    assert fake.polls == 3 and progress == ["PENDING (poll 1)", "PENDING (poll 2)"]
    assert [img.content_type for img in images] == ["image/jpeg"] * 2
    assert [img.array.shape for img in images] == [(16, 24, 3)] * 2
    assert all(img.seed == 11 for img in images)
    # our key never goes to the CDN
    assert len(fake.cdn_headers) == 2 and all("authorization" not in h
                                               for h in fake.cdn_headers)


def test_img2img_uploads_an_init_image_through_the_presigned_post():
    fake = FakeLeonardo(pending_polls=0)
    source = np.full((32, 32, 3), 77, np.uint8)
    run(_run(fake, ProviderRequest(prompt="watercolour", images=[source], strength=0.7)))
    [upload] = fake.uploads
    assert upload["content_type"].startswith("multipart/form-data")
    assert b'name="X-Amz-Signature"' in upload["body"] and b"sig" in upload["body"]
    png = upload["body"].split(b"\r\n\r\n", 4)[-1]
    assert png.startswith(b"\x89PNG")
    assert fake.bodies[0]["init_image_id"] == "init-1"
    assert fake.bodies[0]["init_strength"] == 0.3  # Leonardo's: how much of the init to keep
    assert np.array_equal(decode(png.split(b"\r\n--")[0]), source)


def test_failed_generation_is_retryable():
    fake = FakeLeonardo(pending_polls=0)
    fake.fail_generation = True
    with pytest.raises(ProviderError) as info:
        run(_run(fake, ProviderRequest(prompt="x")))
    assert info.value.outcome == "server_error" and info.value.retryable


@pytest.mark.parametrize("status,body,outcome", [
    (400, {"error": "Invalid prompt, maximum length of 1500 characters exceeded.",
           "path": "$", "code": "unexpected"}, "bad_request"),
    (400, {"error": "content moderation filter: prompt flagged", "path": "$",
           "code": "unexpected"}, "content_policy"),
    (402, {"error": "Not enough API tokens", "path": "$", "code": "unexpected"}, "auth_error"),
    (429, {"error": "rate limited", "path": "$", "code": "rate-limit"}, "rate_limited"),
    (500, {"error": "internal", "path": "$", "code": "unexpected"}, "server_error"),
])
def test_error_shape_maps_to_outcomes(status, body, outcome):
    fake = FakeLeonardo()
    fake.create_error = (status, body)
    with pytest.raises(ProviderError) as info:
        run(_run(fake, ProviderRequest(prompt="x")))
    assert info.value.outcome == outcome
    if outcome == "bad_request":
        assert "maximum length of 1500" in info.value.message


def test_refused_key():
    fake = FakeLeonardo()
    provider = build_provider("leonardo", "leo", {"api_key": "not-the-key-123"},
                              transport=httpx.MockTransport(fake))

    async def go():
        try:
            return await provider.run(ProviderRequest(prompt="x"))
        finally:
            await provider.close()

    with pytest.raises(ProviderError) as info:
        run(go())
    assert info.value.outcome == "auth_error"


def test_a_transient_poll_failure_is_retried_not_lost():
    fake = FakeLeonardo(pending_polls=1)
    inner = fake.__call__
    calls = {"n": 0}

    def flaky(request):
        if request.method == "GET" and str(request.url).startswith(f"{API}/generations/"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise httpx.ConnectError("connection reset")
            if calls["n"] == 3:
                return httpx.Response(502, text="bad gateway")
        return inner(request)

    provider = build_provider("leonardo", "leo", {"api_key": KEY, "poll_interval_s": 0.01},
                              transport=httpx.MockTransport(flaky))

    async def go():
        try:
            return await provider.run(ProviderRequest(prompt="x"))
        finally:
            await provider.close()

    [image] = run(go())
    assert image.array.shape == (16, 24, 3) and calls["n"] == 4  # 2 failures retried
