"""The provider router: which providers may serve a request, in what order, and what happens
when one fails.

1. Candidates: providers whose capabilities cover every input of the request (and that offer
   the requested model); the others are listed in `skipped` with their reasons. A request
   with a mask never reaches a provider that cannot inpaint; no input is dropped silently.
2. Order: a `chain` (the `provider` parameter, or the `provider/` of a model name) pins the
   providers and their order. Otherwise by priority (lower first); among equal priorities a
   weighted random order (load balancing) with weight = configured weight x recent success
   rate / latency EWMA, providers this replica last saw open moved to the end.
3. Each candidate in turn: its breaker (shared through Redis) may skip it at once
   (`breaker_open`); else it is called with its timeout. Images back → done. A retryable
   failure (timeout, connection error, 5xx, 429, a 200 without images, too few images, bad
   image bytes, our key refused) → recorded in `attempts`, next provider. A non-retryable one
   (the request's own fault: a bad prompt, content policy) → `RequestRejected` at once.
4. None left → `AllProvidersFailed`, naming each attempt (the ingress answers 503 with
   `retry_after`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
import traceback
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from providers.base import Provider, ProviderError, ProviderImage, ProviderRequest, scrub
from providers.breaker import BreakerConfig, BreakerStore, MemoryBreakerStore

logger = logging.getLogger("photostudio.providers")


@dataclass(frozen=True)
class Attempt:
    provider: str
    outcome: str  # "ok", "breaker_open" or a ProviderError outcome
    seconds: float
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"provider": self.provider, "outcome": self.outcome,
                               "seconds": round(self.seconds, 4)}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class Skip:
    provider: str
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "reasons": list(self.reasons)}


@dataclass
class RouteResult:
    images: list[ProviderImage]
    provider: str
    kind: str
    model: str | None
    attempts: list[Attempt]
    skipped: list[Skip] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """What the response metadata carries: the provider that answered and every try."""
        return {"provider": self.provider, "provider_kind": self.kind, "model": self.model,
                "attempts": [a.as_dict() for a in self.attempts],
                "skipped": [s.as_dict() for s in self.skipped]}


class RoutingError(Exception):
    """The router could not produce images. `status`/`code`/`param`: for the error envelope;
    `retry_after` (seconds) for a Retry-After header."""

    status = 503
    code = "providers_unavailable"

    def __init__(self, message: str, *, attempts: Sequence[Attempt] = (),
                 skipped: Sequence[Skip] = (), param: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.attempts = list(attempts)
        self.skipped = list(skipped)
        self.param = param
        self.retry_after = retry_after

    def metadata(self) -> dict[str, Any]:
        return {"attempts": [a.as_dict() for a in self.attempts],
                "skipped": [s.as_dict() for s in self.skipped]}


class UnknownProvider(RoutingError):
    status = 400
    code = "provider_not_found"


class NoCapableProvider(RoutingError):
    status = 400
    code = "unsupported_request"


class RequestRejected(RoutingError):
    """A provider refused the request itself (bad prompt, content policy): not retried
    elsewhere. `error` is the provider's error (status/code/param from it)."""

    def __init__(self, error: ProviderError, **kwargs: Any):
        super().__init__(str(error), param=error.param, **kwargs)
        self.error = error
        self.status = error.status
        self.code = error.code


class AllProvidersFailed(RoutingError):
    status = 503
    code = "providers_unavailable"


# -- per-replica statistics -------------------------------------------------------------

@dataclass
class _Stats:
    window_s: float
    alpha: float
    ewma_s: float | None = None
    calls: deque = field(default_factory=lambda: deque(maxlen=2000))  # (t, ok|None, seconds)
    open_hint_until: float = 0.0  # this replica last saw the breaker open until then

    def record(self, now: float, ok: bool | None, seconds: float) -> None:
        """ok None: a call that failed through no fault of the provider (not counted)."""
        self.calls.append((now, ok, seconds))
        if ok:
            self.ewma_s = seconds if self.ewma_s is None else \
                self.alpha * seconds + (1 - self.alpha) * self.ewma_s

    def recent(self, now: float) -> list[tuple[float, bool | None, float]]:
        cutoff = now - self.window_s
        while self.calls and self.calls[0][0] < cutoff:
            self.calls.popleft()
        return list(self.calls)

    def success_rate(self, now: float) -> float | None:
        counted = [ok for _, ok, _ in self.recent(now) if ok is not None]
        return sum(counted) / len(counted) if counted else None

    def health(self, now: float) -> float:
        """Laplace-smoothed success rate: 1 with no data, never 0."""
        counted = [ok for _, ok, _ in self.recent(now) if ok is not None]
        return (sum(counted) + 1) / (len(counted) + 2)


