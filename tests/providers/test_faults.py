"""Fault under load: the remote provider's server is killed in the middle of a 30-request run;
every request is still answered (by the fallback), none fails."""

from __future__ import annotations

import asyncio
import collections

from providers import (
    BreakerConfig,
    MemoryBreakerStore,
    ProviderRequest,
    ProviderRouter,
    build_provider,
)
from tests.providers.conftest import local_provider
from tests.providers.fake_openai import FakeOpenAI
from tests.providers.servers import LiveServer

REQUESTS = 30
KILL_AFTER = 10  # answers from the remote provider before its server is killed
CONCURRENCY = 5


def test_killing_the_remote_server_mid_run_loses_no_request():
    fake = FakeOpenAI(latency_s=0.02)
    server = LiveServer(fake.app).start()

    async def go():
        # generous timeouts: on a loaded machine nothing may fail before the kill
        remote = build_provider("openai", "gateway-b", {
            "base_url": f"{server.url}/v1", "api_key": fake.api_key, "priority": 0,
            "gateway_extensions": True, "timeout_s": 30, "connect_timeout_s": 10})
        await remote.run(ProviderRequest(prompt="warm up", width=64, height=64))
        router = ProviderRouter([remote, local_provider()], breakers=MemoryBreakerStore(
            BreakerConfig(failure_threshold=3, window_s=60, cooldown_s=60)))
        remote_answers = 0
        kill, killed = asyncio.Event(), asyncio.Event()
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int):
            nonlocal remote_answers
            async with gate:
                if kill.is_set():
                    # requests not yet sent when the kill began go once the server is gone
                    # (those in flight at that moment meet the kill itself)
                    await killed.wait()
                try:
                    result = await router.generate(ProviderRequest(
                        prompt=f"request {i}", width=64, height=64, seed=i))
                except Exception as exc:  # counted: the test wants none
                    return exc
                if result.provider == "gateway-b":
                    remote_answers += 1
                    if remote_answers == KILL_AFTER:
                        kill.set()
                return result

        async def killer():
            await kill.wait()
            await asyncio.to_thread(server.stop, force=True)
            killed.set()

        killing = asyncio.ensure_future(killer())
        results = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
        if not kill.is_set():  # the remote never reached KILL_AFTER answers: say so, no hang
            killing.cancel()
        await asyncio.gather(killing, return_exceptions=True)
        await router.close()
        return results, kill.is_set()

    try:
        results, killed = asyncio.run(go())
    finally:
        server.stop(force=True)
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors == []
    assert killed, [[(a.provider, a.outcome) for a in r.attempts] for r in results]
    by = collections.Counter(r.provider for r in results)
    assert by["gateway-b"] >= KILL_AFTER and by["local"] >= 1
    assert by["gateway-b"] + by["local"] == REQUESTS
    outcomes = collections.Counter(a.outcome for r in results for a in r.attempts
                                   if a.provider == "gateway-b")
    # after the kill: connection errors until the breaker opened, then skipped at once
    assert outcomes["connection_error"] >= 1 and outcomes["breaker_open"] >= 1
    assert all(r.images and r.images[0].array.shape[:2] in ((64, 64), (4, 4))
               for r in results)
