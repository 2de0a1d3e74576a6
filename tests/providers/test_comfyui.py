"""The comfyui provider against a fake ComfyUI server over real HTTP + websocket: the shipped
workflow templates with our parameters substituted by node id, progress over /ws, results
from /history + /view, image upload for img2img, execution and validation errors, and the
/history polling fallback when the websocket is not available."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from providers import ProviderError, ProviderRequest, build_provider
from tests.providers.fake_comfyui import FakeComfyUI, pattern_runner, tiny_model_runner
from tests.providers.servers import LiveServer, pattern


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def comfy():
    fake = FakeComfyUI()
    with LiveServer(fake.app) as server:
        fake.url = server.url
        yield fake


async def _generate(settings: dict, request: ProviderRequest, **deps):
    provider = build_provider("comfyui", "comfy", settings, **deps)
    try:
        return await provider.run(request)
    finally:
        await provider.close()


def test_text2img_end_to_end_with_progress(comfy):
    progress: list[tuple[float, str]] = []
    request = ProviderRequest(prompt="a lighthouse at dusk", negative_prompt="blurry", n=2,
                              width=64, height=48, seed=5, steps=3, guidance_scale=6.5,
                              on_progress=lambda f, m: progress.append((f, m)))
    images = run(_generate({"base_url": comfy.url}, request))

    [graph] = comfy.prompts
    assert graph["6"]["inputs"]["text"] == "a lighthouse at dusk"
    assert graph["7"]["inputs"]["text"] == "blurry"
    assert graph["3"]["inputs"]["seed"] == 5 and graph["3"]["inputs"]["steps"] == 3
    assert graph["3"]["inputs"]["cfg"] == 6.5
    assert graph["5"]["inputs"] == {"width": 64, "height": 48, "batch_size": 2}
    assert graph["4"]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"
    assert [img.array.shape for img in images] == [(48, 64, 3)] * 2
    assert np.array_equal(images[0].array, pattern(5, 64, 48, "a lighthouse at dusk"))
    assert np.array_equal(images[1].array, pattern(6, 64, 48, "a lighthouse at dusk"))
    assert all(img.content_type == "image/png" and img.seed == 5 for img in images)
    # every progress message the server sent reached the caller, in order
    assert [m for _, m in progress] == ["step 1/3", "step 2/3", "step 3/3"]
    assert progress[-1][0] == 1.0


def test_img2img_uploads_the_input_and_sets_denoise(comfy):
    source = np.full((64, 64, 3), 200, np.uint8)
    request = ProviderRequest(prompt="make it blue", images=[source], strength=0.25, seed=9,
                              steps=2, model="tiny-sd")
    [image] = run(_generate({"base_url": comfy.url}, request))

    [graph] = comfy.prompts
    assert graph["10"]["inputs"]["image"] in comfy.uploads
    assert graph["3"]["inputs"]["denoise"] == 0.25
    assert graph["12"]["inputs"]["amount"] == 1
    assert graph["4"]["inputs"]["ckpt_name"] == "tiny-sd"
    expected = (0.75 * source.astype(np.float32)
                + 0.25 * pattern(9, 64, 64, "make it blue")).astype(np.uint8)
    assert np.array_equal(image.array, expected)
    assert image.model == "tiny-sd"


def test_execution_error_is_a_retryable_provider_failure(comfy):
    comfy.fail_execution = True
    with pytest.raises(ProviderError) as info:
        run(_generate({"base_url": comfy.url}, ProviderRequest(prompt="x", steps=2)))
    assert info.value.outcome == "server_error" and info.value.retryable
    assert "OutOfMemoryError" in info.value.message and "node 3" in info.value.message


def test_a_graph_the_server_rejects_names_the_node_error(comfy):
    request = ProviderRequest(prompt="x", model="missing.safetensors")
    with pytest.raises(ProviderError) as info:
        run(_generate({"base_url": comfy.url, "models": ["missing.safetensors"]}, request))
    assert info.value.outcome == "server_error" and info.value.upstream_status == 400
    assert "Prompt outputs failed validation" in info.value.message
    assert "node 4" in info.value.message and "Value not in list" in info.value.message


def test_without_a_websocket_the_provider_polls_history(comfy):
    comfy.websocket_enabled = False
    request = ProviderRequest(prompt="polled", seed=1, steps=2, width=32, height=32)
    [image] = run(_generate({"base_url": comfy.url, "poll_interval_s": 0.05}, request))
    assert np.array_equal(image.array, pattern(1, 32, 32, "polled"))
    # and with the websocket turned off in the settings, it never tries to open one
    comfy.websocket_enabled = True
    connects = len(comfy.sockets)
    [image] = run(_generate({"base_url": comfy.url, "use_websocket": False,
                             "poll_interval_s": 0.05}, request))
    assert len(comfy.sockets) == connects
    assert np.array_equal(image.array, pattern(1, 32, 32, "polled"))


def test_bearer_token_is_sent_to_http_and_websocket(comfy):
    comfy.api_key = "comfy-token-123"
    request = ProviderRequest(prompt="x", steps=2, width=32, height=32)
    with pytest.raises(ProviderError) as info:
        run(_generate({"base_url": comfy.url}, request))
    assert info.value.outcome == "auth_error"
    progress = []
    request.on_progress = lambda f, m: progress.append(m)
    [image] = run(_generate({"base_url": comfy.url, "api_key": "comfy-token-123"}, request))
    assert image.array.shape == (32, 32, 3)
    assert progress == ["step 1/2", "step 2/2"]  # the websocket was accepted too


def test_a_cancelled_call_removes_and_interrupts_its_prompt(comfy):
    """Timeouts and callers that left cancel the provider call: the prompt is deleted from
    the queue and interrupted on the server (only that prompt)."""
    release = threading.Event()

    def blocking(params, on_step):
        on_step(1, params.steps)
        release.wait(10)  # until interrupted (or 10 s at most)
        return pattern_runner(params, lambda *a: None)

    comfy.runner = blocking
    comfy.on_interrupt = release.set

    async def go():
        provider = build_provider("comfyui", "comfy", {"base_url": comfy.url})
        request = ProviderRequest(prompt="x", steps=3, width=32, height=32)
        task = asyncio.ensure_future(provider.run(request))
        request.on_progress = lambda fraction, message: task.cancel()  # once it runs
        with pytest.raises(asyncio.CancelledError):
            await task
        await provider.close()  # waits for the best-effort cancel

    run(go())
    [prompt_id] = comfy.prompt_ids
    assert comfy.deleted == [prompt_id] and comfy.interrupts == [prompt_id]


def test_workflow_bindings_are_checked_when_the_provider_is_built():
    bad = {"text2img": {"graph": {"1": {"class_type": "SaveImage", "inputs": {}}},
                        "bindings": {"prompt": [["6", "text"]]}}}
    with pytest.raises(ValueError, match="bound to node '6'"):
        build_provider("comfyui", "comfy", {"workflows": bad})
    unknown = {"text2img": {"graph": {"6": {"class_type": "CLIPTextEncode", "inputs": {}}},
                            "bindings": {"colour": [["6", "text"]]}}}
    with pytest.raises(ValueError, match="unknown parameters"):
        build_provider("comfyui", "comfy", {"workflows": unknown})
    text_only = build_provider("comfyui", "comfy", {"workflows": {
        "text2img": {"path": "workflows/sd_text2img.json",
                     "bindings": {"prompt": [["6", "text"]]}}}})
    assert not text_only.capabilities.img2img and text_only.capabilities.text2img


@pytest.mark.slow
def test_tiny_diffusion_model_behind_the_fake_server(zoo_dir):
    from models.diffusion import DiffusionModel
    from models.registry import get_spec

    model = DiffusionModel.from_spec(get_spec("tiny-sd"), zoo_dir=str(zoo_dir))
    fake = FakeComfyUI(runner=tiny_model_runner(model))
    progress = []
    with LiveServer(fake.app) as server:
        request = ProviderRequest(prompt="a cat", n=2, width=64, height=64, steps=2, seed=3,
                                  model="tiny-sd", on_progress=lambda f, m: progress.append(m))
        images = run(_generate({"base_url": server.url, "models": ["tiny-sd"]}, request))
        img2img = run(_generate({"base_url": server.url, "models": ["tiny-sd"]},
                                ProviderRequest(prompt="a dog", images=[images[0].array],
                                                strength=0.5, steps=2, seed=4)))
    assert [img.array.shape for img in images] == [(64, 64, 3)] * 2
    assert not np.array_equal(images[0].array, images[1].array)  # seeds 3 and 4
    assert progress == ["step 1/2", "step 2/2"]
    assert img2img[0].array.shape == (64, 64, 3)
