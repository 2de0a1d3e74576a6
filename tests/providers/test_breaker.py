"""Circuit breaker stores: the same rules in memory and in Redis (the real local Redis), with an
injected clock (no sleeping): N failures in the window open it, Retry-After opens it at once,
the cooldown half-opens it with exactly one probe across replicas, the probe's success closes
it, its failure reopens it for twice as long; a Redis that is down falls back to memory."""

from __future__ import annotations

import asyncio

import pytest

from providers.breaker import BreakerConfig, MemoryBreakerStore, RedisBreakerStore

CONFIG = BreakerConfig(failure_threshold=3, window_s=10.0, cooldown_s=5.0, max_cooldown_s=60.0)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["memory", "redis"])
def make_store(request, clock):
    """A factory of stores sharing one state: memory → the same store (one replica);
    redis → a new client each time (one per replica), same prefix."""
    if request.param == "memory":
        store = MemoryBreakerStore(CONFIG, clock=clock)
        return lambda: store
    redis_url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    # A generous socket timeout: these cases test the rules; on a loaded machine the product's
    # 0.5 s default would (correctly) fall back to this replica's memory mid-test.
    return lambda: RedisBreakerStore(redis_url, CONFIG, prefix=prefix, clock=clock,
                                     socket_timeout_s=10.0)


async def _close(*stores):
    for store in set(stores):
        await store.close()


def test_opens_after_n_failures_in_the_window(make_store, clock):
    async def go():
        store = make_store()
        for _ in range(2):
            assert (await store.acquire("p", probe_lease_s=30)).allowed
            await store.record_failure("p", probe=False)
        clock.advance(11)  # the first two fall out of the 10 s window
        await store.record_failure("p", probe=False)
        await store.record_failure("p", probe=False)
        assert (await store.snapshot("p")).state == "closed"
        assert (await store.snapshot("p")).failures == 2
        await store.record_failure("p", probe=False)  # third within the window
        decision = await store.acquire("p", probe_lease_s=30)
        snap = await store.snapshot("p")
        await _close(store)
        return decision, snap

    decision, snap = run(go())
    assert not decision.allowed and decision.state == "open"
    assert decision.retry_after == pytest.approx(5.0)
    assert snap.state == "open" and snap.opens == 1


def test_half_open_single_probe_then_close_on_success(make_store, clock):
    async def go():
        a, b = make_store(), make_store()  # two replicas
        for _ in range(3):
            await a.record_failure("p", probe=False)
        assert not (await b.acquire("p", probe_lease_s=30)).allowed  # b sees a's failures
        clock.advance(5.01)
        first, second = await asyncio.gather(a.acquire("p", probe_lease_s=30),
                                             b.acquire("p", probe_lease_s=30))
        probes = [d for d in (first, second) if d.probe]
        others = [d for d in (first, second) if not d.probe]
        assert len(probes) == 1 and probes[0].allowed and probes[0].state == "half_open"
        assert len(others) == 1 and not others[0].allowed and others[0].state == "half_open"
        await (a if first.probe else b).record_success("p", probe=True)
        after = await b.acquire("p", probe_lease_s=30), await a.snapshot("p")
        await _close(a, b)
        return after

    decision, snap = run(go())
    assert decision.allowed and decision.state == "closed" and not decision.probe
    assert snap.state == "closed" and snap.failures == 0 and snap.opens == 0


def test_failed_probe_reopens_with_a_doubled_cooldown(make_store, clock):
    async def go():
        store = make_store()
        for _ in range(3):
            await store.record_failure("p", probe=False)
        clock.advance(5.01)
        probe = await store.acquire("p", probe_lease_s=30)
        await store.record_failure("p", probe=probe.probe)
        reopened = await store.acquire("p", probe_lease_s=30)
        clock.advance(9.9)
        still = await store.acquire("p", probe_lease_s=30)
        clock.advance(0.2)
        again = await store.acquire("p", probe_lease_s=30)
        await _close(store)
        return probe, reopened, still, again

    probe, reopened, still, again = run(go())
    assert probe.probe
    assert not reopened.allowed and reopened.retry_after == pytest.approx(10.0)
    assert not still.allowed
    assert again.allowed and again.probe


def test_a_lost_probe_lease_expires(make_store, clock):
    """A replica that died holding the probe does not wedge the breaker half-open."""
    async def go():
        store = make_store()
        for _ in range(3):
            await store.record_failure("p", probe=False)
        clock.advance(6)
        first = await store.acquire("p", probe_lease_s=2)
        clock.advance(1)
        blocked = await store.acquire("p", probe_lease_s=2)
        clock.advance(1.5)
        second = await store.acquire("p", probe_lease_s=2)
        await _close(store)
        return first, blocked, second

    first, blocked, second = run(go())
    assert first.probe and not blocked.allowed and second.probe


def test_retry_after_opens_at_once_for_that_long(make_store, clock):
    async def go():
        store = make_store()
        await store.record_failure("p", probe=False, retry_after=30)
        blocked = await store.acquire("p", probe_lease_s=30)
        clock.advance(29)
        still = await store.acquire("p", probe_lease_s=30)
        clock.advance(1.5)
        probe = await store.acquire("p", probe_lease_s=30)
        # capped at max_cooldown_s
        await store.record_failure("q", probe=False, retry_after=3600)
        capped = await store.acquire("q", probe_lease_s=30)
        await _close(store)
        return blocked, still, probe, capped

    blocked, still, probe, capped = run(go())
    assert not blocked.allowed and blocked.retry_after == pytest.approx(30.0)
    assert not still.allowed
    assert probe.probe
    assert capped.retry_after == pytest.approx(60.0)


def test_providers_are_independent(make_store, clock):
    async def go():
        store = make_store()
        for _ in range(3):
            await store.record_failure("p", probe=False)
        decisions = (await store.acquire("p", probe_lease_s=1),
                     await store.acquire("other", probe_lease_s=1))
        await _close(store)
        return decisions

    p, other = run(go())
    assert not p.allowed and other.allowed


def test_redis_down_falls_back_to_this_replica(caplog, clock):
    async def go():
        store = RedisBreakerStore("redis://127.0.0.1:1/0", CONFIG, clock=clock,
                                  socket_timeout_s=0.2)
        calls = []
        real = store._acquire

        async def counting(**kwargs):
            calls.append(kwargs)
            return await real(**kwargs)

        store._acquire = counting
        first = await store.acquire("p", probe_lease_s=1)
        for _ in range(3):
            await store.record_failure("p", probe=False)
        after = await store.acquire("p", probe_lease_s=1)
        snap = await store.snapshot("p")
        tried = len(calls)
        store._down_until = 0.0  # the cool-off is over: Redis is tried again
        await store.acquire("p", probe_lease_s=1)
        await store.close()
        return first, after, snap, tried, len(calls)

    with caplog.at_level("ERROR", logger="photostudio.providers"):
        first, after, snap, tried, tried_later = run(go())
    assert first.allowed and not after.allowed and snap.state == "open"
    assert tried == 1 and tried_later == 2  # no socket attempt per call while it is away
    errors = [r for r in caplog.records if "breaker storage (Redis) failed" in r.message]
    assert len(errors) == 1  # logged once, not per call


def test_config_is_checked():
    with pytest.raises(ValueError):
        BreakerConfig(failure_threshold=0)
    with pytest.raises(ValueError):
        BreakerConfig(cooldown_s=10, max_cooldown_s=5)
    with pytest.raises(ValueError, match="redis://"):
        RedisBreakerStore("http://localhost:6379")
