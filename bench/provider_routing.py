"""Provider router overhead and fallback time (issue #16), in process, no Ray.

    python bench/provider_routing.py [--requests 1000] [--redis redis://127.0.0.1:6379/0 | --memory]
                              [--timeout 0.5] [--quick]

1. Added latency: the same request through `ProviderRouter.generate` vs the provider's own
   `run` (interleaved, one at a time), for the local provider (an instant stand-in Generator:
   the router's cost alone) and the openai provider against a fake OpenAI Images server over
   real HTTP on loopback. Breakers in Redis as shipped (shared by replicas), unless --memory.
   Target: <= 2 ms p50 added.
2. Fallback when the primary is down, the answer coming from the local provider: breaker open
   (the primary is skipped at once; target <= 5 ms added over the fallback alone), breaker
   closed with the primary hanging (one timeout, `--timeout` s), and breaker closed with the
   primary refusing connections.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import machine, pct  # noqa: E402
from providers import (  # noqa: E402
    BreakerConfig,
    ProviderRequest,
    ProviderRouter,
    breaker_store,
    build_provider,
)
from tests.providers.conftest import GENERATOR_INFO, fake_generator  # noqa: E402
from tests.providers.fake_openai import FakeOpenAI  # noqa: E402
from tests.providers.servers import LiveServer, free_port  # noqa: E402

# Never opens during a measurement (the breaker-closed rows must stay closed).
NEVER_OPENS = BreakerConfig(failure_threshold=10**9, window_s=1.0, cooldown_s=1.0)


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:8.3f} ms | {pct(values, 99) * 1e3:8.3f} ms"


def _redis_ok(url: str | None) -> bool:
    if not url:
        return False
    host, _, port = url.split("://", 1)[1].split("/", 1)[0].partition(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host or "127.0.0.1", int(port or 6379))) == 0


def _local(name: str = "local", priority: int = 50):
    return build_provider("local", name, {"priority": priority}, generate=fake_generator(),
                          info=GENERATOR_INFO)


async def _time(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


async def _interleaved(direct, routed, n: int) -> tuple[list[float], list[float]]:
    a, b = [], []
    for _ in range(n):
        for fn, sink in ((direct, a), (routed, b)):
            t = time.perf_counter()
            await fn()
            sink.append(time.perf_counter() - t)
    return a, b


async def overhead(rows: list[tuple[str, list[float]]], *, n: int, storage: str | None,
                   openai_url: str, key: str) -> dict[str, float]:
    added = {}
    request = ProviderRequest(prompt="a red fox", width=64, height=64, seed=1, steps=2)
    cases = {
        "local": _local(),
        "openai (fake server, HTTP)": build_provider(
            "openai", "remote", {"base_url": f"{openai_url}/v1", "api_key": key,
                                 "gateway_extensions": True, "priority": 0}),
    }
    for label, provider in cases.items():
        router = ProviderRouter([provider], breakers=breaker_store(storage, NEVER_OPENS,
                                                                  **_prefix(storage)))

        async def direct(p=provider):
            images = await p.run(request)
            assert images

        async def routed(r=router):
            result = await r.generate(request)
            assert result.images

        await _time(direct, 20)  # warm up (connections, imports)
        await _time(routed, 20)
        a, b = await _interleaved(direct, routed, n)
        rows.append((f"{label}: provider directly", a))
        rows.append((f"{label}: through the router", b))
        added[label] = statistics.median(b) - statistics.median(a)
        await router.close()
    return added


def _prefix(storage: str | None) -> dict:
    return {"prefix": f"bench:breaker:{os.getpid()}:"} if storage else {}


async def fallback(rows: list[tuple[str, list[float]]], *, n: int, storage: str | None,
                   hang_url: str, key: str, timeout: float, timeout_runs: int
                   ) -> dict[str, float]:
    request = ProviderRequest(prompt="a red fox", width=64, height=64, seed=1, steps=2)
    results = {}

    def primary(url: str, name: str, timeout_s: float = timeout):
        return build_provider("openai", name, {
            "base_url": f"{url}/v1", "api_key": key, "gateway_extensions": True,
            "priority": 0, "timeout_s": timeout_s, "connect_timeout_s": timeout_s})

    # the fallback alone: what the request costs when the primary is not configured
    alone = ProviderRouter([_local()], breakers=breaker_store(storage, NEVER_OPENS,
                                                             **_prefix(storage)))

    async def fallback_only():
        await alone.generate(request)

    await _time(fallback_only, 20)
    base = await _time(fallback_only, n)
    rows.append(("fallback alone (local via router)", base))

    # breaker open: the primary is skipped at once
    store = breaker_store(storage, BreakerConfig(cooldown_s=3600, max_cooldown_s=3600),
                          **_prefix(storage))
    router = ProviderRouter([primary(hang_url, "down-open"), _local()], breakers=store)
    await store.reset("down-open")
    await store.record_failure("down-open", probe=False, retry_after=3600)

    async def skipped():
        result = await router.generate(request)
        assert result.attempts[0].outcome == "breaker_open"

    await _time(skipped, 20)
    opened = await _time(skipped, n)
    rows.append(("primary down, breaker open", opened))
    results["open"] = statistics.median(opened) - statistics.median(base)
    await store.reset("down-open")
    await router.close()

    # breaker closed, primary hanging: one timeout
    router = ProviderRouter([primary(hang_url, "down-hang"), _local()],
                            breakers=breaker_store(storage, NEVER_OPENS, **_prefix(storage)))

    async def timed_out():
        result = await router.generate(request)
        assert result.attempts[0].outcome == "timeout", result.attempts

    hung = await _time(timed_out, timeout_runs)
    rows.append((f"primary hanging, breaker closed (timeout {timeout:g} s)", hung))
    results["hang"] = statistics.median(hung) - statistics.median(base)
    await router.close()

    # breaker closed, primary refusing connections
    dead = f"http://127.0.0.1:{free_port()}"
    router = ProviderRouter([primary(dead, "down-refused", 10.0), _local()],
                            breakers=breaker_store(storage, NEVER_OPENS, **_prefix(storage)))

    async def refused():
        result = await router.generate(request)
        assert result.attempts[0].outcome == "connection_error", result.attempts

    await _time(refused, 5)
    gone = await _time(refused, max(n // 5, 10))
    rows.append(("primary refusing connections, breaker closed", gone))
    results["refused"] = statistics.median(gone) - statistics.median(base)
    await router.close()
    await alone.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--memory", action="store_true", help="in-memory breakers")
    parser.add_argument("--timeout", type=float, default=0.5, help="primary's timeout_s")
    parser.add_argument("--quick", action="store_true", help="a smoke run (tests)")
    args = parser.parse_args()
    n = 60 if args.quick else args.requests
    timeout_runs = 3 if args.quick else 20
    timeout = 0.2 if args.quick else args.timeout
    storage = None if args.memory or not _redis_ok(args.redis) else args.redis
    # the router logs each failed attempt (WARNING): the fallback rows make thousands
    logging.getLogger("photostudio.providers").setLevel(logging.ERROR)

    print(f"machine: {machine()}")
    print(f"breakers: {'Redis ' + storage if storage else 'memory'}; {n} requests per row, "
          "one at a time")
    fast = FakeOpenAI()
    hanging = FakeOpenAI(latency_s=3600)
    # the hanging server's requests are cancelled at shutdown: not worth a traceback each
    with LiveServer(fast.app) as fast_server, \
            LiveServer(hanging.app, log_level="critical") as hang_server:
        rows: list[tuple[str, list[float]]] = []
        added = asyncio.run(overhead(rows, n=n, storage=storage, openai_url=fast_server.url,
                                     key=fast.api_key))
        down = asyncio.run(fallback(rows, n=n, storage=storage, hang_url=hang_server.url,
                                    key=hanging.api_key, timeout=timeout,
                                    timeout_runs=timeout_runs))
    print()
    print("| path | p50 | p99 |")
    print("|---|---|---|")
    for label, values in rows:
        print(f"| {label} | {_ms(values)} |")
    print()
    for label, value in added.items():
        verdict = "met" if value * 1e3 <= 2.0 else "missed"
        print(f"router added p50, {label}: {value * 1e3:.3f} ms (target <= 2 ms: {verdict})")
    verdict = "met" if down["open"] * 1e3 <= 5.0 else "missed"
    print(f"fallback, breaker open: added p50 {down['open'] * 1e3:.3f} ms over the fallback "
          f"alone (target <= 5 ms: {verdict})")
    print(f"fallback, breaker closed, primary hanging: added p50 {down['hang']:.3f} s "
          f"(one timeout: {timeout:g} s)")
    print(f"fallback, breaker closed, primary refusing connections: added p50 "
          f"{down['refused'] * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
