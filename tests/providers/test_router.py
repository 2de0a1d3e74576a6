"""The provider router: fallback on each retryable failure (with the real adapters against
wire-format fakes), capability filtering (a mask never goes to a provider that cannot
inpaint), non-retryable errors returned at once, chains, weighted load balancing, breakers
(opening, skipping, half-open probe, closing; shared by two routers through Redis), stats."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import random

import httpx
import numpy as np
import pytest

from providers import (
    AllProvidersFailed,
    BreakerConfig,
    Capabilities,
    MemoryBreakerStore,
    NoCapableProvider,
    ProviderRequest,
    ProviderRouter,
    RedisBreakerStore,
    RequestRejected,
    UnknownProvider,
    build_provider,
    parse_model_name,
)
from tests.providers.conftest import ScriptedProvider, fail, local_provider
from tests.providers.servers import pattern

RW_KEY = "rw-router-key-0123456789"


def run(coro):
    return asyncio.run(coro)


def runware(handler, **settings):
    return build_provider("runware", "runware", {"api_key": RW_KEY, "priority": 10,
                                                 **settings},
                          transport=httpx.MockTransport(handler))


def runware_answer(task_answer):
    """A Runware endpoint answering every task with task_answer(task) → Response."""
    def handler(request):
        return task_answer(json.loads(request.content)[0])
    return handler


async def _hang(task):
    await asyncio.Event().wait()


FAILURES = {
    "500": (runware_answer(lambda t: httpx.Response(500, json={"data": [], "errors": [
        {"code": "unexpectedError", "message": "Internal server error",
         "taskUUID": t["taskUUID"]}]})), "server_error"),
    "timeout": (runware_answer(_hang), "timeout"),
    "200 without images": (runware_answer(lambda t: httpx.Response(200, json={"data": []})),
                           "no_images"),
    "429 with Retry-After": (runware_answer(lambda t: httpx.Response(
        429, headers={"Retry-After": "20"}, json={"data": [], "errors": [
            {"code": "rateLimitExceeded", "message": "slow down",
             "taskUUID": t["taskUUID"]}]})), "rate_limited"),
    "connection refused": (lambda request: (_ for _ in ()).throw(
        httpx.ConnectError("[Errno 111] Connection refused")), "connection_error"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_primary_failure_falls_back_and_attempts_say_why(failure, clock):
    handler, outcome = FAILURES[failure]
    calls: list = []

    async def go():
        router = ProviderRouter([runware(handler, timeout_s=0.3), local_provider(calls=calls)],
                                breakers=MemoryBreakerStore(clock=clock))
        try:
            result = await router.generate(ProviderRequest(prompt="a fox", n=2, width=128,
                                                           height=128, seed=4))
            second = await router.generate(ProviderRequest(prompt="a fox", width=128,
                                                           height=128))
        finally:
            await router.close()
        return result, second

    result, second = run(go())
    assert result.provider == "local" and result.kind == "local" and result.model == "tiny-sd"
    assert [(a.provider, a.outcome) for a in result.attempts] == [("runware", outcome),
                                                                   ("local", "ok")]
    assert result.attempts[0].detail  # says why
    assert len(result.images) == 2
    assert np.array_equal(result.images[1].array, pattern(5, 128, 128, "a fox"))
    meta = result.metadata()
    assert meta["provider"] == "local" and meta["attempts"][0]["outcome"] == outcome
    assert set(meta["attempts"][0]) == {"provider", "outcome", "seconds", "detail"}
    if failure == "timeout":
        assert 0.3 <= result.attempts[0].seconds < 5  # one timeout (loaded machines: slack)
    if failure == "429 with Retry-After":
        # the backend said when to come back: its breaker is open, the next request skips it
        assert [(a.provider, a.outcome) for a in second.attempts] == [
            ("runware", "breaker_open"), ("local", "ok")]
        assert "retry in 20.0 s" in second.attempts[0].detail
        assert second.attempts[0].seconds == 0.0


def test_too_few_images_and_bad_bytes_fall_back(clock):
    short = ScriptedProvider("short", priority=0,
                             script=[lambda r: ScriptedProvider.images(r, "short")[:1]])

    async def go():
        bad = runware(runware_answer(lambda t: httpx.Response(200, json={"data": [{
            "taskType": "imageInference", "taskUUID": t["taskUUID"],
            "imageBase64Data": base64.b64encode(b"<html>not an image</html>").decode()}]})))
        router = ProviderRouter([short, bad, local_provider()],
                                breakers=MemoryBreakerStore(clock=clock))
        try:
            return await router.generate(ProviderRequest(prompt="x", n=2, width=128,
                                                         height=128))
        finally:
            await router.close()

    result = run(go())
    assert [(a.provider, a.outcome) for a in result.attempts] == [
        ("short", "too_few_images"), ("runware", "bad_output"), ("local", "ok")]
    assert "returned 1 of 2 images" in result.attempts[0].detail


def test_a_mask_request_skips_providers_that_cannot_inpaint(clock):
    seen = []

    def google(request):
        seen.append(request)
        return httpx.Response(500)

    async def go():
        gemini = build_provider("gemini", "gemini", {"api_key": "k" * 20, "priority": 0},
                                transport=httpx.MockTransport(google))
        leonardo = build_provider("leonardo", "leonardo", {"api_key": "k" * 20, "priority": 1},
                                  transport=httpx.MockTransport(google))
        router = ProviderRouter([gemini, leonardo, local_provider()],
                                breakers=MemoryBreakerStore(clock=clock))
        image = np.zeros((64, 64, 3), np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[:8] = 255
        try:
            result = await router.generate(ProviderRequest(prompt="a hat", images=[image],
                                                           mask=mask))
            await router.remove("local")
            with pytest.raises(NoCapableProvider) as info:
                await router.generate(ProviderRequest(prompt="a hat", images=[image],
                                                      mask=mask))
        finally:
            await router.close()
        return result, info.value

    result, error = run(go())
    assert seen == []  # never sent anywhere that would drop the mask
    assert result.provider == "local"
    assert [(a.provider, a.outcome) for a in result.attempts] == [("local", "ok")]
    assert [s.as_dict() for s in result.skipped] == [
        {"provider": "gemini", "reasons": ["mask: inpaint not supported"]},
        {"provider": "leonardo", "reasons": ["mask: inpaint not supported"]}]
    assert error.status == 400 and error.code == "unsupported_request" and error.param == "mask"
    assert "gemini: mask: inpaint not supported" in error.message
    assert error.attempts == []


def test_inputs_are_never_dropped_seed_negative_prompt_size(clock):
    plain = ScriptedProvider("plain", priority=0, capabilities=Capabilities(
        sizes=("1024x1024",)))
    full = ScriptedProvider("full", priority=1)

    async def go():
        router = ProviderRouter([plain, full], breakers=MemoryBreakerStore(clock=clock))
        out = {}
        for label, request in {
            "seed": ProviderRequest(prompt="x", seed=1),
            "negative": ProviderRequest(prompt="x", negative_prompt="blur"),
            "size": ProviderRequest(prompt="x", width=512, height=512),
            "none": ProviderRequest(prompt="x", width=1024, height=1024),
        }.items():
            result = await router.generate(request)
            out[label] = (result.provider, [s.reasons for s in result.skipped])
        return out

    out = run(go())
    assert out["seed"] == ("full", [("seed: a fixed seed is not supported",)])
    assert out["negative"] == ("full", [("negative_prompt: not supported",)])
    assert out["size"] == ("full", [("size: 512x512 not in ['1024x1024']",)])
    assert out["none"] == ("plain", [])


def test_all_providers_down_is_one_error_naming_each_attempt(clock):
    async def go():
        router = ProviderRouter([
            ScriptedProvider("a", priority=0, default=fail("server_error")),
            ScriptedProvider("b", priority=1, default=fail("rate_limited", retry_after=12)),
            ScriptedProvider("c", priority=2, default="hang", timeout_s=0.05),
        ], breakers=MemoryBreakerStore(clock=clock))
        with pytest.raises(AllProvidersFailed) as info:
            await router.generate(ProviderRequest(prompt="x"))
        await router.close()
        return info.value

    error = run(go())
    assert error.status == 503 and error.code == "providers_unavailable"
    assert [(a.provider, a.outcome) for a in error.attempts] == [
        ("a", "server_error"), ("b", "rate_limited"), ("c", "timeout")]
    for name, outcome in (("a", "server_error"), ("b", "rate_limited"), ("c", "timeout")):
        assert f"{name}: {outcome}" in error.message
    assert error.retry_after == 12.0
    assert error.metadata()["attempts"][2]["outcome"] == "timeout"


def test_non_retryable_errors_are_returned_not_retried(clock):
    policy = ScriptedProvider("strict", priority=0, default=fail(
        "content_policy", code="content_policy_violation"))
    backup = ScriptedProvider("backup", priority=1)

    async def go():
        router = ProviderRouter([policy, backup], breakers=MemoryBreakerStore(clock=clock))
        with pytest.raises(RequestRejected) as info:
            await router.generate(ProviderRequest(prompt="something forbidden"))
        snap = await router.breakers.snapshot("strict")
        return info.value, snap

    error, snap = run(go())
    assert backup.calls == 0
    assert error.status == 400 and error.code == "content_policy_violation"
    assert [(a.provider, a.outcome) for a in error.attempts] == [("strict", "content_policy")]
    assert snap.failures == 0  # the request's fault, not the provider's


def test_chain_pins_and_orders_providers(clock):
    a = ScriptedProvider("a", priority=0)
    b = ScriptedProvider("b", priority=1, default=fail("server_error"))
    c = ScriptedProvider("c", priority=2)

    async def go():
        router = ProviderRouter([a, b, c], breakers=MemoryBreakerStore(clock=clock))
        pinned = await router.generate(ProviderRequest(prompt="x"), chain=["c"])
        ordered = await router.generate(ProviderRequest(prompt="x"), chain=["b", "c", "a"])
        with pytest.raises(UnknownProvider) as info:
            await router.generate(ProviderRequest(prompt="x"), chain=["nope"])
        return pinned, ordered, info.value

    pinned, ordered, unknown = run(go())
    assert pinned.provider == "c" and [x.provider for x in pinned.attempts] == ["c"]
    assert [x.provider for x in ordered.attempts] == ["b", "c"]
    assert a.calls == 0  # a chain is the whole list: 'a' comes after the one that answered
    assert unknown.status == 400 and unknown.param == "provider"
    assert "'a', 'b', 'c'" in unknown.message


def test_model_names_route_to_the_provider_offering_them(clock):
    a = ScriptedProvider("a", priority=0, models=["alpha-1"])
    b = ScriptedProvider("b", priority=1, models=["beta-1", "beta-2"])

    async def go():
        router = ProviderRouter([a, b], breakers=MemoryBreakerStore(clock=clock))
        provider, model = parse_model_name("b/beta-2", router.names)
        via_prefix = await router.generate(ProviderRequest(prompt="x", model=model),
                                           chain=[provider])
        by_model = await router.generate(ProviderRequest(prompt="x", model="beta-1"))
        with pytest.raises(NoCapableProvider) as info:
            await router.generate(ProviderRequest(prompt="x", model="gamma"))
        return via_prefix, by_model, info.value

    via_prefix, by_model, error = run(go())
    assert via_prefix.provider == "b" and via_prefix.model == "b-m"
    assert by_model.provider == "b" and [s.provider for s in by_model.skipped] == ["a"]
    assert error.param == "model"


def test_parse_model_name():
    names = ["local", "runware", "comfy"]
    assert parse_model_name("runware/runware:101@1", names) == ("runware", "runware:101@1")
    assert parse_model_name("comfy/SD1.5/model.safetensors", names) == (
        "comfy", "SD1.5/model.safetensors")
    assert parse_model_name("stabilityai/sdxl", names) == (None, "stabilityai/sdxl")
    assert parse_model_name("sdxl", names) == (None, "sdxl")
    assert parse_model_name("local/", names) == ("local", None)
    assert parse_model_name(None, names) == (None, None)


def test_equal_priorities_share_load_by_weight_and_latency():
    heavy = ScriptedProvider("heavy", priority=5, weight=3)
    light = ScriptedProvider("light", priority=5, weight=1)
    first = ScriptedProvider("first", priority=9)
    router = ProviderRouter([first, heavy, light], rng=random.Random(7))
    request = ProviderRequest(prompt="x")
    leads = collections.Counter(router.plan(request)[0][0].name for _ in range(2000))
    assert leads["heavy"] / 2000 == pytest.approx(0.75, abs=0.04)
    assert router.plan(request)[0][-1].name == "first"  # lower priority always last
    # same weights, but 'heavy' has been 3x slower: it now gets about a quarter
    router._stats["heavy"].ewma_s, router._stats["light"].ewma_s = 3.0, 1.0
    heavy.settings.weight = 1.0
    leads = collections.Counter(router.plan(request)[0][0].name for _ in range(2000))
    assert leads["heavy"] / 2000 == pytest.approx(0.25, abs=0.04)


def test_breaker_opens_skips_half_opens_and_closes(clock):
    config = BreakerConfig(failure_threshold=3, window_s=60, cooldown_s=10)
    primary = ScriptedProvider("primary", priority=0, default=fail("server_error"))
    backup = ScriptedProvider("backup", priority=1)

    async def go():
        router = ProviderRouter([primary, backup],
                                breakers=MemoryBreakerStore(config, clock=clock))
        results = [await router.generate(ProviderRequest(prompt="x")) for _ in range(5)]
        calls_while_open = primary.calls
        clock.advance(10.5)
        primary.default = "ok"
        probe = await router.generate(ProviderRequest(prompt="x"))
        after = await router.generate(ProviderRequest(prompt="x"))
        return results, calls_while_open, probe, after, await router.breakers.snapshot(
            "primary")

    results, calls_while_open, probe, after, snap = run(go())
    assert [r.attempts[0].outcome for r in results] == ["server_error"] * 3 + \
        ["breaker_open"] * 2
    assert all(r.provider == "backup" for r in results)
    assert calls_while_open == 3  # requests skipped it while open
    assert [(a.provider, a.outcome) for a in probe.attempts] == [("primary", "ok")]
    assert after.provider == "primary" and snap.state == "closed"


def test_two_routers_share_breaker_state_through_redis(redis_url, redis_prefix, clock):
    config = BreakerConfig(failure_threshold=2, window_s=60, cooldown_s=10)

    def replica():
        primary = ScriptedProvider("primary", priority=0, default=fail("server_error"))
        backup = ScriptedProvider("backup", priority=1)
        store = RedisBreakerStore(redis_url, config, prefix=redis_prefix, clock=clock)
        return ProviderRouter([primary, backup], breakers=store), primary

    async def go():
        (a, a_primary), (b, b_primary) = replica(), replica()
        try:
            for _ in range(2):
                await a.generate(ProviderRequest(prompt="x"))
            from_b = await b.generate(ProviderRequest(prompt="x"))
            clock.advance(10.5)
            a_primary.default = b_primary.default = "ok"
            probe = await b.generate(ProviderRequest(prompt="x"))
            from_a = await a.generate(ProviderRequest(prompt="x"))
            stats = await a.stats()
        finally:
            await a.close()
            await b.close()
        return from_b, probe, from_a, b_primary.calls, stats

    from_b, probe, from_a, b_calls, stats = run(go())
    # replica b never called the primary while it was open: replica a's failures opened it
    assert [(x.provider, x.outcome) for x in from_b.attempts] == [
        ("primary", "breaker_open"), ("backup", "ok")]
    # the half-open probe went from b; its success closed the breaker for a too
    assert [(x.provider, x.outcome) for x in probe.attempts] == [("primary", "ok")]
    assert b_calls == 1
    assert [(x.provider, x.outcome) for x in from_a.attempts] == [("primary", "ok")]
    assert stats[0]["breaker"]["state"] == "closed"


def test_an_adapter_bug_falls_back_and_is_logged_without_secrets(clock, caplog):
    buggy = ScriptedProvider("buggy", priority=0,
                             default=KeyError("token sk-live-9999999999 missing"))
    buggy.secret = "sk-live-9999999999"
    backup = ScriptedProvider("backup", priority=1)

    async def go():
        router = ProviderRouter([buggy, backup], breakers=MemoryBreakerStore(clock=clock))
        return await router.generate(ProviderRequest(prompt="x"))

    with caplog.at_level(logging.DEBUG):
        result = run(go())
    assert [(a.provider, a.outcome) for a in result.attempts] == [
        ("buggy", "server_error"), ("backup", "ok")]
    assert "KeyError" in caplog.text and "sk-live-9999999999" not in caplog.text


def test_cancellation_propagates_and_blames_no_provider(clock):
    slow = ScriptedProvider("slow", priority=0, default="hang")

    async def go():
        router = ProviderRouter([slow], breakers=MemoryBreakerStore(
            BreakerConfig(failure_threshold=1), clock=clock))
        task = asyncio.ensure_future(router.generate(ProviderRequest(prompt="x")))
        while slow.calls == 0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await router.breakers.snapshot("slow"), await router.stats()

    snap, stats = run(go())
    assert snap.state == "closed" and snap.failures == 0
    assert stats[0]["requests"] == 0


def test_stats_view(clock):
    async def ok_after_2ms(request):  # a measurable latency (stats round to 0.1 ms)
        await asyncio.sleep(0.002)
        return "ok"

    flaky = ScriptedProvider("flaky", priority=0,
                             script=[fail("server_error"), ok_after_2ms, ok_after_2ms,
                                     fail("bad_request")],
                             models=["m1"])

    async def go():
        router = ProviderRouter([flaky, ScriptedProvider("backup", priority=1)],
                                breakers=MemoryBreakerStore(clock=clock))
        for _ in range(3):
            await router.generate(ProviderRequest(prompt="x"))
        with pytest.raises(RequestRejected):
            await router.generate(ProviderRequest(prompt="x"))
        return await router.stats()

    stats = {s["name"]: s for s in run(go())}
    flaky_stats = stats["flaky"]
    assert flaky_stats["kind"] == "scripted" and flaky_stats["models"] == ["m1"]
    assert flaky_stats["requests"] == 4
    assert flaky_stats["success_rate"] == pytest.approx(2 / 3, abs=1e-4)  # 400: not its fault
    assert flaky_stats["p50_latency_s"] >= 0.002 and flaky_stats["ewma_latency_s"] >= 0.002
    assert flaky_stats["breaker"] == {"state": "closed", "recent_failures": 1,
                                      "retry_after_s": 0.0, "consecutive_opens": 0}
    assert flaky_stats["capabilities"]["inpaint"] is True
    assert stats["backup"]["requests"] == 1


def test_add_remove_and_duplicate_names():
    router = ProviderRouter([ScriptedProvider("a")])
    with pytest.raises(ValueError, match="already routed"):
        router.add(ScriptedProvider("a"))
    run(router.remove("a"))
    assert router.names == []
    with pytest.raises(NoCapableProvider, match="none configured"):
        run(router.generate(ProviderRequest(prompt="x")))
