"""The Upscaler deployment class called directly (no Ray cluster): requests, info, health."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from deployments.upscale import Upscaler
from models.upscale import UpscaleRequest
from tests.deployments import INFO_KEYS


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    zoo_dir = os.environ.get("PHOTOSTUDIO_ZOO_DIR") or str(tmp_path_factory.mktemp("zoo"))
    return Upscaler.func_or_class(model="tiny-esrgan", zoo_dir=zoo_dir, tile=32)


def test_upscale_requests_and_stats(upscaler):
    img = np.random.default_rng(0).integers(0, 256, (40, 50, 4), dtype=np.uint8)

    async def both():
        return await asyncio.gather(upscaler.upscale(UpscaleRequest(image=img, scale=2)),
                                    upscaler.upscale(UpscaleRequest(image=img, scale=4)))

    x2, x4 = asyncio.run(both())
    assert x2.image.shape == (80, 100, 4) and x4.image.shape == (160, 200, 4)
    assert x4.tiles == 2 * 2  # the deployment's tile size is used
    assert "queue_s" in x4.timings
    stats = upscaler.stats()
    assert stats["requests"] == 2 and stats["tiles"] == 8
    assert stats["output_megapixels"] == pytest.approx((80 * 100 + 160 * 200) / 1e6)


def test_bad_request_is_a_value_error(upscaler):
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"scale must be one of 2, 4, got 3"):
        asyncio.run(upscaler.upscale(UpscaleRequest(image=img, scale=3)))
    with pytest.raises(ValueError, match=r"image must have dtype uint8"):
        asyncio.run(upscaler.upscale(UpscaleRequest(image=img.astype(np.float32), scale=2)))


def test_info_has_the_common_keys(upscaler):
    info = upscaler.info()
    assert set(info) == INFO_KEYS
    assert (info["name"], info["family"], info["tiny"], info["fallback"]) == (
        "tiny-esrgan", "upscale", True, False)
    assert (info["device"], info["dtype"]) == ("cpu", "float32")
    assert info["limits"]["scales"] == [2, 4]
    assert info["limits"]["tile"] == 32 and info["limits"]["max_side"] == 4096


def test_check_health_runs_the_model(upscaler):
    upscaler.check_health()
    upscaler._last_error = "RuntimeError: CUDA out of memory"
    try:
        with pytest.raises(RuntimeError, match="unhealthy"):
            upscaler.check_health()
    finally:
        upscaler._last_error = None


def test_bad_tiling_fails_at_start():
    with pytest.raises(ValueError, match=r"tile must be None .* got 4"):
        Upscaler.func_or_class(tile=4)
