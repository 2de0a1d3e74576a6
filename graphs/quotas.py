"""Per-key rate limits (requests/minute) and quotas (images/day), shared by every ingress
replica through Redis, with the `limits` library.

Why Redis + `limits` rather than a Ray actor: the counters must be shared by every ingress
replica and survive a replica (or the Serve controller) restarting; a Ray actor would be one
more single point of failure in the request path and would need its own persistence. Redis
does this with one atomic round trip per check, and `limits` is the well-kept implementation
of the window algorithms (the one behind slowapi / Flask-Limiter).

- requests/minute: sliding-window counter (no burst of 2x at a window edge).
- images/day: a moving window (the images of the last 24 h; one atomic script adds a
  request's n images only if they all fit, so a refused request costs nothing). Images are
  charged when a request is accepted (before any model runs), so a client can't exceed its
  day by sending many requests at once; what failing work did not produce is refunded
  (`refund_images`: the newest entries of the key's window are removed).
- `memory://` keeps counters in the replica: for one-replica local use and unit tests. Its
  requests/minute window is `ReplicaWindows` (below): `limits`' sliding-window counter
  arithmetic, kept synchronously in a dict (`limits`' async memory storage took ~10 us of the
  ingress's CPU per request: an asyncio lock and six awaits; this takes ~2). The daily
  windows stay in `limits`' memory storage (a few calls per image request, not per request).
- If the storage fails (Redis down), requests pass (fail open, logged) unless
  `fail_open` is False, in which case they get 503: availability of the product is chosen
  over exactness of the limits by default.
"""

from __future__ import annotations

import logging
import math
import time
from math import floor, inf
from typing import NamedTuple

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string
from limits.util import WindowStats
from pydantic import BaseModel, Field

from graphs.errors import ApiError

logger = logging.getLogger("ray.serve")


class QuotaConfig(BaseModel):
    storage_url: str = Field(
        "memory://", description="redis://host:port/db (shared by replicas) or memory://")
    requests_per_minute: int = Field(600, ge=1, description="default per key")
    images_per_day: int = Field(1000, ge=1, description="default per key")
    fail_open: bool = True


class Usage(NamedTuple):
    """One window's state after a check: what the X-RateLimit-* headers say (a named tuple:
    made on every request, cheaper than a frozen dataclass)."""

    limit: int
    remaining: int
    reset_at: float  # epoch seconds

    def headers(self, *, prefix: str = "X-RateLimit") -> dict[str, str]:
        return {f"{prefix}-Limit": str(self.limit),
                f"{prefix}-Remaining": str(max(self.remaining, 0)),
                f"{prefix}-Reset": str(max(math.ceil(self.reset_at - time.time()), 0))}

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """`headers()` as an ASGI response's (lower-case name, value) byte pairs."""
        return [(b"x-ratelimit-limit", str(self.limit).encode()),
                (b"x-ratelimit-remaining", str(max(self.remaining, 0)).encode()),
                (b"x-ratelimit-reset",
                 str(max(math.ceil(self.reset_at - time.time()), 0)).encode())]


# `limits`' acquire_sliding_window.lua (same keys, same arithmetic) that also returns the
# window after the hit: {acquired, previous count, previous pttl, current count, current
# pttl}. One round trip per request where `hit` + `get_window_stats` took two.
_HIT_SLIDING_WINDOW = """
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2]) * 1000
local amount = tonumber(ARGV[3])
local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
end
local previous_count = tonumber(redis.call('get', KEYS[1])) or 0
local previous_ttl = tonumber(redis.call('pttl', KEYS[1])) or 0
local current_count = tonumber(redis.call('get', KEYS[2])) or 0
current_ttl = tonumber(redis.call('pttl', KEYS[2])) or 0
if previous_ttl <= 0 then previous_ttl = 0 end
if current_ttl <= 0 then current_ttl = 0 end
local weighted_count = math.floor(previous_count * previous_ttl / expiry) + current_count
local acquired = 0
if amount <= limit and (weighted_count + amount) <= limit then
    acquired = 1
    if redis.call('exists', KEYS[2]) == 1 then
        current_count = redis.call('incrby', KEYS[2], amount)
    else
        redis.call('set', KEYS[2], amount, 'PX', expiry * 2)
        current_count = amount
        current_ttl = expiry * 2
    end
end
return {acquired, previous_count, previous_ttl, current_count, current_ttl}
"""


