"""Result downloads (here through Runware's imageURL answers): size-limited, image
Content-Type and magic bytes checked, only https (or the provider's own origin), never a
private address, retried on transient errors, never sent with our key."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from providers import ProviderError, ProviderRequest, build_provider
from providers._http import retry_after
from tests.providers.servers import png_bytes

KEY = "rw-http-key-0123456789"


def run(coro):
    return asyncio.run(coro)


async def _chunks(count: int, size: int):
    for _ in range(count):
        yield b"x" * size


def runware_with_url(url: str, serve):
    """Runware answering with `url`; `serve(request)` answers the download."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == "https://api.runware.ai/v1":
            task = json.loads(request.content)[0]
            return httpx.Response(200, json={"data": [{
                "taskType": "imageInference", "taskUUID": task["taskUUID"],
                "imageURL": url}]})
        seen.append(request)
        return serve(request)

    return handler, seen


async def _run(handler, **settings):
    provider = build_provider("runware", "rw", {"api_key": KEY, **settings},
                              transport=httpx.MockTransport(handler))
    try:
        return await provider.run(ProviderRequest(prompt="x"))
    finally:
        await provider.close()


def test_download_ok_without_our_key():
    handler, seen = runware_with_url("https://im.runware.ai/image/a.png", lambda r: (
        httpx.Response(200, content=png_bytes(size=(8, 4)),
                       headers={"content-type": "image/png"})))
    [image] = run(_run(handler))
    assert image.array.shape == (4, 8, 3)
    assert "authorization" not in seen[0].headers


@pytest.mark.parametrize("serve,message", [
    (lambda r: httpx.Response(200, content=b"<html>login</html>",
                              headers={"content-type": "text/html"}), "not an image"),
    (lambda r: httpx.Response(200, content=_chunks(5, 1000),  # streamed, no length
                              headers={"content-type": "image/png"}), "exceeds 4096 bytes"),
    (lambda r: httpx.Response(200, content=b"x" * 100,
                              headers={"content-type": "image/png",
                                       "content-length": "999999"}), "999999 bytes"),
    (lambda r: httpx.Response(200, content=b"GIF89a" + b"0" * 50,
                              headers={"content-type": "image/gif"}), "not a PNG, JPEG"),
    (lambda r: httpx.Response(404), "HTTP 404"),
])
def test_bad_downloads_are_bad_output_or_errors(serve, message):
    handler, _ = runware_with_url("https://im.runware.ai/image/a.png", serve)
    with pytest.raises(ProviderError) as info:
        run(_run(handler, max_image_bytes=4096))
    assert message in info.value.message


@pytest.mark.parametrize("url", [
    "http://im.runware.ai/image/a.png",  # not https
    "https://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
    "https://10.1.2.3/a.png", "https://127.0.0.1/a.png", "file:///etc/passwd",
])
def test_result_urls_on_our_network_are_never_fetched(url):
    handler, seen = runware_with_url(url, lambda r: httpx.Response(200))
    with pytest.raises(ProviderError) as info:
        run(_run(handler))
    assert info.value.outcome == "bad_output" and seen == []


def test_transient_download_failures_are_retried():
    answers = iter([httpx.Response(503), httpx.Response(200, content=png_bytes(),
                                                        headers={"content-type": "image/png"})])
    handler, seen = runware_with_url("https://im.runware.ai/image/a.png",
                                     lambda r: next(answers))
    [image] = run(_run(handler))
    assert len(seen) == 2 and image.array.shape == (12, 16, 3)
    answers = iter([httpx.Response(503)] * 3)
    handler, seen = runware_with_url("https://im.runware.ai/image/a.png",
                                     lambda r: next(answers))
    with pytest.raises(ProviderError) as info:
        run(_run(handler, retries=1))
    assert len(seen) == 2 and info.value.outcome == "overloaded"


def test_retry_after_parsing():
    def with_header(value):
        return httpx.Response(429, headers={"Retry-After": value})

    assert retry_after(with_header("12")) == 12.0
    assert retry_after(with_header("soon")) is None
    assert retry_after(httpx.Response(429)) is None
    date = with_header("Wed, 21 Oct 2015 07:28:00 GMT")
    assert retry_after(date) == 0.0  # in the past
