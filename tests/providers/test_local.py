"""The local provider: our Generator through an injected callable (the ingress passes the
deployment handle's `generate.remote`); request conversion, results, error mapping."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from models.diffusion import GenerationResult
from providers import ProviderError, ProviderRequest, build_provider
from tests.providers.conftest import GENERATOR_INFO, fake_generator, local_provider
from tests.providers.servers import pattern


def run(coro):
    return asyncio.run(coro)


def test_text2img_request_conversion_and_result():
    calls = []
    provider = local_provider(calls=calls)
    images = run(provider.run(ProviderRequest(prompt="a cat", negative_prompt="dog", n=2,
                                              seed=10, guidance_scale=5.0)))
    [req] = calls
    assert (req.mode, req.width, req.height, req.steps, req.n) == ("text2img", 64, 64, 25, 2)
    assert (req.negative_prompt, req.guidance_scale, req.seed) == ("dog", 5.0, 10)
    assert [img.seed for img in images] == [10, 11]
    assert images[0].model == "tiny-sd" and images[0].data is None  # arrays, no bytes
    assert np.array_equal(images[1].array, pattern(11, 64, 64, "a cat"))
    assert provider.models == ["tiny-sd"]
    caps = provider.capabilities
    assert (caps.min_side, caps.max_side, caps.inpaint, caps.seed) == (32, 1024, True, True)


def test_edit_conversion_drops_alpha_and_squeezes_the_mask():
    calls = []
    provider = local_provider(calls=calls)
    rgba = np.zeros((64, 64, 4), np.uint8)
    mask = np.zeros((64, 64, 1), np.uint8)
    run(provider.run(ProviderRequest(prompt="x", images=[rgba], mask=mask, width=64,
                                     height=64, steps=4)))
    [req] = calls
    assert req.mode == "inpaint" and req.image.shape == (64, 64, 3)
    assert req.mask.shape == (64, 64) and req.strength == 0.75 and req.steps == 4


def test_handle_like_awaitables_and_plain_results():
    class Response:  # what DeploymentHandle.remote returns: awaitable, not a coroutine
        def __init__(self, result):
            self.result = result

        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return self.result

    result = GenerationResult(images=[np.zeros((8, 8, 3), np.uint8)], seeds=[3],
                              model="sd15", batch_size=1)
    for generate in (lambda req: Response(result), lambda req: result):
        provider = build_provider("local", "local", {}, generate=generate)
        [image] = run(provider.run(ProviderRequest(prompt="x")))
        assert image.seed == 3 and image.model == "sd15"


class RayTaskError(Exception):  # the shape of Ray's wrapper: the replica's error in .cause
    def __init__(self, cause):
        super().__init__(f"ray task failed: {cause!r}")
        self.cause = cause


class BackPressureError(Exception):
    pass


@pytest.mark.parametrize("error,outcome", [
    (ValueError("steps must be between 1 and 50, got 99"), "bad_request"),
    (RayTaskError(ValueError("width must be a multiple of 8")), "bad_request"),
    (BackPressureError("too many queued"), "overloaded"),
    (RuntimeError("CUDA error: device-side assert"), "server_error"),
])
def test_errors_map_to_outcomes(error, outcome):
    async def generate(req):
        raise error

    provider = build_provider("local", "local", {}, generate=generate, info=GENERATOR_INFO)
    with pytest.raises(ProviderError) as info:
        run(provider.run(ProviderRequest(prompt="x")))
    assert info.value.outcome == outcome and info.value.provider == "local"
    if outcome == "bad_request":
        assert "must be" in info.value.message


def test_check_inputs_message_reaches_the_caller():
    provider = build_provider("local", "local", {}, generate=fake_generator(),
                              info=GENERATOR_INFO)
    with pytest.raises(ProviderError) as info:
        run(provider.run(ProviderRequest(prompt="x", steps=99)))
    assert info.value.message == "steps must be between 1 and 50, got 99"
    assert not info.value.retryable and info.value.status == 400


def test_local_needs_a_generator():
    with pytest.raises(ValueError, match="generate="):
        build_provider("local", "local", {}, generate=None)