def _sliding_window_stats(item: RateLimitItem, previous_count: int, previous_ttl_s: float,
                          current_count: int, current_ttl_s: float, *,
                          expiry: int | None = None, now: float | None = None) -> WindowStats:
    """`SlidingWindowCounterRateLimiter.get_window_stats`' arithmetic on a window read
    (`expiry`: the item's, when the caller has it; `now`: the time of the read)."""
    if expiry is None:
        expiry = item.get_expiry()
    remaining = max(0, item.amount - floor(previous_count * previous_ttl_s / expiry
                                           + current_count))
    if now is None:
        now = time.time()
    if not (previous_count or current_count):
        return WindowStats(now, remaining)
    previous_reset_in, current_reset_in = inf, inf
    if previous_count:
        previous_reset_in = previous_ttl_s % (expiry / previous_count)
    if current_count:
        current_reset_in = current_ttl_s % expiry
    return WindowStats(now + min(previous_reset_in, current_reset_in), remaining)


class ReplicaWindows:
    """Sliding-window counters (requests/minute of memory:// storage) in this replica: the
    arithmetic of `limits`' `SlidingWindowCounterRateLimiter` on its memory storage (the
    current and the previous fixed window of `expiry` seconds, the previous one weighted by
    the share of it still inside the sliding window), without its asyncio locks and awaits:
    one synchronous call on the replica's event loop, so nothing interleaves with it.

    Per key: (window number, previous window's count, current window's count); a key not hit
    for two windows reads as empty, and such keys are dropped when the dict doubles."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, int, int]] = {}
        self._prune_at = 1024

    def hit(self, key: str, limit: int, expiry: int, amount: int = 1, *,
            now: float | None = None) -> tuple[bool, int, float, int, float]:
        """Count `amount` on `key`'s window if it fits under `limit`: (acquired, previous
        count, previous window's seconds left in the sliding window, current count, current
        window's TTL) — what `_sliding_window_stats` reads."""
        now = time.time() if now is None else now
        number = int(now / expiry)
        state = self._windows.get(key)
        if state is None or state[0] < number - 1:
            previous = current = 0
        elif state[0] == number:
            previous, current = state[1], state[2]
        else:  # the window moved on by one: the current count becomes the previous one
            previous, current = state[2], 0
        previous_ttl = (1 - (((now - expiry) / expiry) % 1)) * expiry if previous else 0.0
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        acquired = amount <= limit and \
            floor(previous * previous_ttl / expiry + current) + amount <= limit
        if acquired:
            current += amount
        if acquired or state is not None:
            self._windows[key] = (number, previous, current)
            if len(self._windows) >= self._prune_at:
                self._prune(number)
        return acquired, previous, previous_ttl, current, current_ttl

    def _prune(self, number: int) -> None:
        self._windows = {k: v for k, v in self._windows.items() if v[0] >= number - 1}
        self._prune_at = max(1024, 2 * len(self._windows))


def _storage(url: str) -> Storage:
    if url.startswith(("redis://", "rediss://")):
        return storage_from_string("async+" + url, implementation="redispy",
                                   socket_timeout=1.0, socket_connect_timeout=1.0)
    if url.startswith("memory://"):
        return storage_from_string("async+memory://")
    raise ValueError(f"quota storage must be redis://, rediss:// or memory://, got {url!r}")


