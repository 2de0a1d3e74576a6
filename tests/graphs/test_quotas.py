"""Image accounting (issue #13, 2): `auth.charge_images` charges before work, and what failed
work did not produce is refunded — in memory and in the real Redis the replicas share."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from graphs.auth import ImageCharge
from graphs.errors import ApiError
from graphs.quotas import QuotaConfig, Quotas


def run(coro):
    return asyncio.run(coro)


def quotas(storage_url: str) -> Quotas:
    return Quotas(QuotaConfig(storage_url=storage_url, images_per_day=5))


@pytest.fixture(params=["memory", "redis"])
def storage_url(request):
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return "memory://"


def test_a_refund_gives_the_images_back(storage_url):
    async def scenario():
        q = quotas(storage_url)
        key = f"key_{uuid.uuid4().hex}"
        await q.charge_images(key, 4, per_day=None)
        with pytest.raises(ApiError) as over:
            await q.charge_images(key, 2, per_day=None)  # 6 > 5
        assert over.value.status == 429 and over.value.code == "quota_exceeded"
        await q.refund_images(key, 3, per_day=None)
        usage = await q.charge_images(key, 4, per_day=None)  # 1 + 4 = 5: fits again
        assert usage.remaining == 0
        with pytest.raises(ApiError):
            await q.charge_images(key, 1, per_day=None)

    run(scenario())


def test_a_refund_never_goes_below_an_empty_window(storage_url):
    async def scenario():
        q = quotas(storage_url)
        key = f"key_{uuid.uuid4().hex}"
        await q.refund_images(key, 3, per_day=None)  # nothing charged: nothing happens
        await q.charge_images(key, 5, per_day=None)
        with pytest.raises(ApiError):
            await q.charge_images(key, 1, per_day=None)

    run(scenario())


def test_a_charge_refunds_only_what_was_not_produced():
    async def scenario():
        q = quotas("memory://")
        key = f"key_{uuid.uuid4().hex}"
        await q.charge_images(key, 5, per_day=None)
        charge = ImageCharge(q, 5, key_id=key)
        charge.produced(2)  # e.g. a plan's first step made 2 images, then a step failed
        assert await charge.refund_unproduced() == 3
        assert await charge.refund_unproduced() == 0  # idempotent
        await q.charge_images(key, 3, per_day=None)  # the 3 are free again...
        with pytest.raises(ApiError):
            await q.charge_images(key, 1, per_day=None)  # ...and the 2 produced are not

    run(scenario())


def test_a_broken_storage_does_not_fail_a_refund(caplog):
    async def scenario():
        q = Quotas(QuotaConfig(storage_url="redis://127.0.0.1:1/0", images_per_day=5))
        await q.refund_images("key_x", 2, per_day=None)

    run(scenario())
    assert "could not refund 2 image(s)" in caplog.text


def test_requests_per_minute_in_one_trip_agrees_with_limits_own_window(redis_url):
    """The one-round-trip window script (Redis) counts as `limits`' sliding window does:
    the remaining count it returns is what `get_window_stats` reads back, and the request
    over the limit is a 429 that was not counted."""
    from limits import RateLimitItemPerMinute

    async def scenario():
        q = quotas(redis_url)
        assert q._hit_script is not None
        key = f"key_{uuid.uuid4().hex}"
        item = RateLimitItemPerMinute(3)
        for expected in (2, 1, 0):
            usage = await q.check_request(key, per_minute=3)
            stats = await q._requests.get_window_stats(item, key, "requests")
            assert usage.remaining == expected == stats.remaining
            assert usage.limit == 3 and usage.reset_at > 0
        with pytest.raises(ApiError) as over:
            await q.check_request(key, per_minute=3)
        assert over.value.status == 429 and over.value.code == "rate_limited"
        assert over.value.headers["X-RateLimit-Remaining"] == "0"
        assert (await q._requests.get_window_stats(item, key, "requests")).remaining == 0

    run(scenario())


def test_replica_windows_count_as_limits_memory_storage_does(monkeypatch):
    """memory://'s requests/minute window (`ReplicaWindows`, synchronous) gives the same
    answers as `limits`' own sliding-window limiter on its memory storage, hit for hit, over
    three windows: what is allowed, what remains, when the window resets."""
    import time

    from limits import RateLimitItemPerMinute
    from limits.aio.strategies import SlidingWindowCounterRateLimiter
    from limits.storage import storage_from_string

    from graphs.quotas import ReplicaWindows, _sliding_window_stats

    clock = [1_800_000_000.0 + 7.5]  # 7.5 s into a minute window
    monkeypatch.setattr(time, "time", lambda: clock[0])

    async def scenario():
        item = RateLimitItemPerMinute(5)
        reference = SlidingWindowCounterRateLimiter(storage_from_string("async+memory://"))
        ours = ReplicaWindows()
        gate = quotas("memory://")  # what the API-key gate calls: the same window, as Usage
        assert gate.in_replica
        # bursts at several points of three windows; each step: seconds to advance, hits
        steps = [(0, 4), (10, 3), (40, 2), (5, 4), (20, 6), (30, 1), (15, 5), (70, 3), (1, 9)]
        answers = []
        for advance, hits in steps:
            clock[0] += advance
            for _ in range(hits):
                allowed = await reference.hit(item, "k", "requests")
                stats = await reference.get_window_stats(item, "k", "requests")
                acquired, *window = ours.hit("k", 5, item.get_expiry())
                mine = _sliding_window_stats(item, *window)
                assert acquired == allowed
                assert mine.remaining == stats.remaining
                assert mine.reset_time == pytest.approx(stats.reset_time)
                try:
                    usage = gate.check_request_now("k", per_minute=5)
                except ApiError as refused:
                    assert not allowed and refused.status == 429
                    assert refused.headers["X-RateLimit-Remaining"] == "0"
                else:
                    assert allowed and usage.limit == 5
                    assert usage.remaining == stats.remaining
                    assert usage.reset_at == pytest.approx(stats.reset_time)
                answers.append(allowed)
        assert True in answers and False in answers  # the sequence both fills and frees

    run(scenario())


def test_replica_windows_forget_idle_keys():
    from graphs.quotas import ReplicaWindows

    windows = ReplicaWindows()
    now = 1_800_000_000.0
    for i in range(1100):  # reaching 1,024 keys prunes those idle for two windows
        windows.hit(f"k{i}", 10, 60, now=now + (0 if i < 1000 else 180))
    assert len(windows._windows) < 200
    assert windows.hit("k5", 1, 60, now=now + 180)[0]  # an idle key starts afresh
