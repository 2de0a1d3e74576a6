"""Fixtures of the provider tests: a controllable clock, a scripted provider, the local
provider on a fake Generator, Redis breaker stores with a per-test key prefix."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from providers import Capabilities, Provider, ProviderError, ProviderImage, build_provider
from providers.config import ProviderSettings
from tests.providers.servers import pattern


class Clock:
    def __init__(self, start: float = 1_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedProvider(Provider):
    """A provider whose answers are scripted: each call pops the next behaviour ("ok",
    "hang", "empty", a ProviderError, an exception instance, or a callable); when the script
    runs out it repeats `default`."""

    kind = "scripted"
    settings_cls = ProviderSettings

    def __init__(self, name: str, *, script: list[Any] | None = None, default: Any = "ok",
                 capabilities: Capabilities | None = None, **settings: Any):
        self._caps = capabilities or Capabilities(img2img=True, inpaint=True, max_n=10,
                                                  seed=True, negative_prompt=True)
        super().__init__(name, ProviderSettings(**settings))
        self.script = list(script or [])
        self.default = default
        self.calls = 0
        self.secret = ""

    def _capabilities(self) -> Capabilities:
        return self._caps

    def secrets(self) -> list[str]:
        return [self.secret] if self.secret else []

    async def generate(self, request):
        return await self._answer(request)

    async def edit(self, request):
        return await self._answer(request)

    async def _answer(self, request):
        self.calls += 1
        step = self.script.pop(0) if self.script else self.default
        if callable(step) and not isinstance(step, type):
            step = step(request)
            if asyncio.iscoroutine(step):
                step = await step
        if step == "hang":
            await asyncio.Event().wait()
        if step == "empty":
            return []
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, list):
            return step
        return self.images(request, self.name)

    @staticmethod
    def images(request, name: str) -> list[ProviderImage]:
        width, height = request.size or (8, 8)
        return [ProviderImage(array=pattern(i, width, height, name), model=f"{name}-m")
                for i in range(request.n)]


def fail(outcome: str, **kwargs: Any) -> ProviderError:
    return ProviderError(f"scripted {outcome}", outcome=outcome, **kwargs)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def fake_generator(calls: list | None = None) -> Callable:
    """An async stand-in for the Generator deployment's generate (GenerationRequest →
    GenerationResult), deterministic in seed and size."""
    from models.diffusion import GenerationResult, check_inputs
    from models.registry import SizeLimits

    async def generate(req):
        check_inputs(req, SizeLimits(32, 1024, 64, 64, max_steps=50))
        if calls is not None:
            calls.append(req)
        seed = req.seed if req.seed is not None else 0
        return GenerationResult(
            images=[pattern(seed + i, req.width, req.height, req.prompt) for i in range(req.n)],
            seeds=[seed + i for i in range(req.n)], model="tiny-sd", batch_size=req.n)

    return generate


GENERATOR_INFO = {"name": "tiny-sd", "tiny": True,
                  "limits": {"min_side": 32, "max_side": 1024, "default_width": 64,
                             "default_height": 64, "multiple": 8, "max_steps": 50}}


def local_provider(name: str = "local", calls: list | None = None, **settings: Any):
    return build_provider("local", name, {"priority": 50, **settings},
                          generate=fake_generator(calls), info=GENERATOR_INFO)


@pytest.fixture
def redis_prefix(redis_url):
    """A fresh key prefix per test; its keys are deleted afterwards."""
    prefix = f"test:breaker:{uuid.uuid4().hex}:"
    yield prefix

    async def clean():
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    asyncio.run(clean())


def array_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool((a == b).all())
