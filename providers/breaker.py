"""Circuit breakers per provider, their state shared by every ingress replica through Redis
(the same Redis as the rate limits), or kept in memory when there is none.

States:
- closed: calls go through; each failure that is the provider's fault is recorded with its
  time; `failure_threshold` failures within `window_s` open the breaker. A failure that
  carries a Retry-After (429/503) opens it at once, for at least that long: the backend said
  when to come back, and every replica shares the key it is rate-limiting.
- open: calls are skipped (the router moves on at once) until `open_until`.
- half-open (after the cooldown): exactly one caller, on any replica, gets the probe (a lease
  of `probe_lease_s`, so a replica that dies mid-probe does not wedge it); the others keep
  skipping. The probe's success closes the breaker; its failure opens it again for twice the
  previous cooldown (capped at `max_cooldown_s`).

Redis layout (one hash and one sorted set per provider, under `prefix`; every change is one
Lua script, so replicas never race): hash fields `open_until`, `probe_until`, `opens`;
sorted set `<key>:f` of failure times. Time comes from the Redis server (`TIME`), so replicas
with skewed clocks agree; tests may inject a clock. Keys expire when idle.

If Redis fails, the store logs (at most once per 30 s) and decides with an in-memory breaker
of its own replica (fail open, like the rate limits) for `retry_redis_s`, then tries Redis
again (so a Redis that hangs costs one socket timeout per `retry_redis_s`, not per request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

logger = logging.getLogger("photostudio.providers")


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5
    window_s: float = 30.0
    cooldown_s: float = 15.0
    max_cooldown_s: float = 300.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if min(self.window_s, self.cooldown_s) <= 0 or self.max_cooldown_s < self.cooldown_s:
            raise ValueError("window_s and cooldown_s must be > 0, max_cooldown_s >= cooldown_s")

    def cooldown(self, opens: int, retry_after: float | None) -> float:
        backoff = self.cooldown_s * 2 ** max(opens - 1, 0)
        return min(self.max_cooldown_s, max(backoff, retry_after or 0.0))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    state: str  # closed | open | half_open
    probe: bool = False  # this caller holds the half-open probe
    retry_after: float = 0.0  # when not allowed: seconds until a probe may go


@dataclass(frozen=True)
class Snapshot:
    state: str
    failures: int  # in the window
    retry_after: float  # open: seconds left
    opens: int  # consecutive openings (cooldown backoff)

    def as_dict(self) -> dict:
        return {"state": self.state, "recent_failures": self.failures,
                "retry_after_s": round(self.retry_after, 3), "consecutive_opens": self.opens}


class BreakerStore(Protocol):
    config: BreakerConfig

    async def acquire(self, name: str, *, probe_lease_s: float) -> Decision: ...

    async def record_success(self, name: str, *, probe: bool) -> None: ...

    async def record_failure(self, name: str, *, probe: bool,
                             retry_after: float | None = None) -> None: ...

    async def snapshot(self, name: str) -> Snapshot: ...

    async def reset(self, name: str) -> None: ...

    async def close(self) -> None: ...


@dataclass
class _State:
    open_until: float = 0.0
    probe_until: float = 0.0
    opens: int = 0
    failures: list[float] = field(default_factory=list)


class MemoryBreakerStore:
    """One replica's breakers (no Redis): the same rules, in process."""

    def __init__(self, config: BreakerConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config or BreakerConfig()
        self.clock = clock
        self._states: dict[str, _State] = {}

    def _state(self, name: str) -> _State:
        return self._states.setdefault(name, _State())

    async def acquire(self, name: str, *, probe_lease_s: float) -> Decision:
        now = self.clock()
        st = self._state(name)
        if st.open_until == 0:
            return Decision(True, "closed")
        if now < st.open_until:
            return Decision(False, "open", retry_after=st.open_until - now)
        if st.probe_until > now:
            return Decision(False, "half_open", retry_after=st.probe_until - now)
        st.probe_until = now + probe_lease_s
        return Decision(True, "half_open", probe=True)

    async def record_success(self, name: str, *, probe: bool) -> None:
        if probe:
            self._states[name] = _State()

    async def record_failure(self, name: str, *, probe: bool,
                             retry_after: float | None = None) -> None:
        now = self.clock()
        st = self._state(name)
        cfg = self.config
        if probe:
            st.opens += 1
            st.open_until = now + cfg.cooldown(st.opens, retry_after)
            st.probe_until = 0.0
            st.failures.clear()
            return
        if st.open_until:  # a late failure of a call made before it opened
            if retry_after:
                st.open_until = max(st.open_until, now + min(retry_after, cfg.max_cooldown_s))
            return
        st.failures = [t for t in st.failures if t > now - cfg.window_s]
        st.failures.append(now)
        if retry_after is not None or len(st.failures) >= cfg.failure_threshold:
            st.opens = 1
            st.open_until = now + cfg.cooldown(1, retry_after)
            st.failures.clear()

    async def snapshot(self, name: str) -> Snapshot:
        now = self.clock()
        st = self._state(name)
        failures = sum(1 for t in st.failures if t > now - self.config.window_s)
        if st.open_until == 0:
            return Snapshot("closed", failures, 0.0, st.opens)
        if now < st.open_until:
            return Snapshot("open", failures, st.open_until - now, st.opens)
        return Snapshot("half_open", failures, 0.0, st.opens)

    async def reset(self, name: str) -> None:
        self._states.pop(name, None)

    async def close(self) -> None:
        return None


# -- Redis ---------------------------------------------------------------------------------

_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

_ACQUIRE = _NOW + """
local lease = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until == 0 then return {1, 'closed', 0, '0'} end
if now < open_until then return {0, 'open', 0, tostring(open_until - now)} end
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if probe_until > now then return {0, 'half_open', 0, tostring(probe_until - now)} end
redis.call('HSET', KEYS[1], 'probe_until', tostring(now + lease))
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, 'half_open', 1, '0'}
"""

# ARGV: now, probe (0/1), retry_after ('' = none), threshold, window, cooldown, max_cooldown, ttl
_FAILURE = _NOW + """
local probe = ARGV[2] == '1'
local retry_after = tonumber(ARGV[3])
local threshold = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local cooldown = tonumber(ARGV[6])
local max_cooldown = tonumber(ARGV[7])
local ttl = tonumber(ARGV[8])
local function cool(opens)
  local c = cooldown * 2 ^ math.max(opens - 1, 0)
  if retry_after and retry_after > c then c = retry_after end
  if c > max_cooldown then c = max_cooldown end
  return c
end
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if probe then
  local opens = tonumber(redis.call('HGET', KEYS[1], 'opens') or '0') + 1
  redis.call('HSET', KEYS[1], 'opens', opens, 'open_until', tostring(now + cool(opens)),
             'probe_until', '0')
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 'open'
end
if open_until ~= 0 then
  if retry_after then
    local ra = retry_after
    if ra > max_cooldown then ra = max_cooldown end
    if now + ra > open_until then
      redis.call('HSET', KEYS[1], 'open_until', tostring(now + ra))
      redis.call('PEXPIRE', KEYS[1], ttl)
    end
  end
  return 'open'
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tostring(now - window))
redis.call('ZADD', KEYS[2], now, tostring(now) .. ':' .. tostring(redis.call('INCR', KEYS[3])))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
if retry_after or redis.call('ZCARD', KEYS[2]) >= threshold then
  redis.call('HSET', KEYS[1], 'opens', 1, 'open_until', tostring(now + cool(1)),
             'probe_until', '0')
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 'open'
end
return 'closed'
"""

_SUCCESS = """
redis.call('DEL', KEYS[1], KEYS[2])
return 'closed'
"""

_SNAPSHOT = _NOW + """
local window = tonumber(ARGV[2])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
local opens = tonumber(redis.call('HGET', KEYS[1], 'opens') or '0')
local failures = redis.call('ZCOUNT', KEYS[2], '(' .. tostring(now - window), '+inf')
if open_until == 0 then return {'closed', failures, '0', opens} end
if now < open_until then return {'open', failures, tostring(open_until - now), opens} end
return {'half_open', failures, '0', opens}
"""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBreakerStore:
    """Breakers shared by every replica through Redis (see the module doc)."""

    def __init__(self, url: str, config: BreakerConfig | None = None, *,
                 prefix: str = "photostudio:breaker:", clock: Callable[[], float] | None = None,
                 socket_timeout_s: float = 0.5, retry_redis_s: float = 5.0):
        import redis.asyncio as aioredis

        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"breaker storage must be a redis://, rediss:// or unix:// URL, "
                             f"got {url.split('://')[0]}://")
        self.config = config or BreakerConfig()
        self.prefix = prefix
        self.clock = clock
        self.redis = aioredis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                             socket_connect_timeout=socket_timeout_s)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._failure = self.redis.register_script(_FAILURE)
        self._success = self.redis.register_script(_SUCCESS)
        self._snapshot = self.redis.register_script(_SNAPSHOT)
        self.fallback = MemoryBreakerStore(self.config)
        self._last_error_log = 0.0
        self._down_until = 0.0
        self.retry_redis_s = retry_redis_s
        cfg = self.config
        self._ttl_ms = int((cfg.window_s + cfg.max_cooldown_s) * 2 * 1000) + 60_000

    def _keys(self, name: str) -> list[str]:
        key = f"{self.prefix}{name}"
        return [key, f"{key}:f", f"{key}:n"]

    def _now(self) -> str:
        return repr(self.clock()) if self.clock is not None else ""

    def _down(self, exc: BaseException, op: str) -> None:
        now = time.monotonic()
        # Don't pay a socket timeout on every request while Redis is away: this replica
        # decides alone for `retry_redis_s`, then tries Redis again.
        self._down_until = now + self.retry_redis_s
        if now - self._last_error_log > 30:
            self._last_error_log = now
            logger.error("breaker storage (Redis) failed on %s (%s); deciding in this replica "
                         "until it answers", op, type(exc).__name__)

    def _redis_away(self) -> bool:
        return time.monotonic() < self._down_until

    async def acquire(self, name: str, *, probe_lease_s: float) -> Decision:
        import redis

        if self._redis_away():
            return await self.fallback.acquire(name, probe_lease_s=probe_lease_s)
        try:
            allowed, state, probe, wait = await self._acquire(
                keys=self._keys(name),
                args=[self._now(), repr(float(probe_lease_s)), self._ttl_ms])
        except (redis.RedisError, OSError) as exc:
            self._down(exc, "acquire")
            return await self.fallback.acquire(name, probe_lease_s=probe_lease_s)
        return Decision(bool(int(allowed)), _text(state), bool(int(probe)), float(_text(wait)))

    async def record_success(self, name: str, *, probe: bool) -> None:
        import redis

        if not probe:
            return  # only the half-open probe changes state on success
        if self._redis_away():
            await self.fallback.record_success(name, probe=probe)
            return
        try:
            await self._success(keys=self._keys(name)[:2], args=[])
        except (redis.RedisError, OSError) as exc:
            self._down(exc, "record_success")
            await self.fallback.record_success(name, probe=probe)

    async def record_failure(self, name: str, *, probe: bool,
                             retry_after: float | None = None) -> None:
        import redis

        cfg = self.config
        if self._redis_away():
            await self.fallback.record_failure(name, probe=probe, retry_after=retry_after)
            return
        try:
            await self._failure(keys=self._keys(name), args=[
                self._now(), "1" if probe else "0",
                "" if retry_after is None else repr(float(retry_after)),
                cfg.failure_threshold, repr(cfg.window_s), repr(cfg.cooldown_s),
                repr(cfg.max_cooldown_s), self._ttl_ms])
        except (redis.RedisError, OSError) as exc:
            self._down(exc, "record_failure")
            await self.fallback.record_failure(name, probe=probe, retry_after=retry_after)

    async def snapshot(self, name: str) -> Snapshot:
        import redis

        if self._redis_away():
            return await self.fallback.snapshot(name)
        try:
            state, failures, wait, opens = await self._snapshot(
                keys=self._keys(name)[:2], args=[self._now(), repr(self.config.window_s)])
        except (redis.RedisError, OSError) as exc:
            self._down(exc, "snapshot")
            return await self.fallback.snapshot(name)
        return Snapshot(_text(state), int(failures), float(_text(wait)), int(opens))

    async def reset(self, name: str) -> None:
        import redis

        try:
            await self.redis.delete(*self._keys(name))
        except (redis.RedisError, OSError) as exc:
            self._down(exc, "reset")
        await self.fallback.reset(name)

    async def close(self) -> None:
        await self.redis.aclose()


def breaker_store(url: str | None, config: BreakerConfig | None = None, **kwargs
                  ) -> MemoryBreakerStore | RedisBreakerStore:
    """Redis when `url` is redis://…, memory for None / memory://."""
    if not url or url.startswith("memory://"):
        return MemoryBreakerStore(config, **kwargs)
    return RedisBreakerStore(url, config, **kwargs)
