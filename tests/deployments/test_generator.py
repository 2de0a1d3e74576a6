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
