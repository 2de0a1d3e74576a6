"""The openai provider (official `openai` client, custom base_url) against a fake OpenAI Images
server over real HTTP (openai 3.x sends with httpx2: no mock transport would see it)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from providers import ProviderError, ProviderRequest, build_provider
from tests.providers.fake_openai import FakeOpenAI, alpha_of
from tests.providers.servers import LiveServer, pattern


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def fake():
    fake = FakeOpenAI()
    with LiveServer(fake.app) as server:
        fake.base_url = server.url
        fake.server = server
        yield fake


def settings(fake, **extra):
    return {"base_url": f"{fake.base_url}/v1", "api_key": fake.api_key, **extra}


async def _run(settings: dict, request: ProviderRequest):
    provider = build_provider("openai", "oa", settings)
    try:
        return await provider.run(request)
    finally:
        await provider.close()


def test_generate_sends_the_images_api_body_and_decodes_b64(fake):
    request = ProviderRequest(prompt="a fox", n=2, width=1024, height=1536,
                              background="transparent", output_format="webp")
    images = run(_run(settings(fake), request))
    [body] = fake.requests
    assert body == {"route": "generations", "prompt": "a fox", "n": 2, "model": "gpt-image-1",
                    "size": "1024x1536", "background": "transparent", "output_format": "webp"}
    assert [img.array.shape for img in images] == [(96, 64, 3)] * 2
    assert np.array_equal(images[1].array, pattern(1, 64, 96, "a fox"))
    assert images[0].revised_prompt == "revised: a fox" and images[0].model == "gpt-image-1"


def test_url_results_are_downloaded_and_checked(fake):
    fake.mode = "url"
    [image] = run(_run(settings(fake, models=["dall-e-2"]),
                       ProviderRequest(prompt="a fox", width=512, height=512)))
    assert fake.requests[0]["response_format"] == "b64_json"  # asked; the server sent a URL
    assert image.array.shape == (32, 32, 3) and image.content_type == "image/png"


def test_gateway_extensions_send_seed_and_negative_prompt(fake):
    gateway = settings(fake, gateway_extensions=True, models=["tiny-sd"])
    provider = build_provider("openai", "gw", gateway)
    assert provider.capabilities.seed and provider.capabilities.negative_prompt
    request = ProviderRequest(prompt="a fox", width=64, height=64, seed=42,
                              negative_prompt="blurry", steps=3)
    [image] = run(_run(gateway, request))
    body = fake.requests[0]
    assert (body["seed"], body["negative_prompt"], body["steps"]) == (42, "blurry", 3)
    assert body["model"] == "tiny-sd" and body["response_format"] == "b64_json"
    assert np.array_equal(image.array, pattern(42, 4, 4, "a fox"))
    # without the extensions, a plain OpenAI backend declares it cannot honour them
    plain = build_provider("openai", "oa", settings(fake))
    assert plain.capabilities.unmet(request) == [
        "size: 64x64 not in ['1024x1024', '1536x1024', '1024x1536']",
        "seed: a fixed seed is not supported", "negative_prompt: not supported"]


def test_edit_sends_every_image_and_the_mask_as_transparency(fake):
    first = np.full((32, 32, 3), 10, np.uint8)
    second = np.full((32, 32, 3), 250, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[:16] = 255  # repaint the top half
    request = ProviderRequest(prompt="add a hat", images=[first, second], mask=mask,
                              width=1024, height=1024)
    [image] = run(_run(settings(fake), request))
    [body] = fake.requests
    assert body["route"] == "edits" and len(body["images"]) == 2
    alpha = alpha_of(body["mask"])
    assert (alpha[:16] == 0).all() and (alpha[16:] == 255).all()  # transparent = edit
    assert image.array.shape == (64, 64, 3)


@pytest.mark.parametrize("mode,outcome,retryable,retry_after", [
    ("500", "server_error", True, None),
    ("503", "overloaded", True, 3.0),
    ("429", "rate_limited", True, 7.0),
    ("content_policy", "content_policy", False, None),
    ("bad_request", "bad_request", False, None),
])
def test_error_shapes_map_to_outcomes(fake, mode, outcome, retryable, retry_after):
    fake.mode = mode
    with pytest.raises(ProviderError) as info:
        run(_run(settings(fake), ProviderRequest(prompt="x")))
    err = info.value
    assert (err.outcome, err.retryable, err.retry_after) == (outcome, retryable, retry_after)
    if mode == "bad_request":
        assert err.param == "size" and "Invalid size" in err.message


def test_empty_data_is_no_images(fake):
    fake.mode = "empty"
    assert run(_run(settings(fake), ProviderRequest(prompt="x"))) == []


def test_refused_key_is_an_auth_error_that_never_repeats_the_key(fake):
    wrong = "sk-wrong-key-0123456789"
    with pytest.raises(ProviderError) as info:
        run(_run(settings(fake, api_key=wrong), ProviderRequest(prompt="x")))
    assert info.value.outcome == "auth_error" and info.value.retryable
    assert wrong not in str(info.value)


def test_server_gone_is_a_connection_error(fake):
    fake.server.stop(force=True)
    with pytest.raises(ProviderError) as info:
        run(_run(settings(fake, connect_timeout_s=1), ProviderRequest(prompt="x")))
    assert info.value.outcome == "connection_error" and info.value.retryable
