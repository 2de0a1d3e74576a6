"""The Matting deployment: its class called directly (no Ray), and once under Ray Serve."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.matting import Matting
from models.matting import MattingRequest
from tests.deployments import INFO_KEYS


@pytest.fixture(scope="module")
def matting(zoo_dir):
    return Matting.func_or_class(model="tiny-u2net", zoo_dir=str(zoo_dir), max_batch_images=4)


def _requests() -> list[MattingRequest]:
    rng = np.random.default_rng(0)
    outputs = ["cutout", "mask", "solid"] * 2
    return [MattingRequest(image=rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8),
                           output=out) for i, out in enumerate(outputs)]


def test_a_serve_batch_is_one_model_call(matting):
    reqs = _requests()
    # The body of the @serve.batch method (the batching queue itself needs a Serve replica).
    results = asyncio.run(Matting.func_or_class._batched.__wrapped__(matting, reqs))
    assert [r.image.shape for r in results] == [
        (30, 40, 4), (31, 40), (32, 40, 3), (33, 40, 4), (34, 40), (35, 40, 3)]
    assert [r.batch_size for r in results] == [4, 4, 4, 4, 2, 2]
    assert all("batch_s" in r.timings for r in results)
    stats = matting.stats()
    assert stats["serve_batches"] == {6: 1} and stats["onnx_batches"] == {4: 1, 2: 1}
    assert stats["images"] == 6 and stats["session"] == "u2net_custom" and stats["onnx_batching"]


def test_bad_request_fails_alone_with_a_value_error(matting):
    with pytest.raises(ValueError, match=r"image must have dtype uint8 \(0-255\), got float32"):
        asyncio.run(matting.remove(MattingRequest(image=np.zeros((8, 8, 3), np.float32))))
    with pytest.raises(ValueError, match=r"output must be one of cutout, mask, solid"):
        asyncio.run(matting.remove(MattingRequest(image=np.zeros((8, 8, 3), np.uint8),
                                                  output="jpeg")))


def test_info_has_the_common_keys(matting):
    info = matting.info()
    assert set(info) == INFO_KEYS
    assert (info["name"], info["family"], info["tiny"], info["fallback"]) == (
        "tiny-u2net", "matting", True, False)
    assert (info["device"], info["dtype"]) == ("cpu", "float32")
    assert info["limits"] == {"max_side": 4096, "max_batch_images": 4}


def test_check_health_probes_the_model_when_idle(matting, monkeypatch):
    matting._last_ok = 0.0  # no recent success: the probe runs
    probes = matting.stats()["health_probes"]
    asyncio.run(matting.check_health())
    assert matting.stats()["health_probes"] == probes + 1
    asyncio.run(matting.check_health())  # a success just now: no second probe
    assert matting.stats()["health_probes"] == probes + 1

    def broken(*args, **kwargs):
        raise RuntimeError("onnxruntime: CUDA failure 700")

    monkeypatch.setattr(matting.model, "run", broken)
    matting._last_ok = 0.0
    with pytest.raises(RuntimeError, match=r"matting health probe failed: RuntimeError: onnx"):
        asyncio.run(matting.check_health())


def test_start_up_errors():
    with pytest.raises(ValueError, match=r"unknown matting model 'nope'; available: .*tiny-u2net"):
        Matting.func_or_class(model="nope")


def test_missing_weights_fail_at_start_without_fallback(tmp_path):
    with pytest.raises(RuntimeError, match=r"`rembg d u2net`.*never falls back"):
        Matting.func_or_class(model="u2net", rembg_home=str(tmp_path))


@pytest.mark.slow
def test_concurrent_requests_share_batches_under_serve(ray_cluster, zoo_dir):
    from ray import serve

    app = Matting.options(name="MattingUnderTest").bind(
        model="tiny-u2net", zoo_dir=str(zoo_dir), batch_wait_timeout_s=0.2)
    handle = serve.run(app, name="matting-test", route_prefix=None)
    try:
        reqs = _requests()
        results = [r.result(timeout_s=120) for r in [handle.remove.remote(q) for q in reqs]]
        assert [r.image.shape[:2] for r in results] == [q.image.shape[:2] for q in reqs]
        stats = handle.stats.remote().result(timeout_s=30)
        assert stats["images"] == len(reqs)
        assert max(stats["serve_batches"]) > 1  # concurrent requests were batched together
        with pytest.raises(Exception, match=r"image must have dtype uint8"):
            handle.remove.remote(MattingRequest(image=np.zeros((4, 4, 3), np.float32))
                                 ).result(timeout_s=30)
    finally:
        serve.delete("matting-test")