class ProviderRouter:
    def __init__(self, providers: Iterable[Provider] = (), *,
                 breakers: BreakerStore | None = None, stats_window_s: float = 300.0,
                 ewma_alpha: float = 0.3, rng: random.Random | None = None):
        self.breakers: BreakerStore = breakers or MemoryBreakerStore(BreakerConfig())
        self.stats_window_s = stats_window_s
        self.ewma_alpha = ewma_alpha
        self.rng = rng or random.Random()
        self._providers: dict[str, Provider] = {}
        self._stats: dict[str, _Stats] = {}
        for provider in providers:
            self.add(provider)

    # -- registry --------------------------------------------------------------------------
    def add(self, provider: Provider) -> None:
        if provider.name in self._providers:
            raise ValueError(f"a provider named {provider.name!r} is already routed")
        self._providers[provider.name] = provider
        self._stats[provider.name] = _Stats(self.stats_window_s, self.ewma_alpha)

    async def remove(self, name: str) -> None:
        provider = self._providers.pop(name, None)
        self._stats.pop(name, None)
        if provider is not None:
            await provider.close()

    def get(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            raise UnknownProvider(f"no provider named {name!r}; configured: "
                                  f"{sorted(self._providers)}", param="provider") from None

    @property
    def names(self) -> list[str]:
        return list(self._providers)

    async def close(self) -> None:
        for provider in list(self._providers.values()):
            await provider.close()
        await self.breakers.close()

    # -- planning --------------------------------------------------------------------------
    @staticmethod
    def unmet(provider: Provider, request: ProviderRequest) -> list[str]:
        reasons = provider.capabilities.unmet(request)
        if request.model and provider.models and request.model not in provider.models:
            reasons.append(f"model: {request.model!r} not offered (offers {provider.models})")
        return reasons

    def plan(self, request: ProviderRequest, *, chain: Sequence[str] | None = None
             ) -> tuple[list[Provider], list[Skip]]:
        """The providers to try, in order, and the ones skipped for their capabilities."""
        if chain:
            pool = [self.get(name) for name in dict.fromkeys(chain)]
        else:
            pool = list(self._providers.values())
        capable: list[Provider] = []
        skipped: list[Skip] = []
        for provider in pool:
            reasons = self.unmet(provider, request)
            if reasons:
                skipped.append(Skip(provider.name, tuple(reasons)))
            else:
                capable.append(provider)
        if chain:
            return capable, skipped
        groups: dict[int, list[Provider]] = {}
        for provider in capable:
            groups.setdefault(provider.settings.priority, []).append(provider)
        ordered: list[Provider] = []
        for priority in sorted(groups):
            ordered.extend(self._balance(groups[priority]))
        return ordered, skipped

    def _balance(self, group: list[Provider]) -> list[Provider]:
        if len(group) == 1:
            return group
        now = time.monotonic()
        stats = [self._stats[p.name] for p in group]
        known = [s.ewma_s for s in stats if s.ewma_s]
        default_latency = statistics.median(known) if known else 1.0
        keyed = []
        for provider, st in zip(group, stats, strict=True):
            weight = provider.settings.weight * st.health(now) / max(st.ewma_s or
                                                                     default_latency, 1e-3)
            # Efraimidis-Spirakis: a weighted random order in one sort
            key = self.rng.random() ** (1.0 / weight)
            keyed.append((st.open_hint_until > now, -key, provider))
        keyed.sort(key=lambda item: (item[0], item[1]))
        return [provider for _, _, provider in keyed]

    # -- running ---------------------------------------------------------------------------
    async def generate(self, request: ProviderRequest, *,
                       chain: Sequence[str] | None = None) -> RouteResult:
        """Images for `request` from the first provider that can make them (see the module
        doc). Raises a RoutingError subclass otherwise."""
        ordered, skipped = self.plan(request, chain=chain)
        if not ordered:
            detail = "; ".join(f"{s.provider}: {', '.join(s.reasons)}" for s in skipped)
            raise NoCapableProvider(
                f"no configured provider can serve this request ({detail or 'none configured'})",
                skipped=skipped, param=_param_of(skipped))
        attempts: list[Attempt] = []
        waits: list[float] = []
        for provider in ordered:
            outcome = await self._attempt(provider, request, attempts, waits)
            if isinstance(outcome, RouteResult):
                outcome.skipped = skipped
                return outcome
            if outcome is not None:  # non-retryable
                raise RequestRejected(outcome, attempts=attempts, skipped=skipped)
        detail = "; ".join(f"{a.provider}: {a.outcome}" + (f" ({a.detail})" if a.detail else "")
                           for a in attempts)
        retry = max(1.0, min(waits)) if waits else 5.0
        raise AllProvidersFailed(f"no provider could serve the request: {detail}",
                                 attempts=attempts, skipped=skipped, retry_after=retry)

    async def _attempt(self, provider: Provider, request: ProviderRequest,
                       attempts: list[Attempt], waits: list[float]
                       ) -> RouteResult | ProviderError | None:
        """Try one provider: a RouteResult, the non-retryable error, or None (try the next)."""
        name = provider.name
        st = self._stats[name]
        timeout = provider.settings.timeout_s
        decision = await self.breakers.acquire(name, probe_lease_s=timeout)
        if not decision.allowed:
            st.open_hint_until = time.monotonic() + min(decision.retry_after, 60.0)
            attempts.append(Attempt(name, "breaker_open", 0.0,
                                    f"{decision.state}, retry in {decision.retry_after:.1f} s"))
            waits.append(decision.retry_after)
            return None
        started = time.perf_counter()
        error: ProviderError | None = None
        images: list[ProviderImage] = []
        try:
            images = await asyncio.wait_for(provider.run(request), timeout)
            images = self._check_count(provider, request, images)
        except ProviderError as exc:
            error = exc
            error.provider = error.provider or name
        except asyncio.TimeoutError:
            error = ProviderError(f"no answer within {timeout:g} s", outcome="timeout",
                                  provider=name)
        except asyncio.CancelledError:
            # the caller went away: nothing learnt about the provider; a probe's lease expires
            raise
        except Exception as exc:  # an adapter bug must not escape as a 500: next provider
            secrets = provider.secrets()
            logger.error("provider %s raised %s", name, scrub(
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                secrets))
            error = ProviderError(f"unexpected {type(exc).__name__}", outcome="server_error",
                                  provider=name)
        seconds = time.perf_counter() - started
        now = time.monotonic()
        if error is None:
            st.record(now, True, seconds)
            st.open_hint_until = 0.0
            await self.breakers.record_success(name, probe=decision.probe)
            attempts.append(Attempt(name, "ok", seconds))
            model = images[0].model if images and images[0].model else provider.model_for(request)
            return RouteResult(images=images, provider=name, kind=provider.kind, model=model,
                               attempts=attempts)
        attempts.append(Attempt(name, error.outcome, seconds, error.message))
        if error.counts:
            st.record(now, False, seconds)
            await self.breakers.record_failure(name, probe=decision.probe,
                                               retry_after=error.retry_after)
        else:  # it answered properly (the request's fault): healthy as far as we know
            st.record(now, None, seconds)
            await self.breakers.record_success(name, probe=decision.probe)
        if error.retry_after is not None:
            waits.append(error.retry_after)
        if not error.retryable:
            return error
        logger.warning("provider %s failed (%s) after %.3f s: %s; trying the next", name,
                       error.outcome, seconds, error.message)
        return None

    @staticmethod
    def _check_count(provider: Provider, request: ProviderRequest,
                     images: list[ProviderImage]) -> list[ProviderImage]:
        if not images:
            raise provider.error("answered without images", outcome="no_images")
        if len(images) < request.n:
            raise provider.error(f"returned {len(images)} of {request.n} images",
                                 outcome="too_few_images")
        return list(images[:request.n])

    # -- stats -------------------------------------------------------------------------------
    async def stats(self) -> list[dict[str, Any]]:
        """Per provider: kind, models, capabilities, settings (secrets redacted), breaker
        state (shared), and this replica's success rate, p50 latency and latency EWMA over
        the last `stats_window_s`."""
        now = time.monotonic()
        out = []
        for name, provider in self._providers.items():
            st = self._stats[name]
            recent = st.recent(now)
            ok_latencies = [s for _, ok, s in recent if ok]
            breaker = await self.breakers.snapshot(name)
            rate = st.success_rate(now)
            out.append({
                "name": name, "kind": provider.kind, "priority": provider.settings.priority,
                "weight": provider.settings.weight, "models": provider.models,
                "capabilities": provider.capabilities.as_dict(),
                "settings": provider.settings.redacted(),
                "breaker": breaker.as_dict(),
                "window_s": self.stats_window_s, "requests": len(recent),
                "success_rate": None if rate is None else round(rate, 4),
                "p50_latency_s": round(statistics.median(ok_latencies), 4)
                if ok_latencies else None,
                "ewma_latency_s": None if st.ewma_s is None else round(st.ewma_s, 4),
            })
        return out


def _param_of(skipped: Sequence[Skip]) -> str | None:
    """The request parameter every skipped provider objected to, when there is one."""
    params = [{reason.split(":")[0] for reason in s.reasons} for s in skipped]
    common = set.intersection(*params) if params else set()
    return sorted(common)[0] if common else None