class Quotas:
    def __init__(self, config: QuotaConfig):
        self.config = config
        self.storage = _storage(config.storage_url)
        self._requests = SlidingWindowCounterRateLimiter(self.storage)
        self._images = MovingWindowRateLimiter(self.storage)
        # requests/minute -> its item and the item's window in seconds
        self._per_minute: dict[int, tuple[RateLimitItem, int]] = {}
        # memory://: the requests/minute windows in this replica, synchronously
        self._replica_windows = ReplicaWindows() if config.storage_url.startswith(
            "memory://") else None
        bridge = getattr(self.storage, "bridge", None)  # Redis: the one-trip window script
        self._hit_script = (bridge.get_connection().register_script(_HIT_SLIDING_WINDOW)
                            if bridge is not None and hasattr(bridge, "get_connection")
                            else None)

    async def _hit_requests(self, item: RateLimitItem, key_id: str) -> tuple[bool, WindowStats]:
        """One request on `key_id`'s sliding window and the window after it: one Redis
        round trip (`_HIT_SLIDING_WINDOW`). (memory://: `check_request_now`.)"""
        key = item.key_for(key_id, "requests")
        bridge = self.storage.bridge
        keys = [bridge.prefixed_key(self.storage._previous_window_key(key)),
                bridge.prefixed_key(self.storage._current_window_key(key))]
        acquired, p_count, p_ttl, c_count, c_ttl = await self._hit_script(
            keys, [item.amount, item.get_expiry(), 1])
        return bool(acquired), _sliding_window_stats(
            item, int(p_count or 0), max(0.0, float(p_ttl or 0)) / 1000,
            int(c_count or 0), max(0.0, float(c_ttl or 0)) / 1000)

    def _per_minute_window(self, per_minute: int | None) -> tuple[RateLimitItem, int]:
        """The requests/minute item of a key's limit (default: the config's) and its expiry."""
        amount = per_minute or self.config.requests_per_minute
        window = self._per_minute.get(amount)
        if window is None:
            item = RateLimitItemPerMinute(amount)
            window = self._per_minute[amount] = (item, item.get_expiry())
        return window

    @property
    def in_replica(self) -> bool:
        """Whether requests/minute are counted in this replica (memory://): then
        `check_request_now` does it without awaiting anything."""
        return self._replica_windows is not None

    def check_request_now(self, key_id: str, *, per_minute: int | None) -> Usage:
        """`check_request` for memory:// storage (`in_replica`), synchronously: one call of
        `ReplicaWindows`, nothing awaited. ApiError 429 when over the key's requests/minute."""
        item, expiry = self._per_minute_window(per_minute)
        amount = item.amount
        now = time.time()
        acquired, previous, previous_ttl, current, current_ttl = self._replica_windows.hit(
            key_id, amount, expiry, now=now)
        stats = _sliding_window_stats(item, previous, previous_ttl, current, current_ttl,
                                      expiry=expiry, now=now)
        usage = Usage(limit=amount, remaining=stats.remaining, reset_at=stats.reset_time)
        if not acquired:
            raise self._refusal(usage, f"rate limit of {item.amount} requests per minute "
                                "reached", "requests", None)
        return usage

    async def check_request(self, key_id: str, *, per_minute: int | None) -> Usage | None:
        """Count one request of `key_id`. ApiError 429 when over its requests/minute; None
        when the storage failed and `fail_open`."""
        if self._replica_windows is not None:
            return self.check_request_now(key_id, per_minute=per_minute)
        item, _ = self._per_minute_window(per_minute)
        return await self._hit(self._requests, item, key_id, "requests", 1,
                               f"rate limit of {item.amount} requests per minute reached",
                               window=self._hit_requests)

    async def charge_images(self, key_id: str, n: int, *, per_day: int | None) -> Usage | None:
        """Charge `n` images to `key_id`'s day. ApiError 429 when that would exceed it."""
        item = RateLimitItemPerDay(per_day or self.config.images_per_day)
        if n > item.amount:
            raise ApiError(429, f"this request makes {n} images but the key's quota is "
                           f"{item.amount} images per day", code="quota_exceeded",
                           param="n")
        return await self._hit(self._images, item, key_id, "images", n,
                               f"daily quota of {item.amount} images reached")

    async def charge_window(self, owner: str, n: int, *, per_day: int, quota: str) -> None:
        """Charge `n` images to another owner's day (a project: ``project:<id>``); 429 naming
        `quota` when that would exceed it."""
        item = RateLimitItemPerDay(per_day)
        if n > item.amount:
            raise ApiError(429, f"this request makes {n} images but the {quota} quota is "
                           f"{per_day} images per day", code="quota_exceeded", param=quota)
        await self._hit(self._images, item, owner, "images", n,
                        f"the {quota} quota of {per_day} images per day is reached",
                        param=quota)

    async def check_model_seconds(self, owner: str, *, per_day: int, quota: str) -> None:
        """429 naming `quota` once `owner` has used its model seconds of the last 24 h."""
        item = RateLimitItemPerDay(per_day)
        try:
            stats = await self._images.get_window_stats(item, owner, "model_seconds")
        except Exception as exc:  # noqa: BLE001 - storage down: as _hit, fail open
            if self.config.fail_open:
                logger.error("rate-limit storage failed (%s: %s); letting the request "
                             "through (fail_open)", type(exc).__name__, exc)
                return
            raise ApiError(503, "rate limiting is unavailable; retry shortly",
                           code="rate_limiter_unavailable",
                           headers={"Retry-After": "5"}) from None
        if stats.remaining <= 0:
            retry = max(math.ceil(stats.reset_time - time.time()), 1)
            raise ApiError(429, f"the {quota} quota of {per_day} model-seconds per day is "
                           f"used up; retry in {retry} s", code="quota_exceeded", param=quota,
                           headers={"Retry-After": str(retry)})

    async def add_model_seconds(self, owner: str, seconds: float, *, per_day: int) -> None:
        """Count model seconds a request used (rounded up; after the work: a request is
        refused only once the day is used up). Best effort."""
        cost = math.ceil(seconds)
        if cost <= 0:
            return
        item = RateLimitItemPerDay(per_day)
        try:
            # the window may be (nearly) full: count what still fits, up to the limit
            stats = await self._images.get_window_stats(item, owner, "model_seconds")
            cost = min(cost, stats.remaining)
            if cost > 0:
                await self._images.hit(item, owner, "model_seconds", cost=cost)
        except Exception as exc:  # noqa: BLE001 - accounting must not fail the request
            logger.error("could not count %s model seconds for %s (%s: %s)", seconds, owner,
                         type(exc).__name__, exc)

    async def refund_images(self, key_id: str, n: int, *, per_day: int | None) -> None:
        # (a project's window: key_id ``project:<id>`` and its own per_day)
        """Give back `n` images charged by `charge_images` that were not produced. `limits`
        has no refund, so this removes the `n` newest entries of the key's moving window in
        the storage's own layout (a Redis list, newest first; the memory storage's event list,
        newest first). Best effort: a storage failure is logged, never raised."""
        if n <= 0:
            return
        item = RateLimitItemPerDay(per_day or self.config.images_per_day)
        key = item.key_for(key_id, "images")
        try:
            bridge = getattr(self.storage, "bridge", None)
            if bridge is not None:  # Redis
                await bridge.get_connection().lpop(bridge.prefixed_key(key), n)
            else:  # memory://
                events = getattr(self.storage, "events", {}).get(key)
                if events:
                    async with self.storage.locks[key]:
                        del events[:n]
        except Exception as exc:  # noqa: BLE001 - a lost refund must not fail the request
            logger.error("could not refund %d image(s) to key %s (%s: %s)", n, key_id,
                         type(exc).__name__, exc)

    async def _hit(self, limiter, item, key_id: str, what: str, cost: int,
                   message: str, param: str | None = None, window=None) -> Usage | None:
        try:
            if window is not None:
                allowed, stats = await window(item, key_id)
            else:
                allowed = await limiter.hit(item, key_id, what, cost=cost)
                stats = await limiter.get_window_stats(item, key_id, what)
        except Exception as exc:  # storage down or unreachable
            if self.config.fail_open:
                logger.error("rate-limit storage failed (%s: %s); letting the request "
                             "through (fail_open)", type(exc).__name__, exc)
                return None
            raise ApiError(503, "rate limiting is unavailable; retry shortly",
                           code="rate_limiter_unavailable",
                           headers={"Retry-After": "5"}) from None
        usage = Usage(limit=item.amount, remaining=stats.remaining, reset_at=stats.reset_time)
        if not allowed:
            raise self._refusal(usage, message, what, param)
        return usage

    @staticmethod
    def _refusal(usage: Usage, message: str, what: str, param: str | None) -> ApiError:
        """The 429 of a full window: when to retry, and the window's X-RateLimit-* headers."""
        retry = max(math.ceil(usage.reset_at - time.time()), 1)
        code = "rate_limited" if what == "requests" else "quota_exceeded"
        return ApiError(429, f"{message}; retry in {retry} s", code=code, param=param,
                        headers={"Retry-After": str(retry), **usage.headers()})
