"""Typed provider settings, the factory, capabilities, and the image checks."""

from __future__ import annotations

import numpy as np
import pytest

from providers import PROVIDER_KINDS, Capabilities, ProviderError, ProviderRequest, build_provider
from providers.base import decode_image
from providers.config import parse_settings
from tests.providers.servers import png_bytes


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        build_provider("midjourney", "mj", {})
    assert str(info.value) == ("unknown provider kind 'midjourney'; known kinds: comfyui, "
                               "gemini, imagen, leonardo, local, openai, runware")
    assert PROVIDER_KINDS == ("comfyui", "gemini", "imagen", "leonardo", "local", "openai",
                              "runware")


@pytest.mark.parametrize("name", ["", "Has Caps", "a/b", "-lead", "x" * 65])
def test_names_are_checked(name):
    with pytest.raises(ValueError, match="provider name"):
        build_provider("comfyui", name, {})


def test_bad_settings_name_the_field_never_the_value():
    key = "sk-do-not-echo-0123456789"
    with pytest.raises(ValueError) as info:
        build_provider("runware", "rw", {"api_key": key, "timeout_s": -1, "colour": "red"})
    message = str(info.value)
    assert "timeout_s" in message and "colour" in message and key not in message
    with pytest.raises(ValueError, match="api_key"):
        build_provider("gemini", "g", {})  # required for hosted APIs
    with pytest.raises(ValueError, match="base_url"):
        build_provider("openai", "o", {"base_url": "ftp://x"})


def test_secrets_are_redacted_everywhere_but_stored():
    key = "sk-secret-value-0123456789"
    settings = parse_settings("openai", {"api_key": key, "base_url": "https://example.com/v1"})
    assert key not in repr(settings) and key not in str(settings)
    assert settings.redacted()["api_key"] == "***"
    assert key not in str(settings.redacted())
    assert settings.stored()["api_key"] == key
    assert parse_settings("openai", settings.stored()) == settings  # round trip
    assert parse_settings("comfyui", {}).redacted()["api_key"] is None


def test_capability_overrides():
    provider = build_provider("comfyui", "c", {"capabilities": {"max_n": 2,
                                                                "sizes": ["512x512"]}})
    assert provider.capabilities.max_n == 2 and provider.capabilities.sizes == ("512x512",)
    with pytest.raises(ValueError, match="unknown capabilities"):
        build_provider("comfyui", "c", {"capabilities": {"teleport": True}})


def test_unmet_lists_every_dropped_input():
    caps = Capabilities(max_n=1, min_side=256, max_side=1024, multiple=64)
    request = ProviderRequest(prompt="x", n=3, width=100, height=256, seed=1,
                              negative_prompt="y", background="transparent",
                              images=[np.zeros((8, 8, 3), np.uint8)])
    assert caps.unmet(request) == [
        "image: img2img not supported", "n: 3 images, at most 1",
        "size: 100x256 outside 256-1024 (multiples of 64)",
        "background: transparent not supported", "seed: a fixed seed is not supported",
        "negative_prompt: not supported"]
    assert Capabilities(aspect_ratios=("16:9",)).unmet(
        ProviderRequest(prompt="x", width=1920, height=1080)) == []


def test_request_checks():
    with pytest.raises(ValueError, match="prompt"):
        ProviderRequest(prompt=" ")
    with pytest.raises(ValueError, match="mask needs an input image"):
        ProviderRequest(prompt="x", mask=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="together"):
        ProviderRequest(prompt="x", width=64)
    assert ProviderRequest(prompt="x", images=[np.zeros((4, 4, 3))]).mode == "img2img"


def test_decode_image_checks_size_type_and_pixels():
    png = png_bytes(size=(20, 10))
    image = decode_image(png, declared_type="image/png", max_bytes=10_000, max_pixels=1000)
    assert image.array.shape == (10, 20, 3) and image.content_type == "image/png"
    cases = [
        (dict(data=png, declared_type="image/png", max_bytes=10, max_pixels=1000), "bytes"),
        (dict(data=png, declared_type="image/jpeg", max_bytes=10_000, max_pixels=1000),
         "declared image/jpeg"),
        (dict(data=b"GIF89a....", declared_type=None, max_bytes=10_000, max_pixels=1000),
         "not a PNG, JPEG or WebP"),
        (dict(data=png, declared_type=None, max_bytes=10_000, max_pixels=100), "pixels"),
        (dict(data=png[:40], declared_type=None, max_bytes=10_000, max_pixels=1000),
         "does not decode"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ProviderError) as info:
            decode_image(**kwargs)
        assert info.value.outcome == "bad_output" and message in info.value.message
    webp = png_bytes(size=(8, 8), fmt="WEBP")
    assert decode_image(webp, declared_type="image/webp", max_bytes=10_000,
                        max_pixels=1000).content_type == "image/webp"
    rgba = np.zeros((4, 4, 4), np.uint8)
    assert decode_image(png_bytes(rgba), max_bytes=10_000,
                        max_pixels=1000).array.shape == (4, 4, 4)
