"""The generator deployment class, called directly (no Ray): batching record and health."""

from __future__ import annotations

import asyncio

import pytest

from deployments.generator import Generator
from models.diffusion import GenerationRequest


@pytest.fixture(scope="module")
def generator(zoo_dir):
    return Generator.func_or_class(model="tiny-sd", zoo_dir=str(zoo_dir))


def test_health_probe_runs_the_model_when_idle(generator):
    generator._last_ok -= 120  # idle for two minutes
    asyncio.run(generator.check_health())
    assert generator.stats()["health_probes"] == 1
    asyncio.run(generator.check_health())  # just probed: not again
    assert generator.stats()["health_probes"] == 1


def test_health_fails_when_the_model_is_broken(generator, monkeypatch):
    def broken(requests, **kwargs):
        raise RuntimeError("CUDA error: device-side assert")

    monkeypatch.setattr(generator.model, "generate", broken)
    generator._last_ok -= 120
    with pytest.raises(RuntimeError, match="health probe failed.*device-side"):
        asyncio.run(generator.check_health())


def test_bad_request_fails_alone_before_batching(generator):
    with pytest.raises(ValueError, match="width"):
        asyncio.run(generator.generate(GenerationRequest(prompt="x", width=13, height=64)))
    assert generator.stats()["serve_batches"] == {}


def _handler(generator, requests):
    """The body of the @serve.batch method for one Serve batch (no Serve queue here)."""
    import threading

    return Generator.func_or_class._batched.__wrapped__(
        generator, requests, [threading.Event() for _ in requests])


def test_batches_waiting_for_the_model_run_together(generator):
    """Serve hands batches over while the model is busy: the ones waiting then share the
    next pipeline call instead of running one after another."""
    before = dict(generator.stats()["pipeline_batches"])

    async def three_batches():
        generator._model_lock = asyncio.Lock()  # this test's event loop
        reqs = [[GenerationRequest(prompt="a cat", width=64, height=64, steps=1, seed=i)]
                for i in range(3)]
        return await asyncio.gather(*(_handler(generator, r) for r in reqs))

    results = asyncio.run(three_batches())
    assert [len(r) for r in results] == [1, 1, 1]
    assert [r[0].seeds for r in results] == [[0], [1], [2]]
    assert [r[0].batch_size for r in results] == [1, 2, 2]  # first alone, then the two waiting
    after = generator.stats()["pipeline_batches"]
    assert {k: after[k] - before.get(k, 0) for k in after} == {1: 1, 2: 1}
    assert not generator._waiting


def test_a_model_error_fails_every_waiting_batch(generator, monkeypatch):
    def broken(requests, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(generator.model, "generate", broken)

    async def two_batches():
        generator._model_lock = asyncio.Lock()  # this test's event loop
        reqs = [[GenerationRequest(prompt="a cat", width=64, height=64, steps=1)]
                for _ in range(2)]
        return await asyncio.gather(*(_handler(generator, r) for r in reqs),
                                    return_exceptions=True)

    errors = asyncio.run(two_batches())
    assert [str(e) for e in errors] == ["out of memory", "out of memory"]
    assert "out of memory" in generator.stats()["last_error"]
    assert not generator._waiting


def test_a_request_alone_does_not_wait_for_a_batch_but_concurrent_ones_do(generator):
    """Adaptive batch wait (what `generate` sets just before a request joins Serve's batch
    queue): a request alone on an idle replica starts at once, no `batch_wait_timeout_s`
    for company that is not coming; while requests overlap, and for a while after, batches
    wait to fill."""
    import time

    async def scenario():
        generator._model_lock = asyncio.Lock()  # this test's event loop
        generator._concurrent_until = float("-inf")
        skipped = generator.stats()["batch_waits_skipped"]
        with generator._queue.waiting():  # alone
            assert generator._batch_wait() == 0.0
        assert generator.stats()["batch_waits_skipped"] == skipped + 1
        with generator._queue.waiting(), generator._queue.waiting():  # two at once
            assert generator._batch_wait() == 0.005
        with generator._queue.waiting():  # alone again, right after an overlap
            assert generator._batch_wait() == 0.005
        generator._concurrent_until = time.monotonic() - 0.001  # CONCURRENT_MEMORY_S on
        async with generator._model_lock:  # alone, but the model is busy: wait to fill
            with generator._queue.waiting():
                assert generator._batch_wait() == 0.005
        generator._concurrent_until = time.monotonic() - 0.001
        with generator._queue.waiting():
            assert generator._batch_wait() == 0.0
        assert generator.stats()["batch_waits_skipped"] == skipped + 2

    asyncio.run(scenario())


def test_the_model_is_loaded_and_called_on_one_thread(generator, monkeypatch):
    """Every torch call of the replica on the thread that loaded the model (ModelThread):
    on another thread each call measured ~1.8x slower (BENCHMARKS.md)."""
    import threading

    loader = generator._thread.thread_id
    assert loader is not None and loader != threading.get_ident()
    seen = []
    real = generator.model.generate

    def spy(requests, **kwargs):
        seen.append(threading.get_ident())
        return real(requests, **kwargs)

    monkeypatch.setattr(generator.model, "generate", spy)

    async def calls():
        generator._model_lock = asyncio.Lock()  # this test's event loop
        async for _ in generator.generate_stream(GenerationRequest(  # streamed (SSE)
                prompt="a cat", width=64, height=64, steps=1, seed=1)):
            pass
        await _handler(generator, [GenerationRequest(prompt="a dog", width=64, height=64,
                                                     steps=1, seed=2)])
        generator._last_ok -= 120
        await generator.check_health()

    asyncio.run(calls())
    assert len(seen) == 3 and set(seen) == {loader}
